"""Pareto: how concentrated the programme's value is. For spend, points
issued and redemptions in a window, programme-wide and per partner: the
share held by the top 1, 5, 10 and 20 % of members, the Lorenz curve and the
Gini coefficient.

Definitions. The population of a figure is the members with a positive total
of it in the window (spenders for spend, earners for points issued,
redeemers for redemptions); members are ranked by that total, highest first
(ties by member id). The top p % are the first ceil(n * p / 100) of the n
members (at least one). The Lorenz curve, members poorest first, has a point
for the bottom m_k = floor(n * k / K) members, k = 0..K (`points` = K): x =
m_k / n, y = their share of the total; it runs from (0, 0) to (1, 1). Gini
= sum over members ranked poorest first (i = 1..n) of (2i - n - 1) * value,
divided by n * total: 0 when all hold the same, (n - 1) / n when one member
holds everything.

How. One statement ranks every (figure, scope) with window functions and
returns only the running totals at the positions the shares and the curve
need, with n, the total and the Gini numerator (integers, exact);
`distribution` turns them into shares (fractions, four places, half up).
`summarise` computes the same integers from a plain list of totals: the
reference the SQL is tested against, and what the property tests use."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from finance.period import Period, stamp
from insights.activity import ISSUED, REDEEMED, SPEND, with_
from insights.reading import SHARE_PLACES, require_partner, share

PERCENTS = (1, 5, 10, 20)
DEFAULT_POINTS = 20
METRICS = {  # figure -> unit
    "spend": "minor units of the currency",
    "points_issued": "points",
    "redemptions": "points",
}


@dataclass
class Summary:
    """The exact integers of one distribution: n members with a positive
    total, their total, the Gini numerator, and the running total of the
    top r members (highest first) at the positions needed."""

    members: int = 0
    total: int = 0
    gini_numerator: int = 0
    top_totals: dict[int, int] = field(default_factory=dict)


def top_count(members: int, percent: int) -> int:
    """How many members are the top `percent` % of `members`: ceil(n p / 100)."""
    return (members * percent + 99) // 100


def lorenz_counts(members: int, points: int) -> list[int]:
    """The bottom m_k = floor(n k / K) members of each point k = 0..K."""
    return [members * k // points for k in range(points + 1)]


def needed(members: int, percents: Iterable[int], points: int) -> set[int]:
    """The ranks (highest first) whose running totals make the shares and
    the curve: the top counts, and n - m_k for each Lorenz point."""
    ranks = {top_count(members, p) for p in percents}
    ranks |= {members - m for m in lorenz_counts(members, points)}
    return {r for r in ranks if 0 < r <= members}


def summarise(values: Iterable[int], percents: Iterable[int], points: int) -> Summary:
    """The Summary of plain totals (non-positive ones are no member of it)."""
    ranked = sorted((v for v in values if v > 0), reverse=True)
    n = len(ranked)
    wanted = needed(n, percents, points)
    summary = Summary(members=n, total=sum(ranked))
    running = 0
    for r, value in enumerate(ranked, start=1):
        running += value
        summary.gini_numerator += (n + 1 - 2 * r) * value
        if r in wanted:
            summary.top_totals[r] = running
    return summary


class TopShare(msgspec.Struct, frozen=True):
    percent: int
    members: int
    share: Decimal | None


class LorenzPoint(msgspec.Struct, frozen=True):
    members: Decimal  # x: share of members, poorest first
    value: Decimal  # y: their share of the total


class Distribution(msgspec.Struct, frozen=True):
    metric: str
    unit: str
    partner_id: str | None  # None: programme-wide
    members: int
    total: int
    top: list[TopShare]
    gini: Decimal | None
    lorenz: list[LorenzPoint]


def distribution(
    summary: Summary,
    metric: str,
    partner_id: str | None = None,
    percents: Sequence[int] = PERCENTS,
    points: int = DEFAULT_POINTS,
) -> Distribution:
    n, total = summary.members, summary.total

    def top_total(r: int) -> int:
        return summary.top_totals.get(r, 0) if r > 0 else 0

    top = [TopShare(p, top_count(n, p), share(top_total(top_count(n, p)), total)) for p in percents]
    lorenz = []
    if n:
        for m in lorenz_counts(n, points):
            bottom = total - top_total(n - m)
            lorenz.append(LorenzPoint(share(m, n), share(bottom, total)))
    gini = None
    if n and total:
        gini = (Decimal(summary.gini_numerator) / Decimal(n * total)).quantize(
            SHARE_PLACES, rounding=ROUND_HALF_UP
        )
    return Distribution(metric, METRICS[metric], partner_id, n, total, top, gini, lorenz)


class Pareto(msgspec.Struct, frozen=True):
    period_from: str
    period_to: str
    period_time: str
    currency: str
    partner_id: str | None  # the one partner asked for, else every partner
    lorenz_points: int
    distributions: list[Distribution]  # programme-wide first, then per partner


def _top_predicate(percents: Sequence[int]) -> str:
    # Constants of this module, never input: the ranks ceil(n p / 100).
    return " OR ".join(f"r = (n * {int(p)} + 99) / 100" for p in percents)


# Rank r (highest first) is a Lorenz rank when m = n - r is some
# floor(n k / K): with k0 = ceil(m K / n), exactly when n k0 < (m + 1) K.
LORENZ_PREDICATE = "n * (((n - r) * :k + n - 1) / n) < (n - r + 1) * :k"

STATEMENT = (
    with_(SPEND, ISSUED, REDEEMED)
    + """,
facts AS (
    SELECT 'spend' AS metric, member_id, partner_id, amount AS v FROM spend
    UNION ALL SELECT 'points_issued', member_id, partner_id, points FROM issued
    UNION ALL SELECT 'redemptions', member_id, partner_id, points FROM redeemed),
scoped AS (
    SELECT metric, NULL::text AS partner_id, member_id, sum(v)::bigint AS v
    FROM facts WHERE CAST(:partner AS text) IS NULL GROUP BY metric, member_id
    UNION ALL
    SELECT metric, partner_id, member_id, sum(v)::bigint FROM facts
    WHERE CAST(:partner AS text) IS NULL OR partner_id = :partner
    GROUP BY metric, partner_id, member_id),
ranked AS MATERIALIZED (
    SELECT metric, partner_id, v, row_number() OVER w AS r, count(*) OVER s AS n,
           sum(v) OVER w AS running
    FROM scoped WHERE v > 0
    WINDOW s AS (PARTITION BY metric, partner_id COLLATE "C"),
           w AS (s ORDER BY v DESC, member_id COLLATE "C" ROWS UNBOUNDED PRECEDING))
SELECT metric, partner_id, 'summary' AS row, max(n) AS n, sum(v)::bigint AS value,
       sum((n + 1 - 2 * r) * v)::numeric AS gini_numerator
FROM ranked GROUP BY metric, partner_id
UNION ALL
SELECT metric, partner_id, 'rank', r, running::bigint, NULL FROM ranked
WHERE {top} OR {lorenz}
"""
)


async def summaries(
    conn: AsyncConnection, period: Period, currency: str, partner_id: str | None, points: int
) -> dict[tuple[str, str | None], Summary]:
    """(figure, partner or None) -> Summary, one statement."""
    statement = STATEMENT.replace("{top}", _top_predicate(PERCENTS)).replace(
        "{lorenz}", LORENZ_PREDICATE
    )
    rows = await conn.execute(
        text(statement),
        {
            "start": period.start,
            "end": period.end,
            "currency": currency,
            "partner": partner_id,
            "k": points,
        },
    )
    found: dict[tuple[str, str | None], Summary] = {}
    for row in rows:
        summary = found.setdefault((row.metric, row.partner_id), Summary())
        if row.row == "summary":
            summary.members, summary.total = int(row.n), int(row.value)
            summary.gini_numerator = int(row.gini_numerator)
        else:
            summary.top_totals[int(row.n)] = int(row.value)
    return found


async def pareto(
    conn: AsyncConnection,
    period: Period,
    currency: str,
    partner_id: str | None = None,
    points: int = DEFAULT_POINTS,
) -> Pareto:
    await require_partner(conn, partner_id)
    found = await summaries(conn, period, currency, partner_id, points)
    scopes: list[str | None] = [] if partner_id else [None]
    scopes += sorted({p for _, p in found if p is not None} | ({partner_id} - {None}))
    distributions = [
        distribution(found.get((metric, scope), Summary()), metric, scope, PERCENTS, points)
        for scope in scopes
        for metric in METRICS
    ]
    return Pareto(
        stamp(period.start),
        stamp(period.end),
        "purchase time",
        currency,
        partner_id,
        points,
        distributions,
    )


def tables(answer: Pareto) -> dict[str, tuple[list[str], list[list]]]:
    """The answer as tables (name -> columns, rows) for the terminal and CSV."""
    columns = ["partner", "metric", "members", "total"]
    columns += [f"top_{p}pct" for p in PERCENTS] + ["gini"]
    rows = [
        [d.partner_id or "(programme)", d.metric, d.members, d.total]
        + [t.share for t in d.top]
        + [d.gini]
        for d in answer.distributions
    ]
    lorenz = [
        [d.partner_id or "(programme)", d.metric, point.members, point.value]
        for d in answer.distributions
        for point in d.lorenz
    ]
    return {
        "pareto": (columns, rows),
        "lorenz": (["partner", "metric", "members_share", "value_share"], lorenz),
    }
