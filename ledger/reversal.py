"""Reversals of earnings, burns and captures, in full or in part, never beyond
the original, part of `LedgerService`."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import queries
from ledger.accounts import PTS
from ledger.commands import (
    Reverse,
)
from ledger.drafts import Clawback, EntryDraft, Posting, RestoreLots
from ledger.errors import (
    EntryNotFound,
    NotReversible,
    ReversalExceedsOriginal,
)
from ledger.idempotency import IdempotencyKey
from ledger.lots import prorate
from ledger.views import (
    EntryView,
    Receipt,
)

REVERSIBLE_KINDS = ("earn", "burn", "capture")
# A `reward` entry is reversed only by whoever owns its record (the reward
# order it paid for, partners/rewards.py), never on its own: that record would
# not know its points came back.


class Reversals:
    """Reverse (part of) an entry (mixed into `LedgerService`)."""

    # -- reversals ----------------------------------------------------------

    async def reverse(
        self, cmd: Reverse, posted_by: str, idempotency: IdempotencyKey | None = None
    ) -> Receipt:
        return await self.run(
            "reverse", cmd, idempotency, Receipt, lambda conn: self.reverse_in(conn, cmd, posted_by)
        )

    async def reverse_in(
        self,
        conn: AsyncConnection,
        cmd: Reverse,
        posted_by: str,
        member_now: str | None = None,
        kinds: tuple[str, ...] = REVERSIBLE_KINDS,
    ) -> Receipt:
        """Reverse (part of) an entry inside the caller's transaction.

        `member_now`: the member who holds the original member's points today
        (the original was merged into it); the reversal posts to its accounts.
        `kinds`: the kinds of entry this caller may reverse."""
        now = self.clock()
        original = await queries.entry(conn, cmd.entry_id)
        if cmd.partner_id is not None and original.partner_id != cmd.partner_id:
            raise EntryNotFound(f"no journal entry {cmd.entry_id}", entry_id=cmd.entry_id)
        if original.kind not in kinds:
            raise NotReversible(
                f"a {original.kind} entry cannot be reversed here; "
                f"reversible kinds: {', '.join(kinds)}"
            )
        lines = _reversible_lines(original)
        whole = sum(p.amount for p in lines[PTS][0]) if PTS in lines else 0
        reversed_before = await self._lock_reversal(conn, original.entry_id, whole)
        left = whole - reversed_before
        amount = left if cmd.amount is None else cmd.amount
        if amount <= 0 or amount > left:
            raise ReversalExceedsOriginal(
                f"entry {original.entry_id} has {left} of {whole} points left to reverse, "
                f"{amount} asked",
                reversible=left,
            )
        postings = self._reversal_postings(lines, whole, reversed_before, amount)
        member_id = original.member_id
        if member_now is not None and member_now != member_id:
            postings = [
                Posting(
                    p.account.replace(f"member:{member_id}:", f"member:{member_now}:", 1),
                    p.asset,
                    p.amount,
                )
                for p in postings
            ]
            member_id = member_now
        effects = {}
        if original.kind == "earn":
            postings = await self._claw_back_pending(conn, original.entry_id, postings)
            if any(p.account.endswith(":available") for p in postings):
                effects[member_id] = Clawback(original.entry_id)
        else:
            # A refunded redemption gives back the lots it took, original expiry kept.
            origin = original.entry_id
            if original.kind == "capture":
                origin = await self._hold_authorisation(conn, original.hold_id)
                postings = [
                    Posting(p.account.replace(":held", ":available"), p.asset, p.amount)
                    if p.account.endswith(":held")
                    else p
                    for p in postings
                ]
            effects[member_id] = RestoreLots(origin)
        posted = await self.journal.post(
            conn,
            EntryDraft(
                kind="reverse",
                postings=postings,
                effective_at=now,
                posted_by=posted_by,
                member_id=member_id,
                partner_id=original.partner_id,
                partner_reference=cmd.partner_reference,
                reason=cmd.reason or f"reversal of {original.kind} {original.entry_id}",
                reverses_entry_id=original.entry_id,
                breakdown=[{"reversed": amount, "of": whole, "before": reversed_before}],
                lot_effects=effects,
            ),
            now,
        )
        await conn.execute(
            text("UPDATE entry_reversals SET reversed = reversed + :amount WHERE entry_id = :id"),
            {"amount": amount, "id": original.entry_id},
        )
        return await self._receipt(conn, posted.entry_id, "reverse", member_id, amount)

    async def _lock_reversal(self, conn: AsyncConnection, entry_id: int, whole: int) -> int:
        if whole <= 0:
            raise NotReversible(f"entry {entry_id} moved no points")
        await conn.execute(
            text(
                "INSERT INTO entry_reversals (entry_id, reversible) VALUES (:id, :whole) "
                "ON CONFLICT DO NOTHING"
            ),
            {"id": entry_id, "whole": whole},
        )
        return (
            await conn.execute(
                text("SELECT reversed FROM entry_reversals WHERE entry_id = :id FOR UPDATE"),
                {"id": entry_id},
            )
        ).scalar_one()

    @staticmethod
    def _reversal_postings(
        lines: dict[str, tuple[list, list]], whole: int, before: int, amount: int
    ) -> list[Posting]:
        """Negate the original's postings in proportion to the reversed points.

        Shares are computed cumulatively (what is reversed after this reversal
        minus what was reversed before), so repeated partial reversals add up
        to the original exactly and never beyond it."""
        postings: list[Posting] = []
        for asset, (credits, debits) in sorted(lines.items()):
            total = sum(p.amount for p in credits)
            after_part = total * (before + amount) // whole
            before_part = total * before // whole
            for side, sign in ((credits, -1), (debits, 1)):
                sizes = [abs(p.amount) for p in side]
                now_shares = prorate(sizes, after_part, total)
                was_shares = prorate(sizes, before_part, total)
                for posting, now_share, was_share in zip(side, now_shares, was_shares, strict=True):
                    if now_share != was_share:
                        postings.append(
                            Posting(posting.account, asset, sign * (now_share - was_share))
                        )
        return postings

    async def _claw_back_pending(
        self, conn: AsyncConnection, earn_entry_id: int, postings: list[Posting]
    ) -> list[Posting]:
        """Take returned points from pending while they are still there; what
        was already released comes from available (a clawback)."""
        row = (
            await conn.execute(
                text("SELECT remaining FROM pending_points WHERE earn_entry_id = :id FOR UPDATE"),
                {"id": earn_entry_id},
            )
        ).first()
        still_pending = row.remaining if row else 0
        result: list[Posting] = []
        for posting in postings:
            if posting.account.endswith(":pending") and posting.amount < 0:
                from_pending = min(-posting.amount, still_pending)
                from_available = -posting.amount - from_pending
                if from_pending:
                    result.append(Posting(posting.account, PTS, -from_pending))
                    still_pending -= from_pending
                    await conn.execute(
                        text(
                            "UPDATE pending_points SET remaining = remaining - :taken "
                            "WHERE earn_entry_id = :id"
                        ),
                        {"taken": from_pending, "id": earn_entry_id},
                    )
                if from_available:
                    available = posting.account.replace(":pending", ":available")
                    result.append(Posting(available, PTS, -from_available))
            else:
                result.append(posting)
        return result

    async def _hold_authorisation(self, conn: AsyncConnection, hold_id: int | None) -> int:
        return (
            await conn.execute(
                text("SELECT authorise_entry_id FROM holds WHERE id = :id"), {"id": hold_id}
            )
        ).scalar_one()


def _reversible_lines(original: EntryView) -> dict[str, tuple[list, list]]:
    """The original's postings per asset, split into credits and debits."""
    lines: dict[str, tuple[list, list]] = {}
    for posting in original.postings:
        credits, debits = lines.setdefault(posting.asset, ([], []))
        (credits if posting.amount > 0 else debits).append(posting)
    return lines
