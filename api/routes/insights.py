"""Insights API (staff JWT with the role `finance` or `admin`): the figures
of insights/ as JSON, the same functions `loyalty insights ...` prints.

Every figure is read in one read-only snapshot on the insights engine, made
from `LOYALTY_ANALYTICS_DATABASE_URL` (default: the main database; a replica
works) on first use and disposed at shutdown (`close_insights_engine`).
Windows are purchase time: `from`, `to` (dates or ISO 8601 timestamps,
[from, to), at most 367 days; default the 365 days up to now or `as_of`). A
bad window or instant is `422 invalid-period`, a parameter out of range
`422 invalid-query-parameter`, an unknown member or partner a 404 problem;
nothing is ever written."""

from datetime import datetime
from typing import Annotated

from litestar import Litestar, Request, Router, get
from litestar.di import Provide
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import provide_principal, require_staff
from api.input_guard import PathText
from insights import coalition, overview, pareto, promotions, retention, rfm, tiers
from insights.reading import (
    bounded,
    create_insights_engine,
    currency,
    instant,
    read_only,
    window,
)

STATE_KEY = "insights_engine"
MAX_LIMIT = 1000

From = Annotated[
    str | None,
    QueryParameter(
        name="from", description="First instant (purchase time): YYYY-MM-DD or ISO 8601",
        max_length=40,
    ),
]  # fmt: skip
To = Annotated[str | None, QueryParameter(name="to", description="End (excluded)", max_length=40)]
AsOf = Annotated[
    str | None,
    QueryParameter(name="as_of", description="The instant taken for now", max_length=40),
]
Currency = Annotated[
    str | None,
    QueryParameter(name="currency", description="ISO 4217 code of spend (EUR)", max_length=3),
]
Partner = Annotated[
    str | None, QueryParameter(name="partner", description="One partner only", max_length=64)
]

Points = Annotated[int, QueryParameter(name="points", description="Lorenz curve points (2 to 100)")]
InactiveDays = Annotated[
    int, QueryParameter(name="inactive_days", description="Days without activity (1 to 730)")
]
MonthsSince = Annotated[
    int, QueryParameter(name="months_since", description="Cohort columns after month 0")
]
Limit = Annotated[int, QueryParameter(name="limit", description="Members per page (1 to 1000)")]
Offset = Annotated[int, QueryParameter(name="offset", description="Members skipped")]


def insights_engine(app: Litestar) -> AsyncEngine:
    """The app's insights engine (made on first use)."""
    engine = app.state.get(STATE_KEY)
    if engine is None:
        settings = app.state.settings
        engine = create_insights_engine(
            settings.analytics_database_url or settings.database_url, settings.database_limits()
        )
        app.state[STATE_KEY] = engine
    return engine


async def close_insights_engine(app: Litestar) -> None:
    """Dispose of the insights engine's connections (api/app.py, at shutdown)."""
    engine = app.state.get(STATE_KEY)
    if engine is not None:
        app.state[STATE_KEY] = None
        await engine.dispose()


def _read(request: Request):
    return read_only(insights_engine(request.app))


@get("/pareto", summary="Concentration of spend, points and redemptions; Lorenz, Gini")
async def get_pareto(
    request: Request,
    start: From = None,
    end: To = None,
    money: Currency = None,
    partner: Partner = None,
    points: Points = pareto.DEFAULT_POINTS,
) -> pareto.Pareto:
    period, code = window(start, end), currency(money)
    bounded("points", points, 2, 100)
    async with _read(request) as conn:
        return await pareto.pareto(conn, period, code, partner, points)


@get("/rfm", summary="RFM scores and segments")
async def get_rfm(
    request: Request, start: From = None, end: To = None, money: Currency = None
) -> rfm.Rfm:
    period, code = window(start, end), currency(money)
    async with _read(request) as conn:
        return await rfm.rfm(conn, period, code)


@get("/members/{member_id:str}", summary="One member's RFM scores, segment and activity")
async def get_member(
    request: Request, member_id: PathText, start: From = None, end: To = None,
    money: Currency = None,
) -> rfm.MemberInsight:  # fmt: skip
    period, code = window(start, end), currency(money)
    async with _read(request) as conn:
        return await rfm.member_insight(conn, member_id, period, code)


@get("/lost-members", summary="Members who stopped coming, highest spend first")
async def get_lost_members(
    request: Request,
    start: From = None,
    end: To = None,
    as_of: AsOf = None,
    inactive_days: InactiveDays = retention.DEFAULT_INACTIVE_DAYS,
    money: Currency = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> retention.LostMembers:
    moment = instant(as_of, "as_of")
    bounded("inactive_days", inactive_days, 1, 730)
    bounded("limit", limit, 1, MAX_LIMIT)
    bounded("offset", offset, 0, 10_000_000)
    reference = retention.reference_window(start, end, moment, inactive_days)
    code = currency(money)
    async with _read(request) as conn:
        return await retention.lost_members(
            conn, reference, moment, inactive_days, code, limit, offset
        )


@get("/retention", summary="Monthly churn rate and cohort retention")
async def get_retention(
    request: Request,
    start: From = None,
    end: To = None,
    as_of: AsOf = None,
    inactive_days: InactiveDays = retention.DEFAULT_INACTIVE_DAYS,
    months_since: MonthsSince = retention.DEFAULT_MONTHS,
) -> retention.RetentionFigures:
    moment = instant(as_of, "as_of")
    bounded("inactive_days", inactive_days, 1, 730)
    bounded("months_since", months_since, 0, retention.MAX_MONTHS)
    first, last = retention.month_range(start, end, moment)
    async with _read(request) as conn:
        return await retention.retention_figures(
            conn, first, last, moment, inactive_days, months_since
        )


@get("/coalition", summary="Members per number of partners, cross-shopping, per partner")
async def get_coalition(
    request: Request, start: From = None, end: To = None, money: Currency = None
) -> coalition.Coalition:
    period, code = window(start, end), currency(money)
    async with _read(request) as conn:
        return await coalition.coalition(conn, period, code)


@get("/promotions", summary="Promotion and coupon performance, with the uplift")
async def get_promotions(
    request: Request, start: From = None, end: To = None, as_of: AsOf = None,
    money: Currency = None,
) -> promotions.Promotions:  # fmt: skip
    moment = instant(as_of, "as_of")
    period, code = window(start, end, moment), currency(money)
    async with _read(request) as conn:
        return await promotions.promotions(conn, period, moment, code)


@get("/tiers", summary="Tier distribution now and movement per month")
async def get_tiers(request: Request, start: From = None, end: To = None) -> tiers.Tiers:
    period = window(start, end)
    async with _read(request) as conn:
        return await tiers.tiers(conn, period, _now())


@get("/expiry-outlook", summary="Points expiring per month for the next 12 months")
async def get_expiry_outlook(request: Request, as_of: AsOf = None) -> tiers.ExpiryOutlook:
    moment = instant(as_of, "as_of")
    async with _read(request) as conn:
        return await tiers.expiry_outlook(conn, moment)


@get("/overview", summary="KPIs: active members, points this month, outstanding, breakage")
async def get_overview(request: Request, as_of: AsOf = None) -> overview.Overview:
    moment = instant(as_of, "as_of")
    async with _read(request) as conn:
        return await overview.overview(conn, moment)


def _now() -> datetime:
    return instant(None, "as_of")


insights_router = Router(
    path="/v1/insights",
    route_handlers=[
        get_pareto,
        get_rfm,
        get_member,
        get_lost_members,
        get_retention,
        get_coalition,
        get_promotions,
        get_tiers,
        get_expiry_outlook,
        get_overview,
    ],
    guards=[require_staff("finance", "admin")],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False)},
    tags=["insights"],
    security=[{"bearer": []}],
)
