"""The posting engine: writes one journal entry with its postings, balance
updates and lot movements inside the caller's transaction.

Lock order, the same in every transaction, keeps concurrent postings free of
deadlocks:
1. the operation's own rows (idempotency key, hold, pending points, reversal
   tracker, a partner's purchase, budgeted promotions);
2. every member the transaction touches, all in one statement, in address
   order: each member's `available` balance row is that member's mutex. No
   transaction writes a member's balances or lots, or reads what it decides
   on from them (or from the member's tier, coupons, promotion usage) before
   it holds that member's mutex, and a transaction that holds some members
   never asks for another one later (`LockOrderError`), so two transactions
   can never wait for each other on member rows;
3. hot-account slots (partner, programme) in address order, one statement.
   Hot accounts take a random slot per entry, so concurrent accruals from one
   partner do not queue on one row.
"""

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import ASSETS, PTS, QP, Address, member_account, member_of
from ledger.errors import (
    DuplicatePartnerReference,
    InsufficientPoints,
    InvalidAccount,
    InvalidAmount,
    LockOrderError,
    UnbalancedEntry,
)
from ledger.expiry import ExpiryPolicy
from ledger.lots import ConsumedLot, OpenLot, allocate_debit, allocate_restore

LOCKED_MEMBERS = (
    "ledger.locked_members"  # conn.info key: members whose mutex this transaction holds
)


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


@dataclass(frozen=True, slots=True)
class BalanceRow:
    balance: int
    version: int


@dataclass(frozen=True, slots=True)
class PostedEntry:
    entry_id: int
    member_balances: Mapping[tuple[str, str], BalanceRow]


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


def _soonest_expiry_first(lot: CarriedLot) -> tuple[bool, datetime]:
    return (lot.expires_at is None, lot.expires_at or lot.earned_at)


def _held_members(conn: AsyncConnection, wanted: set[str]) -> set[str]:
    """The members whose mutex this transaction holds (empty: none yet). A
    transaction that holds some may not ask for others (`LockOrderError`)."""
    held: set[str] = conn.info.setdefault(LOCKED_MEMBERS, set())
    if held and not wanted <= held:
        raise LockOrderError(
            f"members {sorted(wanted - held)} asked for after {sorted(held)} were locked"
        )
    return held


class Journal:
    """Posts entries; holds the pieces of configuration posting depends on."""

    def __init__(self, expiry_policy: ExpiryPolicy, hot_slots: int = 8) -> None:
        self.expiry_policy = expiry_policy
        self.hot_slots = hot_slots

    async def lock_members(
        self, conn: AsyncConnection, member_ids: Iterable[str]
    ) -> dict[str, BalanceRow]:
        """Take the mutex of every member this transaction will touch, in one
        statement, in address order (creating their `available` rows on first
        use). Returns each member's available balance as locked.

        A transaction takes its members once: asking again for members it
        already holds is free, asking for a new one raises `LockOrderError`."""
        wanted = set(member_ids)
        held = _held_members(conn, wanted)
        if not wanted or held:
            return {}
        accounts = [member_account(m, "available") for m in wanted]
        # ON CONFLICT DO UPDATE (a no-op) locks the row even when another
        # transaction created it after this statement's snapshot.
        rows = await conn.execute(
            text(
                "INSERT INTO balances AS b (account, asset, slot, member_id) "
                "SELECT a, 'PTS', 0, split_part(a, ':', 2) "
                'FROM unnest(CAST(:accounts AS text[])) AS t(a) ORDER BY a COLLATE "C" '
                "ON CONFLICT (account, asset, slot) DO UPDATE SET balance = b.balance "
                "RETURNING member_id, balance, version"
            ),
            {"accounts": accounts},
        )
        held.update(wanted)
        return {r.member_id: BalanceRow(r.balance, r.version) for r in rows}

    async def post(self, conn: AsyncConnection, draft: EntryDraft, now: datetime) -> PostedEntry:
        check_balanced(draft.postings)
        postings = list(draft.postings)
        members = {m for p in postings if (m := member_of(p.account))} | set(draft.lot_effects)
        for posting in postings:
            if posting.account.endswith(":available") and (
                member_of(posting.account) not in draft.lot_effects
            ):
                raise InvalidAmount(f"a posting on {posting.account} needs a lot effect")
        entry_id = await self._insert_entry(conn, draft)
        # Member rows first: when the transaction holds no member yet, this
        # upsert is its member lock step (each member's available row, the
        # mutex, rides along with a zero change); it returns the new balances,
        # from which the lot effects work under that lock.
        held = _held_members(conn, members)
        member_postings = [p for p in postings if member_of(p.account)]
        if not held:
            member_postings += [
                Posting(member_account(m, "available"), PTS, 0) for m in sorted(members)
            ]
            held.update(members)
        balances = await self._apply_balances(conn, member_postings)
        movements: list[dict[str, object]] = []
        new_lots: set[int] = set()
        for member_id, effect in sorted(draft.lot_effects.items()):
            account = member_account(member_id, "available")
            delta = sum(p.amount for p in postings if p.account == account and p.asset == PTS)
            before = balances[(account, PTS)].balance - delta
            await self._apply_lot_effect(
                conn, entry_id, member_id, effect, delta, before, now, movements, new_lots
            )
        # Then the hot slots, in address order.
        await self._apply_balances(conn, [p for p in postings if not member_of(p.account)])
        await self._insert_movements(conn, movements, new_lots)
        await self._insert_postings(conn, entry_id, postings)
        return PostedEntry(entry_id, balances)

    async def _insert_entry(self, conn: AsyncConnection, draft: EntryDraft) -> int:
        entry_id = (
            await conn.execute(
                text(
                    "INSERT INTO journal_entries (kind, member_id, partner_id, "
                    "partner_reference, reverses_entry_id, hold_id, effective_at, "
                    "posted_by, reason, breakdown) VALUES (:kind, :member_id, "
                    ":partner_id, :partner_reference, :reverses_entry_id, :hold_id, "
                    ":effective_at, :posted_by, :reason, CAST(:breakdown AS jsonb)) "
                    "ON CONFLICT (partner_id, partner_reference) "
                    "WHERE partner_reference IS NOT NULL DO NOTHING RETURNING id"
                ),
                {
                    "kind": draft.kind,
                    "member_id": draft.member_id,
                    "partner_id": draft.partner_id,
                    "partner_reference": draft.partner_reference,
                    "reverses_entry_id": draft.reverses_entry_id,
                    "hold_id": draft.hold_id,
                    "effective_at": draft.effective_at,
                    "posted_by": draft.posted_by,
                    "reason": draft.reason,
                    "breakdown": msgspec.json.encode(list(draft.breakdown)).decode(),
                },
            )
        ).scalar_one_or_none()
        if entry_id is None:
            raise DuplicatePartnerReference(
                f"partner {draft.partner_id} already used reference {draft.partner_reference!r}",
                partner_reference=draft.partner_reference,
            )
        return entry_id

    async def _apply_lot_effect(
        self,
        conn: AsyncConnection,
        entry_id: int,
        member_id: str,
        effect: LotEffect,
        delta: int,
        balance: int,
        now: datetime,
        movements: list[dict[str, object]],
        new_lots: set[int],
    ) -> None:
        """Move the member's lots for a change of `delta` to `available`.

        Points given back to a lot whose expiry passed meanwhile stay in that
        lot: the next expiry run moves them to program:expired, unless the
        member is protected from expiry then, like any other expired lot."""

        def move(lot_id: int, amount: int, origin: int | None = None) -> None:
            movements.append(
                {"entry_id": entry_id, "lot_id": lot_id, "amount": amount, "origin": origin}
            )

        if isinstance(effect, (Spend, Clawback, ConsumeLots)):
            if delta >= 0:
                raise InvalidAmount("a debit lot effect needs a debit of available points")
            if isinstance(effect, ConsumeLots):
                takes = list(effect.takes)
            else:
                if isinstance(effect, Spend) and balance + delta < 0:
                    raise InsufficientPoints(
                        f"member {member_id} has {max(balance, 0)} points available, "
                        f"{-delta} needed",
                        available=max(balance, 0),
                        requested=-delta,
                    )
                prefer = effect.earn_entry_id if isinstance(effect, Clawback) else None
                takes, _debt = allocate_debit(
                    await self.open_lots(conn, member_id), -delta, prefer_earning=prefer
                )
            for lot_id, take in takes:
                move(lot_id, -take)
            return

        if delta <= 0:
            raise InvalidAmount("a credit lot effect needs a credit of available points")
        into_lots = delta - min(delta, max(-balance, 0))  # debt is repaid first
        if into_lots == 0:
            return
        if isinstance(effect, NewLot):
            new_lots.add(await self._new_lot(conn, entry_id, member_id, into_lots, effect, move))
            return
        if isinstance(effect, CarryLots):
            if sum(lot.amount for lot in effect.lots) != delta:
                raise InvalidAmount("carried lots must add up to the credit")
            repay = delta - into_lots
            for lot in sorted(effect.lots, key=_soonest_expiry_first):
                kept = lot.amount - min(repay, lot.amount)
                repay -= lot.amount - kept
                if kept:
                    new = NewLot(lot.source, lot.earned_at, lot.earn_entry_id)
                    new_lots.add(
                        await self._new_lot(
                            conn, entry_id, member_id, kept, new, move, lot.expires_at
                        )
                    )
            return
        consumed = await self._consumed_lots(conn, effect.origin_entry_id)
        given, unplaced = allocate_restore(consumed, into_lots)
        for lot_id, amount in given:
            move(lot_id, amount, effect.origin_entry_id)
        if unplaced:
            fallback = NewLot("restore", now)
            new_lots.add(await self._new_lot(conn, entry_id, member_id, unplaced, fallback, move))

    async def _new_lot(
        self, conn, entry_id, member_id, amount, effect: NewLot, move, expires_at=...
    ) -> int:
        """Insert a lot holding `amount` (its creating movement is recorded too),
        expiring by the expiry policy unless `expires_at` is given."""
        lot_id = (
            await conn.execute(
                text(
                    "INSERT INTO lots (member_id, source_entry_id, earn_entry_id, amount, "
                    "remaining, earned_at, expires_at, source) VALUES (:member_id, :entry_id, "
                    ":earn_entry_id, :amount, :amount, :earned_at, :expires_at, :source) "
                    "RETURNING id"
                ),
                {
                    "member_id": member_id,
                    "entry_id": entry_id,
                    "earn_entry_id": effect.earn_entry_id
                    if effect.earn_entry_id is not None
                    else (entry_id if effect.source == "earn" else None),
                    "amount": amount,
                    "earned_at": effect.earned_at,
                    "expires_at": self.expiry_policy.expires_at(effect.earned_at)
                    if expires_at is ...
                    else expires_at,
                    "source": effect.source,
                },
            )
        ).scalar_one()
        move(lot_id, amount)
        return lot_id

    async def open_lots(self, conn: AsyncConnection, member_id: str) -> list[OpenLot]:
        rows = await conn.execute(
            text(
                "SELECT id, remaining, expires_at, earn_entry_id FROM lots "
                "WHERE member_id = :member_id AND remaining > 0"
            ),
            {"member_id": member_id},
        )
        return [OpenLot(r.id, r.remaining, r.expires_at, r.earn_entry_id) for r in rows]

    async def _consumed_lots(
        self, conn: AsyncConnection, origin_entry_id: int
    ) -> list[ConsumedLot]:
        rows = await conn.execute(
            text(
                "SELECT l.id, l.expires_at, -sum(m.amount) AS outstanding "
                "FROM lot_movements m JOIN lots l ON l.id = m.lot_id "
                "WHERE (m.entry_id = :origin AND m.amount < 0) "
                "   OR (m.origin_entry_id = :origin AND m.amount > 0) "
                "GROUP BY l.id, l.expires_at HAVING -sum(m.amount) > 0"
            ),
            {"origin": origin_entry_id},
        )
        return [ConsumedLot(r.id, r.outstanding, r.expires_at) for r in rows]

    async def _insert_movements(self, conn: AsyncConnection, movements, new_lots: set[int]) -> None:
        """Record lot movements and apply them to existing lots (new lots were
        inserted holding their amount)."""
        if not movements:
            return
        await conn.execute(
            text(
                "INSERT INTO lot_movements (entry_id, lot_id, amount, origin_entry_id) "
                "VALUES (:entry_id, :lot_id, :amount, :origin)"
            ),
            movements,
        )
        net: dict[int, int] = defaultdict(int)
        for movement in movements:
            if movement["lot_id"] not in new_lots:
                net[movement["lot_id"]] += movement["amount"]
        changed = sorted((lot_id, amount) for lot_id, amount in net.items() if amount)
        if changed:
            await conn.execute(
                text(
                    "UPDATE lots SET remaining = lots.remaining + c.amount FROM "
                    "unnest(CAST(:ids AS bigint[]), CAST(:amounts AS bigint[])) AS c(id, amount) "
                    "WHERE lots.id = c.id"
                ),
                {"ids": [i for i, _ in changed], "amounts": [a for _, a in changed]},
            )

    async def _insert_postings(self, conn, entry_id: int, postings: Sequence[Posting]) -> None:
        await conn.execute(
            text(
                "INSERT INTO postings (entry_id, account, asset, amount, member_id) "
                "SELECT :entry_id, a, s, v, m FROM unnest(CAST(:accounts AS text[]), "
                "CAST(:assets AS text[]), CAST(:amounts AS bigint[]), CAST(:members AS text[])) "
                "AS t(a, s, v, m)"
            ),
            {
                "entry_id": entry_id,
                "accounts": [p.account for p in postings],
                "assets": [p.asset for p in postings],
                "amounts": [p.amount for p in postings],
                "members": [member_of(p.account) for p in postings],
            },
        )

    async def _apply_balances(
        self, conn: AsyncConnection, postings: Sequence[Posting]
    ) -> dict[tuple[str, str], BalanceRow]:
        if not postings:
            return {}
        deltas: dict[tuple[str, str], int] = defaultdict(int)
        for posting in postings:
            deltas[(posting.account, posting.asset)] += posting.amount
        rows = []
        for (account, asset), delta in sorted(deltas.items()):
            member_id = member_of(account)
            slot = 0 if member_id else random.randrange(self.hot_slots)
            rows.append((account, asset, slot, delta, member_id))
        result = await conn.execute(
            text(
                "INSERT INTO balances AS b (account, asset, slot, balance, version, member_id, "
                "updated_at) SELECT a, s, n, v, CAST(v <> 0 AS int), m, now() "
                "FROM unnest(CAST(:accounts AS text[]), "
                "CAST(:assets AS text[]), CAST(:slots AS smallint[]), CAST(:deltas AS bigint[]), "
                "CAST(:members AS text[])) AS t(a, s, n, v, m) "
                "ON CONFLICT (account, asset, slot) DO UPDATE SET "
                "balance = b.balance + EXCLUDED.balance, version = b.version + EXCLUDED.version, "
                "updated_at = now() RETURNING account, asset, balance, version, member_id"
            ),
            {
                "accounts": [r[0] for r in rows],
                "assets": [r[1] for r in rows],
                "slots": [r[2] for r in rows],
                "deltas": [r[3] for r in rows],
                "members": [r[4] for r in rows],
            },
        )
        return {
            (r.account, r.asset): BalanceRow(r.balance, r.version)
            for r in result
            if r.member_id is not None
        }
