"""The member's tier as the programme keeps it (`member_tiers`, with every
change in `tier_changes`): reading it, the QP of a qualification period,
setting it, the member's progress and history, requalification when a status
runs out, and the tier's part of closing and merging members. Part of
`Programme`; the evaluation itself is pure (partners/tiers.py), and an
earning's upgrades are booked with the earning (partners/accrual.py).

A tier is the member's: it changes only under the member's lock (the
ledger's, see ledger/journal.py), read again with FOR UPDATE under it.
"""

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import check_id, member_account
from partners import rulebook
from partners.tiers import (
    BASE_TIER,
    Tier,
    TierProgress,
    ladder,
    last_complete_period,
    period_bounds,
    progress,
    requalify,
)


class Tiering:
    """The member's tier (mixed into `Programme`)."""

    # -- reading ----------------------------------------------------------------

    async def _tier(self, conn: AsyncConnection, member_id: str, lock: bool = False, tiers=None):
        if tiers is None:
            tiers = await rulebook.tiers(conn)
        row = (
            await conn.execute(
                text(
                    "SELECT tier_code, valid_until FROM member_tiers WHERE member_id = :m"
                    + (" FOR UPDATE" if lock else "")
                ),
                {"m": member_id},
            )
        ).first()
        by_code = {t.code: t for t in tiers}
        if row is None or row.tier_code not in by_code:
            return ladder(tiers)[0], None, tiers
        return by_code[row.tier_code], row.valid_until, tiers

    async def _period_qp(
        self, conn: AsyncConnection, member_id: str, period: tuple[datetime, datetime]
    ) -> int:
        start, end = period
        return (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(p.amount), 0)::bigint FROM postings p "
                    "JOIN journal_entries e ON e.id = p.entry_id WHERE p.member_id = :m "
                    "AND p.account = :account AND e.effective_at >= :start "
                    "AND e.effective_at < :end"
                ),
                {
                    "m": member_id,
                    "account": member_account(member_id, "qp"),
                    "start": start,
                    "end": end,
                },
            )
        ).scalar_one()

    # -- writing ----------------------------------------------------------------

    async def _set_tier(
        self, conn, member_id, old_code, new: Tier, until, at, entry_id, reason: str, old_until
    ) -> None:
        if new.qp_threshold == 0 and new.code == BASE_TIER.code:
            await conn.execute(
                text("DELETE FROM member_tiers WHERE member_id = :m"), {"m": member_id}
            )
        else:
            await conn.execute(
                text(
                    "INSERT INTO member_tiers (member_id, tier_code, qualified_at, valid_until) "
                    "VALUES (:m, :t, :at, :until) ON CONFLICT (member_id) DO UPDATE SET "
                    "tier_code = EXCLUDED.tier_code, qualified_at = EXCLUDED.qualified_at, "
                    "valid_until = EXCLUDED.valid_until"
                ),
                {"m": member_id, "t": new.code, "at": at, "until": until},
            )
        await conn.execute(
            text(
                "INSERT INTO tier_changes (member_id, from_tier, to_tier, reason, changed_at, "
                "entry_id, previous_valid_until) "
                "VALUES (:m, :old, :new, :reason, :at, :entry, :previous)"
            ),
            {
                "m": member_id,
                "old": old_code,
                "new": new.code,
                "reason": reason,
                "at": at,
                "entry": entry_id,
                "previous": old_until,
            },
        )

    # -- closing and merging members ------------------------------------------------

    async def _close_tier(self, conn, member_id: str, at: datetime, entry_id) -> None:
        """A closed member keeps no status (under its lock)."""
        tier, valid_until, _tiers = await self._tier(conn, member_id, lock=True)
        if tier.code != BASE_TIER.code or valid_until is not None:
            await self._set_tier(
                conn,
                member_id,
                tier.code,
                BASE_TIER,
                None,
                at,
                entry_id,
                "account closed",
                valid_until,
            )

    async def _merge_tiers(self, conn, source: str, target: str, at: datetime, entry_id) -> str:
        """`target` keeps the higher of the two tiers with its validity and
        `source` none (both members locked); the code of the tier kept."""
        theirs, their_until, _ = await self._tier(conn, source, lock=True)
        ours, our_until, _ = await self._tier(conn, target, lock=True)
        reason = f"merged with {source}"
        if _stronger_status(theirs.rank, their_until, ours.rank, our_until):
            await self._set_tier(
                conn, target, ours.code, theirs, their_until, at, entry_id, reason, our_until
            )
            kept = theirs.code
        else:
            kept = ours.code
        if theirs.code != BASE_TIER.code or their_until is not None:
            await self._set_tier(
                conn,
                source,
                theirs.code,
                BASE_TIER,
                None,
                at,
                entry_id,
                f"merged into {target}",
                their_until,
            )
        return kept

    # -- the member's tier ------------------------------------------------------------

    async def tier_progress(self, member_id: str) -> TierProgress:
        check_id("member", member_id)
        now = self.ledger.clock()
        async with self.engine.connect() as conn:
            tier, valid_until, tiers = await self._tier(conn, member_id)
            qp = await self._period_qp(conn, member_id, period_bounds(now, self.tier_period))
        return progress(tier, valid_until, qp, tiers, now, self.tier_period)

    async def tier_history(self, member_id: str) -> list[dict]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT from_tier, to_tier, reason, changed_at, entry_id FROM tier_changes "
                    "WHERE member_id = :m ORDER BY id"
                ),
                {"m": member_id},
            )
            return [dict(r._mapping) for r in rows]

    async def requalify_tiers(self, limit: int = 10_000) -> int:
        """Members whose status ran out get what the last complete period earned
        (kept, lowered or raised); one member per transaction, resumable."""
        now = self.ledger.clock()
        async with self.engine.connect() as conn:
            due = (
                (
                    await conn.execute(
                        text(
                            "SELECT member_id FROM member_tiers WHERE valid_until <= :now "
                            "ORDER BY member_id LIMIT :limit"
                        ),
                        {"now": now, "limit": limit},
                    )
                )
                .scalars()
                .all()
            )

        async def requalify_member(conn: AsyncConnection, member_id: str) -> None:
            # The member first: the tier and the lots' expiry are the member's.
            await self.ledger.journal.lock_members(conn, [member_id])
            tier, valid_until, tiers = await self._tier(conn, member_id, lock=True)
            if valid_until is None or valid_until > now:
                return  # renewed meanwhile
            period = last_complete_period(now, self.tier_period)
            qp = await self._period_qp(conn, member_id, period)
            new, until = requalify(qp, tiers, now)
            await self._set_tier(
                conn,
                member_id,
                tier.code,
                new,
                until,
                now,
                None,
                f"requalification: {qp} QP in the last period",
                valid_until,
            )
            if tier.expiry_protected and not new.expiry_protected:
                # Status lost: protected points get a fresh validity from today.
                await conn.execute(
                    text(
                        "UPDATE lots SET expires_at = greatest(expires_at, :fresh) "
                        "WHERE member_id = :m AND remaining > 0"
                    ),
                    {"fresh": self.ledger.config.expiry_policy.expires_at(now), "m": member_id},
                )

        for member_id in due:
            await self.ledger.atomically(lambda conn, m=member_id: requalify_member(conn, m))
        return len(due)


def _stronger_status(rank, until, other_rank, other_until) -> bool:
    """Whether one status beats another: a higher tier, or the same tier valid
    for longer (no end date is longest)."""
    if rank != other_rank:
        return rank > other_rank
    if until is None:
        return other_until is not None
    return other_until is not None and until > other_until
