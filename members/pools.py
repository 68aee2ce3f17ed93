"""Family pools: up to two adults and five children who redeem their miles
together (Miles & More style). One pool per member; only adults redeem; a
member who leaves joins another pool only after the cool-off (members/
pooling.py holds the rules and the allocation, as pure functions).

The pool keeps no balance of its own: its miles are its members' `available`
accounts. A pooled redemption, in one transaction, posts one burn per member
whose miles it spends (to the partner's `redeemed` account, posted by the
adult who redeemed), each taking that member's lots earliest-expiry first;
which members give how much is `allocate_pooled`: the pool's soonest-expiring
miles first. `pool_redemptions` records which entries one redemption posted.

Joining is a staff action (the service desk records the joining member's
consent, a parent's for a child, as Miles & More's does); opening a pool,
seeing it, leaving it and redeeming are the member's own.

Lock order (ledger/journal.py): the idempotency key, then the pool's row
(every change of a pool's members and every redemption takes it, so a
redemption sees the members as they are), then the members' registry rows,
then the ledger's member mutexes. A member closed or merged while in a pool
no longer counts as one of it: their place is free and a redemption neither
spends nor posts to their accounts.
"""

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import check_id
from ledger.commands import check_points
from ledger.errors import MemberNotActive, MemberNotFound, PartnerNotFound
from ledger.idempotency import IdempotencyKey
from ledger.lot_work import open_lots
from ledger.service import LedgerService
from ledger.views import ExpiringPoints
from members.errors import (
    AlreadyInPool,
    InsufficientPooledPoints,
    InvalidPool,
    PoolCoolOff,
    PoolFull,
    PoolNotFound,
    PoolRedeemRefused,
)
from members.pooling import (
    ROLES,
    PoolLot,
    PoolRules,
    allocate_pooled,
    has_room,
    may_join_from,
    shares,
)
from partners.errors import PartnerSuspended

MAX_NAME = 100


class PoolInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str


class JoinInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    member_id: str
    role: str  # adult | child


class PooledRedemption(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An adult's redemption of the pool's miles at a partner."""

    partner_id: str
    amount: int


class PoolMemberView(msgspec.Struct, frozen=True):
    member_id: str
    role: str
    joined_at: datetime
    available: int


class PoolView(msgspec.Struct, frozen=True):
    id: int
    name: str
    created_at: datetime
    members: tuple[PoolMemberView, ...]
    pooled_available: int  # what an adult can redeem: each member's available, above zero
    expiring: tuple[ExpiringPoints, ...]  # the members' miles by expiry date, soonest first


class LeftPool(msgspec.Struct, frozen=True):
    pool_id: int
    member_id: str
    left_at: datetime
    may_join_from: datetime  # the end of the cool-off


class RedemptionPart(msgspec.Struct, frozen=True):
    member_id: str
    amount: int
    entry_id: int  # the burn of this member's miles


class PooledRedemptionView(msgspec.Struct, frozen=True):
    id: int
    pool_id: int
    member_id: str  # the adult who redeemed
    partner_id: str
    amount: int
    redeemed_at: datetime
    parts: tuple[RedemptionPart, ...]
    pooled_available: int  # after the redemption


class _RedeemCommand(msgspec.Struct, frozen=True):
    member_id: str
    partner_id: str
    amount: int


def _name(value: str) -> str:
    name = value.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise InvalidPool("name", f"1 to {MAX_NAME} characters")
    return name


class Pools:
    """Opening, joining, leaving, viewing and redeeming family pools."""

    def __init__(self, ledger: LedgerService, rules: PoolRules | None = None) -> None:
        self.ledger = ledger
        self.rules = rules or PoolRules()

    # -- members of a pool -------------------------------------------------------

    async def open(self, member_id: str, data: PoolInput, actor: str) -> PoolView:
        """Open a pool with the member as its first adult."""
        check_id("member", member_id)
        name = _name(data.name)

        async def body(conn: AsyncConnection) -> PoolView:
            now = self.ledger.clock()
            await _active_member(conn, member_id)
            await self._check_may_join(conn, member_id, now)
            pool_id = (
                await conn.execute(
                    text(
                        "INSERT INTO family_pools (name, created_by, created_at) "
                        "VALUES (:name, :actor, :now) RETURNING id"
                    ),
                    {"name": name, "actor": actor, "now": now},
                )
            ).scalar_one()
            await _insert_membership(conn, pool_id, member_id, "adult", now, actor)
            return await _view(conn, pool_id)

        return await self.ledger.atomically(body)

    async def join(self, pool_id: int, data: JoinInput, actor: str) -> PoolView:
        """Add a member to a pool as an adult or a child (staff, with consent)."""
        check_id("member", data.member_id)
        if data.role not in ROLES:
            raise InvalidPool("role", f"one of {', '.join(ROLES)}")

        async def body(conn: AsyncConnection) -> PoolView:
            now = self.ledger.clock()
            roles = [role for _, role in await _lock_pool(conn, pool_id)]
            await _active_member(conn, data.member_id)
            await self._check_may_join(conn, data.member_id, now)
            if not has_room(roles, data.role, self.rules):
                raise PoolFull(
                    f"pool {pool_id} has {self.rules.limit(data.role)} {data.role}s already",
                    pool_id=pool_id,
                    role=data.role,
                    limit=self.rules.limit(data.role),
                )
            await _insert_membership(conn, pool_id, data.member_id, data.role, now, actor)
            return await _view(conn, pool_id)

        return await self.ledger.atomically(body)

    async def leave(self, member_id: str, actor: str) -> LeftPool:
        """End the member's membership; the cool-off starts now."""
        check_id("member", member_id)

        async def body(conn: AsyncConnection) -> LeftPool:
            now = self.ledger.clock()
            pool_id = await _pool_of(conn, member_id)
            await _lock_pool(conn, pool_id)
            left = (
                await conn.execute(
                    text(
                        "UPDATE pool_memberships SET left_at = :now WHERE member_id = :m "
                        "AND pool_id = :pool AND left_at IS NULL RETURNING left_at"
                    ),
                    {"now": now, "m": member_id, "pool": pool_id},
                )
            ).scalar_one_or_none()
            if left is None:  # left between reading its pool and locking it
                raise PoolNotFound(f"member {member_id} is in no pool", member_id=member_id)
            until = may_join_from(left, self.rules)
            assert until is not None
            return LeftPool(pool_id, member_id, left, until)

        return await self.ledger.atomically(body)

    async def _check_may_join(self, conn: AsyncConnection, member_id: str, now: datetime):
        row = (
            await conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE left_at IS NULL) AS open, "
                    "max(left_at) AS last_left FROM pool_memberships WHERE member_id = :m"
                ),
                {"m": member_id},
            )
        ).one()
        if row.open:
            raise AlreadyInPool(f"member {member_id} is in a pool already", member_id=member_id)
        until = may_join_from(row.last_left, self.rules)
        if until is not None and now < until:
            raise PoolCoolOff(
                f"member {member_id} left a pool on {row.last_left.date().isoformat()} "
                f"and may join another from {until.date().isoformat()}",
                member_id=member_id,
                may_join_from=until,
            )

    # -- reading -------------------------------------------------------------------

    async def pool_of(self, member_id: str) -> PoolView:
        check_id("member", member_id)
        async with self.ledger.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            return await _view(conn, await _pool_of(conn, member_id))

    async def pool(self, pool_id: int) -> PoolView:
        async with self.ledger.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            return await _view(conn, pool_id)

    # -- redeeming -------------------------------------------------------------------

    async def redeem(
        self, member_id: str, data: PooledRedemption, idempotency: IdempotencyKey | None = None
    ) -> PooledRedemptionView:
        """Spend `amount` of the pool's miles at a partner, soonest-expiring
        first across the members: all of it or nothing."""
        check_id("member", member_id)
        check_id("partner", data.partner_id)
        check_points(data.amount)
        command = _RedeemCommand(member_id, data.partner_id, data.amount)

        async def body(conn: AsyncConnection) -> PooledRedemptionView:
            now = self.ledger.clock()
            pool_id = await _pool_of(conn, member_id)
            members = dict(await _lock_pool(conn, pool_id))
            role = members.get(member_id)
            if role is None:
                await _active_member(conn, member_id)  # closed since joining: refused as such
                raise PoolNotFound(f"member {member_id} is in no pool", member_id=member_id)
            if role != "adult":
                raise PoolRedeemRefused(
                    "only an adult of the pool redeems its miles", member_id=member_id, role=role
                )
            await _redeemable_at(conn, data.partner_id)
            locked = await self.ledger.journal.lock_members(conn, members)
            spendable = {m: row.balance for m, row in locked.items()}
            lots = [
                PoolLot(m, lot.lot_id, lot.remaining, lot.expires_at)
                for m in sorted(members)
                for lot in await open_lots(conn, m)
            ]
            takes, short = allocate_pooled(lots, spendable, data.amount)
            if short:
                pooled = sum(max(b, 0) for b in spendable.values())
                raise InsufficientPooledPoints(
                    f"the pool has {pooled} miles available, {data.amount} needed",
                    available=pooled,
                    requested=data.amount,
                )
            redemption_id = (
                await conn.execute(
                    text(
                        "INSERT INTO pool_redemptions (pool_id, member_id, partner_id, amount, "
                        "redeemed_at) VALUES (:pool, :m, :partner, :amount, :now) RETURNING id"
                    ),
                    {
                        "pool": pool_id,
                        "m": member_id,
                        "partner": data.partner_id,
                        "amount": data.amount,
                        "now": now,
                    },
                )
            ).scalar_one()
            parts = []
            for contributor, amount in shares(takes).items():
                receipt = await self.ledger.redeem_in(
                    conn,
                    "burn",
                    contributor,
                    data.partner_id,
                    amount,
                    f"member:{member_id}",
                    f"family pool {pool_id}: redeemed by {member_id}",
                )
                parts.append(RedemptionPart(contributor, amount, receipt.entry_id))
            await conn.execute(
                text(
                    "INSERT INTO pool_redemption_parts (redemption_id, member_id, entry_id, "
                    "amount) SELECT :id, m, e, a FROM unnest(CAST(:members AS text[]), "
                    "CAST(:entries AS bigint[]), CAST(:amounts AS bigint[])) AS t(m, e, a)"
                ),
                {
                    "id": redemption_id,
                    "members": [p.member_id for p in parts],
                    "entries": [p.entry_id for p in parts],
                    "amounts": [p.amount for p in parts],
                },
            )
            pooled = sum(max(b, 0) for b in spendable.values()) - data.amount
            return PooledRedemptionView(
                redemption_id,
                pool_id,
                member_id,
                data.partner_id,
                data.amount,
                now,
                tuple(parts),
                pooled,
            )

        return await self.ledger.run(
            "pool-redeem", command, idempotency, PooledRedemptionView, body
        )


# -- statements ------------------------------------------------------------------------


async def _active_member(conn: AsyncConnection, member_id: str) -> None:
    status = (
        await conn.execute(
            text("SELECT status FROM members WHERE id = :m FOR NO KEY UPDATE"), {"m": member_id}
        )
    ).scalar_one_or_none()
    if status is None:
        raise MemberNotFound(f"no enrolled member {member_id!r}", member_id=member_id)
    if status != "active":
        raise MemberNotActive(
            f"member {member_id!r} is {status}", member_id=member_id, member_status=status
        )


async def _redeemable_at(conn: AsyncConnection, partner_id: str) -> None:
    status = (
        await conn.execute(text("SELECT status FROM partners WHERE id = :p"), {"p": partner_id})
    ).scalar_one_or_none()
    if status is None:
        raise PartnerNotFound(f"no partner {partner_id!r}", partner_id=partner_id)
    if status != "active":
        raise PartnerSuspended(f"partner {partner_id!r} is {status}", partner_id=partner_id)


async def _pool_of(conn: AsyncConnection, member_id: str) -> int:
    pool_id = (
        await conn.execute(
            text("SELECT pool_id FROM pool_memberships WHERE member_id = :m AND left_at IS NULL"),
            {"m": member_id},
        )
    ).scalar_one_or_none()
    if pool_id is None:
        raise PoolNotFound(f"member {member_id} is in no pool", member_id=member_id)
    return pool_id


async def _lock_pool(conn: AsyncConnection, pool_id: int) -> list[tuple[str, str]]:
    """Lock the pool's row; its current members and their roles. A member
    closed or merged since joining is no longer one (their accounts take
    no postings, their place is free); the members' registry rows are
    share-locked, so none is closed while this transaction counts on them."""
    found = (
        await conn.execute(
            text("SELECT id FROM family_pools WHERE id = :pool FOR UPDATE"), {"pool": pool_id}
        )
    ).first()
    if found is None:
        raise PoolNotFound(f"no pool {pool_id}", pool_id=pool_id)
    rows = await conn.execute(
        text(
            "SELECT p.member_id, p.role FROM pool_memberships p JOIN members m "
            "ON m.id = p.member_id AND m.status = 'active' WHERE p.pool_id = :pool "
            "AND p.left_at IS NULL ORDER BY p.member_id FOR SHARE OF m"
        ),
        {"pool": pool_id},
    )
    return [(r.member_id, r.role) for r in rows]


async def _insert_membership(conn, pool_id, member_id, role, now, actor) -> None:
    try:
        async with conn.begin_nested():
            await conn.execute(
                text(
                    "INSERT INTO pool_memberships (pool_id, member_id, role, joined_at, "
                    "added_by) VALUES (:pool, :m, :role, :now, :actor)"
                ),
                {"pool": pool_id, "m": member_id, "role": role, "now": now, "actor": actor},
            )
    except IntegrityError:
        # Another transaction put the member in a pool since this one looked.
        raise AlreadyInPool(
            f"member {member_id} is in a pool already", member_id=member_id
        ) from None


async def _view(conn: AsyncConnection, pool_id: int) -> PoolView:
    pool = (
        await conn.execute(
            text("SELECT id, name, created_at FROM family_pools WHERE id = :pool"),
            {"pool": pool_id},
        )
    ).first()
    if pool is None:
        raise PoolNotFound(f"no pool {pool_id}", pool_id=pool_id)
    rows = (
        await conn.execute(
            text(
                "SELECT m.member_id, m.role, m.joined_at, coalesce(b.balance, 0) AS available "
                "FROM pool_memberships m JOIN members r ON r.id = m.member_id "
                "AND r.status = 'active' LEFT JOIN balances b ON b.account = "
                "'member\\:' || m.member_id || '\\:available' AND b.asset = 'PTS' AND b.slot = 0 "
                "WHERE m.pool_id = :pool AND m.left_at IS NULL ORDER BY m.joined_at, m.id"
            ),
            {"pool": pool_id},
        )
    ).all()
    members = tuple(
        PoolMemberView(r.member_id, r.role, r.joined_at, int(r.available)) for r in rows
    )
    expiring = await conn.execute(
        text(
            "SELECT expires_at, sum(remaining) AS points FROM lots "
            "WHERE member_id = ANY(CAST(:members AS text[])) AND remaining > 0 "
            "AND expires_at IS NOT NULL GROUP BY expires_at ORDER BY expires_at"
        ),
        {"members": [m.member_id for m in members]},
    )
    return PoolView(
        pool.id,
        pool.name,
        pool.created_at,
        members,
        sum(max(m.available, 0) for m in members),
        tuple(ExpiringPoints(r.expires_at, int(r.points)) for r in expiring),
    )
