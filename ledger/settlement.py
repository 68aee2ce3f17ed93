"""Settling a member's accounts as a whole: forfeiting what is left when an
account closes, moving everything to another member when two accounts of one
person merge. Part of `LedgerService`; the registry (members/) decides when."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import queries
from ledger.accounts import PTS, QP, member_account, program_account
from ledger.drafts import CarriedLot, CarryLots, ConsumeLots, EntryDraft, Posting
from ledger.errors import (
    MemberAccountsNotSettled,
    SameMember,
)
from ledger.lot_work import open_lots
from ledger.views import (
    Balances,
)


class Settlements:
    """Forfeit and merge a member's accounts (mixed into `LedgerService`)."""

    # -- settling a member's accounts (closing, merging) --------------------

    async def _lock_for_settlement(self, conn: AsyncConnection, members: list[str]) -> None:
        """Lock order for settling: the pending earnings of the members (own
        rows), then the members, then the pending rows again (an earning that
        committed between the two statements)."""
        lock_pending = text(
            "SELECT earn_entry_id FROM pending_points WHERE member_id = ANY(:m) "
            "AND release_entry_id IS NULL AND remaining > 0 ORDER BY earn_entry_id FOR UPDATE"
        )
        await conn.execute(lock_pending, {"m": members})
        await self.journal.lock_members(conn, members)
        await conn.execute(lock_pending, {"m": members})

    @staticmethod
    def _check_settled(balances: Balances, action: str) -> None:
        if balances.held:
            raise MemberAccountsNotSettled(
                f"member {balances.member_id} has {balances.held} points held by open "
                f"authorisations; capture or void them before the {action}",
                held=balances.held,
            )
        if balances.available < 0:
            raise MemberAccountsNotSettled(
                f"member {balances.member_id} owes {-balances.available} points "
                f"(returns after spending); settle the debt before the {action}",
                available=balances.available,
            )

    async def forfeit_in(
        self, conn: AsyncConnection, member_id: str, posted_by: str, reason: str, forfeit: bool
    ) -> int | None:
        """Settle a member's points before the account closes, inside the
        caller's transaction: with `forfeit`, available and pending points go
        to program:expired in one `forfeit` entry (its id is returned; the
        pending earnings are settled by it); without, the close is refused
        while any points are left. Open holds and debts are always refused."""
        await self._lock_for_settlement(conn, [member_id])
        balances = await queries.balances(conn, member_id)
        self._check_settled(balances, "close")
        points = balances.available + balances.pending
        if not points:
            return None
        if not forfeit:
            raise MemberAccountsNotSettled(
                f"member {member_id} still has {balances.available} points available and "
                f"{balances.pending} pending; forfeit them or let the member spend them",
                available=balances.available,
                pending=balances.pending,
            )
        now = self.clock()
        postings = [Posting(program_account("expired"), PTS, points)]
        effects = {}
        if balances.available:
            lots = await open_lots(conn, member_id)
            postings.append(
                Posting(member_account(member_id, "available"), PTS, -balances.available)
            )
            effects[member_id] = ConsumeLots(tuple((lot.lot_id, lot.remaining) for lot in lots))
        if balances.pending:
            postings.append(Posting(member_account(member_id, "pending"), PTS, -balances.pending))
        posted = await self.journal.post(
            conn,
            EntryDraft(
                kind="forfeit",
                postings=postings,
                effective_at=now,
                posted_by=posted_by,
                member_id=member_id,
                reason=reason,
                breakdown=[{"available": balances.available, "pending": balances.pending}],
                lot_effects=effects,
            ),
            now,
        )
        await conn.execute(
            text(
                "UPDATE pending_points SET remaining = 0, release_entry_id = :entry "
                "WHERE member_id = :m AND release_entry_id IS NULL AND remaining > 0"
            ),
            {"entry": posted.entry_id, "m": member_id},
        )
        return posted.entry_id

    async def merge_in(
        self, conn: AsyncConnection, source: str, target: str, posted_by: str, reason: str
    ) -> list[int]:
        """Move everything `source` holds to `target`, inside the caller's
        transaction: available points lot by lot (each lot keeps its earning
        time and expiry), pending points with their earnings (released to
        `target` when their window passes), and QP, one entry per time it was
        earned at, dated then (so every tier period, calendar or rolling,
        counts it where it did). Returns the
        `merge` entries posted. Refused while `source` has open holds or a debt."""
        if source == target:
            raise SameMember("a member cannot be merged into itself")
        await self._lock_for_settlement(conn, [source, target])
        balances = await queries.balances(conn, source)
        self._check_settled(balances, "merge")
        now = self.clock()
        entries: list[int] = []

        async def post(postings, effects, effective_at, breakdown) -> None:
            posted = await self.journal.post(
                conn,
                EntryDraft(
                    kind="merge",
                    postings=postings,
                    effective_at=effective_at,
                    posted_by=posted_by,
                    member_id=target,
                    reason=reason,
                    breakdown=breakdown,
                    lot_effects=effects,
                ),
                now,
            )
            entries.append(posted.entry_id)

        postings: list[Posting] = []
        effects = {}
        if balances.available:
            lots = (
                await conn.execute(
                    text(
                        "SELECT id, remaining, earned_at, expires_at, earn_entry_id, source "
                        "FROM lots WHERE member_id = :m AND remaining > 0 ORDER BY id"
                    ),
                    {"m": source},
                )
            ).all()
            postings += [
                Posting(member_account(source, "available"), PTS, -balances.available),
                Posting(member_account(target, "available"), PTS, balances.available),
            ]
            effects[source] = ConsumeLots(tuple((lot.id, lot.remaining) for lot in lots))
            effects[target] = CarryLots(
                tuple(
                    CarriedLot(
                        lot.remaining, lot.earned_at, lot.expires_at, lot.earn_entry_id, lot.source
                    )
                    for lot in lots
                )
            )
        if balances.pending:
            postings += [
                Posting(member_account(source, "pending"), PTS, -balances.pending),
                Posting(member_account(target, "pending"), PTS, balances.pending),
            ]
            await conn.execute(
                text(
                    "UPDATE pending_points SET member_id = :target WHERE member_id = :source "
                    "AND release_entry_id IS NULL AND remaining > 0"
                ),
                {"target": target, "source": source},
            )
        if postings:
            await post(
                postings,
                effects,
                now,
                [{"available": balances.available, "pending": balances.pending, "from": source}],
            )
        qp_times = await conn.execute(
            text(
                "SELECT effective_at AS at, sum(amount)::bigint AS qp "
                "FROM member_qp_movements WHERE member_id = :m "
                "GROUP BY effective_at HAVING sum(amount) <> 0 ORDER BY 1"
            ),
            {"m": source},
        )
        for earned in qp_times.all():
            await post(
                [
                    Posting(member_account(source, "qp"), QP, -earned.qp),
                    Posting(member_account(target, "qp"), QP, earned.qp),
                ],
                {},
                earned.at,
                [{"qp": earned.qp, "from": source}],
            )
        return entries
