"""What the dashboard shows, gathered: its query (the window, `as_of`, the
currency) and every figure of insights/ it draws, each read in its own
read-only snapshot as the JSON API reads it (figures read concurrently, as
many at once as the insights engine keeps connections for one request);
and the CSV tables its links give, the same tables `loyalty insights ...
--csv` prints.

Windows: `from`/`to` as the API takes them ([from, to), purchase time, at
most 367 days; `to` defaults to `as_of`, `as_of` to now). Pareto, RFM,
the coalition, the promotions and the tier movement cover that window;
churn and the cohorts the calendar months it touches (so a window inside
one month still has one); the lost members the 365 days before the 90-day
cut-off (the API's default); the overview and the expiry outlook are
relative to `as_of`."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.routes.insights import MAX_LIMIT
from finance.period import Period
from insights import coalition, overview, pareto, promotions, retention, rfm, tiers
from insights.reading import (
    POOL_SIZE,
    add_months,
    currency,
    instant,
    month_start,
    now,
    read_only,
    window,
)

LOST_ON_PAGE = 20
LOST_IN_CSV = MAX_LIMIT  # the API's largest page


@dataclass(frozen=True)
class Query:
    """The dashboard's parameters, parsed; `given` as they came (for links)."""

    given: dict[str, str]
    as_of: datetime
    period: Period
    currency: str
    months: tuple[datetime, datetime]  # [first, end) of churn and the cohorts
    reference: Period  # of the lost members
    inactive_days: int = retention.DEFAULT_INACTIVE_DAYS
    lost_limit: int = LOST_ON_PAGE

    @property
    def months_since(self) -> int:
        """Cohort columns after month 0: as many as the months shown allow."""
        first, end = self.months
        count = retention.month_index(end) - retention.month_index(first)
        return max(0, min(retention.DEFAULT_MONTHS, count - 1))


def months_of(period: Period) -> tuple[datetime, datetime]:
    """The calendar months a window touches, [first, end)."""
    last = month_start(period.end)
    return month_start(period.start), last if last == period.end else add_months(last, 1)


def parse_query(start: str | None, end: str | None, as_of: str | None, money: str | None) -> Query:
    """The parameters checked as the API checks them (`InvalidPeriod`,
    `InvalidInsightParameter`); an empty field is no parameter."""
    start, end, as_of, money = (value or None for value in (start, end, as_of, money))
    moment = instant(as_of, "as_of")
    period = window(start, end, moment)
    given = {
        name: value
        for name, value in (("from", start), ("to", end), ("as_of", as_of), ("currency", money))
        if value is not None
    }
    return Query(
        given,
        moment,
        period,
        currency(money),
        months_of(period),
        retention.reference_window(None, None, moment, retention.DEFAULT_INACTIVE_DAYS),
    )


async def _overview(conn: AsyncConnection, q: Query) -> overview.Overview:
    return await overview.overview(conn, q.as_of)


async def _pareto(conn: AsyncConnection, q: Query) -> pareto.Pareto:
    return await pareto.pareto(conn, q.period, q.currency)


async def _rfm(conn: AsyncConnection, q: Query) -> rfm.Rfm:
    return await rfm.rfm(conn, q.period, q.currency)


async def _lost(conn: AsyncConnection, q: Query) -> retention.LostMembers:
    return await retention.lost_members(
        conn, q.reference, q.as_of, q.inactive_days, q.currency, q.lost_limit
    )


async def _retention(conn: AsyncConnection, q: Query) -> retention.RetentionFigures:
    first, end = q.months
    return await retention.retention_figures(
        conn, first, end, q.as_of, q.inactive_days, q.months_since
    )


async def _coalition(conn: AsyncConnection, q: Query) -> coalition.Coalition:
    return await coalition.coalition(conn, q.period, q.currency)


async def _promotions(conn: AsyncConnection, q: Query) -> promotions.Promotions:
    return await promotions.promotions(conn, q.period, q.as_of, q.currency)


async def _tiers(conn: AsyncConnection, q: Query) -> tiers.Tiers:
    # The distribution is the one held now (as the API's).
    return await tiers.tiers(conn, q.period, now())


async def _expiry(conn: AsyncConnection, q: Query) -> tiers.ExpiryOutlook:
    return await tiers.expiry_outlook(conn, q.as_of)


# source -> (read in one snapshot, its tables)
SOURCES: dict[str, tuple[Callable[[AsyncConnection, Query], Awaitable], Callable]] = {
    "overview": (_overview, overview.tables),
    "pareto": (_pareto, pareto.tables),
    "rfm": (_rfm, rfm.tables),
    "lost": (_lost, retention.lost_tables),
    "retention": (_retention, retention.figures_tables),
    "coalition": (_coalition, coalition.tables),
    "promotions": (_promotions, promotions.tables),
    "tiers": (_tiers, tiers.tables),
    "expiry": (_expiry, tiers.outlook_tables),
}

# figure of a CSV link (/dashboard/data/{figure}.csv) -> (source, table)
CSV_FIGURES = {
    "overview": ("overview", "overview"),
    "money": ("overview", "money"),
    "pareto": ("pareto", "pareto"),
    "lorenz": ("pareto", "lorenz"),
    "rfm-segments": ("rfm", "segments"),
    "lost-members": ("lost", "lost"),
    "churn": ("retention", "churn"),
    "cohorts": ("retention", "retention"),
    "reach": ("coalition", "reach"),
    "partners": ("coalition", "partners"),
    "cross-shopping": ("coalition", "cross_shopping"),
    "promotions": ("promotions", "promotions"),
    "tiers": ("tiers", "tiers"),
    "tier-movement": ("tiers", "movement"),
    "expiry": ("expiry", "expiry"),
}


@dataclass(frozen=True)
class Dashboard:
    query: Query
    overview: overview.Overview
    pareto: pareto.Pareto
    rfm: rfm.Rfm
    lost: retention.LostMembers
    retention: retention.RetentionFigures
    coalition: coalition.Coalition
    promotions: promotions.Promotions
    tiers: tiers.Tiers
    expiry: tiers.ExpiryOutlook


async def _read(engine: AsyncEngine, source: str, query: Query):
    read, _ = SOURCES[source]
    async with read_only(engine) as conn:
        return await read(conn, query)


async def gather(engine: AsyncEngine, query: Query) -> Dashboard:
    """Every figure, each in its own snapshot, at most POOL_SIZE at a time
    (the rest would wait for a connection and could time out)."""
    gate = asyncio.Semaphore(POOL_SIZE)

    async def gated(source: str):
        async with gate:
            return await _read(engine, source, query)

    answers = await asyncio.gather(*(gated(source) for source in SOURCES))
    return Dashboard(query, **dict(zip(SOURCES, answers, strict=True)))


async def csv_table(engine: AsyncEngine, query: Query, figure: str) -> tuple[list[str], list[list]]:
    """One CSV link's table (`KeyError` for a figure there is none of)."""
    source, table = CSV_FIGURES[figure]
    if source == "lost":
        query = replace(query, lost_limit=LOST_IN_CSV)
    answer = await _read(engine, source, query)
    return SOURCES[source][1](answer)[table]
