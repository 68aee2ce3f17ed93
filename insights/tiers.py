"""Status tiers and the expiry outlook.

- **Distribution now**: enrolled (not closed) members per tier, from
  `member_tiers` (a member without a row holds the lowest tier, the
  programme's base). A status past its validity that the requalification job
  has not yet lowered still counts as held.
- **Movement**: per month of a window, the tier changes (`tier_changes`) up
  (to a higher rank; from no tier counts as from the base) and down, by
  their `changed_at`.
- **Expiry outlook**: the points left in lots (`lots.remaining`) by the
  month they expire, for the month of `as_of` and the 11 after it, with
  `overdue` (expired, not yet taken by the expiry job) apart; `protected`
  is what members hold in an expiry-protected tier valid beyond the lot's
  expiry (the expiry job leaves those points)."""

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from finance.period import Period, stamp
from insights.reading import add_months, month_label, month_start

OUTLOOK_MONTHS = 12


class TierCount(msgspec.Struct, frozen=True):
    tier: str
    name: str | None
    rank: int | None
    members: int


class TierMonth(msgspec.Struct, frozen=True):
    month: str
    upgrades: int
    downgrades: int


class Tiers(msgspec.Struct, frozen=True):
    as_of: str
    period_from: str
    period_to: str
    members: int
    distribution: list[TierCount]  # lowest rank first
    movement: list[TierMonth]  # months of the window with a change


DISTRIBUTION = """
WITH lowest AS (
    SELECT code FROM tier_definitions WHERE retired_at IS NULL AND qp_threshold = 0
    ORDER BY rank LIMIT 1),
held AS (
    SELECT coalesce(t.tier_code, (SELECT code FROM lowest), 'base') AS tier, count(*) AS members
    FROM members m LEFT JOIN member_tiers t ON t.member_id = m.id
    WHERE m.status = 'active' GROUP BY 1)
SELECT coalesce(h.tier, d.code) AS tier, d.name, d.rank, coalesce(h.members, 0) AS members
FROM held h FULL JOIN (SELECT * FROM tier_definitions WHERE retired_at IS NULL) d
  ON d.code = h.tier
ORDER BY d.rank NULLS FIRST, 1"""

MOVEMENT = """
SELECT date_trunc('month', c.changed_at) AS month,
       count(*) FILTER (WHERE coalesce(t.rank, -1) > coalesce(f.rank, -1)) AS up,
       count(*) FILTER (WHERE coalesce(t.rank, -1) < coalesce(f.rank, -1)) AS down
FROM tier_changes c
LEFT JOIN tier_definitions f ON f.code = c.from_tier
LEFT JOIN tier_definitions t ON t.code = c.to_tier
WHERE c.changed_at >= :start AND c.changed_at < :end
GROUP BY 1 ORDER BY 1"""


async def tiers(conn: AsyncConnection, period: Period, as_of: datetime) -> Tiers:
    counts = [
        TierCount(r.tier, r.name, r.rank, int(r.members))
        for r in await conn.execute(text(DISTRIBUTION))
    ]
    movement = [
        TierMonth(month_label(r.month), int(r.up), int(r.down))
        for r in await conn.execute(text(MOVEMENT), {"start": period.start, "end": period.end})
    ]
    return Tiers(
        stamp(as_of),
        stamp(period.start),
        stamp(period.end),
        sum(c.members for c in counts),
        counts,
        movement,
    )


class ExpiryMonth(msgspec.Struct, frozen=True):
    month: str  # YYYY-MM, or "overdue"
    points: int
    protected: int  # of them, held in an expiry-protected tier valid beyond
    members: int


class ExpiryOutlook(msgspec.Struct, frozen=True):
    as_of: str
    months: list[ExpiryMonth]  # overdue first, then the 12 months from as_of's


OUTLOOK = """
SELECT CASE WHEN l.expires_at < :as_of THEN NULL ELSE date_trunc('month', l.expires_at) END
         AS month,
       sum(l.remaining)::bigint AS points,
       coalesce(sum(l.remaining) FILTER (WHERE d.expiry_protected
           AND (t.valid_until IS NULL OR t.valid_until > l.expires_at)), 0)::bigint AS protected,
       count(DISTINCT l.member_id) AS members
FROM lots l
LEFT JOIN member_tiers t ON t.member_id = l.member_id
LEFT JOIN tier_definitions d ON d.code = t.tier_code
WHERE l.remaining > 0 AND l.expires_at IS NOT NULL AND l.expires_at < :horizon
GROUP BY 1"""


async def expiry_outlook(conn: AsyncConnection, as_of: datetime) -> ExpiryOutlook:
    first = month_start(as_of)
    rows = {
        r.month: r
        for r in await conn.execute(
            text(OUTLOOK), {"as_of": as_of, "horizon": add_months(first, OUTLOOK_MONTHS)}
        )
    }
    months = []
    for key, label in [(None, "overdue")] + [
        (add_months(first, k), month_label(add_months(first, k))) for k in range(OUTLOOK_MONTHS)
    ]:
        r = rows.get(key)
        months.append(
            ExpiryMonth(
                label,
                int(r.points) if r else 0,
                int(r.protected) if r else 0,
                int(r.members) if r else 0,
            )
        )
    return ExpiryOutlook(stamp(as_of), months)


def tables(answer: Tiers) -> dict[str, tuple[list[str], list[list]]]:
    return {
        "tiers": (
            ["tier", "name", "rank", "members"],
            [[c.tier, c.name, c.rank, c.members] for c in answer.distribution],
        ),
        "movement": (
            ["month", "upgrades", "downgrades"],
            [[m.month, m.upgrades, m.downgrades] for m in answer.movement],
        ),
    }


def outlook_tables(answer: ExpiryOutlook) -> dict[str, tuple[list[str], list[list]]]:
    return {
        "expiry": (
            ["month", "points", "protected", "members"],
            [[m.month, m.points, m.protected, m.members] for m in answer.months],
        )
    }
