"""The partner portfolio and the coalition effect, over a window: how many
members are active at 1, 2, 3 or more partners; the cross-shopping matrix
(of partner A's active members, the share also active at partner B; the
diagonal is 1); and per partner its active members, spend (net of returns,
in the window's currency), points issued (net of returns), points redeemed
there (net of refunds) and the net points (issued - redeemed). Money
settlement at contract rates is finance's (settlement statements).
Definitions of activity and the figures: insights/activity.py."""

from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from finance.period import Period, stamp
from insights.activity import ACTIVITY, ISSUED, REDEEMED, with_
from insights.reading import share


class Reach(msgspec.Struct, frozen=True):
    partners: str  # "1", "2", "3+"
    members: int
    share: Decimal | None


class CrossShopping(msgspec.Struct, frozen=True):
    partner_id: str  # A
    also_at: str  # B
    members: int  # active at both
    share: Decimal | None  # of A's active members


class PartnerFigures(msgspec.Struct, frozen=True):
    partner_id: str
    members: int
    purchases: int
    spend: int
    points_issued: int
    points_redeemed: int
    net_points: int


class Coalition(msgspec.Struct, frozen=True):
    period_from: str
    period_to: str
    period_time: str
    currency: str
    active_members: int
    reach: list[Reach]
    partners: list[PartnerFigures]
    cross_shopping: list[CrossShopping]  # every ordered pair of active partners


# The pairs, and the reach (members by the number of partners they used)
# from the same (member, partner) rows: the activity is read once.
PAIRS = (
    with_(ACTIVITY)
    + """,
used AS MATERIALIZED (
    SELECT member_id, partner_id, count(*) AS purchases, sum(spend)::bigint AS spend
    FROM counted GROUP BY member_id, partner_id)
SELECT a.partner_id AS a, b.partner_id AS b, count(*) AS members,
       sum(a.purchases) FILTER (WHERE a.partner_id = b.partner_id)::bigint AS purchases,
       sum(a.spend) FILTER (WHERE a.partner_id = b.partner_id)::bigint AS spend,
       NULL::bigint AS partners
FROM used a JOIN used b ON a.member_id = b.member_id
GROUP BY 1, 2
UNION ALL
SELECT NULL, NULL, count(*), NULL, NULL, least(partners, 3)
FROM (SELECT member_id, count(*) AS partners FROM used GROUP BY member_id) AS m
GROUP BY least(partners, 3)"""
)

POINTS = (
    with_(ISSUED, REDEEMED)
    + """
SELECT partner_id, sum(issued)::bigint AS issued, sum(redeemed)::bigint AS redeemed
FROM (SELECT partner_id, points AS issued, 0 AS redeemed FROM issued
      UNION ALL SELECT partner_id, 0, points FROM redeemed) AS p
GROUP BY partner_id"""
)


async def coalition(conn: AsyncConnection, period: Period, currency: str) -> Coalition:
    params = {"start": period.start, "end": period.end, "currency": currency}
    rows = (await conn.execute(text(PAIRS), params)).all()
    pairs = [r for r in rows if r.partners is None]
    reach_rows = {int(r.partners): int(r.members) for r in rows if r.partners is not None}
    points = {r.partner_id: r for r in await conn.execute(text(POINTS), params)}
    own = {r.a: r for r in pairs if r.a == r.b}
    active = sum(reach_rows.values())
    reach = [
        Reach(label, reach_rows.get(k, 0), share(reach_rows.get(k, 0), active))
        for k, label in ((1, "1"), (2, "2"), (3, "3+"))
    ]
    ids = sorted(set(own) | set(points))
    partners = []
    for partner_id in ids:
        row, p = own.get(partner_id), points.get(partner_id)
        issued = int(p.issued) if p else 0
        redeemed = int(p.redeemed) if p else 0
        partners.append(
            PartnerFigures(
                partner_id,
                int(row.members) if row else 0,
                int(row.purchases) if row else 0,
                int(row.spend) if row else 0,
                issued,
                redeemed,
                issued - redeemed,
            )
        )
    both = {(r.a, r.b): int(r.members) for r in pairs}
    active_ids = sorted(own)
    matrix = [
        CrossShopping(a, b, both.get((a, b), 0), share(both.get((a, b), 0), int(own[a].members)))
        for a in active_ids
        for b in active_ids
    ]
    return Coalition(
        stamp(period.start),
        stamp(period.end),
        "purchase time",
        currency,
        active,
        reach,
        partners,
        matrix,
    )


def tables(answer: Coalition) -> dict[str, tuple[list[str], list[list]]]:
    ids = sorted({c.partner_id for c in answer.cross_shopping})
    shares = {(c.partner_id, c.also_at): c.share for c in answer.cross_shopping}
    return {
        "reach": (
            ["partners", "members", "share"],
            [[r.partners, r.members, r.share] for r in answer.reach],
        ),
        "partners": (
            [
                "partner",
                "members",
                "purchases",
                "spend",
                "points_issued",
                "points_redeemed",
                "net_points",
            ],
            [
                [
                    p.partner_id,
                    p.members,
                    p.purchases,
                    p.spend,
                    p.points_issued,
                    p.points_redeemed,
                    p.net_points,
                ]
                for p in answer.partners
            ],
        ),
        "cross_shopping": (
            ["partner", *ids],
            [[a, *(shares.get((a, b)) for b in ids)] for a in ids],
        ),
    }
