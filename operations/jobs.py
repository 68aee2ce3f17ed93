"""The scheduled jobs as the runner sees them: a name, what an item is, what is
due (one counting statement, for a progress total, a dry run and what is left
at the end), which members would refuse a run as of another time, and the
run itself, batch by batch until nothing is due.

The ledger's three (release-pending, expire-holds, expire-points) are
set-based batches in ledger/jobs.py; requalify-tiers is the programme's
(partners/tiering.py), run in passes of `batch` members until none is due;
the clubs' two (lapse-club-memberships, club-anniversary-gifts) are
set-based batches of clubs/membership.py and clubs/club_points.py.
"""

from datetime import datetime
from typing import Protocol

from sqlalchemy import text

from clubs.club_points import ANNIVERSARIES
from clubs.membership import Clubs
from ledger.jobs import LATER_ENTRY, Batch, OnBatch
from ledger.partitions import PARTITIONED, ensure_partitions, partitions
from ledger.service import LedgerService
from partners.programme import Programme


class Job(Protocol):
    """One scheduled job."""

    name: str
    unit: str  # what `items` counts: earnings, holds, members, keys
    moves_points: bool  # whether its batches move points (a dry run reports them)
    takes_as_of: bool  # whether it can run as of another time

    async def due(self, as_of: datetime | None) -> Batch:
        """What is due now (or as of `as_of`): items and points."""
        ...

    async def blocked(self, as_of: datetime) -> list[str]:
        """Members a run as of `as_of` would have to date entries (or tier
        changes) before ones they already have: the run is refused for them."""
        ...

    async def run(self, as_of: datetime | None, on_batch: OnBatch) -> int:
        """Batches, each its own transaction, until nothing is due; items done."""
        ...


class LedgerJob:
    """release-pending, expire-holds or expire-points: the ledger's batches."""

    moves_points = True
    takes_as_of = True

    def __init__(self, ledger: LedgerService, name: str, unit: str) -> None:
        self.ledger = ledger
        self.name = name
        self.unit = unit
        self._method = getattr(ledger, name.replace("-", "_"))

    async def due(self, as_of: datetime | None) -> Batch:
        return await self.ledger.job_due(self.name, as_of or self.ledger.clock())

    async def blocked(self, as_of: datetime) -> list[str]:
        return await self.ledger.members_after(self.name, as_of)

    async def run(self, as_of: datetime | None, on_batch: OnBatch) -> int:
        return await self._method(as_of=as_of, on_batch=on_batch)


# Members whose status ran out by :now.
TIERS_DUE = "SELECT member_id FROM member_tiers WHERE valid_until <= :now"


class RequalifyTiers:
    """Members whose status ran out get what their last complete period earned
    (`Programme.requalify_tiers`, set-based: a batch per transaction), in passes of
    `batch` members until none is due. No points move; as of another time,
    the tier changes are dated then."""

    name = "requalify-tiers"
    unit = "members"
    moves_points = False
    takes_as_of = True

    def __init__(self, ledger: LedgerService, tier_period: str, batch: int = 1_000) -> None:
        self.ledger = ledger
        self.tier_period = tier_period
        self.batch = batch

    async def due(self, as_of: datetime | None) -> Batch:
        async with self.ledger.engine.connect() as conn:
            count = (
                await conn.execute(
                    text(f"SELECT count(*) FROM ({TIERS_DUE}) AS due"),
                    {"now": as_of or self.ledger.clock()},
                )
            ).scalar_one()
        return Batch(count, 0)

    async def blocked(self, as_of: datetime) -> list[str]:
        async with self.ledger.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT due.member_id FROM ({TIERS_DUE}) AS due WHERE EXISTS "
                    "(SELECT 1 FROM tier_changes c WHERE c.member_id = due.member_id "
                    "AND c.changed_at > :as_of) "
                    f"OR {LATER_ENTRY.format(member='due.member_id')} ORDER BY 1 LIMIT 5"
                ),
                {"now": as_of, "as_of": as_of},
            )
            return [r.member_id for r in rows]

    async def run(self, as_of: datetime | None, on_batch: OnBatch) -> int:
        ledger = self.ledger
        if as_of is not None:
            # The programme reads its clock from the ledger: one that says as_of.
            ledger = LedgerService(
                self.ledger.engine, self.ledger.config, clock=lambda: as_of, retry=self.ledger.retry
            )
        programme = Programme(ledger, self.tier_period)
        done = 0
        left = (await self.due(as_of)).items
        counted = done + left  # when to count again: once the counted ones are done
        while left:
            count = await programme.requalify_tiers(limit=self.batch)
            if not count:
                break
            done += count
            on_batch(Batch(count, 0))
            if done < counted:
                continue
            # Counted once per round, not per pass (a count of a million
            # statuses per pass of a thousand made the run quadratic).
            before, left = left, (await self.due(as_of)).items
            counted = done + left
            if left >= before:
                # A round that left as many due as it found: what is left is
                # reported rather than tried forever.
                break
        return done


class CreatePartitions:
    """The book of record's months ahead (ledger/partitions.py): the current
    month and the next `months_ahead` of the four partitioned tables, so a
    month is there before its first posting (a posting that finds its month
    missing makes it too, but under a short lock on the tables that
    reference entries and lots, in the middle of the day's traffic). On the
    database's clock, which ids are made from: no as-of."""

    name = "create-partitions"
    unit = "partitions"
    moves_points = False
    takes_as_of = False

    def __init__(self, ledger: LedgerService, months_ahead: int = 3) -> None:
        self.ledger = ledger
        self.months_ahead = months_ahead

    async def due(self, as_of: datetime | None) -> Batch:
        async with self.ledger.engine.connect() as conn:
            month = (await conn.execute(text("SELECT ledger_month_index(now())"))).scalar_one()
            made = {(p.table, p.month) for p in await partitions(conn)}
        wanted = range(month, month + self.months_ahead + 1)
        return Batch(sum((t, m) not in made for t in PARTITIONED for m in wanted), 0)

    async def blocked(self, as_of: datetime) -> list[str]:
        return []

    async def run(self, as_of: datetime | None, on_batch: OnBatch) -> int:
        async with self.ledger.engine.begin() as conn:
            made = await ensure_partitions(conn, self.months_ahead)
        on_batch(Batch(made, 0))
        return made


class LapseClubMemberships:
    """Active club memberships whose paid term ended become lapsed, or
    cancelled when the member cancelled (clubs/membership.py `lapse`), in
    batches until none is due. No points move: the benefits already follow
    the paid terms; this is the status the member sees."""

    name = "lapse-club-memberships"
    unit = "memberships"
    moves_points = False
    takes_as_of = True

    def __init__(self, ledger: LedgerService, batch: int = 1_000) -> None:
        self.clubs = Clubs(ledger)
        self.clock = ledger.clock
        self.batch = batch

    async def due(self, as_of: datetime | None) -> Batch:
        return Batch(await self.clubs.lapses_due(as_of or self.clock()), 0)

    async def blocked(self, as_of: datetime) -> list[str]:
        return []

    async def run(self, as_of: datetime | None, on_batch: OnBatch) -> int:
        done = 0
        while count := await self.clubs.lapse(as_of or self.clock(), self.batch):
            done += count
            on_batch(Batch(count, 0))
        return done


class ClubAnniversaryGifts:
    """Each club membership's anniversary gift (the club's points, funded by
    its brand) once per membership and year, for an anniversary a paid term
    covered (clubs/club_points.py `give_anniversary_gifts`); a second run
    finds nothing due."""

    name = "club-anniversary-gifts"
    unit = "gifts"
    moves_points = True
    takes_as_of = True

    def __init__(self, ledger: LedgerService, batch: int = 500) -> None:
        self.ledger = ledger
        self.batch = batch

    def _clubs(self, as_of: datetime | None) -> Clubs:
        if as_of is None:
            return Clubs(self.ledger)
        # The gifts' entries are dated as_of: a ledger whose clock says so.
        return Clubs(
            LedgerService(
                self.ledger.engine, self.ledger.config, clock=lambda: as_of, retry=self.ledger.retry
            )
        )

    async def due(self, as_of: datetime | None) -> Batch:
        return await Clubs(self.ledger).anniversaries_due(as_of or self.ledger.clock())

    async def blocked(self, as_of: datetime) -> list[str]:
        async with self.ledger.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT DISTINCT due.member_id FROM ({ANNIVERSARIES}) AS due "
                    f"WHERE {LATER_ENTRY.format(member='due.member_id')} ORDER BY 1 LIMIT 5"
                ),
                {"now": as_of, "as_of": as_of},
            )
            return [r.member_id for r in rows]

    async def run(self, as_of: datetime | None, on_batch: OnBatch) -> int:
        clubs = self._clubs(as_of)
        now = as_of or self.ledger.clock()
        done = 0
        while (batch := await clubs.give_anniversary_gifts(now, self.batch)).items:
            done += batch.items
            on_batch(batch)
        return done


# Seconds between scheduled runs by default: holds keep a member's points
# from them, so they go back within a minute; a return window passing within a
# quarter of an hour; statuses running out and lots expiring (at a quarter's
# end) are looked at hourly, the months ahead of the journal daily. One
# counting statement when nothing is due.
INTERVALS = {
    "release-pending": 900,
    "expire-holds": 60,
    "expire-points": 3600,
    "requalify-tiers": 3600,
    "create-partitions": 86400,
    "lapse-club-memberships": 3600,
    "club-anniversary-gifts": 86400,
}


def standard_jobs(ledger: LedgerService, tier_period: str) -> dict[str, Job]:
    """The programme's four jobs, the journal's months ahead and the clubs' two."""
    return {
        "release-pending": LedgerJob(ledger, "release-pending", "earnings"),
        "expire-holds": LedgerJob(ledger, "expire-holds", "holds"),
        "expire-points": LedgerJob(ledger, "expire-points", "members"),
        "requalify-tiers": RequalifyTiers(ledger, tier_period),
        "create-partitions": CreatePartitions(ledger),
        "lapse-club-memberships": LapseClubMemberships(ledger),
        "club-anniversary-gifts": ClubAnniversaryGifts(ledger),
    }
