"""Family pools (members/pools.py): a pooled redemption spends the
soonest-expiring miles across the members, one burn per member in one
transaction; a member who leaves is refused by another pool for six months;
children do not redeem; two adults and five children at most; and the API's
answer to every refusal, each writing nothing."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from ledger.commands import Earn
from ledger.idempotency import IdempotencyKey
from members.errors import (
    AlreadyInPool,
    InsufficientPooledPoints,
    PoolCoolOff,
    PoolFull,
    PoolRedeemRefused,
)
from members.pools import JoinInput, PooledRedemption, PoolInput, Pools

STAFF = "staff:tests"


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, 12, tzinfo=UTC)


@pytest.fixture
def pools(timed_ledger, clock):
    clock.now = at(2026, 6, 15)
    return Pools(timed_ledger)


async def lots_of(engine, member_id: str) -> list[tuple[str, int, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT expires_at, amount, remaining FROM lots WHERE member_id = :m "
                "ORDER BY expires_at"
            ),
            {"m": member_id},
        )
        return [(r.expires_at.date().isoformat(), r.amount, r.remaining) for r in rows]


async def earned(ledger, member_id, partner_id, points, when, new_id) -> None:
    await ledger.earn(Earn.simple(member_id, partner_id, new_id("ref"), points, effective_at=when))


async def test_a_pooled_redemption_spends_the_soonest_expiring_miles_of_two_members(
    pools, timed_ledger, new_member, new_partner, new_id, engine, assert_clean
):
    airline = await new_partner("air")
    anna, ben = await new_member("anna"), await new_member("ben")
    await earned(timed_ledger, anna, airline, 300, at(2024, 2, 10), new_id)  # to 2027-04-01
    await earned(timed_ledger, anna, airline, 500, at(2025, 5, 1), new_id)  # to 2028-07-01
    await earned(timed_ledger, ben, airline, 400, at(2023, 11, 5), new_id)  # to 2027-01-01
    pool = await pools.open(anna, PoolInput("Family"), f"member:{anna}")
    await pools.join(pool.id, JoinInput(ben, "adult"), STAFF)

    done = await pools.redeem(anna, PooledRedemption(airline, 600), IdempotencyKey("t", new_id()))

    assert {(p.member_id, p.amount) for p in done.parts} == {(ben, 400), (anna, 200)}
    assert done.pooled_available == 600
    assert await lots_of(engine, ben) == [("2027-01-01", 400, 0)]
    assert await lots_of(engine, anna) == [("2027-04-01", 300, 100), ("2028-07-01", 500, 500)]
    view = await pools.pool_of(ben)
    assert [(m.member_id, m.role, m.available) for m in view.members] == [
        (anna, "adult", 600),
        (ben, "adult", 0),
    ]
    assert [(e.expires_at.date().isoformat(), e.points) for e in view.expiring] == [
        ("2027-04-01", 100),
        ("2028-07-01", 500),
    ]
    async with engine.connect() as conn:
        burns = (
            await conn.execute(
                text(
                    "SELECT member_id, kind, posted_by, partner_id FROM journal_entries "
                    "WHERE id = ANY(:ids) ORDER BY member_id"
                ),
                {"ids": [p.entry_id for p in done.parts]},
            )
        ).all()
    assert sorted(tuple(b) for b in burns) == sorted(
        [(anna, "burn", f"member:{anna}", airline), (ben, "burn", f"member:{anna}", airline)]
    )
    redeemed = await timed_ledger.account_balance(f"partner:{airline}:redeemed")
    assert redeemed.balances[0].balance == 600
    await assert_clean()


async def test_short_pool_child_redeeming_and_limits_write_nothing(
    pools, timed_ledger, new_member, new_partner, new_id, engine
):
    airline = await new_partner("air")
    adults = [await new_member("adult") for _ in range(3)]
    children = [await new_member("child") for _ in range(6)]
    for member in adults[:2] + children[:1]:
        await earned(timed_ledger, member, airline, 100, at(2025, 1, 10), new_id)
    pool = await pools.open(adults[0], PoolInput("Big family"), f"member:{adults[0]}")
    await pools.join(pool.id, JoinInput(adults[1], "adult"), STAFF)
    for child in children[:5]:
        await pools.join(pool.id, JoinInput(child, "child"), STAFF)

    with pytest.raises(PoolFull):
        await pools.join(pool.id, JoinInput(adults[2], "adult"), STAFF)
    with pytest.raises(PoolFull):
        await pools.join(pool.id, JoinInput(children[5], "child"), STAFF)
    with pytest.raises(AlreadyInPool):
        await pools.open(children[0], PoolInput("Mine"), f"member:{children[0]}")
    with pytest.raises(PoolRedeemRefused):
        await pools.redeem(children[0], PooledRedemption(airline, 50))
    with pytest.raises(InsufficientPooledPoints) as short:
        await pools.redeem(adults[1], PooledRedemption(airline, 301))
    assert short.value.extensions == {"available": 300, "requested": 301}
    view = await pools.pool(pool.id)
    assert len(view.members) == 7 and view.pooled_available == 300
    async with engine.connect() as conn:
        count = await conn.execute(
            text("SELECT count(*) FROM pool_redemptions WHERE pool_id = :p"), {"p": pool.id}
        )
        assert count.scalar_one() == 0


async def test_a_member_who_left_is_refused_by_another_pool_for_six_months(
    pools, clock, new_member
):
    anna, ben, carl = [await new_member(n) for n in ("anna", "ben", "carl")]
    first = await pools.open(anna, PoolInput("First"), f"member:{anna}")
    await pools.join(first.id, JoinInput(ben, "adult"), STAFF)
    second = await pools.open(carl, PoolInput("Second"), f"member:{carl}")

    left = await pools.leave(ben, f"member:{ben}")
    assert (left.left_at, left.may_join_from) == (at(2026, 6, 15), at(2026, 12, 15))
    clock.now = at(2026, 12, 14)
    with pytest.raises(PoolCoolOff) as refused:
        await pools.join(second.id, JoinInput(ben, "child"), STAFF)
    assert refused.value.extensions["may_join_from"] == at(2026, 12, 15)
    assert [m.member_id for m in (await pools.pool(second.id)).members] == [carl]
    clock.now = at(2026, 12, 15)
    joined = await pools.join(second.id, JoinInput(ben, "adult"), STAFF)
    assert [m.member_id for m in joined.members] == [carl, ben]
