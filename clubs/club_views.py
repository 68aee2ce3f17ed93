"""What callers send to the clubs and get back (clubs/membership.py): a club
(its input, an admin's change, its view), a membership as its member sees
it, a fee payment and its record; and the stored rows read into the views."""

from datetime import datetime

import msgspec


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


def club_view(row) -> ClubView:
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


def membership_view(row) -> MembershipView:
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


def payment_view(row) -> PaymentView:
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
