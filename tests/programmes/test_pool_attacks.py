"""Family pools under the checks an outsider runs (members/pools.py): a
member closed while in a pool neither blocks the others' pooled
redemptions nor spends their miles with a token that still verifies, and
no longer holds a place in the pool."""

import pytest

from ledger.commands import Adjust
from ledger.errors import MemberNotActive
from ledger.idempotency import IdempotencyKey
from members.pools import JoinInput, PooledRedemption, PoolInput, Pools
from members.registry import CloseInput, Members
from partners.programme import Programme

STAFF = "staff:tests"


@pytest.fixture
def pools(ledger):
    return Pools(ledger)


async def test_a_closed_member_neither_blocks_nor_spends_the_pool(
    pools, ledger, new_member, new_partner
):
    airline = await new_partner("air")
    mum, dad, kid, aunt = [await new_member(n) for n in ("mum", "dad", "kid", "aunt")]
    for member, miles in ((mum, 600), (dad, 400), (kid, 200)):
        await ledger.adjust(Adjust(member, miles, "flown"), STAFF)
    pool = await pools.open(mum, PoolInput("Weber"), f"member:{mum}")
    await pools.join(pool.id, JoinInput(dad, "adult"), STAFF)
    await pools.join(pool.id, JoinInput(kid, "child"), STAFF)
    await Members(ledger, Programme(ledger)).close(dad, CloseInput("moved", "forfeit"), STAFF)

    # The closed adult's token still verifies until it expires: refused.
    with pytest.raises(MemberNotActive):
        await pools.redeem(
            dad, PooledRedemption(airline, 100), IdempotencyKey(f"member:{dad}", "d-1")
        )
    done = await pools.redeem(
        mum, PooledRedemption(airline, 700), IdempotencyKey(f"member:{mum}", "m-1")
    )
    assert sorted((p.member_id, p.amount) for p in done.parts) == sorted([(mum, 600), (kid, 100)])
    assert done.pooled_available == 100

    # The closed adult's place is free again; the pool lists who is in it.
    view = await pools.join(pool.id, JoinInput(aunt, "adult"), STAFF)
    assert [(m.member_id, m.role) for m in view.members] == [
        (mum, "adult"),
        (kid, "child"),
        (aunt, "adult"),
    ]
