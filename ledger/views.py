"""What the ledger answers: receipts of operations and read models."""

from datetime import datetime

import msgspec


class Balances(msgspec.Struct, frozen=True):
    """A member's balances. `version` grows with every change to any of them."""

    member_id: str
    available: int
    pending: int
    held: int
    qp: int
    version: int


class ExpiringPoints(msgspec.Struct, frozen=True):
    expires_at: datetime
    points: int


class MemberBalances(msgspec.Struct, frozen=True):
    balances: Balances
    expiring: tuple[ExpiringPoints, ...]
    expiring_within_days: int
    # When `expiring` next changes with nothing posted (a lot's expiry comes
    # within the window); None: not before the next posting.
    expiring_changes_at: datetime | None = None

    @property
    def expiring_total(self) -> int:
        return sum(e.points for e in self.expiring)


class HoldView(msgspec.Struct, frozen=True):
    hold_id: int
    member_id: str
    partner_id: str
    amount: int
    captured: int
    status: str
    expires_at: datetime


class Receipt(msgspec.Struct, frozen=True):
    """The result of an operation: the entry it posted and the member's balances."""

    entry_id: int
    kind: str
    member_id: str | None
    amount: int
    balances: Balances | None = None
    hold: HoldView | None = None
    related_entry_ids: tuple[int, ...] = ()
    release_at: datetime | None = None


class PostedEarning(msgspec.Struct, frozen=True):
    """One earning of `LedgerService.earn_many_in`: its entry, the PTS it
    credited, and when they leave `pending` (None: credited to `available`)."""

    entry_id: int
    points: int
    release_at: datetime | None = None


class AssetBalance(msgspec.Struct, frozen=True):
    asset: str
    balance: int
    version: int


class AccountBalance(msgspec.Struct, frozen=True):
    account: str
    balances: tuple[AssetBalance, ...]


class PostingView(msgspec.Struct, frozen=True):
    account: str
    asset: str
    amount: int


class EntryView(msgspec.Struct, frozen=True):
    entry_id: int
    kind: str
    member_id: str | None
    partner_id: str | None
    partner_reference: str | None
    reverses_entry_id: int | None
    hold_id: int | None
    effective_at: datetime
    created_at: datetime
    posted_by: str
    reason: str | None
    breakdown: list[dict]
    postings: tuple[PostingView, ...]


class HistoryPage(msgspec.Struct, frozen=True):
    member_id: str
    entries: tuple[EntryView, ...]
    next_cursor: str | None
