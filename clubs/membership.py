"""Brand clubs with a fee, the `Clubs` service: the clubs (admin), members
joining and cancelling, fee payments, and the lapse job; the club's points
(the welcome bonus, the anniversary gifts job) are clubs/club_points.py's
(part of `Clubs`), what callers send and get back clubs/club_views.py's.

The fee is money, not points: a payment is a row of `club_payments`
(append-only, amounts in minor units, unique by the payment reference, which
is the idempotency of the call: the same reference with the same payment
answers the stored payment again; with another amount, member or club it is
refused). Each payment pays one term (clubs/terms.py).

Lock order: the membership row, then the member (the posting).
"""

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from clubs.club_points import AnniversaryGifts, club_line, welcome_reference
from clubs.club_views import (
    MEMBERSHIP,
    ClubChange,
    ClubInput,
    ClubView,
    MembershipView,
    PaymentInput,
    PaymentView,
    club_view,
    membership_view,
    payment_view,
)
from clubs.errors import (
    ClubExists,
    ClubNotFound,
    FeeMismatch,
    InvalidClub,
    MembershipNotFound,
    PaymentReferenceReused,
)
from clubs.terms import after_cancel, check_join, next_term
from ledger.accounts import check_id
from ledger.commands import Earn
from ledger.database import begin
from ledger.errors import DuplicatePartnerReference, MemberNotActive, MemberNotFound
from ledger.service import LedgerService
from partners.audit import record_change
from partners.errors import PartnerNotFound
from partners.money import MINOR_UNIT_EXPONENTS
from partners.programme import MAX_REFERENCE
from partners.rule_inputs import TIER_CODE

MAX_FEE_MINOR = 10**10
MAX_POINTS = 10**9


def _require(condition: bool, field: str, detail: str) -> None:
    if not condition:
        raise InvalidClub(field, detail)


def _check_points(value: int, field: str) -> None:
    _require(0 <= value <= MAX_POINTS, field, f"0 to {MAX_POINTS:,} points")


def _check_fee(value: int) -> None:
    _require(0 < value <= MAX_FEE_MINOR, "fee_minor", "a positive amount in minor units")


def _same_payment(stored, payment: PaymentInput) -> PaymentView:
    """The stored payment again when the call is the same, else the refusal."""
    recorded = (stored.club_code, stored.member_id, stored.amount_minor, stored.currency)
    asked = (payment.club, payment.member_id, payment.amount_minor, payment.currency)
    if recorded != asked:
        raise PaymentReferenceReused(
            f"payment reference {payment.payment_reference!r} was recorded for another payment",
            payment_reference=payment.payment_reference,
        )
    return payment_view(stored)


async def active_member(conn: AsyncConnection, member_id: str) -> None:
    """The member is enrolled and active (shared: a close waits for the call)."""
    status = (
        await conn.execute(
            text("SELECT status FROM members WHERE id = :m FOR SHARE"), {"m": member_id}
        )
    ).scalar()
    if status is None:
        raise MemberNotFound(f"no enrolled member {member_id!r}", member_id=member_id)
    if status != "active":
        raise MemberNotActive(
            f"member {member_id!r} is {status}", member_id=member_id, member_status=status
        )


# Active memberships whose last paid term ended by :now.
LAPSING = "SELECT id FROM club_memberships WHERE status = 'active' AND paid_until <= :now"


class Clubs(AnniversaryGifts):
    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger
        self.engine = ledger.engine

    # -- clubs (admin) ----------------------------------------------------------

    async def create(self, club: ClubInput, actor: str) -> ClubView:
        _require(
            TIER_CODE.fullmatch(club.code) is not None,
            "code",
            "1-40 lower-case letters, digits, '-' or '_', starting with a letter or digit",
        )
        _require(0 < len(club.name.strip()) <= 100, "name", "1-100 characters")
        check_id("partner", club.partner_id)
        _check_fee(club.fee_minor)
        _require(club.currency in MINOR_UNIT_EXPONENTS, "currency", "unknown currency")
        _require(1 <= club.term_months <= 120, "term_months", "1 to 120 months")
        _check_points(club.welcome_points, "welcome_points")
        _check_points(club.anniversary_points, "anniversary_points")
        now = self.ledger.clock()
        async with begin(self.engine) as conn:
            partner = (
                await conn.execute(
                    text("SELECT 1 FROM partners WHERE id = :p"), {"p": club.partner_id}
                )
            ).first()
            if partner is None:
                raise PartnerNotFound(f"no partner {club.partner_id!r}", partner_id=club.partner_id)
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO clubs (code, name, partner_id, fee_minor, currency, "
                        "term_months, welcome_points, anniversary_points, created_by, "
                        "created_at, updated_at) VALUES (:code, :name, :partner_id, :fee_minor, "
                        ":currency, :term_months, :welcome_points, :anniversary_points, :actor, "
                        ":now, :now) ON CONFLICT (code) DO NOTHING RETURNING *"
                    ),
                    {
                        **msgspec.structs.asdict(club),
                        "name": club.name.strip(),
                        "actor": actor,
                        "now": now,
                    },
                )
            ).first()
            if row is None:
                raise ClubExists(f"club {club.code!r} exists already", club=club.code)
            view = club_view(row)
            await record_change(
                conn, "club", club.code, "create", actor, None, msgspec.to_builtins(view)
            )
            return view

    async def change(self, code: str, change: ClubChange, actor: str) -> ClubView:
        values = {k: v for k, v in msgspec.structs.asdict(change).items() if v is not msgspec.UNSET}
        if "name" in values:
            values["name"] = values["name"].strip()
            _require(0 < len(values["name"]) <= 100, "name", "1-100 characters")
        if "fee_minor" in values:
            _check_fee(values["fee_minor"])
        for field in ("welcome_points", "anniversary_points"):
            if field in values:
                _check_points(values[field], field)
        async with begin(self.engine) as conn:
            before = await self._club(conn, code, lock=True)
            row = before
            if values:
                assignments = ", ".join(f"{name} = :{name}" for name in values)
                row = (
                    await conn.execute(
                        text(
                            f"UPDATE clubs SET {assignments}, updated_at = :now "
                            "WHERE code = :code RETURNING *"
                        ),
                        {**values, "code": code, "now": self.ledger.clock()},
                    )
                ).one()
                await record_change(
                    conn,
                    "club",
                    code,
                    "update",
                    actor,
                    msgspec.to_builtins(club_view(before)),
                    msgspec.to_builtins(club_view(row)),
                )
            return club_view(row)

    async def clubs(self) -> list[ClubView]:
        async with self.engine.connect() as conn:
            return [
                club_view(r) for r in await conn.execute(text("SELECT * FROM clubs ORDER BY code"))
            ]

    async def _club(self, conn: AsyncConnection, code: str, lock: bool = False):
        row = (
            await conn.execute(
                text("SELECT * FROM clubs WHERE code = :code" + (" FOR UPDATE" if lock else "")),
                {"code": code},
            )
        ).first()
        if row is None:
            raise ClubNotFound(f"no club {code!r}", club=code)
        return row

    # -- members ------------------------------------------------------------------

    async def _membership(self, conn: AsyncConnection, code: str, member_id: str, lock: bool):
        return (
            await conn.execute(
                text(
                    MEMBERSHIP
                    + "WHERE m.club_code = :code AND m.member_id = :member"
                    + (" FOR UPDATE OF m" if lock else "")
                ),
                {"code": code, "member": member_id},
            )
        ).first()

    async def join(self, member_id: str, code: str) -> MembershipView:
        """Join a club: the membership waits for its fee (pending_payment)."""
        now = self.ledger.clock()
        async with begin(self.engine) as conn:
            await self._club(conn, code)
            await active_member(conn, member_id)
            found = await self._membership(conn, code, member_id, lock=True)
            check_join(found.status if found else None)
            if found is None:
                await conn.execute(
                    text(
                        "INSERT INTO club_memberships (club_code, member_id, status, joined_at) "
                        "VALUES (:code, :member, 'pending_payment', :now)"
                    ),
                    {"code": code, "member": member_id, "now": now},
                )
            else:
                # Joining again after a cancellation: the welcome bonus was paid once.
                await conn.execute(
                    text(
                        "UPDATE club_memberships SET status = 'pending_payment', joined_at = :now, "
                        "cancel_requested_at = NULL, ended_at = NULL WHERE id = :id"
                    ),
                    {"id": found.id, "now": now},
                )
            return membership_view(await self._membership(conn, code, member_id, lock=False))

    async def cancel(self, member_id: str, code: str) -> MembershipView:
        """Cancel: a running paid term keeps its benefits to its end (no
        refund), anything else ends now; cancelling again changes nothing."""
        now = self.ledger.clock()
        async with begin(self.engine) as conn:
            await self._club(conn, code)
            found = await self._membership(conn, code, member_id, lock=True)
            if found is None:
                raise MembershipNotFound(
                    f"member {member_id!r} is not in club {code!r}", club=code, member_id=member_id
                )
            if found.status != "cancelled" and found.cancel_requested_at is None:
                status = after_cancel(found.status)
                await conn.execute(
                    text(
                        "UPDATE club_memberships SET status = :status, cancel_requested_at = :now, "
                        "ended_at = :ended WHERE id = :id"
                    ),
                    {
                        "id": found.id,
                        "status": status,
                        "now": now,
                        "ended": now if status == "cancelled" else None,
                    },
                )
            return membership_view(await self._membership(conn, code, member_id, lock=False))

    async def memberships(self, member_id: str) -> list[MembershipView]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(MEMBERSHIP + "WHERE m.member_id = :member ORDER BY m.club_code"),
                {"member": member_id},
            )
            return [membership_view(r) for r in rows]

    # -- fees -----------------------------------------------------------------------

    async def pay(self, payment: PaymentInput, actor: str) -> PaymentView:
        """Record a fee payment: the term it buys, the membership active, and
        on the first payment the welcome bonus; once per payment reference."""
        reference = payment.payment_reference
        _require(
            0 < len(reference) <= MAX_REFERENCE and reference.isprintable(),
            "payment_reference",
            f"1-{MAX_REFERENCE} printable characters",
        )
        now = self.ledger.clock()

        async def body(conn: AsyncConnection) -> PaymentView:
            club = await self._club(conn, payment.club)
            found = await self._membership(conn, payment.club, payment.member_id, lock=True)
            stored = (
                await conn.execute(
                    text("SELECT * FROM club_payments WHERE payment_reference = :ref"),
                    {"ref": payment.payment_reference},
                )
            ).first()
            if stored is not None:
                return _same_payment(stored, payment)
            if found is None:
                raise MembershipNotFound(
                    f"member {payment.member_id!r} has not joined club {payment.club!r}",
                    club=payment.club,
                    member_id=payment.member_id,
                )
            await active_member(conn, payment.member_id)
            if (payment.amount_minor, payment.currency) != (club.fee_minor, club.currency):
                raise FeeMismatch(
                    f"the fee of {club.code!r} is {club.fee_minor} {club.currency}, "
                    f"not {payment.amount_minor} {payment.currency}",
                    fee_minor=club.fee_minor,
                    currency=club.currency,
                )
            term = next_term(
                found.status,
                found.paid_until,
                found.cancel_requested_at is not None,
                now,
                club.term_months,
            )
            welcome, entry_id = 0, found.welcome_entry_id
            if entry_id is None and club.welcome_points > 0:
                (posted,) = await self.ledger.earn_many_in(
                    conn,
                    [
                        Earn(
                            payment.member_id,
                            club.partner_id,
                            welcome_reference(found.id),
                            (club_line(club.welcome_points, club.code, "welcome bonus"),),
                            effective_at=now,
                        )
                    ],
                )
                if isinstance(posted, DuplicatePartnerReference):
                    raise posted
                welcome, entry_id = posted.points, posted.entry_id
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO club_payments (payment_reference, membership_id, club_code, "
                        "member_id, amount_minor, currency, paid_at, term_starts_at, "
                        "term_ends_at, renewal, welcome_points, recorded_by) VALUES (:ref, "
                        ":membership, :club, :member, :amount, :currency, :now, :starts, :ends, "
                        ":renewal, :welcome, :actor) "
                        "ON CONFLICT (payment_reference) DO NOTHING RETURNING *"
                    ),
                    {
                        "ref": payment.payment_reference,
                        "membership": found.id,
                        "club": club.code,
                        "member": payment.member_id,
                        "amount": payment.amount_minor,
                        "currency": payment.currency,
                        "now": now,
                        "starts": term.starts_at,
                        "ends": term.ends_at,
                        "renewal": term.renewal,
                        "welcome": welcome,
                        "actor": actor,
                    },
                )
            ).first()
            if row is None:
                # Recorded meanwhile for another membership (this one's calls
                # queue on its row): the whole call rolls back.
                raise PaymentReferenceReused(
                    f"payment reference {payment.payment_reference!r} was recorded for "
                    "another payment",
                    payment_reference=payment.payment_reference,
                )
            await conn.execute(
                text(
                    "UPDATE club_memberships SET status = 'active', paid_until = :ends, "
                    "started_at = coalesce(started_at, :starts), ended_at = NULL, "
                    "welcome_entry_id = :entry WHERE id = :id"
                ),
                {"id": found.id, "ends": term.ends_at, "starts": term.starts_at, "entry": entry_id},
            )
            return payment_view(row)

        return await self.ledger.atomically(body)

    # -- the lapse job ----------------------------------------------------------------

    async def lapses_due(self, now: datetime) -> int:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(text(f"SELECT count(*) FROM ({LAPSING}) AS due"), {"now": now})
            ).scalar_one()

    async def lapse(self, now: datetime, limit: int) -> int:
        """Active memberships whose paid term ended by `now` become lapsed (or
        cancelled, when the member cancelled): one statement, at most `limit`
        rows, skipping rows a payment holds."""
        async with begin(self.engine) as conn:
            rows = await conn.execute(
                text(
                    "UPDATE club_memberships m SET status = CASE WHEN m.cancel_requested_at "
                    "IS NULL THEN 'lapsed' ELSE 'cancelled' END, ended_at = m.paid_until "
                    f"WHERE m.id IN ({LAPSING} ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED) "
                    "AND m.status = 'active' AND m.paid_until <= :now RETURNING m.id"
                ),
                {"now": now, "limit": limit},
            )
            return len(rows.all())
