"""RFM: recency, frequency and monetary scores 1-5 per member, the segments
they make, and one member's scores (the staff member view).

Scores. Over the members with activity in the window (insights/activity.py),
each measure is cut into quintiles by `ntile(5)` in SQL, lowest first, so 5
is best: R by the last activity (most recent: 5), F by the number of
activities, M by spend (net of returns, in the window's currency). `ntile`
makes buckets of equal size within one (the first n mod 5 get one more);
members with equal values are ordered by member id, so a tie may straddle
two scores.

Segments (first match wins; `segment` is the mapping):

| segment | scores |
| --- | --- |
| champions | R >= 4, F >= 4, M >= 4 |
| loyal | R >= 3, F >= 3 |
| new | R >= 4, F = 1 |
| potential_loyalists | R >= 3 (F <= 2) |
| cannot_lose | R <= 2, F >= 4, M >= 4 |
| at_risk | R <= 2, F >= 3 |
| hibernating | R = 2 (F <= 2) |
| lost | R = 1 (F <= 2) |"""

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from finance.period import Period, stamp
from insights.activity import ACTIVITY, with_
from insights.reading import require_member, share

SEGMENTS = (
    "champions",
    "loyal",
    "potential_loyalists",
    "new",
    "cannot_lose",
    "at_risk",
    "hibernating",
    "lost",
)
METHOD = (
    "R, F, M: quintiles (ntile(5), 5 best) of the last activity, the number of activities "
    "and the spend in the window, over the members active in it; segments by the "
    "documented mapping of the scores (README, Insights)"
)


def segment(r: int, f: int, m: int) -> str:
    """The segment of a member's scores (the table in the module's docstring)."""
    if r >= 4 and f >= 4 and m >= 4:
        return "champions"
    if r >= 3 and f >= 3:
        return "loyal"
    if r >= 4 and f == 1:
        return "new"
    if r >= 3:
        return "potential_loyalists"
    if f >= 4 and m >= 4:
        return "cannot_lose"
    if f >= 3:
        return "at_risk"
    return "hibernating" if r == 2 else "lost"


def quintiles(values: Sequence[tuple[object, object]]) -> dict[object, int]:
    """What `ntile(5) OVER (ORDER BY value, key)` gives each (key, value):
    the reference for the SQL and for the property tests."""
    ordered = sorted(values, key=lambda kv: (kv[1], kv[0]))
    n = len(ordered)
    size, extra = divmod(n, 5)
    scores: dict[object, int] = {}
    position = 0
    for bucket in range(1, 6):
        for _ in range(size + (1 if bucket <= extra else 0)):
            scores[ordered[position][0]] = bucket
            position += 1
    return scores


class SegmentRow(msgspec.Struct, frozen=True):
    segment: str
    members: int
    member_share: Decimal | None
    purchases: int
    spend: int
    spend_share: Decimal | None


class Cell(msgspec.Struct, frozen=True):
    r: int
    f: int
    m: int
    segment: str
    members: int
    spend: int


class Rfm(msgspec.Struct, frozen=True):
    period_from: str
    period_to: str
    period_time: str
    currency: str
    members: int
    spend: int
    method: str
    segments: list[SegmentRow]
    cells: list[Cell]  # every (R, F, M) held by a member


SCORED = (
    with_(ACTIVITY)
    + """,
per AS (
    SELECT member_id, max(at) AS last_at, count(*) AS frequency,
           sum(spend)::bigint AS monetary
    FROM counted GROUP BY member_id),
scored AS (
    SELECT per.*, ntile(5) OVER (ORDER BY last_at, member_id) AS r,
           ntile(5) OVER (ORDER BY frequency, member_id) AS f,
           ntile(5) OVER (ORDER BY monetary, member_id) AS m
    FROM per)"""
)

CELLS = (
    SCORED
    + """
SELECT r, f, m, count(*) AS members, sum(frequency)::bigint AS purchases,
       sum(monetary)::bigint AS spend
FROM scored GROUP BY r, f, m ORDER BY r, f, m"""
)


def _window(period: Period, currency: str) -> dict:
    return {"start": period.start, "end": period.end, "currency": currency}


async def rfm(conn: AsyncConnection, period: Period, currency: str) -> Rfm:
    rows = (await conn.execute(text(CELLS), _window(period, currency))).all()
    cells = [
        Cell(r.r, r.f, r.m, segment(r.r, r.f, r.m), int(r.members), int(r.spend)) for r in rows
    ]
    members = sum(c.members for c in cells)
    spend = sum(c.spend for c in cells)
    totals = {name: [0, 0, 0] for name in SEGMENTS}
    for r in rows:
        found = totals[segment(r.r, r.f, r.m)]
        found[0] += int(r.members)
        found[1] += int(r.purchases)
        found[2] += int(r.spend)
    segments = [
        SegmentRow(name, n, share(n, members), purchases, value, share(value, spend))
        for name, (n, purchases, value) in totals.items()
    ]
    return Rfm(
        stamp(period.start),
        stamp(period.end),
        "purchase time",
        currency,
        members,
        spend,
        METHOD,
        segments,
        cells,
    )


# -- one member ----------------------------------------------------------------------


class Scores(msgspec.Struct, frozen=True):
    r: int
    f: int
    m: int
    segment: str
    last_activity_at: datetime
    recency_days: int
    frequency: int
    monetary: int


class PartnerUse(msgspec.Struct, frozen=True):
    partner_id: str
    purchases: int
    spend: int
    last_at: datetime


class MemberInsight(msgspec.Struct, frozen=True):
    member_id: str
    status: str
    enrolled_at: datetime
    period_from: str
    period_to: str
    currency: str
    rfm: Scores | None  # None: no activity in the window
    partners: list[PartnerUse]  # where the member was active in the window
    last_activity_at: datetime | None  # ever, before the window's end
    tier: str | None
    available: int
    pending: int
    expiring_within_90_days: int  # from the window's end


MEMBER_SCORES = SCORED + "\nSELECT * FROM scored WHERE member_id = :member"

MEMBER_PARTNERS = (
    with_(ACTIVITY)
    + """
SELECT partner_id, count(*) AS purchases, sum(spend)::bigint AS spend, max(at) AS last_at
FROM counted WHERE member_id = :member GROUP BY partner_id
ORDER BY count(*) DESC, partner_id"""
)

MEMBER_FACTS = """
SELECT m.status, m.enrolled_at, t.tier_code,
  (SELECT coalesce(sum(balance), 0)::bigint FROM balances
   WHERE account = 'member:' || m.id || '\\:available' AND asset = 'PTS') AS available,
  (SELECT coalesce(sum(balance), 0)::bigint FROM balances
   WHERE account = 'member:' || m.id || '\\:pending' AND asset = 'PTS') AS pending,
  (SELECT coalesce(sum(remaining), 0)::bigint FROM lots
   WHERE member_id = m.id AND remaining > 0 AND expires_at >= :end
     AND expires_at < CAST(:end AS timestamptz) + interval '90 days') AS expiring,
  (SELECT max(at) FROM (
      SELECT max(occurred_at) AS at FROM partner_purchases
      WHERE member_id = m.id AND occurred_at < :end
      UNION ALL SELECT max(effective_at) FROM journal_entries
      WHERE kind = 'earn' AND member_id = m.id AND effective_at < :end) AS a) AS last_at
FROM members m LEFT JOIN member_tiers t ON t.member_id = m.id
WHERE m.id = :member"""


async def member_insight(
    conn: AsyncConnection, member_id: str, period: Period, currency: str
) -> MemberInsight:
    await require_member(conn, member_id)
    params = {**_window(period, currency), "member": member_id}
    facts = (await conn.execute(text(MEMBER_FACTS), params)).one()
    scored = (await conn.execute(text(MEMBER_SCORES), params)).first()
    partners = (await conn.execute(text(MEMBER_PARTNERS), params)).all()
    scores = None
    if scored is not None:
        scores = Scores(
            scored.r,
            scored.f,
            scored.m,
            segment(scored.r, scored.f, scored.m),
            scored.last_at,
            (period.end - scored.last_at).days,
            int(scored.frequency),
            int(scored.monetary),
        )
    return MemberInsight(
        member_id,
        facts.status,
        facts.enrolled_at,
        stamp(period.start),
        stamp(period.end),
        currency,
        scores,
        [PartnerUse(p.partner_id, int(p.purchases), int(p.spend), p.last_at) for p in partners],
        facts.last_at,
        facts.tier_code,
        int(facts.available),
        int(facts.pending),
        int(facts.expiring),
    )


def tables(answer: Rfm) -> dict[str, tuple[list[str], list[list]]]:
    segments = [
        [s.segment, s.members, s.member_share, s.purchases, s.spend, s.spend_share]
        for s in answer.segments
    ]
    cells = [[c.r, c.f, c.m, c.segment, c.members, c.spend] for c in answer.cells]
    return {
        "segments": (
            ["segment", "members", "member_share", "purchases", "spend", "spend_share"],
            segments,
        ),
        "cells": (["r", "f", "m", "segment", "members", "spend"], cells),
    }


def member_tables(answer: MemberInsight) -> dict[str, tuple[list[str], list[list]]]:
    s = answer.rfm
    facts = [
        ["member", answer.member_id],
        ["status", answer.status],
        ["segment", s.segment if s else None],
        ["scores (r f m)", f"{s.r} {s.f} {s.m}" if s else None],
        ["recency_days", s.recency_days if s else None],
        ["frequency", s.frequency if s else None],
        ["monetary", s.monetary if s else None],
        ["last_activity_at", answer.last_activity_at],
        ["tier", answer.tier],
        ["available", answer.available],
        ["pending", answer.pending],
        ["expiring_within_90_days", answer.expiring_within_90_days],
    ]
    partners = [[p.partner_id, p.purchases, p.spend, p.last_at] for p in answer.partners]
    return {
        "member": (["field", "value"], facts),
        "partners": (["partner", "purchases", "spend", "last_at"], partners),
    }
