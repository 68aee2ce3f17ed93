"""The reward catalogue: items members buy with points (a points price, a
stock, the partner that fulfils the item), and members' orders of them.

Ordering is a burn of its own entry kind, `reward`: the member's points,
earliest-expiring lots first, go to the fulfilling partner's `redeemed`
account, so the partner is reimbursed for them at its contract's redemption
value on its settlement like any redemption at its tills (the chart of
accounts has no programme account for redeemed points, and the partner is
the one who bears the item's cost). The stock is taken in the same
transaction by a conditional decrement, so it never goes below zero however
many orders run at once. Cancelling an order that was not shipped reverses
its entry (ledger/reversal.py: the points go back to the lots they came
from, original expiry kept) and returns the stock, once.

An item may be free for the members of named clubs (`free_for_clubs`): a
member whose paid club term covers the order time (club_payments, as the
club promotions read it: a lapsed or unpaid membership pays) orders it for
0 points, with no entry (the journal posts no zero amounts), the club
recorded on the order; the stock is taken all the same, and cancelling
gives it back.

Lock order (ledger/journal.py): the order's row, then the reward's row (the
operation's own rows), then the member (the posting).
"""

from datetime import datetime

import msgspec
from msgspec import UNSET, UnsetType
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from clubs.membership import active_member
from ledger import queries
from ledger.accounts import check_id
from ledger.commands import MAX_POINTS, Reverse
from ledger.database import begin
from ledger.errors import InvalidAccount
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from ledger.views import Balances
from partners.audit import record_change
from partners.errors import (
    InvalidReward,
    PartnerNotFound,
    RewardExists,
    RewardNotFound,
    RewardOrderNotFound,
    RewardOrderNotOpen,
    RewardOutOfStock,
)

ENTRY_KIND = "reward"
MAX_STOCK = 10**9
STATUSES = ("active", "retired")  # of an item
ORDER_STATUSES = ("ordered", "shipped", "cancelled")


class RewardInput(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str
    points: int  # the price
    stock: int
    partner_id: str  # fulfils the item; reimbursed for the points
    free_for_clubs: list[str] = []  # club codes whose members order it for 0 points


class RewardChange(msgspec.Struct, forbid_unknown_fields=True):
    """What an admin changes on an item; what is left out stays."""

    name: str | UnsetType = UNSET
    points: int | UnsetType = UNSET
    stock: int | UnsetType = UNSET  # the new stock (not a difference)
    status: str | UnsetType = UNSET  # active | retired
    free_for_clubs: list[str] | UnsetType = UNSET


class RewardView(msgspec.Struct, frozen=True):
    id: str
    name: str
    points: int
    stock: int
    partner_id: str
    status: str
    free_for_clubs: tuple[str, ...] = ()


class OrderView(msgspec.Struct, frozen=True):
    id: int
    member_id: str
    reward_id: str
    reward_name: str
    points: int  # 0: free for a member of `free_club`
    status: str  # ordered | shipped | cancelled
    order_entry_id: int | None  # None: a free order moved no points
    ordered_at: datetime
    cancel_entry_id: int | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    balances: Balances | None = None  # the member's, after an order or a cancellation
    free_club: str | None = None  # the club whose paid term made the order free


_REWARD_COLUMNS = "id, name, points, stock, partner_id, status, free_for_clubs"
_ORDER_COLUMNS = (
    "o.id, o.member_id, o.reward_id, r.name AS reward_name, o.points, o.status, "
    "o.order_entry_id, o.ordered_at, o.cancel_entry_id, o.resolved_at, o.resolved_by, "
    "o.free_club"
)
# The first of the clubs whose paid term covers the time, if any (the clubs
# a promotion for club members reads the same way: partners/accrual.py).
_FREE_CLUB = text(
    "SELECT club_code FROM club_payments WHERE member_id = :m AND club_code = ANY(:clubs) "
    "AND term_starts_at <= :now AND :now < term_ends_at ORDER BY club_code LIMIT 1"
)


def _require(condition: bool, field: str, detail: str) -> None:
    if not condition:
        raise InvalidReward(field, detail)


def _check_price(points: object) -> None:
    _require(type(points) is int and 0 < points <= MAX_POINTS, "points", "1 to 10^12 points")


def _check_stock(stock: object) -> None:
    _require(type(stock) is int and 0 <= stock <= MAX_STOCK, "stock", "0 to 10^9 items")


def _check_name(name: object) -> None:
    _require(isinstance(name, str) and 0 < len(name.strip()) <= 200, "name", "1-200 characters")


async def _check_clubs(conn: AsyncConnection, clubs: object) -> list[str]:
    """The clubs, each once, sorted; all of them must exist."""
    _require(
        isinstance(clubs, list) and all(isinstance(c, str) for c in clubs) and len(clubs) <= 20,
        "free_for_clubs",
        "a list of up to 20 club codes",
    )
    codes = sorted(set(clubs))
    found = (
        await conn.execute(text("SELECT code FROM clubs WHERE code = ANY(:c)"), {"c": codes})
    ).scalars()
    missing = sorted(set(codes) - set(found))
    _require(not missing, "free_for_clubs", f"no club {', '.join(missing)}")
    return codes


def _reward(row) -> RewardView:
    return RewardView(
        row.id,
        row.name,
        row.points,
        row.stock,
        row.partner_id,
        row.status,
        tuple(row.free_for_clubs),
    )


def _order(row, balances: Balances | None = None) -> OrderView:
    return OrderView(
        row.id,
        row.member_id,
        row.reward_id,
        row.reward_name,
        row.points,
        row.status,
        row.order_entry_id,
        row.ordered_at,
        row.cancel_entry_id,
        row.resolved_at,
        row.resolved_by,
        balances,
        row.free_club,
    )


class Rewards:
    """The catalogue and its orders over one ledger."""

    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger
        self.engine = ledger.engine

    # -- the catalogue ---------------------------------------------------------

    async def create(self, data: RewardInput, actor: str) -> RewardView:
        try:
            check_id("reward", data.id)
        except InvalidAccount:
            raise InvalidReward("id", "1-64 letters, digits, '.', '_' or '-'") from None
        _check_name(data.name)
        _check_price(data.points)
        _check_stock(data.stock)
        check_id("partner", data.partner_id)
        async with begin(self.engine) as conn:
            partner = (
                await conn.execute(
                    text("SELECT 1 FROM partners WHERE id = :id"), {"id": data.partner_id}
                )
            ).first()
            if partner is None:
                raise PartnerNotFound(f"no partner {data.partner_id!r}")
            clubs = await _check_clubs(conn, data.free_for_clubs)
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO rewards (id, name, points, stock, partner_id, "
                        "free_for_clubs, created_by) VALUES (:id, :name, :points, :stock, "
                        ":partner_id, :free_for_clubs, :actor) "
                        f"ON CONFLICT (id) DO NOTHING RETURNING {_REWARD_COLUMNS}"
                    ),
                    {
                        **msgspec.structs.asdict(data),
                        "name": data.name.strip(),
                        "free_for_clubs": clubs,
                        "actor": actor,
                    },
                )
            ).first()
            if row is None:
                raise RewardExists(f"reward {data.id!r} exists already", reward_id=data.id)
            view = _reward(row)
            await record_change(
                conn, "reward", data.id, "create", actor, None, msgspec.to_builtins(view)
            )
            return view

    async def change(self, reward_id: str, data: RewardChange, actor: str) -> RewardView:
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not UNSET}
        _require(bool(changes), "body", "name, points, stock, status or free_for_clubs")
        if "name" in changes:
            _check_name(changes["name"])
            changes["name"] = changes["name"].strip()
        if "points" in changes:
            _check_price(changes["points"])
        if "stock" in changes:
            _check_stock(changes["stock"])
        if "status" in changes:
            _require(changes["status"] in STATUSES, "status", "active or retired")
        assignments = ", ".join(f"{name} = :{name}" for name in sorted(changes))
        async with begin(self.engine) as conn:
            before = (
                await conn.execute(
                    text(f"SELECT {_REWARD_COLUMNS} FROM rewards WHERE id = :id FOR UPDATE"),
                    {"id": reward_id},
                )
            ).first()
            if before is None:
                raise RewardNotFound(f"no reward {reward_id!r}", reward_id=reward_id)
            if "free_for_clubs" in changes:
                changes["free_for_clubs"] = await _check_clubs(conn, changes["free_for_clubs"])
            row = (
                await conn.execute(
                    text(
                        f"UPDATE rewards SET {assignments}, updated_at = now() WHERE id = :id "
                        f"RETURNING {_REWARD_COLUMNS}"
                    ),
                    {**changes, "id": reward_id},
                )
            ).one()
            view = _reward(row)
            await record_change(
                conn,
                "reward",
                reward_id,
                "update",
                actor,
                msgspec.to_builtins(_reward(before)),
                msgspec.to_builtins(view),
            )
            return view

    async def catalogue(self, *, active_only: bool) -> list[RewardView]:
        where = "WHERE status = 'active'" if active_only else ""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(f"SELECT {_REWARD_COLUMNS} FROM rewards {where} ORDER BY points, id")
            )
            return [_reward(row) for row in rows]

    # -- orders -----------------------------------------------------------------

    async def order(
        self, member_id: str, reward_id: str, idempotency: IdempotencyKey | None = None
    ) -> OrderView:
        """Spend the reward's price on one item of it, taking one from its stock."""
        check_id("member", member_id)

        async def body(conn: AsyncConnection) -> OrderView:
            now = self.ledger.clock()
            reward = (
                await conn.execute(
                    text(
                        "UPDATE rewards SET stock = stock - 1, updated_at = now() "
                        "WHERE id = :id AND status = 'active' AND stock > 0 "
                        "RETURNING id, name, points, partner_id, free_for_clubs"
                    ),
                    {"id": reward_id},
                )
            ).first()
            if reward is None:
                await self._refuse_order(conn, reward_id)
            club = None
            if reward.free_for_clubs:
                await active_member(conn, member_id)
                club = (
                    await conn.execute(
                        _FREE_CLUB, {"m": member_id, "clubs": reward.free_for_clubs, "now": now}
                    )
                ).scalar()
            if club is None:
                receipt = await self.ledger.redeem_in(
                    conn,
                    ENTRY_KIND,
                    member_id,
                    reward.partner_id,
                    reward.points,
                    f"member:{member_id}",
                    f"reward {reward.id}: {reward.name}",
                )
                points, entry, balances = reward.points, receipt.entry_id, receipt.balances
            else:
                points, entry, balances = 0, None, await queries.balances(conn, member_id)
            row = (
                await conn.execute(
                    text(
                        "WITH o AS (INSERT INTO reward_orders (member_id, reward_id, points, "
                        "order_entry_id, ordered_at, free_club) "
                        "VALUES (:m, :r, :points, :entry, :now, :club) RETURNING *) "
                        f"SELECT {_ORDER_COLUMNS} FROM o JOIN rewards r ON r.id = o.reward_id"
                    ),
                    {
                        "m": member_id,
                        "r": reward.id,
                        "points": points,
                        "entry": entry,
                        "now": now,
                        "club": club,
                    },
                )
            ).one()
            return _order(row, balances)

        return await self.ledger.run(
            "reward_order", {"reward_id": reward_id}, idempotency, OrderView, body
        )

    async def _refuse_order(self, conn: AsyncConnection, reward_id: str) -> None:
        row = (
            await conn.execute(
                text("SELECT status, stock FROM rewards WHERE id = :id"), {"id": reward_id}
            )
        ).first()
        if row is None or row.status != "active":
            raise RewardNotFound(f"no reward {reward_id!r} in the catalogue", reward_id=reward_id)
        raise RewardOutOfStock(f"reward {reward_id!r} is out of stock", reward_id=reward_id)

    async def _lock_order(self, conn: AsyncConnection, order_id: int, member_id: str | None):
        row = (
            await conn.execute(
                text(
                    "SELECT id, member_id, reward_id, status, order_entry_id FROM reward_orders "
                    "WHERE id = :id FOR UPDATE"
                ),
                {"id": order_id},
            )
        ).first()
        if row is None or (member_id is not None and row.member_id != member_id):
            raise RewardOrderNotFound(f"no reward order {order_id}", order_id=order_id)
        if row.status != "ordered":
            raise RewardOrderNotOpen(
                f"reward order {order_id} is {row.status} already", order_status=row.status
            )
        return row

    async def _view(self, conn: AsyncConnection, order_id: int, balances=None) -> OrderView:
        row = (
            await conn.execute(
                text(
                    f"SELECT {_ORDER_COLUMNS} FROM reward_orders o "
                    "JOIN rewards r ON r.id = o.reward_id WHERE o.id = :id"
                ),
                {"id": order_id},
            )
        ).one()
        return _order(row, balances)

    async def cancel(self, order_id: int, actor: str, member_id: str | None = None) -> OrderView:
        """Give an order's points back (to the lots they came from) and its item
        back to the stock; `member_id`: only that member's order."""

        async def body(conn: AsyncConnection) -> OrderView:
            order = await self._lock_order(conn, order_id, member_id)
            await conn.execute(
                text("UPDATE rewards SET stock = stock + 1, updated_at = now() WHERE id = :id"),
                {"id": order.reward_id},
            )
            if order.order_entry_id is None:  # free: no points to give back
                entry, balances = None, await queries.balances(conn, order.member_id)
            else:
                receipt = await self.ledger.reverse_in(
                    conn,
                    Reverse(order.order_entry_id, reason=f"reward order {order_id} cancelled"),
                    actor,
                    kinds=("reward",),
                )
                entry, balances = receipt.entry_id, receipt.balances
            await conn.execute(
                text(
                    "UPDATE reward_orders SET status = 'cancelled', cancel_entry_id = :entry, "
                    "resolved_at = :now, resolved_by = :actor WHERE id = :id"
                ),
                {"entry": entry, "now": self.ledger.clock(), "actor": actor, "id": order_id},
            )
            return await self._view(conn, order_id, balances)

        return await self.ledger.atomically(body)

    async def ship(self, order_id: int, actor: str) -> OrderView:
        async def body(conn: AsyncConnection) -> OrderView:
            await self._lock_order(conn, order_id, None)
            await conn.execute(
                text(
                    "UPDATE reward_orders SET status = 'shipped', resolved_at = :now, "
                    "resolved_by = :actor WHERE id = :id"
                ),
                {"now": self.ledger.clock(), "actor": actor, "id": order_id},
            )
            return await self._view(conn, order_id)

        return await self.ledger.atomically(body)

    async def orders(
        self, member_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[OrderView]:
        """Orders, newest first: a member's, or all (of a status)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT {_ORDER_COLUMNS} FROM reward_orders o "
                    "JOIN rewards r ON r.id = o.reward_id "
                    "WHERE (CAST(:m AS text) IS NULL OR o.member_id = :m) "
                    "AND (CAST(:s AS text) IS NULL OR o.status = :s) "
                    "ORDER BY o.id DESC LIMIT :limit"
                ),
                {"m": member_id, "s": status, "limit": limit},
            )
            return [_order(row) for row in rows]
