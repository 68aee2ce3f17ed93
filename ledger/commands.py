"""What callers ask the ledger to do: plain, immutable command structs.

Amounts are positive integers of points unless said otherwise; `posted_by`
names who asks (partner:{id}, member:{id}, staff:{sub}, job:{name}).
"""

from datetime import datetime

import msgspec

from ledger.accounts import ASSETS, PTS, check_id
from ledger.errors import InvalidAmount, InvalidEffectiveTime, ReasonRequired

MAX_POINTS = 10**12


def check_points(value: int, what: str = "amount", *, signed: bool = False) -> int:
    if type(value) is not int:
        raise InvalidAmount(f"{what} must be an integer number of points")
    if (value == 0) if signed else (value <= 0):
        raise InvalidAmount(f"{what} must be {'non-zero' if signed else 'positive'}: {value}")
    if abs(value) > MAX_POINTS:
        raise InvalidAmount(f"{what} is larger than {MAX_POINTS}: {value}")
    return value


def check_reason(reason: str | None) -> str:
    # A reason says why in words: at least one letter or digit (blanks,
    # zero-width and other invisible characters say nothing).
    if not reason or not any(char.isalnum() for char in reason):
        raise ReasonRequired("a reason is required")
    return reason.strip()


class EarnLine(msgspec.Struct, frozen=True):
    """One line of an earning: why these points, and who pays for them."""

    amount: int
    asset: str = PTS
    reason: str = "base"
    # partner (the earning's) | program | partner:{id} (another partner paying
    # this line, e.g. a producer's share of its dealer's promotion)
    funder: str = "partner"
    kind: str = "base"  # base | category | tier | promotion | coupon | qualifying
    source: str | None = None  # the promotion, coupon, category or tier behind it

    def __post_init__(self) -> None:
        check_points(self.amount)
        if self.asset not in ASSETS:
            raise InvalidAmount(f"unknown asset {self.asset!r}")
        if self.funder not in ("partner", "program"):
            owner, _, partner_id = self.funder.partition(":")
            if owner != "partner" or not partner_id:
                raise InvalidAmount(
                    f"funder is 'partner', 'program' or 'partner:{{id}}', not {self.funder!r}"
                )
            check_id("partner", partner_id)


class Earn(msgspec.Struct, frozen=True):
    member_id: str
    partner_id: str
    partner_reference: str
    lines: tuple[EarnLine, ...]
    effective_at: datetime | None = None  # purchase time; default: now
    release_at: datetime | None = None  # in the future: points wait in `pending`

    def __post_init__(self) -> None:
        check_id("member", self.member_id)
        check_id("partner", self.partner_id)
        if not self.lines:
            raise InvalidAmount("an earning needs at least one line")
        if not self.partner_reference:
            raise InvalidAmount("partner_reference is required")

    @classmethod
    def simple(
        cls,
        member_id: str,
        partner_id: str,
        reference: str,
        points: int,
        qualifying_points: int = 0,
        **kwargs,
    ) -> "Earn":
        lines = [EarnLine(points)]
        if qualifying_points:
            lines.append(
                EarnLine(qualifying_points, "QP", "qualifying points", "program", "qualifying")
            )
        return cls(member_id, partner_id, reference, tuple(lines), **kwargs)


class Burn(msgspec.Struct, frozen=True):
    member_id: str
    partner_id: str
    partner_reference: str
    amount: int

    def __post_init__(self) -> None:
        check_id("member", self.member_id)
        check_id("partner", self.partner_id)
        check_points(self.amount)


class Authorise(msgspec.Struct, frozen=True):
    member_id: str
    partner_id: str
    amount: int
    partner_reference: str | None = None
    expires_in_seconds: int | None = None  # default: the ledger's hold TTL

    def __post_init__(self) -> None:
        check_id("member", self.member_id)
        check_id("partner", self.partner_id)
        check_points(self.amount)
        if self.expires_in_seconds is not None and not 0 < self.expires_in_seconds <= 30 * 86400:
            raise InvalidAmount("a hold lasts between 1 second and 30 days")


class Capture(msgspec.Struct, frozen=True):
    hold_id: int
    partner_id: str
    amount: int | None = None  # default: the whole hold
    partner_reference: str | None = None

    def __post_init__(self) -> None:
        check_id("partner", self.partner_id)
        if self.amount is not None:
            check_points(self.amount)


class Void(msgspec.Struct, frozen=True):
    hold_id: int
    partner_id: str


class Transfer(msgspec.Struct, frozen=True):
    from_member_id: str
    to_member_id: str
    amount: int

    def __post_init__(self) -> None:
        check_id("member", self.from_member_id)
        check_id("member", self.to_member_id)
        check_points(self.amount)


class Reverse(msgspec.Struct, frozen=True):
    entry_id: int
    amount: int | None = None  # points of the original to reverse; default: all that is left
    partner_id: str | None = None  # when a partner asks: must be the original's partner
    partner_reference: str | None = None  # the partner's reference for the return
    reason: str | None = None  # None: "reversal of <kind> <entry>"; given: not blank

    def __post_init__(self) -> None:
        if self.amount is not None:
            check_points(self.amount)
        if self.reason is not None:
            check_reason(self.reason)


class Adjust(msgspec.Struct, frozen=True):
    member_id: str
    amount: int  # signed: credit or debit of the member
    reason: str
    asset: str = PTS
    # Dated back (default: now); never after now, never in a closed period.
    effective_at: datetime | None = None
    # The entry this adjustment corrects (kept in the entry's breakdown).
    corrects_entry_id: int | None = None

    def __post_init__(self) -> None:
        check_id("member", self.member_id)
        check_points(self.amount, signed=True)
        check_reason(self.reason)
        if self.asset not in ASSETS:
            raise InvalidAmount(f"unknown asset {self.asset!r}")
        if self.effective_at is not None and self.effective_at.tzinfo is None:
            raise InvalidEffectiveTime("effective_at needs a time zone (e.g. 2026-04-30T12:00Z)")
        if self.corrects_entry_id is not None and (
            type(self.corrects_entry_id) is not int or self.corrects_entry_id <= 0
        ):
            raise InvalidAmount("corrects_entry_id must be a positive entry id")


class PostingInput(msgspec.Struct, frozen=True):
    account: str
    asset: str
    amount: int


class PostEntry(msgspec.Struct, frozen=True):
    """A generic entry between partner, programme and member `qp` accounts.

    Member points accounts (available, pending, held) carry lots, holds and
    pending releases, so only the operations above may touch them."""

    postings: tuple[PostingInput, ...]
    reason: str
    partner_id: str | None = None
    partner_reference: str | None = None

    def __post_init__(self) -> None:
        check_reason(self.reason)
