"""The Litestar application factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from api.auth import TokenVerifier
from api.cache import BalanceCache, connect_redis, token_engine
from api.input_guard import reject_hostile_input
from api.problems import EXCEPTION_HANDLERS
from api.replica import ReplicaReads
from api.routes.admin import admin_router
from api.routes.health import live, ready
from api.routes.member import member_router
from api.routes.partner import partner_router
from api.routes.partner_files import partner_files_router
from api.routes.problems import describe_problem, list_problems
from api.routes.staff import staff_router
from api.settings import Settings, SettingsError
from ledger.database import create_engine
from ledger.service import LedgerService
from members.registry import Members
from partners.programme import Programme
from partners.registry import Registry, SecretBox, SigningKeyCache
from partners.rulebook import Rulebook


def create_app(settings: Settings) -> Litestar:
    if settings.database_url is None:
        raise ValueError("create_app needs a database URL (the CLI resolves the embedded one)")
    verifier = TokenVerifier(settings)
    if not settings.secret_key:
        raise SettingsError("LOYALTY_SECRET_KEY (a Fernet key) encrypts partner secrets")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
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
        app.state.ledger = LedgerService(engine, settings.ledger_config())
        app.state.rulebook = Rulebook(app.state.ledger)
        app.state.programme = Programme(app.state.ledger, settings.tier_period)
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
            await engine.dispose()

    app = Litestar(
        route_handlers=[
            live,
            ready,
            list_problems,
            describe_problem,
            staff_router,
            admin_router,
            partner_router,
            partner_files_router,
            member_router,
        ],
        lifespan=[lifespan],
        guards=[reject_hostile_input],  # before any other guard: no hostile value reaches SQL
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Loyalty ledger",
            version="0.1.0",
            path="/docs",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
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
    return app


def create_app_from_env() -> Litestar:
    """Factory for server workers: settings come from LOYALTY_* variables."""
    return create_app(Settings.from_env())
