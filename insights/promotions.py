"""Promotion and coupon performance: for each promotion (and coupon) whose
window overlaps the period, the members it reached, the points it paid per
funder, its budget and what of it is used, and the uplift: the
participants' spend in the offer's window against the same members' spend in
an equally long window just before it.

Method (also in every answer, `method`):
- participants: members whose earnings carry a line of the offer (the
  breakdown's `promotion` or `coupon` line naming its code), in its window
  by purchase time;
- points paid: the sum of those lines per funder, as earned (gross; a
  budget's `budget_used` is net of returns);
- spend: purchases net of returns in the currency asked, at the partners the
  offer names (every partner when it names none), of the participants only;
  `during` = [start, end), cut at `as_of` for an offer still running, and
  `before` = the same length just before its start;
- uplift = (during - before) / before, none when `before` is 0. The
  participants are a chosen group (they bought in the window), so this
  measures the change of their spend, not an effect against a control group."""

from datetime import datetime
from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from finance.period import Period, stamp
from insights.reading import share

METHOD = (
    "participants: members with an earning line of the offer in its window; "
    "spend net of returns at the offer's partners (all when none named), in the currency; "
    "during = the offer's window cut at as_of, before = as long just before it; "
    "uplift = (during - before) / before; points paid: the offer's lines as earned (gross)"
)


class OfferPerformance(msgspec.Struct, frozen=True):
    kind: str  # promotion | coupon
    code: str
    name: str
    starts_at: datetime
    ends_at: datetime
    partner_ids: list[str]
    funder: str
    members_reached: int
    points_by_funder: dict[str, int]
    points: int
    budget_points: int | None
    budget_used: int | None
    budget_share: Decimal | None
    during_from: datetime
    during_to: datetime
    before_from: datetime
    spend_during: int
    spend_before: int
    uplift: Decimal | None


class Promotions(msgspec.Struct, frozen=True):
    period_from: str
    period_to: str
    as_of: str
    currency: str
    method: str
    offers: list[OfferPerformance]


STATEMENT = """
WITH offers AS MATERIALIZED (
    SELECT 'promotion' AS kind, code, name, starts_at, ends_at, partner_ids, funder,
           budget_points, budget_used,
           least(ends_at, CAST(:as_of AS timestamptz)) - starts_at AS length
    FROM promotions WHERE starts_at < :end AND ends_at > :start AND starts_at < :as_of
    UNION ALL
    SELECT 'coupon', code, name, valid_from, valid_to, partner_ids, funder, NULL, NULL,
           least(valid_to, CAST(:as_of AS timestamptz)) - valid_from
    FROM coupons WHERE valid_from < :end AND valid_to > :start AND valid_from < :as_of),
lines AS MATERIALIZED (
    SELECT line->>'kind' AS kind, line->>'source' AS code, line->>'funder' AS funder,
           (line->>'amount')::bigint AS points, e.member_id, e.effective_at
    FROM journal_entries e CROSS JOIN LATERAL jsonb_array_elements(e.breakdown) AS line
    WHERE e.kind = 'earn' AND e.member_id IS NOT NULL
      AND e.effective_at >= (SELECT min(starts_at) FROM offers)
      AND e.effective_at < (SELECT max(ends_at) FROM offers)
      AND jsonb_typeof(e.breakdown) = 'array'
      AND line->>'kind' IN ('promotion', 'coupon') AND line->>'asset' = 'PTS'),
paid AS (
    SELECT o.kind, o.code, l.funder, sum(l.points)::bigint AS points
    FROM offers o JOIN lines l ON l.kind = o.kind AND l.code = o.code
     AND l.effective_at >= o.starts_at AND l.effective_at < o.ends_at
    GROUP BY 1, 2, 3),
participants AS MATERIALIZED (
    SELECT DISTINCT o.kind, o.code, l.member_id
    FROM offers o JOIN lines l ON l.kind = o.kind AND l.code = o.code
     AND l.effective_at >= o.starts_at AND l.effective_at < o.ends_at),
spend AS (
    SELECT o.kind, o.code,
           coalesce(sum(pp.total_minor - pp.returned_minor) FILTER (
               WHERE pp.occurred_at >= o.starts_at), 0)::bigint AS during,
           coalesce(sum(pp.total_minor - pp.returned_minor) FILTER (
               WHERE pp.occurred_at < o.starts_at), 0)::bigint AS before
    FROM offers o JOIN participants p ON p.kind = o.kind AND p.code = o.code
    JOIN partner_purchases pp ON pp.member_id = p.member_id AND pp.currency = :currency
     AND (cardinality(o.partner_ids) = 0 OR pp.partner_id = ANY(o.partner_ids))
     AND pp.occurred_at >= o.starts_at - o.length AND pp.occurred_at < o.starts_at + o.length
    GROUP BY 1, 2)
SELECT o.*, (SELECT count(*) FROM participants p WHERE p.kind = o.kind AND p.code = o.code)
         AS reached,
       (SELECT json_object_agg(funder, points) FROM paid
        WHERE paid.kind = o.kind AND paid.code = o.code) AS paid,
       coalesce(s.during, 0) AS during, coalesce(s.before, 0) AS before
FROM offers o LEFT JOIN spend s ON s.kind = o.kind AND s.code = o.code
ORDER BY o.starts_at, o.kind DESC, o.code"""


def uplift(during: int, before: int) -> Decimal | None:
    """(during - before) / before, four places, half up; none without a before."""
    return share(during - before, before)


async def promotions(
    conn: AsyncConnection, period: Period, as_of: datetime, currency: str
) -> Promotions:
    rows = await conn.execute(
        text(STATEMENT),
        {"start": period.start, "end": period.end, "as_of": as_of, "currency": currency},
    )
    offers = []
    for r in rows:
        paid = {str(k): int(v) for k, v in sorted((r.paid or {}).items())}
        budget_used = int(r.budget_used) if r.budget_points is not None else None
        offers.append(
            OfferPerformance(
                r.kind,
                r.code,
                r.name,
                r.starts_at,
                r.ends_at,
                list(r.partner_ids),
                r.funder,
                int(r.reached),
                paid,
                sum(paid.values()),
                r.budget_points,
                budget_used,
                share(budget_used, r.budget_points) if budget_used is not None else None,
                r.starts_at,
                r.starts_at + r.length,
                r.starts_at - r.length,
                int(r.during),
                int(r.before),
                uplift(int(r.during), int(r.before)),
            )
        )
    return Promotions(
        stamp(period.start), stamp(period.end), stamp(as_of), currency, METHOD, offers
    )


def tables(answer: Promotions) -> dict[str, tuple[list[str], list[list]]]:
    columns = [
        "kind",
        "code",
        "members_reached",
        "points_partner",
        "points_program",
        "budget_points",
        "budget_used",
        "spend_before",
        "spend_during",
        "uplift",
    ]
    rows = [
        [
            o.kind,
            o.code,
            o.members_reached,
            o.points_by_funder.get("partner", 0),
            o.points_by_funder.get("program", 0),
            o.budget_points,
            o.budget_used,
            o.spend_before,
            o.spend_during,
            o.uplift,
        ]
        for o in answer.offers
    ]
    return {"promotions": (columns, rows)}
