"""The ledger's scheduled jobs: pending points released when their return window
has passed, expired holds voided, expired lots moved to program:expired. Each
is resumable and safe to run concurrently. Part of `LedgerService`."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import PTS, member_account, program_account
from ledger.journal import (
    ConsumeLots,
    EntryDraft,
    NewLot,
    Posting,
)
from ledger.redemption import HOLD_COLUMNS


class ScheduledJobs:
    """release_pending, expire_holds, expire_points (mixed into `LedgerService`)."""

    async def release_pending(self, limit: int = 1000) -> int:
        """Move points whose return window has passed from pending to available.

        One transaction per earning (each touches one member), so the job never
        holds two members' locks; SKIP LOCKED lets several runners share the work."""
        released = 0

        async def release_one(conn: AsyncConnection) -> bool:
            now = self.clock()
            row = (
                await conn.execute(
                    text(
                        "SELECT earn_entry_id, member_id, remaining, earned_at "
                        "FROM pending_points WHERE release_entry_id IS NULL "
                        "AND remaining > 0 AND release_at <= :now "
                        "ORDER BY release_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                    ),
                    {"now": now},
                )
            ).first()
            if row is None:
                return False
            posted = await self.journal.post(
                conn,
                EntryDraft(
                    kind="release",
                    postings=[
                        Posting(member_account(row.member_id, "pending"), PTS, -row.remaining),
                        Posting(member_account(row.member_id, "available"), PTS, row.remaining),
                    ],
                    effective_at=now,
                    posted_by="job:release-pending",
                    member_id=row.member_id,
                    reason=f"return window of entry {row.earn_entry_id} passed",
                    lot_effects={row.member_id: NewLot("earn", row.earned_at, row.earn_entry_id)},
                ),
                now,
            )
            await conn.execute(
                text(
                    "UPDATE pending_points SET remaining = 0, release_entry_id = :entry "
                    "WHERE earn_entry_id = :earn"
                ),
                {"entry": posted.entry_id, "earn": row.earn_entry_id},
            )
            return True

        while released < limit and await self.atomically(release_one):
            released += 1
        return released

    async def expire_holds(self, limit: int = 1000) -> int:
        """Return the points of holds past their expiry (one transaction per hold)."""
        expired = 0

        async def expire_one(conn: AsyncConnection) -> bool:
            now = self.clock()
            hold = (
                await conn.execute(
                    text(
                        f"SELECT {HOLD_COLUMNS} FROM holds WHERE status = 'open' "
                        "AND expires_at <= :now ORDER BY expires_at LIMIT 1 "
                        "FOR UPDATE SKIP LOCKED"
                    ),
                    {"now": now},
                )
            ).first()
            if hold is None:
                return False
            await self._release_hold(
                conn, hold, hold.amount, now, "job:expire-holds", f"hold {hold.id} expired"
            )
            await self._resolve_hold(conn, hold.id, "expired", 0, now)
            return True

        while expired < limit and await self.atomically(expire_one):
            expired += 1
        return expired

    # -- expiry -------------------------------------------------------------

    async def expire_points(self, limit: int = 10_000) -> int:
        """Move what is left of expired lots to program:expired, one member per
        transaction (resumable: a rerun finds only what is still left)."""
        members_done = 0
        while members_done < limit:
            async with self.engine.connect() as conn:
                # Members of an expiry-protected tier keep their points.
                result = await conn.execute(
                    text(
                        "SELECT DISTINCT member_id FROM lots WHERE remaining > 0 "
                        "AND expires_at <= :now AND NOT EXISTS ("
                        "  SELECT 1 FROM member_tiers mt JOIN tier_definitions t "
                        "  ON t.code = mt.tier_code WHERE mt.member_id = lots.member_id "
                        "  AND t.expiry_protected "
                        "  AND (mt.valid_until IS NULL OR mt.valid_until > :now)) "
                        "LIMIT 500"
                    ),
                    {"now": self.clock()},
                )
                due = result.scalars().all()
            if not due:
                break
            for member_id in due:
                await self._expire_member(member_id)
                members_done += 1
        return members_done

    async def _expire_member(self, member_id: str) -> None:
        async def expire(conn: AsyncConnection) -> None:
            now = self.clock()
            account = member_account(member_id, "available")
            await self.journal.lock_members(conn, [member_id])
            lots = (
                await conn.execute(
                    text(
                        "SELECT id, remaining, expires_at FROM lots WHERE member_id = :member_id "
                        "AND remaining > 0 AND expires_at <= :now ORDER BY expires_at, id"
                    ),
                    {"member_id": member_id, "now": now},
                )
            ).all()
            total = sum(lot.remaining for lot in lots)
            if not total:
                return
            await self.journal.post(
                conn,
                EntryDraft(
                    kind="expire",
                    postings=[
                        Posting(account, PTS, -total),
                        Posting(program_account("expired"), PTS, total),
                    ],
                    effective_at=now,
                    posted_by="job:expire-points",
                    member_id=member_id,
                    reason=f"{len(lots)} lot(s) reached their expiry "
                    f"({self.config.expiry_policy.describe()})",
                    breakdown=[
                        {
                            "lot_id": lot.id,
                            "points": lot.remaining,
                            "expires_at": lot.expires_at.isoformat(),
                        }
                        for lot in lots
                    ],
                    lot_effects={
                        member_id: ConsumeLots(tuple((lot.id, lot.remaining) for lot in lots))
                    },
                ),
                now,
            )

        await self.atomically(expire)
