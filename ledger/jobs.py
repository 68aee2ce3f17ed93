"""The ledger's scheduled jobs: pending points released when their return window
has passed, expired holds voided, expired lots moved to program:expired. Part
of `LedgerService`. Orchestration (running every job to completion, progress,
dry runs, run records, advisory locks, scheduling) is not the ledger's: see
operations/.

Set-based: each transaction takes a batch of due rows (up to `job_batch`, a
thousand), locks what it needs in a constant number of statements and posts
the batch's entries with `Journal.post_many`; the entries are the same as one
at a time (one `release` per earning, one `void` per hold, one `expire` per
member and run). Each batch commits on its own (retried by `atomically`),
so a run is resumable: a rerun finds only what is left. A run works on
`job_lanes` batches at once (two), as two runners would. Several runners may
share a run: pending earnings and holds are claimed with SKIP LOCKED, members
due for expiry by their mutex row with SKIP LOCKED; nothing is done twice, and
every lock is taken in the order of ledger/journal.py (own rows, then the
members in one statement, then hot slots).

A job runs until nothing is due unless given a `limit`; `on_batch` hears of
every committed batch (rows and points), and `job_due` counts what is due
(one statement) for a progress total or a dry run.

As of another time (`as_of`, for demonstrations and tests): the job treats
that instant as now (due as of then, entries effective then) and says so in
each entry's `posted_by` (`job:expire-points as-of 2027-01-01T00:00:00Z`).
Entries are never dated before what they follow, so an as-of earlier than the
ledger's clock is refused (everything due then is due now: a plain run does
it), and so is one earlier than any entry of a member the run would post for
(an earlier as-of run's, or a purchase dated ahead): that member's history
would no longer be in effective order, and the job would have decided on
lots and balances the member did not have at that instant. Checked before the
first batch (`members_after`) and again in each batch under the members'
locks (`AsOfRefused`).
"""

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import PTS, member_account, program_account
from ledger.drafts import ConsumeLots, EntryDraft, NewLot, Posting, RestoreLots
from ledger.errors import AsOfRefused
from ledger.journal import PostedEntry
from ledger.lanes import in_lanes
from ledger.redemption import HOLD_COLUMNS

# A member is protected from expiry while an expiry-protected tier is valid.
PROTECTED = (
    "EXISTS (SELECT 1 FROM member_tiers mt JOIN tier_definitions t ON t.code = mt.tier_code "
    "WHERE mt.member_id = {member} AND t.expiry_protected "
    "AND (mt.valid_until IS NULL OR mt.valid_until > :now))"
)

# Members with due lots, first expiring first (a window of lots scanned by the
# expiry index).
DUE_MEMBERS = (
    "SELECT DISTINCT member_id FROM (SELECT l.member_id "
    "FROM lots l WHERE l.remaining > 0 AND l.expires_at <= :now "
    f"AND NOT {PROTECTED.format(member='l.member_id')} "
    "ORDER BY l.expires_at LIMIT :window) AS first_due"
)

# The due lots of members whose mutex this transaction holds, read again under it.
DUE_LOTS = (
    "SELECT l.member_id, l.id, l.remaining, l.expires_at FROM lots l "
    "WHERE l.member_id = ANY(CAST(:members AS text[])) AND l.remaining > 0 "
    f"AND l.expires_at <= :now AND NOT {PROTECTED.format(member='l.member_id')} "
    "ORDER BY l.member_id, l.expires_at, l.id"
)

# What each job finds due at :now: one row per earning, hold or lot, with its
# member and points (the same conditions as the batches' own reads).
DUE = {
    "release-pending": (
        "SELECT member_id, remaining AS points FROM pending_points "
        "WHERE release_entry_id IS NULL AND remaining > 0 AND release_at <= :now"
    ),
    "expire-holds": (
        "SELECT member_id, amount AS points FROM holds WHERE status = 'open' AND expires_at <= :now"
    ),
    "expire-points": (
        "SELECT l.member_id, l.remaining AS points FROM lots l "
        "WHERE l.remaining > 0 AND l.expires_at <= :now "
        f"AND NOT {PROTECTED.format(member='l.member_id')}"
    ),
}
# Items a job counts: earnings and holds one by one, expiry one entry per member.
DUE_ITEMS = {
    "release-pending": "count(*)",
    "expire-holds": "count(*)",
    "expire-points": "count(DISTINCT member_id)",
}
# A member's entries effective after :as_of (its postings carry the member, so
# a transfer's receiver counts too).
LATER_ENTRY = (
    "EXISTS (SELECT 1 FROM postings q JOIN journal_entries e ON e.id = q.entry_id "
    "WHERE q.member_id = {member} AND e.effective_at > :as_of)"
)


def check_as_of(as_of: datetime, now: datetime) -> None:
    """An instant a job run may take for now: with an offset, and not before
    `now` (its entries would be dated before ones already posted, and what
    was due then is due now)."""
    if as_of.tzinfo is None:
        raise AsOfRefused("an as-of needs an offset, e.g. 2027-01-01T00:00:00Z")
    if as_of < now:
        raise AsOfRefused(
            f"as-of {as_of.isoformat()} is before now ({now.isoformat()}): its entries "
            "would be dated before ones already posted, and what was due then is due "
            "now (run the job without --as-of)"
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """What one committed batch of a job did (or, from `job_due`, what is due):
    rows (earnings released, holds voided, members whose points expired) and
    the points they moved."""

    items: int
    points: int


OnBatch = Callable[[Batch], object]


def job_posted_by(job: str, as_of: datetime | None) -> str:
    """Who an entry says posted it: the job, and the instant it took for now."""
    if as_of is None:
        return f"job:{job}"
    stamp = as_of.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return f"job:{job} as-of {stamp}"


class ScheduledJobs:
    """release_pending, expire_holds, expire_points (mixed into `LedgerService`)."""

    # Due rows per transaction. A batch holds its members' mutexes until it
    # commits (a fraction of a second for a thousand), so an operation on one
    # of them waits well under the lock timeout.
    job_batch = 1_000
    # Batches a run works on at once, each in its own transaction on members
    # no other batch holds (claimed with SKIP LOCKED): the per-row work of a
    # batch (triggers, the lots check at commit) is PostgreSQL's, on one core
    # per transaction, so a second lane uses a second core.
    job_lanes = 2

    async def _post_all(
        self, conn: AsyncConnection, drafts: Sequence[EntryDraft], now: datetime
    ) -> list[PostedEntry]:
        """Post the drafts of a batch whose members this transaction already
        holds, in one `post_many` call (jobs post no partner reference, so
        every result is a posted entry)."""
        posted = await self.journal.post_many(conn, drafts, now)
        for result in posted:
            if not isinstance(result, PostedEntry):
                raise result
        return posted  # type: ignore[return-value]

    # -- running, counting, as-of ---------------------------------------------

    def job_now(self, as_of: datetime | None) -> datetime:
        """The instant a run takes for now: the clock, or an as-of not before
        it (checked once, when the run starts)."""
        if as_of is None:
            return self.clock()
        check_as_of(as_of, self.clock())
        return as_of

    async def _run_job(
        self,
        batch: Callable[[AsyncConnection, int, datetime, datetime | None], Awaitable[Batch | None]],
        limit: int | None,
        as_of: datetime | None,
        on_batch: OnBatch | None,
    ) -> int:
        """Batches in their own transactions until none is due (or `limit`
        rows are done); how many rows were done."""
        if as_of is not None:
            self.job_now(as_of)  # refused before anything is done
        done = 0
        taken = 0  # rows the lanes' batches may do, so that together they keep to `limit`

        async def lane() -> None:
            nonlocal done, taken
            while limit is None or taken < limit:
                size = self.job_batch if limit is None else min(self.job_batch, limit - taken)
                taken += size
                result = await self.atomically(
                    lambda conn, n=size: batch(conn, n, as_of or self.clock(), as_of)
                )
                if result is None:
                    return
                taken -= size - result.items
                done += result.items
                if on_batch is not None:
                    on_batch(result)

        await in_lanes(*(lane() for _ in range(self.job_lanes)))
        return done

    async def job_due(self, job: str, now: datetime) -> Batch:
        """What `job` (release-pending, expire-holds, expire-points) finds due at
        `now`: rows (members for expire-points) and points, in one statement."""
        (row,) = await self._job_read(
            f"SELECT {DUE_ITEMS[job]} AS items, coalesce(sum(points), 0)::bigint AS points "
            f"FROM ({DUE[job]}) AS due",
            {"now": now},
        )
        return Batch(row.items, row.points)

    async def members_after(self, job: str, as_of: datetime, limit: int = 5) -> list[str]:
        """Members `job` would post for as of `as_of` that already have an entry
        effective after it (a run as of then is refused for them)."""
        rows = await self._job_read(
            f"SELECT DISTINCT due.member_id FROM ({DUE[job]}) AS due "
            f"WHERE {LATER_ENTRY.format(member='due.member_id')} ORDER BY 1 LIMIT :limit",
            {"now": as_of, "as_of": as_of, "limit": limit},
        )
        return [r.member_id for r in rows]

    async def _job_read(self, sql: str, params: dict) -> list:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).all()

    async def _check_as_of(
        self, conn: AsyncConnection, members: Sequence[str], as_of: datetime | None
    ) -> None:
        """Under the members' locks: none of them has an entry after the as-of."""
        if as_of is None or not members:
            return
        later = (
            (
                await conn.execute(
                    text(
                        "SELECT m FROM unnest(CAST(:members AS text[])) AS t(m) "
                        f"WHERE {LATER_ENTRY.format(member='t.m')} ORDER BY 1 LIMIT 5"
                    ),
                    {"members": list(members), "as_of": as_of},
                )
            )
            .scalars()
            .all()
        )
        if later:
            raise AsOfRefused(
                f"as-of {as_of.isoformat()} is before entries already posted for "
                f"{', '.join(later)}: their history would be out of order",
                members=later,
            )

    # -- pending points -----------------------------------------------------

    async def release_pending(
        self,
        limit: int | None = None,
        *,
        as_of: datetime | None = None,
        on_batch: OnBatch | None = None,
    ) -> int:
        """Move points whose return window has passed from pending to available,
        one `release` entry per earning, a batch of earnings per transaction,
        until none is due (or `limit` earnings are released)."""
        return await self._run_job(self._release_batch, limit, as_of, on_batch)

    async def _release_batch(
        self, conn: AsyncConnection, size: int, now: datetime, as_of: datetime | None
    ) -> Batch | None:
        # Own rows first: the due earnings no other runner has taken.
        rows = (
            await conn.execute(
                text(
                    "SELECT earn_entry_id, member_id, remaining, earned_at, release_at "
                    "FROM pending_points WHERE release_entry_id IS NULL "
                    "AND remaining > 0 AND release_at <= :now "
                    "ORDER BY release_at LIMIT :size FOR UPDATE SKIP LOCKED"
                ),
                {"now": now, "size": size},
            )
        ).all()
        if not rows:
            return None
        rows.sort(key=lambda r: (r.release_at, r.earn_entry_id))
        # Then their members, all at once (a member may have several earnings:
        # their lots are made in release order, after any debt is repaid).
        members = {r.member_id for r in rows}
        await self.journal.lock_members(conn, members)
        await self._check_as_of(conn, sorted(members), as_of)
        posted = await self._post_all(
            conn,
            [
                EntryDraft(
                    kind="release",
                    postings=[
                        Posting(member_account(r.member_id, "pending"), PTS, -r.remaining),
                        Posting(member_account(r.member_id, "available"), PTS, r.remaining),
                    ],
                    effective_at=now,
                    posted_by=job_posted_by("release-pending", as_of),
                    member_id=r.member_id,
                    reason=f"return window of entry {r.earn_entry_id} passed",
                    lot_effects={r.member_id: NewLot("earn", r.earned_at, r.earn_entry_id)},
                )
                for r in rows
            ],
            now,
        )
        await conn.execute(
            text(
                "UPDATE pending_points p SET remaining = 0, release_entry_id = r.entry "
                "FROM unnest(CAST(:earnings AS bigint[]), CAST(:entries AS bigint[])) "
                "AS r(earning, entry) WHERE p.earn_entry_id = r.earning"
            ),
            {
                "earnings": [r.earn_entry_id for r in rows],
                "entries": [p.entry_id for p in posted],
            },
        )
        return Batch(len(rows), sum(r.remaining for r in rows))

    # -- holds --------------------------------------------------------------

    async def expire_holds(
        self,
        limit: int | None = None,
        *,
        as_of: datetime | None = None,
        on_batch: OnBatch | None = None,
    ) -> int:
        """Return the points of holds past their expiry (a `void` entry per
        hold, refilling the lots it took), a batch of holds per transaction,
        until none is due (or `limit` holds are done)."""
        return await self._run_job(self._expire_holds_batch, limit, as_of, on_batch)

    async def _expire_holds_batch(
        self, conn: AsyncConnection, size: int, now: datetime, as_of: datetime | None
    ) -> Batch | None:
        holds = (
            await conn.execute(
                text(
                    f"SELECT {HOLD_COLUMNS} FROM holds WHERE status = 'open' "
                    "AND expires_at <= :now ORDER BY expires_at LIMIT :size "
                    "FOR UPDATE SKIP LOCKED"
                ),
                {"now": now, "size": size},
            )
        ).all()
        if not holds:
            return None
        holds.sort(key=lambda h: (h.expires_at, h.id))
        members = {h.member_id for h in holds}
        await self.journal.lock_members(conn, members)
        await self._check_as_of(conn, sorted(members), as_of)
        # Refilling a hold's lots reads them, so `post_many` takes one such
        # draft per member: a member's holds go in rounds, in expiry order.
        rounds: list[list] = []
        seen: dict[str, int] = defaultdict(int)
        for hold in holds:
            number = seen[hold.member_id]
            seen[hold.member_id] += 1
            if number == len(rounds):
                rounds.append([])
            rounds[number].append(hold)
        for round_holds in rounds:
            # The same entry as a void (Redemptions._release_hold).
            await self._post_all(
                conn,
                [
                    EntryDraft(
                        kind="void",
                        postings=[
                            Posting(member_account(h.member_id, "held"), PTS, -h.amount),
                            Posting(member_account(h.member_id, "available"), PTS, h.amount),
                        ],
                        effective_at=now,
                        posted_by=job_posted_by("expire-holds", as_of),
                        member_id=h.member_id,
                        partner_id=h.partner_id,
                        reason=f"hold {h.id} expired",
                        hold_id=h.id,
                        lot_effects={h.member_id: RestoreLots(h.authorise_entry_id)},
                    )
                    for h in round_holds
                ],
                now,
            )
        await conn.execute(
            text(
                "UPDATE holds SET status = 'expired', captured = 0, resolved_at = :now "
                "WHERE id = ANY(CAST(:ids AS bigint[]))"
            ),
            {"now": now, "ids": [h.id for h in holds]},
        )
        return Batch(len(holds), sum(h.amount for h in holds))

    # -- expiry -------------------------------------------------------------

    async def expire_points(
        self,
        limit: int | None = None,
        *,
        as_of: datetime | None = None,
        on_batch: OnBatch | None = None,
    ) -> int:
        """Move what is left of expired lots to program:expired: one `expire`
        entry per member (all its due lots), a batch of members per transaction,
        until none is due or `limit` members are done (resumable: a rerun finds
        only what is still left). Members of an expiry-protected tier keep
        their points."""
        return await self._run_job(self._expire_points_batch, limit, as_of, on_batch)

    async def _expire_points_batch(
        self, conn: AsyncConnection, size: int, now: datetime, as_of: datetime | None
    ) -> Batch | None:
        """Expire a batch of members; None when no member is due."""
        due = (
            (await conn.execute(text(DUE_MEMBERS), {"now": now, "window": 2 * size}))
            .scalars()
            .all()
        )
        if not due:
            return None
        # The due members whose mutex is free, taken without waiting (a member
        # another runner or an operation holds is left for a later batch)...
        members = await self.journal.claim_members(conn, due, size)
        if not members:
            # ...unless every one is busy: then wait for them like any
            # transaction, all at once in address order.
            members = sorted(due)[:size]
            await self.journal.lock_members(conn, members)
        await self._check_as_of(conn, members, as_of)
        # Read again under the mutex: another runner may have expired them, a
        # member may have become protected since.
        lots = (await conn.execute(text(DUE_LOTS), {"members": members, "now": now})).all()
        by_member: dict[str, list] = defaultdict(list)
        for lot in lots:
            by_member[lot.member_id].append(lot)
        policy = self.config.expiry_policy.describe()
        drafts = []
        for member_id, due in by_member.items():
            total = sum(lot.remaining for lot in due)
            drafts.append(
                EntryDraft(
                    kind="expire",
                    postings=[
                        Posting(member_account(member_id, "available"), PTS, -total),
                        Posting(program_account("expired"), PTS, total),
                    ],
                    effective_at=now,
                    posted_by=job_posted_by("expire-points", as_of),
                    member_id=member_id,
                    reason=f"{len(due)} lot(s) reached their expiry ({policy})",
                    breakdown=[
                        {
                            "lot_id": lot.id,
                            "points": lot.remaining,
                            "expires_at": lot.expires_at.isoformat(),
                        }
                        for lot in due
                    ],
                    lot_effects={
                        member_id: ConsumeLots(tuple((lot.id, lot.remaining) for lot in due))
                    },
                )
            )
        await self._post_all(conn, drafts, now)
        return Batch(len(drafts), sum(lot.remaining for lot in lots))
