"""Lots as entries move them: what each lot effect of a posting call does
to its member's lots (a credit becomes a new lot after any debt is repaid;
a debit takes the earliest-expiring lots; a restoration refills the lots the
original took), worked out in draft order once the call's entries are
inserted (ledger/journal.py `post_many`), and written all at once: new lots
with their creating movements in one statement, movements of existing lots
and their remaining points in two more. The allocation itself is plain
functions (ledger/lots.py)."""

from collections import defaultdict
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.drafts import CarriedLot, CarryLots, Clawback, ConsumeLots, LotEffect, NewLot, Spend
from ledger.errors import InsufficientPoints, InvalidAmount
from ledger.expiry import ExpiryPolicy
from ledger.lots import ConsumedLot, OpenLot, allocate_debit, allocate_restore
from ledger.statements import statement


class LotWork:
    """What a call's lot effects do, worked out effect by effect in draft
    order and written all at once."""

    def __init__(self, conn: AsyncConnection, expiry_policy: ExpiryPolicy) -> None:
        self.conn, self.expiry_policy = conn, expiry_policy
        # (member, entry, earning, amount, earned at, expires at, source)
        self.created: list[tuple] = []
        # (entry, lot, amount, origin entry)
        self.moved: list[tuple[int, int, int, int | None]] = []

    def new(self, entry_id, member_id, amount, effect: NewLot, expires_at=...) -> None:
        earning = effect.earn_entry_id
        if earning is None and effect.source == "earn":
            earning = entry_id  # this entry is the earning
        expiry = (
            self.expiry_policy.expires_at(effect.earned_at) if expires_at is ... else expires_at
        )
        self.created.append(
            (member_id, entry_id, earning, amount, effect.earned_at, expiry, effect.source)
        )

    def move(self, entry_id: int, lot_id: int, amount: int, origin: int | None = None) -> None:
        self.moved.append((entry_id, lot_id, amount, origin))

    async def apply(
        self,
        entry_id: int,
        member_id: str,
        effect: LotEffect,
        delta: int,
        balance: int,
        now: datetime,
    ) -> None:
        """Work out what a change of `delta` to the member's `available` does to
        its lots (written later, all at once, by `write`).

        Points given back to a lot whose expiry passed meanwhile stay in that
        lot: the next expiry run moves them to program:expired, unless the
        member is protected from expiry then, like any other expired lot."""
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
                    await open_lots(self.conn, member_id), -delta, prefer_earning=prefer
                )
            for lot_id, take in takes:
                self.move(entry_id, lot_id, -take)
            return

        if delta <= 0:
            raise InvalidAmount("a credit lot effect needs a credit of available points")
        into_lots = delta - min(delta, max(-balance, 0))  # debt is repaid first
        if into_lots == 0:
            return
        if isinstance(effect, NewLot):
            self.new(entry_id, member_id, into_lots, effect)
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
                    self.new(entry_id, member_id, kept, new, lot.expires_at)
            return
        consumed = await consumed_lots(self.conn, effect.origin_entry_id)
        given, unplaced = allocate_restore(consumed, into_lots)
        for lot_id, amount in given:
            self.move(entry_id, lot_id, amount, effect.origin_entry_id)
        if unplaced:
            self.new(entry_id, member_id, unplaced, NewLot("restore", now))

    async def write(self) -> None:
        """New lots with their creating movements in one statement; movements of
        existing lots in one more, and their remaining points in a third."""
        if self.created:
            columns = list(zip(*self.created, strict=True))
            await self.conn.execute(
                statement(
                    "WITH created AS (INSERT INTO lots (member_id, source_entry_id, "
                    "earn_entry_id, amount, remaining, earned_at, expires_at, source) "
                    "SELECT m, e, ee, a, a, ea, x, s FROM unnest(CAST(:members AS text[]), "
                    "CAST(:entries AS bigint[]), CAST(:earnings AS bigint[]), "
                    "CAST(:amounts AS bigint[]), CAST(:earned AS timestamptz[]), "
                    "CAST(:expires AS timestamptz[]), CAST(:sources AS text[])) "
                    "AS t(m, e, ee, a, ea, x, s) RETURNING id, source_entry_id, amount) "
                    "INSERT INTO lot_movements (entry_id, lot_id, amount) "
                    "SELECT source_entry_id, id, amount FROM created"
                ),
                {
                    "members": list(columns[0]),
                    "entries": list(columns[1]),
                    "earnings": list(columns[2]),
                    "amounts": list(columns[3]),
                    "earned": list(columns[4]),
                    "expires": list(columns[5]),
                    "sources": list(columns[6]),
                },
            )
        if not self.moved:
            return
        await self.conn.execute(
            statement(
                "INSERT INTO lot_movements (entry_id, lot_id, amount, origin_entry_id) "
                "SELECT * FROM unnest(CAST(:entries AS bigint[]), CAST(:lots AS bigint[]), "
                "CAST(:amounts AS bigint[]), CAST(:origins AS bigint[]))"
            ),
            {
                "entries": [m[0] for m in self.moved],
                "lots": [m[1] for m in self.moved],
                "amounts": [m[2] for m in self.moved],
                "origins": [m[3] for m in self.moved],
            },
        )
        net: dict[int, int] = defaultdict(int)
        for _, lot_id, amount, _ in self.moved:
            net[lot_id] += amount
        changed = sorted((lot_id, amount) for lot_id, amount in net.items() if amount)
        if changed:
            await self.conn.execute(
                statement(
                    "UPDATE lots SET remaining = lots.remaining + c.amount FROM "
                    "unnest(CAST(:ids AS bigint[]), CAST(:amounts AS bigint[])) AS c(id, amount) "
                    "WHERE lots.id = c.id"
                ),
                {"ids": [i for i, _ in changed], "amounts": [a for _, a in changed]},
            )


def _soonest_expiry_first(lot: CarriedLot) -> tuple[bool, datetime]:
    return (lot.expires_at is None, lot.expires_at or lot.earned_at)


async def open_lots(conn: AsyncConnection, member_id: str) -> list[OpenLot]:
    rows = await conn.execute(
        statement(
            "SELECT id, remaining, expires_at, earn_entry_id FROM lots "
            "WHERE member_id = :member_id AND remaining > 0"
        ),
        {"member_id": member_id},
    )
    return [OpenLot(r.id, r.remaining, r.expires_at, r.earn_entry_id) for r in rows]


async def consumed_lots(conn: AsyncConnection, origin_entry_id: int) -> list[ConsumedLot]:
    rows = await conn.execute(
        statement(
            # The few lots first, then each by key (OFFSET 0 keeps it a
            # probe of one partition per lot: joined, the planner costs a
            # probe of every month of lots and may hash them all instead).
            "SELECT l.id, l.expires_at, c.outstanding FROM (SELECT lot_id, "
            "-sum(amount) AS outstanding FROM lot_movements "
            "WHERE (entry_id = :origin AND amount < 0) "
            "   OR (origin_entry_id = :origin AND amount > 0) "
            "GROUP BY lot_id HAVING -sum(amount) > 0) AS c CROSS JOIN LATERAL "
            "(SELECT id, expires_at FROM lots WHERE id = c.lot_id OFFSET 0) AS l"
        ),
        {"origin": origin_entry_id},
    )
    return [ConsumedLot(r.id, r.outstanding, r.expires_at) for r in rows]
