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
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import check_id
from ledger.queries import qp_in_period
from partners import rule_reads
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
            tiers = await rule_reads.tiers(conn)
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
                text("SELECT " + qp_in_period(":m", ":start", ":end")),
                {"m": member_id, "start": start, "end": end},
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
        (kept, lowered or raised): up to `limit` of them in one transaction and
        a constant number of statements, claimed without waiting (SKIP LOCKED,
        so runners share the work and a member busy elsewhere is taken by the
        next pass). Returns how many were requalified; resumable."""
        now = self.ledger.clock()
        start, end = last_complete_period(now, self.tier_period)
        fresh_expiry = self.ledger.config.expiry_policy.expires_at(now)

        async def requalify_batch(conn: AsyncConnection) -> int:
            claimed: list[str] = []
            skipped = 0  # due statuses of members busy elsewhere, passed over
            while not claimed:
                due = (
                    (
                        await conn.execute(
                            text(
                                # Most overdue first, along the valid_until index:
                                # a pass reads its batch, not every status still
                                # due (ordered by member, each pass sorted them all).
                                "SELECT member_id FROM member_tiers "
                                "WHERE valid_until <= :now ORDER BY valid_until "
                                "LIMIT :limit OFFSET :skipped"
                            ),
                            {"now": now, "limit": limit, "skipped": skipped},
                        )
                    )
                    .scalars()
                    .all()
                )
                if not due:
                    return 0
                # The members first: the tier and the lots' expiry are the
                # member's. None claimed (all busy): the next page.
                claimed = await self.ledger.journal.claim_members(conn, due, limit)
                skipped += len(due)
            tiers = await rule_reads.tiers(conn)
            rows = (
                await conn.execute(
                    text(
                        "SELECT t.member_id, t.tier_code, t.valid_until, "
                        + qp_in_period("t.member_id", ":start", ":end")
                        + " AS qp "
                        "FROM member_tiers t WHERE t.member_id = ANY(CAST(:members AS text[])) "
                        "AND t.valid_until <= :now ORDER BY t.member_id FOR UPDATE OF t"
                    ),
                    {"members": claimed, "now": now, "start": start, "end": end},
                )
            ).all()
            plan = requalification_plan(rows, tiers, now)
            await _write_requalification(conn, plan, now, fresh_expiry)
            return len(rows)

        return await self.ledger.atomically(requalify_batch)


class RequalificationPlan(NamedTuple):
    """What a requalification batch writes."""

    kept: list[tuple[str, str, datetime | None]]  # member, tier code, valid until
    to_base: list[str]  # members back at the base tier (no row)
    changes: list[tuple[str, str, str, str, datetime | None]]  # member, from, to, reason, old until
    unprotected: list[str]  # members whose status protected their points no longer


def requalification_plan(rows, tiers: list[Tier], now: datetime) -> RequalificationPlan:
    """For each (member_id, tier_code, valid_until, qp) whose status ran out:
    the tier the last period's QP give (a tier no longer defined counts as the
    lowest)."""
    by_code = {t.code: t for t in tiers}
    plan = RequalificationPlan([], [], [], [])
    for row in rows:
        old = by_code.get(row.tier_code, ladder(tiers)[0])
        new, until = requalify(row.qp, tiers, now)
        if new.qp_threshold == 0 and new.code == BASE_TIER.code:
            plan.to_base.append(row.member_id)
        else:
            plan.kept.append((row.member_id, new.code, until))
        reason = f"requalification: {row.qp} QP in the last period"
        plan.changes.append((row.member_id, row.tier_code, new.code, reason, row.valid_until))
        if old.expiry_protected and not new.expiry_protected:
            plan.unprotected.append(row.member_id)
    return plan


async def _write_requalification(
    conn: AsyncConnection, plan: RequalificationPlan, now: datetime, fresh_expiry: datetime | None
) -> None:
    """One statement each: the new statuses, the members back at base, the
    tier history and, where a protecting status was lost, the protected
    points' fresh validity from today."""
    if plan.kept:
        await conn.execute(
            text(
                "INSERT INTO member_tiers (member_id, tier_code, qualified_at, valid_until) "
                "SELECT m, t, :now, u FROM unnest(CAST(:members AS text[]), "
                "CAST(:codes AS text[]), CAST(:until AS timestamptz[])) AS k(m, t, u) "
                "ON CONFLICT (member_id) DO UPDATE SET tier_code = EXCLUDED.tier_code, "
                "qualified_at = EXCLUDED.qualified_at, valid_until = EXCLUDED.valid_until"
            ),
            {
                "now": now,
                "members": [m for m, _, _ in plan.kept],
                "codes": [c for _, c, _ in plan.kept],
                "until": [u for _, _, u in plan.kept],
            },
        )
    if plan.to_base:
        await conn.execute(
            text("DELETE FROM member_tiers WHERE member_id = ANY(CAST(:members AS text[]))"),
            {"members": plan.to_base},
        )
    await conn.execute(
        text(
            "INSERT INTO tier_changes (member_id, from_tier, to_tier, reason, changed_at, "
            "previous_valid_until) SELECT m, f, t, r, :now, u FROM unnest("
            "CAST(:members AS text[]), CAST(:old AS text[]), CAST(:new AS text[]), "
            "CAST(:reasons AS text[]), CAST(:until AS timestamptz[])) AS c(m, f, t, r, u) "
            "ORDER BY m"
        ),
        {
            "now": now,
            "members": [c[0] for c in plan.changes],
            "old": [c[1] for c in plan.changes],
            "new": [c[2] for c in plan.changes],
            "reasons": [c[3] for c in plan.changes],
            "until": [c[4] for c in plan.changes],
        },
    )
    if plan.unprotected:
        await conn.execute(
            text(
                "UPDATE lots SET expires_at = greatest(expires_at, :fresh) "
                "WHERE member_id = ANY(CAST(:members AS text[])) AND remaining > 0"
            ),
            {"fresh": fresh_expiry, "members": plan.unprotected},
        )


def _stronger_status(rank, until, other_rank, other_until) -> bool:
    """Whether one status beats another: a higher tier, or the same tier valid
    for longer (no end date is longest)."""
    if rank != other_rank:
        return rank > other_rank
    if until is None:
        return other_until is not None
    return other_until is not None and until > other_until
