"""What an entry to be posted is made of, and the checks every one passes
before the journal (ledger/journal.py) writes it: its postings, what a
posting on a member's `available` account does to that member's lots (the
lot effects), and the draft that carries them with the entry's facts.

Plain data: built by the operations (earn, burn, reversal, jobs, ...) and by
callers outside the ledger (the accrual path), checked here, posted by the
journal."""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ledger.accounts import ASSETS, PTS, QP, Address, member_account, member_of
from ledger.errors import InvalidAccount, InvalidAmount, UnbalancedEntry


@dataclass(frozen=True, slots=True)
class Posting:
    account: str
    asset: str
    amount: int  # signed: positive increases the account's balance


# What a posting on member:{id}:available does to that member's lots.
@dataclass(frozen=True, slots=True)
class NewLot:
    """Credit: repay any debt first, the rest becomes a new lot."""

    source: str
    earned_at: datetime
    earn_entry_id: int | None = None  # None: this entry is the earning


@dataclass(frozen=True, slots=True)
class RestoreLots:
    """Credit: give back what `origin_entry_id` consumed, original expiry kept."""

    origin_entry_id: int


@dataclass(frozen=True, slots=True)
class Spend:
    """Debit that may not overdraw (burn, hold, transfer, negative adjustment)."""


@dataclass(frozen=True, slots=True)
class Clawback:
    """Debit of a return: may push the balance below zero (debt)."""

    earn_entry_id: int | None = None


@dataclass(frozen=True, slots=True)
class ConsumeLots:
    """Debit of exactly these lots (expiry)."""

    takes: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class CarriedLot:
    amount: int
    earned_at: datetime
    expires_at: datetime | None
    earn_entry_id: int | None
    source: str


@dataclass(frozen=True, slots=True)
class CarryLots:
    """Credit: these lots, moved from another member (a merge), each keeping
    its earning time, expiry and earning; debt is repaid from the soonest
    expiring first."""

    lots: tuple[CarriedLot, ...]


LotEffect = NewLot | RestoreLots | Spend | Clawback | ConsumeLots | CarryLots


@dataclass(slots=True)
class EntryDraft:
    kind: str
    postings: list[Posting]
    effective_at: datetime
    posted_by: str
    member_id: str | None = None
    partner_id: str | None = None
    partner_reference: str | None = None
    reason: str | None = None
    breakdown: Sequence[Mapping[str, object]] = ()
    reverses_entry_id: int | None = None
    hold_id: int | None = None
    lot_effects: Mapping[str, LotEffect] = field(default_factory=dict)
    # An earning held back until then: what the entry posts to the member's
    # `pending` account becomes a pending earning (pending_points), written
    # in the posting statement itself.
    pending_until: datetime | None = None

    def pending_points(self) -> int:
        """What the entry posts to its member's `pending` account."""
        if self.member_id is None:
            return 0
        account = member_account(self.member_id, "pending")
        return sum(p.amount for p in self.postings if p.account == account and p.asset == PTS)


def check_balanced(postings: Sequence[Posting]) -> None:
    if len(postings) < 2:
        raise UnbalancedEntry("a journal entry needs at least two postings")
    totals: dict[str, int] = defaultdict(int)
    for posting in postings:
        if type(posting.amount) is not int or posting.amount == 0:
            raise InvalidAmount(f"posting amounts are non-zero integers: {posting}")
        if posting.asset not in ASSETS:
            raise InvalidAmount(f"unknown asset {posting.asset!r}")
        address = Address.parse(posting.account)
        if address.owner == "member" and (address.name == "qp") != (posting.asset == QP):
            raise InvalidAccount(
                f"{posting.account} holds {'QP' if address.name == 'qp' else 'PTS'} only"
            )
        totals[posting.asset] += posting.amount
    unbalanced = {asset: total for asset, total in totals.items() if total}
    if unbalanced:
        raise UnbalancedEntry(f"postings do not sum to zero per asset: {unbalanced}")


def check_draft(draft: EntryDraft) -> None:
    check_balanced(draft.postings)
    # The journal sends times as ISO strings: a naive one would be read in
    # the database session's time zone.
    if draft.effective_at.tzinfo is None or (
        draft.pending_until is not None and draft.pending_until.tzinfo is None
    ):
        raise ValueError("an entry's times carry their UTC offset")
    if draft.pending_until is not None and draft.pending_points() <= 0:
        raise InvalidAmount("a pending earning needs points posted to the member's pending")
    for posting in draft.postings:
        if posting.account.endswith(":available") and (
            member_of(posting.account) not in draft.lot_effects
        ):
            raise InvalidAmount(f"a posting on {posting.account} needs a lot effect")


def reads_lots(effect: LotEffect) -> bool:
    """Whether working out the effect reads the member's lots as they are now."""
    return isinstance(effect, (Spend, Clawback, RestoreLots))
