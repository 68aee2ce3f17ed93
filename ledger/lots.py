"""Lot allocation: which lots a debit consumes and which a restoration refills.

Pure functions over plain data. Debits take the earliest-expiring lots first
(never-expiring lots last); restorations refill the latest-expiring consumed
lots first, so a partial refund leaves the soonest-expiring points spent.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class OpenLot:
    lot_id: int
    remaining: int
    expires_at: datetime | None
    earn_entry_id: int | None = None


@dataclass(frozen=True, slots=True)
class ConsumedLot:
    """Points an entry took from a lot and has not yet given back."""

    lot_id: int
    outstanding: int
    expires_at: datetime | None


def _expiry_order(expires_at: datetime | None, lot_id: int) -> tuple[int, datetime | None, int]:
    return (1, None, lot_id) if expires_at is None else (0, expires_at, lot_id)


def allocate_debit(
    lots: Sequence[OpenLot], amount: int, *, prefer_earning: int | None = None
) -> tuple[list[tuple[int, int]], int]:
    """Take `amount` from lots, earliest expiry first.

    With `prefer_earning`, lots produced by that earning go first (a clawback
    takes back the returned purchase's own points before any others).
    Returns [(lot_id, taken)] and the part no lot could cover (debt).
    """
    if amount < 0:
        raise ValueError("amount must not be negative")

    def order(lot: OpenLot):
        preferred = 0 if prefer_earning is not None and lot.earn_entry_id == prefer_earning else 1
        return (preferred, *_expiry_order(lot.expires_at, lot.lot_id))

    taken: list[tuple[int, int]] = []
    left = amount
    for lot in sorted(lots, key=order):
        if left == 0:
            break
        take = min(lot.remaining, left)
        if take > 0:
            taken.append((lot.lot_id, take))
            left -= take
    return taken, left


def allocate_restore(
    consumed: Sequence[ConsumedLot], amount: int
) -> tuple[list[tuple[int, int]], int]:
    """Give back `amount` to consumed lots, latest expiry first.

    Returns [(lot_id, given)] and the part that had no consumed lot to go to.
    """
    if amount < 0:
        raise ValueError("amount must not be negative")
    given: list[tuple[int, int]] = []
    left = amount
    for lot in sorted(consumed, key=lambda c: _expiry_order(c.expires_at, c.lot_id), reverse=True):
        if left == 0:
            break
        give = min(lot.outstanding, left)
        if give > 0:
            given.append((lot.lot_id, give))
            left -= give
    return given, left


def prorate(amounts: Sequence[int], part: int, whole: int) -> list[int]:
    """Split `part` of `whole` across `amounts` (all positive, summing to `whole`).

    Each share is floor(amount * part / whole); the few points the floors leave
    over go to the largest remainders (ties: earlier lines). Shares sum to
    exactly `part` and never exceed their amount.
    """
    if not 0 <= part <= whole or sum(amounts) != whole or any(a <= 0 for a in amounts):
        raise ValueError("prorate needs positive amounts summing to whole and 0 <= part <= whole")
    shares = [a * part // whole for a in amounts]
    remainders = sorted(range(len(amounts)), key=lambda i: (-(amounts[i] * part % whole), i))
    for i in remainders[: part - sum(shares)]:
        shares[i] += 1
    return shares
