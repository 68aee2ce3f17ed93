"""Redemption: burns and two-phase redemptions (authorise a hold, capture all or
part of it, void it), part of `LedgerService`."""

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import PTS, member_account, partner_account
from ledger.commands import (
    Authorise,
    Burn,
    Capture,
    Void,
)
from ledger.drafts import EntryDraft, Posting, RestoreLots, Spend
from ledger.errors import (
    CaptureExceedsHold,
    HoldExpired,
    HoldNotFound,
    HoldNotOpen,
)
from ledger.idempotency import IdempotencyKey
from ledger.views import (
    HoldView,
    Receipt,
)


class Redemptions:
    """Burn, authorise, capture, void (mixed into `LedgerService`)."""

    # -- redemption -------------------------------------------------------

    async def _spend(
        self,
        conn: AsyncConnection,
        kind: str,
        member_id: str,
        partner_id: str,
        reference: str | None,
        amount: int,
        into: str,
        now: datetime,
        posted_by: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Move points a partner redeems out of the member's available points
        (never overdrawing) into `into`; returns the entry id. Posted by the
        partner unless `posted_by` names someone else."""
        posted = await self.journal.post(
            conn,
            EntryDraft(
                kind=kind,
                postings=[
                    Posting(member_account(member_id, "available"), PTS, -amount),
                    Posting(into, PTS, amount),
                ],
                effective_at=now,
                posted_by=posted_by or f"partner:{partner_id}",
                member_id=member_id,
                partner_id=partner_id,
                partner_reference=reference,
                reason=reason,
                lot_effects={member_id: Spend()},
            ),
            now,
        )
        return posted.entry_id

    async def burn(self, cmd: Burn, idempotency: IdempotencyKey | None = None) -> Receipt:
        async def body(conn: AsyncConnection) -> Receipt:
            entry_id = await self._spend(
                conn,
                "burn",
                cmd.member_id,
                cmd.partner_id,
                cmd.partner_reference,
                cmd.amount,
                partner_account(cmd.partner_id, "redeemed"),
                self.clock(),
            )
            return await self._receipt(conn, entry_id, "burn", cmd.member_id, cmd.amount)

        return await self.run("burn", cmd, idempotency, Receipt, body)

    async def redeem_in(
        self,
        conn: AsyncConnection,
        kind: str,
        member_id: str,
        partner_id: str,
        amount: int,
        posted_by: str,
        reason: str,
    ) -> Receipt:
        """A burn under a kind of its own (e.g. `reward`) inside the caller's
        transaction: the member's points, earliest-expiring lots first and
        never overdrawn, to the partner's `redeemed` account, with the reason
        the member's history shows; reversible as a burn is."""
        entry_id = await self._spend(
            conn,
            kind,
            member_id,
            partner_id,
            None,
            amount,
            partner_account(partner_id, "redeemed"),
            self.clock(),
            posted_by=posted_by,
            reason=reason,
        )
        return await self._receipt(conn, entry_id, kind, member_id, amount)

    async def authorise(self, cmd: Authorise, idempotency: IdempotencyKey | None = None) -> Receipt:
        async def body(conn: AsyncConnection) -> Receipt:
            now = self.clock()
            ttl = (
                timedelta(seconds=cmd.expires_in_seconds)
                if cmd.expires_in_seconds is not None
                else self.config.hold_ttl
            )
            entry_id = await self._spend(
                conn,
                "hold",
                cmd.member_id,
                cmd.partner_id,
                cmd.partner_reference,
                cmd.amount,
                member_account(cmd.member_id, "held"),
                now,
            )
            hold = (
                await conn.execute(
                    text(
                        "INSERT INTO holds (member_id, partner_id, partner_reference, amount, "
                        "created_at, expires_at, authorise_entry_id) VALUES (:member_id, "
                        ":partner_id, :reference, :amount, :now, :expires_at, :entry_id) "
                        f"RETURNING {HOLD_COLUMNS}"
                    ),
                    {
                        "member_id": cmd.member_id,
                        "partner_id": cmd.partner_id,
                        "reference": cmd.partner_reference,
                        "amount": cmd.amount,
                        "now": now,
                        "expires_at": now + ttl,
                        "entry_id": entry_id,
                    },
                )
            ).one()
            return await self._receipt(
                conn, entry_id, "hold", cmd.member_id, cmd.amount, hold=hold_view(hold)
            )

        return await self.run("authorise", cmd, idempotency, Receipt, body)

    async def _lock_hold(self, conn: AsyncConnection, hold_id: int, partner_id: str | None):
        hold = (
            await conn.execute(
                text(f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = :id FOR UPDATE"),
                {"id": hold_id},
            )
        ).first()
        if hold is None or (partner_id is not None and hold.partner_id != partner_id):
            raise HoldNotFound(f"no hold {hold_id}", hold_id=hold_id)
        if hold.status != "open":
            raise HoldNotOpen(f"hold {hold_id} is already {hold.status}", hold_status=hold.status)
        return hold

    async def _release_hold(
        self, conn: AsyncConnection, hold, amount: int, now: datetime, posted_by: str, reason: str
    ) -> int:
        """Return `amount` of a hold to available, refilling the lots it took."""
        posted = await self.journal.post(
            conn,
            EntryDraft(
                kind="void",
                postings=[
                    Posting(member_account(hold.member_id, "held"), PTS, -amount),
                    Posting(member_account(hold.member_id, "available"), PTS, amount),
                ],
                effective_at=now,
                posted_by=posted_by,
                member_id=hold.member_id,
                partner_id=hold.partner_id,
                reason=reason,
                hold_id=hold.id,
                lot_effects={hold.member_id: RestoreLots(hold.authorise_entry_id)},
            ),
            now,
        )
        return posted.entry_id

    async def _resolve_hold(
        self, conn: AsyncConnection, hold_id: int, status: str, captured: int, now: datetime
    ) -> HoldView:
        row = (
            await conn.execute(
                text(
                    "UPDATE holds SET status = :status, captured = :captured, resolved_at = :now "
                    f"WHERE id = :id RETURNING {HOLD_COLUMNS}"
                ),
                {"status": status, "captured": captured, "now": now, "id": hold_id},
            )
        ).one()
        return hold_view(row)

    async def capture(self, cmd: Capture, idempotency: IdempotencyKey | None = None) -> Receipt:
        async def body(conn: AsyncConnection) -> Receipt:
            now = self.clock()
            hold = await self._lock_hold(conn, cmd.hold_id, cmd.partner_id)
            if hold.expires_at <= now:
                raise HoldExpired(f"hold {hold.id} expired at {hold.expires_at.isoformat()}")
            amount = hold.amount if cmd.amount is None else cmd.amount
            if amount > hold.amount:
                raise CaptureExceedsHold(
                    f"hold {hold.id} is for {hold.amount} points, {amount} asked",
                    held=hold.amount,
                )
            posted = await self.journal.post(
                conn,
                EntryDraft(
                    kind="capture",
                    postings=[
                        Posting(member_account(hold.member_id, "held"), PTS, -amount),
                        Posting(partner_account(hold.partner_id, "redeemed"), PTS, amount),
                    ],
                    effective_at=now,
                    posted_by=f"partner:{cmd.partner_id}",
                    member_id=hold.member_id,
                    partner_id=hold.partner_id,
                    partner_reference=cmd.partner_reference,
                    hold_id=hold.id,
                ),
                now,
            )
            related: tuple[int, ...] = ()
            if amount < hold.amount:
                related = (
                    await self._release_hold(
                        conn,
                        hold,
                        hold.amount - amount,
                        now,
                        f"partner:{cmd.partner_id}",
                        f"remainder of hold {hold.id} after capturing {amount}",
                    ),
                )
            view = await self._resolve_hold(conn, hold.id, "captured", amount, now)
            return await self._receipt(
                conn,
                posted.entry_id,
                "capture",
                hold.member_id,
                amount,
                hold=view,
                related_entry_ids=related,
            )

        return await self.run("capture", cmd, idempotency, Receipt, body)

    async def void(self, cmd: Void, idempotency: IdempotencyKey | None = None) -> Receipt:
        async def body(conn: AsyncConnection) -> Receipt:
            now = self.clock()
            hold = await self._lock_hold(conn, cmd.hold_id, cmd.partner_id)
            entry_id = await self._release_hold(
                conn, hold, hold.amount, now, f"partner:{cmd.partner_id}", f"hold {hold.id} voided"
            )
            view = await self._resolve_hold(conn, hold.id, "voided", 0, now)
            return await self._receipt(
                conn, entry_id, "void", hold.member_id, hold.amount, hold=view
            )

        return await self.run("void", cmd, idempotency, Receipt, body)

    async def hold(self, hold_id: int) -> HoldView:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = :id"), {"id": hold_id}
                )
            ).first()
        if row is None:
            raise HoldNotFound(f"no hold {hold_id}", hold_id=hold_id)
        return hold_view(row)


HOLD_COLUMNS = "id, member_id, partner_id, amount, captured, status, expires_at, authorise_entry_id"


def hold_view(row) -> HoldView:
    return HoldView(
        row.id, row.member_id, row.partner_id, row.amount, row.captured, row.status, row.expires_at
    )
