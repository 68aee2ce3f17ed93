"""The family pool's rules as pure functions over plain data: who may join
(room for adults and children, the cool-off after leaving), and which
members' lots a pooled redemption spends.

A pooled redemption spends the pool's soonest-expiring miles first, whoever
holds them: all members' open lots in one expiry order (never-expiring lots
last, then by lot id, as ledger/lots.py orders one member's), each member
giving at most what their `available` balance allows. Restricted to one
member, the lots taken are a prefix of that member's lots in the ledger's own
order, so a burn of that member's share (which the ledger allocates
earliest-expiry first) consumes exactly these lots.
"""

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

ROLES = ("adult", "child")


@dataclass(frozen=True, slots=True)
class PoolRules:
    """Miles & More's: two adults and five children, six months apart."""

    max_adults: int = 2
    max_children: int = 5
    cool_off_months: int = 6

    def limit(self, role: str) -> int:
        return self.max_adults if role == "adult" else self.max_children


@dataclass(frozen=True, slots=True)
class PoolLot:
    member_id: str
    lot_id: int
    remaining: int
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class PooledTake:
    member_id: str
    lot_id: int
    amount: int


def has_room(roles: Sequence[str], role: str, rules: PoolRules) -> bool:
    """Whether a pool whose members have `roles` takes one more `role`."""
    return sum(1 for r in roles if r == role) < rules.limit(role)


def add_months(at: datetime, months: int) -> datetime:
    """The same day `months` later (the month's last day when it is shorter)."""
    index = at.year * 12 + at.month - 1 + months
    year, month = divmod(index, 12)
    day = min(at.day, calendar.monthrange(year, month + 1)[1])
    return at.replace(year=year, month=month + 1, day=day)


def may_join_from(last_left_at: datetime | None, rules: PoolRules) -> datetime | None:
    """When a member who last left a pool at `last_left_at` may join one again
    (None: never left, no cool-off)."""
    if last_left_at is None:
        return None
    return add_months(last_left_at.astimezone(UTC), rules.cool_off_months)


def _order(lot: PoolLot) -> tuple[int, datetime | None, int]:
    return (1, None, lot.lot_id) if lot.expires_at is None else (0, lot.expires_at, lot.lot_id)


def allocate_pooled(
    lots: Sequence[PoolLot], spendable: Mapping[str, int], amount: int
) -> tuple[list[PooledTake], int]:
    """Take `amount` from the pool's lots, soonest expiry first across the
    members, each member giving at most `spendable[member]` (their available
    points; a member missing from it gives nothing). Returns the takes in the
    order taken and the part the pool could not cover."""
    if amount < 0:
        raise ValueError("amount must not be negative")
    left_of = {m: max(points, 0) for m, points in spendable.items()}
    takes: list[PooledTake] = []
    left = amount
    for lot in sorted(lots, key=_order):
        if left == 0:
            break
        take = min(lot.remaining, left, left_of.get(lot.member_id, 0))
        if take > 0:
            takes.append(PooledTake(lot.member_id, lot.lot_id, take))
            left_of[lot.member_id] -= take
            left -= take
    return takes, left


def shares(takes: Sequence[PooledTake]) -> dict[str, int]:
    """Each member's part of a pooled redemption, by member id."""
    parts: dict[str, int] = {}
    for take in takes:
        parts[take.member_id] = parts.get(take.member_id, 0) + take.amount
    return dict(sorted(parts.items()))
