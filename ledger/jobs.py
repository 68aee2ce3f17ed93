"""The ledger's scheduled jobs: pending points released when their return window
has passed, expired holds voided, expired lots moved to program:expired. Part
of `LedgerService`.

Set-based: each transaction takes a batch of due rows (up to `job_batch`, a
thousand), locks what it needs in a constant number of statements and posts
the batch's entries with `Journal.post_many`; the entries are the same as one
at a time (one `release` per earning, one `void` per hold, one `expire` per
member and run). Each batch commits on its own (retried by `atomically`),
so a run is resumable: a rerun finds only what is left. Several runners may
share a run: pending earnings and holds are claimed with SKIP LOCKED, members
due for expiry by their mutex row with SKIP LOCKED; nothing is done twice, and
every lock is taken in the order of ledger/journal.py (own rows, then the
members in one statement, then hot slots).
"""

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import PTS, member_account, program_account
from ledger.journal import (
    ConsumeLots,
    EntryDraft,
    NewLot,
    PostedEntry,
    Posting,
    RestoreLots,
)
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


class ScheduledJobs:
    """release_pending, expire_holds, expire_points (mixed into `LedgerService`)."""

    # Due rows per transaction. A batch holds its members' mutexes until it
    # commits (a fraction of a second for a thousand), so an operation on one
    # of them waits well under the lock timeout.
    job_batch = 1_000

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

    # -- pending points -----------------------------------------------------

    async def release_pending(self, limit: int = 1000) -> int:
        """Move points whose return window has passed from pending to available,
        one `release` entry per earning, a batch of earnings per transaction."""
        released = 0
        while released < limit:
            size = min(self.job_batch, limit - released)
            count = await self.atomically(lambda conn, n=size: self._release_batch(conn, n))
            if not count:
                break
            released += count
        return released

    async def _release_batch(self, conn: AsyncConnection, size: int) -> int:
        now = self.clock()
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
            return 0
        rows.sort(key=lambda r: (r.release_at, r.earn_entry_id))
        # Then their members, all at once (a member may have several earnings:
        # their lots are made in release order, after any debt is repaid).
        await self.journal.lock_members(conn, {r.member_id for r in rows})
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
                    posted_by="job:release-pending",
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
        return len(rows)

    # -- holds --------------------------------------------------------------

    async def expire_holds(self, limit: int = 1000) -> int:
        """Return the points of holds past their expiry (a `void` entry per
        hold, refilling the lots it took), a batch of holds per transaction."""
        expired = 0
        while expired < limit:
            size = min(self.job_batch, limit - expired)
            count = await self.atomically(lambda conn, n=size: self._expire_holds_batch(conn, n))
            if not count:
                break
            expired += count
        return expired

    async def _expire_holds_batch(self, conn: AsyncConnection, size: int) -> int:
        now = self.clock()
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
            return 0
        holds.sort(key=lambda h: (h.expires_at, h.id))
        await self.journal.lock_members(conn, {h.member_id for h in holds})
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
                        posted_by="job:expire-holds",
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
        return len(holds)

    # -- expiry -------------------------------------------------------------

    async def expire_points(self, limit: int = 10_000) -> int:
        """Move what is left of expired lots to program:expired: one `expire`
        entry per member (all its due lots), a batch of members per transaction,
        until none is due (resumable: a rerun finds only what is still left).
        Members of an expiry-protected tier keep their points."""
        members_done = 0
        while members_done < limit:
            size = min(self.job_batch, limit - members_done)
            done = await self.atomically(lambda conn, n=size: self._expire_points_batch(conn, n))
            if done is None:
                break
            members_done += done
        return members_done

    async def _expire_points_batch(self, conn: AsyncConnection, size: int) -> int | None:
        """Expire a batch of members; None when no member is due."""
        now = self.clock()
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
                    posted_by="job:expire-points",
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
        return len(drafts)
