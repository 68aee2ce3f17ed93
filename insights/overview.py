"""The programme at a glance: the figures of the dashboard's KPI cards
(`GET /v1/insights/overview`, `loyalty insights overview`).

Two clocks, each figure on the one its owner uses:

- **Purchase time**, as every insight (insights/activity.py defines the
  words), relative to `as_of` (default now): *active members*, the members
  with activity in the 30 days [as_of - 30 d, as_of); *points issued* and
  *points redeemed this month*, in [first instant of as_of's month, as_of),
  net of returns and refunds.
- **Booking time, now** (the snapshot's instant on the database clock), as
  finance reads the liability, whatever `as_of` is: *points outstanding*,
  every member's available + pending + held PTS (the liability of the
  roll-forward, finance/rollforward.py); their *money value*, per currency,
  the deferred revenue of finance's breakage report (finance/breakage.py:
  the consideration partners paid at their contracts' `price_per_point`,
  less the revenue recognised so far in proportion to the redemptions
  expected); the *expected redemption rate* finance uses now (its estimate,
  else the trailing 12 months' history, else the default) and the
  *breakage rate*, 1 minus it. The breakage report is finance's, read in this snapshot; its
  `revenue_this_month` is the revenue recognised in the booking month so far.

Nothing here recomputes finance's arithmetic: the figures are finance's
functions' answers, read in the same read-only snapshot as the rest."""

from datetime import datetime, timedelta
from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from finance.breakage import DEFAULT_TRAILING_MONTHS, breakage_in
from finance.period import Period, stamp
from finance.rollforward import LIABILITY_ACCOUNTS
from insights.activity import ACTIVITY, ISSUED, REDEEMED, with_
from insights.reading import month_start
from ledger.accounts import PTS
from ledger.history import member_accounts_now, server_time

ACTIVE_DAYS = 30

ACTIVE = with_(ACTIVITY) + "\nSELECT count(DISTINCT member_id) AS members FROM counted"

MONTH = (
    with_(ISSUED, REDEEMED)
    + """
SELECT (SELECT coalesce(sum(points), 0) FROM issued)::bigint AS issued,
       (SELECT coalesce(sum(points), 0) FROM redeemed)::bigint AS redeemed"""
)


class MoneyValue(msgspec.Struct, frozen=True):
    """One currency's money behind the points (minor units), from breakage."""

    currency: str
    consideration: int  # paid by partners for the points issued, net of returns
    deferred_revenue: int  # the money value of the points outstanding
    revenue_this_month: int  # recognised in the booking month so far


class Overview(msgspec.Struct, frozen=True):
    as_of: str
    active_days: int
    active_from: str
    active_members: int
    month_from: str  # purchase time, up to as_of
    points_issued_this_month: int
    points_redeemed_this_month: int
    liability_as_of: str  # booking time: the snapshot's instant
    points_outstanding: int
    points_outstanding_by_account: dict[str, int]  # available, pending, held
    money: list[MoneyValue]
    expected_redemption_rate: Decimal
    rate_method: str  # estimate | history | default
    breakage_rate: Decimal  # 1 - expected_redemption_rate


async def overview(conn: AsyncConnection, as_of: datetime) -> Overview:
    active_from = as_of - timedelta(days=ACTIVE_DAYS)
    month_from = month_start(as_of)
    # Activity counts visits, not spend: no currency is needed.
    active = await conn.execute(text(ACTIVE), {"start": active_from, "end": as_of, "currency": ""})
    month = (await conn.execute(text(MONTH), {"start": month_from, "end": as_of})).one()
    booked = await server_time(conn)
    outstanding = await member_accounts_now(conn, LIABILITY_ACCOUNTS, PTS)
    report = await breakage_in(conn, Period(month_start(booked), booked), DEFAULT_TRAILING_MONTHS)
    rate = report.end.rate
    return Overview(
        stamp(as_of),
        ACTIVE_DAYS,
        stamp(active_from),
        int(active.scalar_one()),
        stamp(month_from),
        int(month.issued),
        int(month.redeemed),
        stamp(booked),
        sum(outstanding.values()),
        outstanding,
        [
            MoneyValue(c.currency, c.consideration, c.deferred_revenue, c.revenue)
            for c in report.currencies
        ],
        rate.rate,
        rate.method,
        Decimal(1) - rate.rate,
    )


def tables(answer: Overview) -> dict[str, tuple[list[str], list[list]]]:
    """The figures as (figure, value, unit) rows, and the money per currency."""
    figures = [
        ["active_members", answer.active_members, f"members, activity since {answer.active_from}"],
        ["points_issued_this_month", answer.points_issued_this_month, "points"],
        ["points_redeemed_this_month", answer.points_redeemed_this_month, "points"],
        ["points_outstanding", answer.points_outstanding, "points"],
        *(
            [f"points_{name}", points, "points"]
            for name, points in answer.points_outstanding_by_account.items()
        ),
        ["expected_redemption_rate", answer.expected_redemption_rate, answer.rate_method],
        ["breakage_rate", answer.breakage_rate, "1 - expected_redemption_rate"],
    ]
    money = [
        [m.currency, m.consideration, m.deferred_revenue, m.revenue_this_month]
        for m in answer.money
    ]
    return {
        "overview": (["figure", "value", "unit"], figures),
        "money": (["currency", "consideration", "deferred_revenue", "revenue_this_month"], money),
    }
