"""Brand clubs with a fee: the clubs (admin), members joining and cancelling,
fee payments, and the two scheduled jobs (lapse, anniversary gift).

The fee is money, not points: a payment is a row of `club_payments`
(append-only, amounts in minor units, unique by the payment reference, which
is the idempotency of the call: the same reference with the same payment
answers the stored payment again; with another amount, member or club it is
refused). Each payment pays one term (clubs/terms.py).

The club's points are the brand's: the welcome bonus (once, when the
membership first becomes active) and the anniversary gift (once per
membership and year) are earnings at the brand partner, funded by its
`partner:{id}:issued` account and charged on its settlement statement as
promotion points. The brand runs the club and is paid its fees, so the
points it gives its members are points it buys, like its own promotions;
the programme's `program:promotions` pays only for programme campaigns. The
entries' partner references (`club-{membership}-welcome`,
`club-{membership}-anniversary-{year}`) are unique per partner forever, so
neither can post twice whoever runs it. The club's earn multiplier is a
promotion naming the club (partners/rulebook.py `clubs`), evaluated at the
purchase time by the earning engine.

Lock order: the membership row, then the member (the posting).
"""

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

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
from ledger.commands import Earn, EarnLine
from ledger.database import begin
from ledger.errors import DuplicatePartnerReference, MemberNotActive, MemberNotFound
from ledger.jobs import Batch
from ledger.service import LedgerService
from partners.audit import record_change
from partners.errors import PartnerNotFound
from partners.money import MINOR_UNIT_EXPONENTS
from partners.programme import MAX_REFERENCE
from partners.rule_inputs import TIER_CODE

MAX_FEE_MINOR = 10**10
MAX_POINTS = 10**9


class ClubInput(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    name: str
    partner_id: str  # the brand: paid the fees, funds the club's points
    fee_minor: int
    currency: str
    term_months: int = 12
    welcome_points: int = 0
    anniversary_points: int = 0


class ClubChange(msgspec.Struct, forbid_unknown_fields=True):
    """What an admin changes on a club; the fee applies to payments from now."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    fee_minor: int | msgspec.UnsetType = msgspec.UNSET
    welcome_points: int | msgspec.UnsetType = msgspec.UNSET
    anniversary_points: int | msgspec.UnsetType = msgspec.UNSET


class ClubView(msgspec.Struct, frozen=True):
    code: str
    name: str
    partner_id: str
    fee_minor: int
    currency: str
    term_months: int
    welcome_points: int
    anniversary_points: int


class MembershipView(msgspec.Struct, frozen=True):
    club: str
    club_name: str
    member_id: str
    status: str  # pending_payment | active | lapsed | cancelled
    joined_at: datetime
    started_at: datetime | None  # first active
    paid_until: datetime | None  # the end of the last paid term
    cancels_at: datetime | None  # a cancellation waiting for the term's end
    ended_at: datetime | None  # lapsed or cancelled at
    fee_minor: int
    currency: str


class PaymentInput(msgspec.Struct, forbid_unknown_fields=True):
    payment_reference: str  # the payment provider's reference: unique forever
    club: str
    member_id: str
    amount_minor: int
    currency: str


class PaymentView(msgspec.Struct, frozen=True):
    payment_reference: str
    club: str
    member_id: str
    amount_minor: int
    currency: str
    paid_at: datetime
    term_starts_at: datetime
    term_ends_at: datetime
    renewal: bool
    welcome_points: int  # posted with this payment (the first one only)


def _require(condition: bool, field: str, detail: str) -> None:
    if not condition:
        raise InvalidClub(field, detail)


def _check_points(value: int, field: str) -> None:
    _require(0 <= value <= MAX_POINTS, field, f"0 to {MAX_POINTS:,} points")


def _check_fee(value: int) -> None:
    _require(0 < value <= MAX_FEE_MINOR, "fee_minor", "a positive amount in minor units")


def _club(row) -> ClubView:
    return ClubView(
        row.code,
        row.name,
        row.partner_id,
        row.fee_minor,
        row.currency,
        row.term_months,
        row.welcome_points,
        row.anniversary_points,
    )


MEMBERSHIP = (
    "SELECT m.*, c.name AS club_name, c.fee_minor, c.currency FROM club_memberships m "
    "JOIN clubs c ON c.code = m.club_code "
)


def _membership(row) -> MembershipView:
    waiting = row.status == "active" and row.cancel_requested_at is not None
    return MembershipView(
        row.club_code,
        row.club_name,
        row.member_id,
        row.status,
        row.joined_at,
        row.started_at,
        row.paid_until,
        row.paid_until if waiting else None,
        row.ended_at,
        row.fee_minor,
        row.currency,
    )


def _same_payment(stored, payment: PaymentInput) -> PaymentView:
    """The stored payment again when the call is the same, else the refusal."""
    recorded = (stored.club_code, stored.member_id, stored.amount_minor, stored.currency)
    asked = (payment.club, payment.member_id, payment.amount_minor, payment.currency)
    if recorded != asked:
        raise PaymentReferenceReused(
            f"payment reference {payment.payment_reference!r} was recorded for another payment",
            payment_reference=payment.payment_reference,
        )
    return _payment(stored)


def _payment(row) -> PaymentView:
    return PaymentView(
        row.payment_reference,
        row.club_code,
        row.member_id,
        row.amount_minor,
        row.currency,
        row.paid_at,
        row.term_starts_at,
        row.term_ends_at,
        row.renewal,
        row.welcome_points,
    )


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


def welcome_reference(membership_id: int) -> str:
    return f"club-{membership_id}-welcome"


def anniversary_reference(membership_id: int, year: int) -> str:
    return f"club-{membership_id}-anniversary-{year}"


def _club_line(points: int, club: str, what: str) -> EarnLine:
    return EarnLine(points, reason=f"club {club} {what}", kind="promotion", source=f"club-{club}")


# The latest anniversary (1st, 2nd, ...) of each started membership at :now
# with a paid term covering it, not gifted yet, its member active (UTC dates).
ANNIVERSARIES = """
WITH m AS (
    SELECT ms.id, ms.member_id, ms.club_code, c.partner_id, c.anniversary_points AS points,
           date_part('year', age(CAST(:now AS timestamptz) AT TIME ZONE 'UTC',
                                 ms.started_at AT TIME ZONE 'UTC'))::int AS years,
           ms.started_at
    FROM club_memberships ms JOIN clubs c ON c.code = ms.club_code
    JOIN members mb ON mb.id = ms.member_id AND mb.status = 'active'
    WHERE ms.started_at <= CAST(:now AS timestamptz) - interval '1 year'
      AND c.anniversary_points > 0),
due AS (
    SELECT m.*, ((m.started_at AT TIME ZONE 'UTC') + make_interval(years => m.years))
                AT TIME ZONE 'UTC' AS anniversary
    FROM m WHERE m.years >= 1)
SELECT due.*, CAST(date_part('year', due.anniversary AT TIME ZONE 'UTC') AS int) AS year
FROM due
WHERE EXISTS (SELECT 1 FROM club_payments p WHERE p.membership_id = due.id
              AND p.term_starts_at <= due.anniversary AND due.anniversary < p.term_ends_at)
  AND NOT EXISTS (SELECT 1 FROM club_gifts g WHERE g.membership_id = due.id
                  AND g.year = date_part('year', due.anniversary AT TIME ZONE 'UTC'))
ORDER BY due.id
"""

# Active memberships whose last paid term ended by :now.
LAPSING = "SELECT id FROM club_memberships WHERE status = 'active' AND paid_until <= :now"


class Clubs:
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
            view = _club(row)
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
                    msgspec.to_builtins(_club(before)),
                    msgspec.to_builtins(_club(row)),
                )
            return _club(row)

    async def clubs(self) -> list[ClubView]:
        async with self.engine.connect() as conn:
            return [_club(r) for r in await conn.execute(text("SELECT * FROM clubs ORDER BY code"))]

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
            return _membership(await self._membership(conn, code, member_id, lock=False))

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
            return _membership(await self._membership(conn, code, member_id, lock=False))

    async def memberships(self, member_id: str) -> list[MembershipView]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(MEMBERSHIP + "WHERE m.member_id = :member ORDER BY m.club_code"),
                {"member": member_id},
            )
            return [_membership(r) for r in rows]

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
                            (_club_line(club.welcome_points, club.code, "welcome bonus"),),
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
            return _payment(row)

        return await self.ledger.atomically(body)

    # -- jobs -------------------------------------------------------------------------

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

    async def anniversaries_due(self, now: datetime) -> Batch:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*) AS n, coalesce(sum(points), 0) AS p "
                        f"FROM ({ANNIVERSARIES}) AS due_gifts"
                    ),
                    {"now": now},
                )
            ).one()
        return Batch(int(row.n), int(row.p))

    async def give_anniversary_gifts(self, now: datetime, limit: int) -> Batch:
        """One batch of due anniversary gifts, posted at the clubs' brands in
        one transaction (a reference already used posts nothing)."""

        async def body(conn: AsyncConnection) -> Batch:
            due = (
                await conn.execute(
                    text(ANNIVERSARIES + " LIMIT :limit"), {"now": now, "limit": limit}
                )
            ).all()
            if not due:
                return Batch(0, 0)
            posted = await self.ledger.earn_many_in(
                conn,
                [
                    Earn(
                        row.member_id,
                        row.partner_id,
                        anniversary_reference(row.id, row.year),
                        (_club_line(row.points, row.club_code, f"anniversary gift {row.year}"),),
                        effective_at=now,
                    )
                    for row in due
                ],
            )
            gifts = [
                (row, result)
                for row, result in zip(due, posted, strict=True)
                if not isinstance(result, DuplicatePartnerReference)
            ]
            if gifts:
                await conn.execute(
                    text(
                        "INSERT INTO club_gifts (membership_id, year, anniversary, entry_id) "
                        "SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:years AS int[]), "
                        "CAST(:at AS timestamptz[]), CAST(:entries AS bigint[])) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    {
                        "ids": [row.id for row, _ in gifts],
                        "years": [row.year for row, _ in gifts],
                        "at": [row.anniversary for row, _ in gifts],
                        "entries": [result.entry_id for _, result in gifts],
                    },
                )
            return Batch(len(gifts), sum(result.points for _, result in gifts))

        return await self.ledger.atomically(body)
