"""The club's points: the welcome bonus, posted with a membership's first
fee payment (clubs/membership.py `pay`), and the anniversary gifts, a
scheduled job in set-based batches (part of `Clubs`).

The club's points are the brand's: the welcome bonus (once, when the
membership first becomes active) and the anniversary gift (once per
membership and year) are earnings at the brand partner, funded by its
`partner:{id}:issued` account and charged on its settlement statement as
promotion points. The brand runs the club and is paid its fees, so the
points it gives its members are points it buys, like its own promotions;
the programme's `program:promotions` pays only for programme campaigns. The
entries' partner references (`club-{membership}-welcome`,
`club-{membership}-anniversary-{year}`) are unique per partner forever, so
neither can post twice whoever runs it. The club's earn multiplier is a
promotion naming the club (partners/rule_inputs.py `clubs`), evaluated at the
purchase time by the earning engine.
"""

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.commands import Earn, EarnLine
from ledger.errors import DuplicatePartnerReference
from ledger.jobs import Batch


def welcome_reference(membership_id: int) -> str:
    return f"club-{membership_id}-welcome"


def anniversary_reference(membership_id: int, year: int) -> str:
    return f"club-{membership_id}-anniversary-{year}"


def club_line(points: int, club: str, what: str) -> EarnLine:
    """A line of the club's points: a promotion line at the club's brand."""
    return EarnLine(points, reason=f"club {club} {what}", kind="promotion", source=f"club-{club}")


# The latest anniversary (1st, 2nd, ...) of each started membership at :now
# with a paid term covering it, not gifted yet, its member active (UTC dates).
ANNIVERSARIES = """
WITH m AS (
    SELECT ms.id, ms.member_id, ms.club_code, c.partner_id, c.anniversary_points AS points,
           date_part('year', age(CAST(:now AS timestamptz) AT TIME ZONE 'UTC',
                                 ms.started_at AT TIME ZONE 'UTC'))::int AS years,
           ms.started_at
    FROM club_memberships ms JOIN clubs c ON c.code = ms.club_code
    JOIN members mb ON mb.id = ms.member_id AND mb.status = 'active'
    WHERE ms.started_at <= CAST(:now AS timestamptz) - interval '1 year'
      AND c.anniversary_points > 0),
due AS (
    SELECT m.*, ((m.started_at AT TIME ZONE 'UTC') + make_interval(years => m.years))
                AT TIME ZONE 'UTC' AS anniversary
    FROM m WHERE m.years >= 1)
SELECT due.*, CAST(date_part('year', due.anniversary AT TIME ZONE 'UTC') AS int) AS year
FROM due
WHERE EXISTS (SELECT 1 FROM club_payments p WHERE p.membership_id = due.id
              AND p.term_starts_at <= due.anniversary AND due.anniversary < p.term_ends_at)
  AND NOT EXISTS (SELECT 1 FROM club_gifts g WHERE g.membership_id = due.id
                  AND g.year = date_part('year', due.anniversary AT TIME ZONE 'UTC'))
ORDER BY due.id
"""


class AnniversaryGifts:
    """The anniversary gifts due and one batch of them (mixed into `Clubs`)."""

    async def anniversaries_due(self, now: datetime) -> Batch:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*) AS n, coalesce(sum(points), 0) AS p "
                        f"FROM ({ANNIVERSARIES}) AS due_gifts"
                    ),
                    {"now": now},
                )
            ).one()
        return Batch(int(row.n), int(row.p))

    async def give_anniversary_gifts(self, now: datetime, limit: int) -> Batch:
        """One batch of due anniversary gifts, posted at the clubs' brands in
        one transaction (a reference already used posts nothing)."""

        async def body(conn: AsyncConnection) -> Batch:
            due = (
                await conn.execute(
                    text(ANNIVERSARIES + " LIMIT :limit"), {"now": now, "limit": limit}
                )
            ).all()
            if not due:
                return Batch(0, 0)
            posted = await self.ledger.earn_many_in(
                conn,
                [
                    Earn(
                        row.member_id,
                        row.partner_id,
                        anniversary_reference(row.id, row.year),
                        (club_line(row.points, row.club_code, f"anniversary gift {row.year}"),),
                        effective_at=now,
                    )
                    for row in due
                ],
            )
            gifts = [
                (row, result)
                for row, result in zip(due, posted, strict=True)
                if not isinstance(result, DuplicatePartnerReference)
            ]
            if gifts:
                await conn.execute(
                    text(
                        "INSERT INTO club_gifts (membership_id, year, anniversary, entry_id) "
                        "SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:years AS int[]), "
                        "CAST(:at AS timestamptz[]), CAST(:entries AS bigint[])) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    {
                        "ids": [row.id for row, _ in gifts],
                        "years": [row.year for row, _ in gifts],
                        "at": [row.anniversary for row, _ in gifts],
                        "entries": [result.entry_id for _, result in gifts],
                    },
                )
            return Batch(len(gifts), sum(result.points for _, result in gifts))

        return await self.ledger.atomically(body)
