"""The Litestar application factory: services built at start-up, routes,
problem handlers, the OpenAPI UI (served from the package, api/routes/docs.py)
and, around it all, the request observation (request ids, metrics, access
log: api/observability.py)."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from api.auth import TokenVerifier
from api.cache import RATE_WINDOW, BalanceCache, connect_redis, token_engine
from api.input_guard import reject_hostile_input
from api.logs import litestar_logging
from api.metrics import MeteredLedger, process_stopped
from api.observability import ObservedLitestar
from api.problems import EXCEPTION_HANDLERS
from api.replica import ReplicaReads
from api.routes.admin import admin_router
from api.routes.claims import member_claims_router, staff_claims_router
from api.routes.clubs import (
    admin_clubs_router,
    member_clubs_router,
    partner_clubs_router,
    staff_clubs_router,
)
from api.routes.dashboard import dashboard_router
from api.routes.docs import DOCS_PATH, docs_asset, docs_router, render_plugins
from api.routes.finance import close_export_pool, finance_router
from api.routes.finance_breakage import finance_breakage_router
from api.routes.finance_close import finance_close_router
from api.routes.finance_reconciliation import finance_reconciliation_router
from api.routes.finance_settlement import finance_settlement_router
from api.routes.health import live, ready, scrape
from api.routes.insights import close_insights_engine, insights_router
from api.routes.jobs import jobs_router
from api.routes.member import member_router
from api.routes.partner import partner_router
from api.routes.partner_files import partner_files_router
from api.routes.pools import member_pools_router, staff_pools_router
from api.routes.problems import describe_problem, list_problems
from api.routes.rewards import admin_rewards_router, member_rewards_router
from api.routes.staff import staff_router
from api.settings import Settings, SettingsError
from api.worker_process import ready_worker
from ledger.database import create_engine
from ledger.service import utc_now
from members.registry import Members
from partners.programme import Programme
from partners.registry import Registry
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox, SigningKeyCache


def create_app(settings: Settings, clock: Callable[[], datetime] | None = None) -> ObservedLitestar:
    """The app; `clock` is the business time every service it builds reads
    (effective times, purchase-time bounds, claim windows, club terms):
    the real time unless a test plays a story at its dates. Transport time
    (signature freshness, token expiry, rate-limit windows, cache TTLs)
    stays on the real clock."""
    clock = clock or utc_now
    if settings.database_url is None:
        raise ValueError("create_app needs a database URL (the CLI resolves the embedded one)")
    verifier = TokenVerifier(settings)
    if not settings.secret_key:
        raise SettingsError("LOYALTY_SECRET_KEY (a Fernet key) encrypts partner secrets")

    @asynccontextmanager
    async def lifespan(app: ObservedLitestar) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            limits=settings.database_limits(),
        )
        app.state.engine = engine
        app.state.redis = (
            connect_redis(settings.redis_url, settings.redis_cluster)
            if settings.redis_url
            else None
        )
        app.state.rate_window = (
            app.state.redis.register_script(RATE_WINDOW) if app.state.redis is not None else None
        )
        # Counts the entries its operations post (api/metrics.py).
        app.state.ledger = MeteredLedger(engine, settings.ledger_config(), clock=clock)
        app.state.rulebook = Rulebook(app.state.ledger)
        app.state.programme = Programme(
            app.state.ledger, settings.tier_period, settings.expiring_window()
        )
        app.state.cache = BalanceCache(
            app.state.redis,
            app.state.programme,
            token_engine(settings.database_url, settings.database_limits(), settings.db_pool_size)
            if app.state.redis is not None or settings.replica_database_url
            else None,
            settings.balance_cache_ttl_seconds,
        )
        app.state.replica = None
        if settings.replica_database_url:
            # Member reads on the replica when it is as fresh as the primary for
            # the member (api/replica.py); the cache builds its misses there too.
            app.state.replica = ReplicaReads(
                create_engine(
                    settings.replica_database_url,
                    pool_size=settings.db_pool_size,
                    limits=settings.replica_limits(),
                    autocommit=True,
                ),
                settings.ledger_config(),
                settings.tier_period,
                app.state.cache.current_token,
                expiring=settings.expiring_window(),
                ledger_clock=clock,
            )
            app.state.cache.replica = app.state.replica
        app.state.registry = Registry(engine, SecretBox(settings.secret_key))
        app.state.signing_keys = SigningKeyCache()  # this worker's partner keys
        app.state.members = Members(app.state.ledger, app.state.programme)
        try:
            yield
        finally:
            await app.state.cache.aclose()
            if app.state.replica is not None:
                await app.state.replica.aclose()
            if app.state.redis is not None:
                await app.state.redis.aclose()
            await close_export_pool(app)
            await close_insights_engine(app)
            await engine.dispose()
            process_stopped()

    app = ObservedLitestar(
        route_handlers=[
            live,
            ready,
            *([scrape] if settings.metrics_enabled else []),
            docs_asset,
            list_problems,
            describe_problem,
            staff_router,
            finance_router,
            finance_settlement_router,
            finance_breakage_router,
            finance_close_router,
            finance_reconciliation_router,
            insights_router,
            dashboard_router,
            jobs_router,
            admin_router,
            partner_router,
            partner_files_router,
            member_router,
            member_rewards_router,
            admin_rewards_router,
            member_claims_router,
            staff_claims_router,
            member_clubs_router,
            admin_clubs_router,
            staff_clubs_router,
            partner_clubs_router,
            member_pools_router,
            staff_pools_router,
        ],
        lifespan=[lifespan],
        guards=[reject_hostile_input],  # before any other guard: no hostile value reaches SQL
        exception_handlers=EXCEPTION_HANDLERS,
        # JSON (or text) lines with the request's fields, api/logs.py; applied
        # now, as Litestar's default (a plain format) would have been.
        logging_config=litestar_logging(settings.log_format, settings.log_level),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Loyalty ledger",
            version="0.1.0",
            path=DOCS_PATH,
            render_plugins=render_plugins(),
            openapi_router=docs_router(),  # an unknown /docs/... page: a problem 404
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
                    "hmac": SecurityScheme(
                        type="apiKey",
                        name="X-Loyalty-Signature",
                        security_scheme_in="header",
                        description="HMAC-SHA256 request signature (see the README)",
                    ),
                }
            ),
        ),
    )
    app.state.verifier = verifier
    app.state.settings = settings
    app.state.clock = clock  # the scheduler's jobs read it too (api/jobs_service.py)
    return app


def create_app_from_env() -> ObservedLitestar:
    """Factory for server workers: settings come from LOYALTY_* variables."""
    app = create_app(Settings.from_env())
    ready_worker()
    return app
