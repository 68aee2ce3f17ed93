"""Concurrency against the real PostgreSQL: no overspending, no lost updates,
no deadlocks, idempotency keys racing, hot accounts not serialising."""

import asyncio

from sqlalchemy import text

from ledger.commands import Burn, Earn, Transfer
from ledger.errors import InsufficientPoints, RequestInFlight
from ledger.idempotency import IdempotencyKey


async def test_fifty_concurrent_burns_of_one_point_on_ten_points(
    ledger, new_member, new_partner, assert_clean
):
    member, partner = await new_member(), await new_partner()
    await ledger.earn(Earn.simple(member, partner, "r1", 10))

    async def burn(i: int):
        try:
            return await ledger.burn(Burn(member, partner, f"b{i}", 1))
        except InsufficientPoints as error:
            return error

    results = await asyncio.gather(*(burn(i) for i in range(50)))
    succeeded = [r for r in results if not isinstance(r, InsufficientPoints)]
    assert len(succeeded) == 10
    assert sum(isinstance(r, InsufficientPoints) for r in results) == 40
    assert (await ledger.balances(member)).available == 0
    await assert_clean()


async def test_concurrent_accruals_from_one_partner_spread_over_slots(
    ledger, new_member, new_partner, engine, assert_clean
):
    partner = await new_partner()
    members = [await new_member() for _ in range(40)]
    await asyncio.gather(*(ledger.earn(Earn.simple(m, partner, f"r-{m}", 7, 1)) for m in members))
    async with engine.connect() as conn:
        slots = (
            await conn.execute(
                text("SELECT slot, balance FROM balances WHERE account = :a AND asset = 'PTS'"),
                {"a": f"partner:{partner}:issued"},
            )
        ).all()
    assert sum(balance for _, balance in slots) == -7 * 40
    assert len(slots) > 1  # accruals landed on several rows, not one
    issued = await ledger.account_balance(f"partner:{partner}:issued")
    assert issued.balances[0].balance == -280
    await assert_clean()


async def test_an_accrual_does_not_wait_for_another_in_flight_at_the_same_partner(
    ledger, new_member, new_partner, engine, assert_clean
):
    partner = await new_partner()
    first, second = await new_member(), await new_member()
    async with engine.begin() as in_flight:
        await ledger.earn_in(in_flight, Earn.simple(first, partner, "open", 5, 1))
        # The first holds its rows of the partner's accounts until it commits;
        # the second (another connection of the process: another slot) posts
        # meanwhile. Were it to queue, its lock timeout would fail it here.
        meanwhile = await ledger.earn(Earn.simple(second, partner, "meanwhile", 7, 1))
        assert meanwhile.amount == 7
    issued = await ledger.account_balance(f"partner:{partner}:issued")
    assert issued.balances[0].balance == -12
    await assert_clean()


async def test_crossing_transfers_do_not_deadlock(ledger, new_member, new_partner, assert_clean):
    a, b, partner = await new_member(), await new_member(), await new_partner()
    await ledger.earn(Earn.simple(a, partner, "ra", 100))
    await ledger.earn(Earn.simple(b, partner, "rb", 100))
    moves = [Transfer(a, b, 1) if i % 2 else Transfer(b, a, 1) for i in range(40)]
    await asyncio.gather(*(ledger.transfer(move) for move in moves))
    assert (await ledger.balances(a)).available + (await ledger.balances(b)).available == 200
    await assert_clean()


async def test_the_same_idempotency_key_racing_posts_once(ledger, new_member, new_partner, engine):
    member, partner = await new_member(), await new_partner()
    key = IdempotencyKey(f"partner:{partner}", "race")
    outcomes = await asyncio.gather(
        *(ledger.earn(Earn.simple(member, partner, "r1", 25), key) for _ in range(10)),
        return_exceptions=True,
    )
    # Each racer either got the one posting's receipt or was told the first
    # is still in flight (409); none waited on it, none posted again.
    receipts = [o for o in outcomes if not isinstance(o, RequestInFlight)]
    assert all(isinstance(o, RequestInFlight) for o in outcomes if o not in receipts)
    assert receipts and len({r.entry_id for r in receipts}) == 1
    retry = await ledger.earn(Earn.simple(member, partner, "r1", 25), key)
    assert retry.entry_id == receipts[0].entry_id
    assert (await ledger.balances(member)).available == 25
    async with engine.connect() as conn:
        count = (
            await conn.execute(
                text("SELECT count(*) FROM journal_entries WHERE partner_id = :p"), {"p": partner}
            )
        ).scalar_one()
    assert count == 1
