"""Who stopped coming, and how many stay: lost members, the monthly churn
rate and the cohort retention table.

- **Lost members**: members (still enrolled, not closed) with activity in a
  reference window whose last activity is more than `inactive_days` (90)
  before `as_of` (now). By default the window is the 365 days before that
  cut-off. Each with the last activity, the partners they used to buy at in
  the window (most visits first), their visits and spend there, their
  available balance now and the points of theirs expiring within 90 days of
  `as_of` (a reason to come back). Highest spend first, paged.
- **Churn**: a member is *alive* at an instant when their last activity
  before it is at most `inactive_days` old, and *churns* when that
  inactivity reaches `inactive_days` (at last activity + `inactive_days`,
  with no activity in between). The churn rate of a month = members alive
  at its first instant who churn during it / members alive at its first
  instant. A member who comes back later is alive again from that activity.
- **Cohorts**: a member's cohort is the month they joined, the earlier of
  enrolment and first activity (members enrolled by a migration, or with
  purchases reported back-dated, joined when they first bought). The cell
  (cohort, k) is the share of the cohort with activity in the k-th month
  after the cohort's month (k = 0: the month itself); months from the
  `as_of` month on are not over and shown as none.

All in purchase time, UTC months (insights/activity.py defines activity)."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from finance.errors import InvalidPeriod
from finance.period import Period, stamp
from insights.activity import ACTIVITY, with_
from insights.reading import (
    DEFAULT_WINDOW,
    add_months,
    month_label,
    month_start,
    share,
)

DEFAULT_INACTIVE_DAYS = 90
EXPIRING_WITHIN = timedelta(days=90)
DEFAULT_MONTHS = 12
MAX_MONTHS = 24

# -- lost members --------------------------------------------------------------


class LostMember(msgspec.Struct, frozen=True):
    member_id: str
    last_activity_at: datetime
    days_inactive: int
    partners: list[str]  # most visits in the reference window first
    purchases: int  # in the reference window
    spend: int  # in the reference window, minor units of the currency
    available: int  # now
    expiring_within_90_days: int  # of as_of, from the member's lots now


class LostMembers(msgspec.Struct, frozen=True):
    as_of: str
    inactive_days: int
    inactive_since: str  # as_of - inactive_days: no activity from then on
    reference_from: str
    reference_to: str
    period_time: str
    currency: str
    reference_members: int  # active in the reference window (enrolled, not closed)
    lost: int
    lost_share: Decimal | None
    limit: int
    offset: int
    members: list[LostMember]


LOST = (
    with_(ACTIVITY)
    + """,
reference AS (
    SELECT member_id, partner_id, count(*) AS purchases, sum(spend)::bigint AS spend
    FROM counted WHERE at >= :ref_start AND at < :ref_end GROUP BY member_id, partner_id),
last AS (SELECT member_id, max(at) AS last_at FROM counted GROUP BY member_id),
found AS MATERIALIZED (
    SELECT r.member_id, l.last_at, sum(r.purchases)::bigint AS purchases,
           sum(r.spend)::bigint AS spend,
           array_agg(r.partner_id ORDER BY r.purchases DESC, r.partner_id) AS partners
    FROM reference r JOIN last l USING (member_id) JOIN members m ON m.id = r.member_id
    WHERE m.status = 'active'
    GROUP BY r.member_id, l.last_at),
lost AS MATERIALIZED (SELECT * FROM found WHERE last_at < :cutoff)
SELECT s.reference_members, s.lost, page.*
FROM (SELECT (SELECT count(*) FROM found) AS reference_members,
             (SELECT count(*) FROM lost) AS lost) s
LEFT JOIN LATERAL (
    SELECT lost.*,
      (SELECT coalesce(sum(balance), 0)::bigint FROM balances
       WHERE account = 'member:' || lost.member_id || '\\:available' AND asset = 'PTS')
        AS available,
      (SELECT coalesce(sum(remaining), 0)::bigint FROM lots
       WHERE member_id = lost.member_id AND remaining > 0 AND expires_at >= :as_of
         AND expires_at < :expiring_before) AS expiring
    FROM lost ORDER BY spend DESC, last_at DESC, member_id LIMIT :limit OFFSET :offset
) page ON true"""
)


def reference_window(
    start: str | datetime | None,
    end: str | datetime | None,
    as_of: datetime,
    inactive_days: int,
) -> Period:
    """The reference window: given, or the 365 days before the cut-off; it
    may not end after `as_of`."""
    from insights.reading import window

    cutoff = as_of - timedelta(days=inactive_days)
    if end is None and start is None:
        return Period(cutoff - DEFAULT_WINDOW, cutoff)
    period = window(start, end, cutoff)
    if period.end > as_of:
        raise InvalidPeriod("to", f"the reference window ends by as_of ({stamp(as_of)})")
    return period


async def lost_members(
    conn: AsyncConnection,
    reference: Period,
    as_of: datetime,
    inactive_days: int,
    currency: str,
    limit: int = 100,
    offset: int = 0,
) -> LostMembers:
    cutoff = as_of - timedelta(days=inactive_days)
    rows = (
        await conn.execute(
            text(LOST),
            {
                "start": reference.start,
                "end": as_of,
                "ref_start": reference.start,
                "ref_end": reference.end,
                "cutoff": cutoff,
                "as_of": as_of,
                "expiring_before": as_of + EXPIRING_WITHIN,
                "currency": currency,
                "limit": limit,
                "offset": offset,
            },
        )
    ).all()
    members = [
        LostMember(
            r.member_id,
            r.last_at,
            (as_of - r.last_at).days,
            list(r.partners),
            int(r.purchases),
            int(r.spend),
            int(r.available),
            int(r.expiring),
        )
        for r in rows
        if r.member_id is not None
    ]
    reference_members, lost = int(rows[0].reference_members), int(rows[0].lost)
    return LostMembers(
        stamp(as_of),
        inactive_days,
        stamp(cutoff),
        stamp(reference.start),
        stamp(reference.end),
        "purchase time",
        currency,
        reference_members,
        lost,
        share(lost, reference_members),
        limit,
        offset,
        members,
    )


# -- churn ---------------------------------------------------------------------------


class ChurnMonth(msgspec.Struct, frozen=True):
    month: str
    alive_at_start: int
    churned: int
    churn_rate: Decimal | None
    active_in_month: int
    complete: bool  # the month ended before as_of


class Churn(msgspec.Struct, frozen=True):
    as_of: str
    inactive_days: int
    definition: str
    months: list[ChurnMonth]


CHURN_DEFINITION = (
    "alive at an instant: last activity at most inactive_days before it; churned when "
    "that inactivity reaches inactive_days; monthly rate = alive at the month's start "
    "and churned during it / alive at the month's start"
)


def month_range(
    start: str | datetime | None, end: str | datetime | None, as_of: datetime
) -> tuple[datetime, datetime]:
    """The months [first, end) a table covers: given as instants (each taken
    to its month's first day; `to` excluded), or the 12 months before the
    `as_of` month; at most 24."""
    from finance.period import parse_instant

    last = month_start(parse_instant(end, "to")) if end is not None else month_start(as_of)
    first = month_start(parse_instant(start, "from")) if start is not None else None
    if first is None:
        first = add_months(last, -DEFAULT_MONTHS)
    if not first < last:
        raise InvalidPeriod("to", "must be at least a month after from")
    if add_months(first, MAX_MONTHS) < last:
        raise InvalidPeriod("to", f"at most {MAX_MONTHS} months")
    return first, last


# -- cohorts -------------------------------------------------------------------------


def month_index(moment: datetime) -> int:
    return moment.year * 12 + moment.month - 1


@dataclass(frozen=True)
class CohortCounts:
    """Cohort month index -> members; (cohort, k) -> members active k months on."""

    sizes: dict[int, int]
    active: dict[tuple[int, int], int]


def cohort_counts(members: Iterable[tuple[int, Iterable[int]]]) -> CohortCounts:
    """The counts from plain data: each member's joining month index and the
    month indexes with activity (the reference the SQL is tested against)."""
    sizes: dict[int, int] = {}
    active: dict[tuple[int, int], int] = {}
    for joined, months in members:
        sizes[joined] = sizes.get(joined, 0) + 1
        for month in set(months):
            if month >= joined:
                key = (joined, month - joined)
                active[key] = active.get(key, 0) + 1
    return CohortCounts(sizes, active)


class CohortRow(msgspec.Struct, frozen=True):
    cohort: str
    members: int
    retention: list[Decimal | None]  # k = 0, 1, ...: share active; None: not over yet
    active: list[int | None]


class Retention(msgspec.Struct, frozen=True):
    as_of: str
    months_since: int
    definition: str
    cohorts: list[CohortRow]


COHORT_DEFINITION = (
    "cohort: the month a member joined (the earlier of enrolment and first activity); "
    "cell k: share of the cohort active in the k-th month after it; months not over "
    "at as_of: none"
)


def retention_table(
    counts: CohortCounts, cohorts: Sequence[int], months_since: int, current: int
) -> list[CohortRow]:
    """Rows for the cohorts (month indexes), k = 0..months_since; cells of
    the month `current` (not over) and later are None."""
    rows = []
    for cohort in cohorts:
        size = counts.sizes.get(cohort, 0)
        active: list[int | None] = []
        shares: list[Decimal | None] = []
        for k in range(months_since + 1):
            if cohort + k >= current:
                active.append(None)
                shares.append(None)
                continue
            n = counts.active.get((cohort, k), 0)
            active.append(n)
            shares.append(share(n, size))
        label = f"{cohort // 12:04d}-{cohort % 12 + 1:02d}"
        rows.append(CohortRow(label, size, shares, active))
    return rows


def lost_tables(answer: LostMembers) -> dict[str, tuple[list[str], list[list]]]:
    columns = [
        "member",
        "last_activity_at",
        "days_inactive",
        "partners",
        "purchases",
        "spend",
        "available",
        "expiring_within_90_days",
    ]
    rows = [
        [
            m.member_id,
            m.last_activity_at,
            m.days_inactive,
            " ".join(m.partners),
            m.purchases,
            m.spend,
            m.available,
            m.expiring_within_90_days,
        ]
        for m in answer.members
    ]
    return {"lost": (columns, rows)}


def churn_tables(answer: Churn) -> dict[str, tuple[list[str], list[list]]]:
    columns = ["month", "alive_at_start", "churned", "churn_rate", "active_in_month", "complete"]
    rows = [
        [m.month, m.alive_at_start, m.churned, m.churn_rate, m.active_in_month, m.complete]
        for m in answer.months
    ]
    return {"churn": (columns, rows)}


def retention_tables(answer: Retention) -> dict[str, tuple[list[str], list[list]]]:
    columns = ["cohort", "members"] + [f"m{k}" for k in range(answer.months_since + 1)]
    rows = [[c.cohort, c.members, *c.retention] for c in answer.cohorts]
    return {"retention": (columns, rows)}


class RetentionFigures(msgspec.Struct, frozen=True):
    """The monthly churn and the cohort table over the same months."""

    months_from: str
    months_to: str
    churn: Churn
    cohorts: Retention


# Churn and cohorts from one reading of the activity (insights/activity.py),
# sorted once by member and time: each activity's next and previous one.
FIGURES = (
    with_(ACTIVITY)
    + """,
-- Two activities at one instant need no DISTINCT: the first's next is the
-- second, so it keeps nobody alive and churns nobody. Members are grouped in
-- byte order ("C"): any order groups them, and it sorts fastest.
gaps AS MATERIALIZED (
    SELECT member_id, at, date_trunc('month', at) AS month, lead(at) OVER w AS next_at,
           lag(at) OVER w AS prev_at
    FROM counted WINDOW w AS (PARTITION BY member_id COLLATE "C" ORDER BY at)),
-- The month starts each activity keeps its member alive at: after it, up to
-- inactive_days later or the next activity (which covers the rest), so each
-- (member, month) comes from one activity only: [since, until). Counted as
-- +1 at since and -1 at until, the running total at a month start is who is
-- alive then. Activities before :churn_start keep nobody alive at the months
-- shown.
spans AS (
    SELECT month + interval '1 month' AS since,
           date_trunc('month', least(at + make_interval(days => :days), next_at))
             + interval '1 month' AS until
    FROM gaps WHERE at >= :churn_start),
changes AS MATERIALIZED (
    SELECT c.month, sum(c.n) AS n
    FROM spans, LATERAL (VALUES (since, 1), (until, -1)) AS c(month, n)
    WHERE until > since GROUP BY 1),
alive AS (
    SELECT s.month, (SELECT coalesce(sum(n), 0) FROM changes c WHERE c.month <= s.month)
             AS members
    FROM generate_series(CAST(:first AS timestamptz), CAST(:last_month AS timestamptz),
                         interval '1 month') AS s(month)),
churned AS (
    SELECT date_trunc('month', at + make_interval(days => :days)) AS month, count(*) AS members
    FROM gaps
    WHERE at >= :churn_start
      AND (next_at IS NULL OR next_at >= at + make_interval(days => :days))
      AND at + make_interval(days => :days) < :end
      AND at < date_trunc('month', at + make_interval(days => :days))
    GROUP BY 1),
-- Each member's months with activity: the month's first activity.
firsts AS MATERIALIZED (
    SELECT member_id, month FROM gaps WHERE prev_at IS NULL OR prev_at < month),
active AS (SELECT month, count(*) AS members FROM firsts GROUP BY 1),
joined AS (
    SELECT m.id AS member_id, date_trunc('month', least(m.enrolled_at, g.at)) AS cohort
    FROM members m LEFT JOIN gaps g ON g.member_id = m.id AND g.prev_at IS NULL
    WHERE m.status <> 'merged'),
chosen AS MATERIALIZED (SELECT * FROM joined WHERE cohort >= :first AND cohort < :last)
SELECT 'churn' AS row, s.month, 0 AS k, coalesce(alive.members, 0) AS members,
       coalesce(churned.members, 0) AS churned, coalesce(active.members, 0) AS active
FROM generate_series(CAST(:first AS timestamptz), CAST(:last_month AS timestamptz),
                     interval '1 month') AS s(month)
LEFT JOIN alive ON alive.month = s.month
LEFT JOIN churned ON churned.month = s.month
LEFT JOIN active ON active.month = s.month
UNION ALL
SELECT 'size', cohort, 0, count(*), NULL, NULL FROM chosen GROUP BY cohort
UNION ALL
SELECT 'active', j.cohort,
       ((extract(year FROM f.month) * 12 + extract(month FROM f.month))
        - (extract(year FROM j.cohort) * 12 + extract(month FROM j.cohort)))::int,
       count(*), NULL, NULL
FROM chosen j JOIN firsts f USING (member_id) WHERE f.month >= j.cohort
GROUP BY 2, 3"""
)


async def retention_figures(
    conn: AsyncConnection,
    first: datetime,
    end: datetime,
    as_of: datetime,
    inactive_days: int = DEFAULT_INACTIVE_DAYS,
    months_since: int = DEFAULT_MONTHS,
) -> RetentionFigures:
    rows = await conn.execute(
        text(FIGURES),
        {
            "start": datetime(2000, 1, 1, tzinfo=first.tzinfo),
            "end": as_of,
            "currency": "",
            "days": inactive_days,
            "churn_start": first - timedelta(days=inactive_days + 1),
            "first": first,
            "last": end,
            "last_month": add_months(end, -1),
        },
    )
    months: list[ChurnMonth] = []
    sizes: dict[int, int] = {}
    active: dict[tuple[int, int], int] = {}
    for r in rows:
        if r.row == "churn":
            months.append(
                ChurnMonth(
                    month_label(r.month),
                    int(r.members),
                    int(r.churned),
                    share(int(r.churned), int(r.members)),
                    int(r.active),
                    add_months(r.month, 1) <= as_of,
                )
            )
        elif r.row == "size":
            sizes[month_index(r.month)] = int(r.members)
        elif r.k <= months_since:
            active[(month_index(r.month), int(r.k))] = int(r.members)
    cohorts = list(range(month_index(first), month_index(end)))
    table = retention_table(
        CohortCounts(sizes, active), cohorts, months_since, month_index(month_start(as_of))
    )
    return RetentionFigures(
        month_label(first),
        month_label(end),
        Churn(stamp(as_of), inactive_days, CHURN_DEFINITION, sorted(months, key=lambda m: m.month)),
        Retention(stamp(as_of), months_since, COHORT_DEFINITION, table),
    )


def figures_tables(answer: RetentionFigures) -> dict[str, tuple[list[str], list[list]]]:
    return {**churn_tables(answer.churn), **retention_tables(answer.cohorts)}
