"""The reward catalogue: an order is a `reward` burn that takes one item of
stock atomically, a cancellation gives the points back to the lots they came
from and the item back to the stock, once; shipped orders stay shipped; and
the API's answers for every refusal."""

import asyncio

import pytest
from sqlalchemy import text

from ledger.commands import Adjust, Reverse
from ledger.errors import NotReversible
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from partners.errors import RewardOrderNotOpen, RewardOutOfStock
from partners.rewards import RewardInput, Rewards
from tests.api.test_observability import grew, scrape


async def redeemed(ledger: LedgerService, partner_id: str) -> int:
    view = await ledger.account_balance(f"partner:{partner_id}:redeemed")
    return sum(b.balance for b in view.balances if b.asset == "PTS")


async def stock(rewards: Rewards, reward_id: str) -> int:
    return next(r.stock for r in await rewards.catalogue(active_only=False) if r.id == reward_id)


@pytest.fixture
async def reward_shop(new_partner):
    return await new_partner("rewardshop")


async def test_twenty_concurrent_orders_for_five_items_place_exactly_five(
    ledger, funded_member, reward_shop, new_id
):
    rewards = Rewards(ledger)
    reward = await rewards.create(RewardInput(new_id("mug"), "Mug", 100, 5, reward_shop), "staff:t")
    members = [await funded_member(250) for _ in range(10)]

    async def attempt(number: int):
        member = members[number % len(members)]
        try:
            return await rewards.order(
                member, reward.id, IdempotencyKey(f"member:{member}", f"order-{number}")
            )
        except RewardOutOfStock:
            return None

    placed = [o for o in await asyncio.gather(*(attempt(n) for n in range(20))) if o]
    assert len(placed) == 5
    assert await stock(rewards, reward.id) == 0
    assert await redeemed(ledger, reward_shop) == 500
    spent = [250 - (await ledger.balances(m)).available for m in members]
    assert sum(spent) == 500 and set(spent) <= {0, 100, 200}
    entries = {
        ((e := await ledger.entry(o.order_entry_id)).kind, e.reason, e.posted_by) for o in placed
    }
    assert {(kind, reason) for kind, reason, _ in entries} == {
        ("reward", f"reward {reward.id}: Mug")
    }
    assert {by for _, _, by in entries} == {f"member:{o.member_id}" for o in placed}


async def test_a_cancellation_gives_the_points_back_to_their_lots_once(
    timed_ledger, clock, new_member, reward_shop, new_id
):
    member = await new_member()
    await timed_ledger.adjust(Adjust(member, 100, "older points"), "staff:t")
    clock.advance(days=200)  # another quarter: a later expiry
    await timed_ledger.adjust(Adjust(member, 100, "newer points"), "staff:t")
    rewards = Rewards(timed_ledger)
    reward = await rewards.create(
        RewardInput(new_id("set"), "Espresso set", 150, 3, reward_shop), "staff:t"
    )

    async def lots():
        async with timed_ledger.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT remaining, expires_at FROM lots WHERE member_id = :m ORDER BY id"),
                {"m": member},
            )
            return [tuple(r) for r in rows]

    before = await lots()
    order = await rewards.order(member, reward.id, IdempotencyKey(f"member:{member}", "o1"))
    after_order = await lots()
    # The oldest lot first, then 50 of the newer one.
    assert [r for r, _ in after_order] == [0, 50]
    cancelled = await rewards.cancel(order.id, f"member:{member}", member_id=member)
    assert cancelled.status == "cancelled" and cancelled.balances.available == 200
    assert await lots() == before  # the same lots, their expiry kept
    assert await stock(rewards, reward.id) == 3
    with pytest.raises(RewardOrderNotOpen):
        await rewards.cancel(order.id, f"member:{member}", member_id=member)
    assert (await timed_ledger.balances(member)).available == 200
    assert await stock(rewards, reward.id) == 3
    reversal = await timed_ledger.entry(cancelled.cancel_entry_id)
    assert reversal.kind == "reverse" and reversal.reverses_entry_id == order.order_entry_id


async def test_an_orders_entry_is_given_back_only_by_cancelling_the_order(
    ledger, funded_member, reward_shop, new_id
):
    """A staff reversal of the order's `reward` entry is refused: the order
    would stay `ordered` with its points back and its item still taken."""
    member = await funded_member(300)
    rewards = Rewards(ledger)
    reward = await rewards.create(RewardInput(new_id("cap"), "Cap", 120, 2, reward_shop), "staff:t")
    order = await rewards.order(member, reward.id, IdempotencyKey(f"member:{member}", "o1"))
    with pytest.raises(NotReversible):
        await ledger.reverse(Reverse(order.order_entry_id), "staff:t")
    assert (await ledger.balances(member)).available == 180
    cancelled = await rewards.cancel(order.id, "staff:t", member_id=member)
    assert cancelled.status == "cancelled" and cancelled.balances.available == 300
    assert await stock(rewards, reward.id) == 2


# -- over HTTP ---------------------------------------------------------------------------


async def test_the_catalogue_and_orders_over_http(
    client, token, funded_member, new_member, reward_shop, new_id
):
    admin, finance = token("alice", ("admin",)), token("fred", ("finance",))
    reward_id = new_id("mug")
    body = {"id": reward_id, "name": "Travel mug", "points": 800, "stock": 2}
    body["partner_id"] = reward_shop

    assert (await client.post("/v1/admin/rewards", json=body)).status_code == 401
    refused = await client.post("/v1/admin/rewards", json=body, headers=finance)
    assert refused.status_code == 403 and refused.json()["type"] == "/problems/missing-role"
    made = await client.post("/v1/admin/rewards", json=body, headers=admin)
    assert made.status_code == 201 and made.json()["stock"] == 2
    again = await client.post("/v1/admin/rewards", json=body, headers=admin)
    assert again.status_code == 409 and again.json()["type"] == "/problems/reward-exists"
    for bad, problem, status in (
        ({**body, "id": new_id("x"), "points": 0}, "invalid-reward", 422),
        ({**body, "id": new_id("x"), "stock": -1}, "invalid-reward", 422),
        ({**body, "id": new_id("x"), "partner_id": new_id("nobody")}, "partner-not-found", 404),
    ):
        answer = await client.post("/v1/admin/rewards", json=bad, headers=admin)
        assert (answer.status_code, answer.json()["type"]) == (status, f"/problems/{problem}")

    rich, poor, other = await funded_member(2000), await new_member(), await funded_member(900)
    me = token(rich, ("member",))
    assert (await client.get("/v1/me/rewards", headers=admin)).status_code == 401
    listed = await client.get("/v1/me/rewards", headers=me)
    assert {"id": reward_id, "points": 800, "stock": 2}.items() <= next(
        r for r in listed.json() if r["id"] == reward_id
    ).items()

    order = {"reward_id": reward_id}
    missing = await client.post("/v1/me/reward-orders", json=order, headers=me)
    assert missing.status_code == 400
    assert missing.json()["type"] == "/problems/idempotency-key-missing"
    unknown = await client.post(
        "/v1/me/reward-orders",
        json={"reward_id": new_id("none")},
        headers={**me, "Idempotency-Key": "u"},
    )
    assert (unknown.status_code, unknown.json()["type"]) == (404, "/problems/reward-not-found")
    broke = await client.post(
        "/v1/me/reward-orders",
        json=order,
        headers={**token(poor, ("member",)), "Idempotency-Key": "p1"},
    )
    assert (broke.status_code, broke.json()["type"]) == (422, "/problems/insufficient-points")

    before = await scrape(client)
    placed = await client.post(
        "/v1/me/reward-orders", json=order, headers={**me, "Idempotency-Key": "k1"}
    )
    assert placed.status_code == 201
    assert placed.json()["balances"]["available"] == 1200
    replay = await client.post(
        "/v1/me/reward-orders", json=order, headers={**me, "Idempotency-Key": "k1"}
    )
    assert replay.json()["id"] == placed.json()["id"]
    # The order's entry is counted in the service's metrics, once.
    kind = await client.get(f"/v1/staff/entries/{placed.json()['order_entry_id']}", headers=admin)
    posted = "loyalty_ledger_entries_posted_total"
    assert grew(before, await scrape(client), posted, kind=kind.json()["kind"]) == 1
    order_id = placed.json()["id"]
    mine = await client.get("/v1/me/reward-orders", headers=me)
    assert [o["id"] for o in mine.json()] == [order_id]

    theirs = await client.post(
        f"/v1/me/reward-orders/{order_id}/cancel", headers=token(other, ("member",))
    )
    assert (theirs.status_code, theirs.json()["type"]) == (404, "/problems/reward-order-not-found")
    shipped = await client.post(f"/v1/admin/reward-orders/{order_id}/ship", headers=admin)
    assert shipped.status_code == 200 and shipped.json()["status"] == "shipped"
    late = await client.post(f"/v1/me/reward-orders/{order_id}/cancel", headers=me)
    assert (late.status_code, late.json()["type"]) == (409, "/problems/reward-order-not-open")
    assert late.json()["order_status"] == "shipped"
    twice = await client.post(f"/v1/admin/reward-orders/{order_id}/ship", headers=admin)
    assert twice.status_code == 409
    nothing = await client.post("/v1/admin/reward-orders/999999999/ship", headers=admin)
    assert nothing.status_code == 404

    other_order = await client.post(
        "/v1/me/reward-orders",
        json=order,
        headers={**token(other, ("member",)), "Idempotency-Key": "o1"},
    )
    assert other_order.status_code == 201
    sold_out = await client.post(
        "/v1/me/reward-orders", json=order, headers={**me, "Idempotency-Key": "k2"}
    )
    assert (sold_out.status_code, sold_out.json()["type"]) == (409, "/problems/reward-out-of-stock")
    restocked = await client.patch(
        f"/v1/admin/rewards/{reward_id}", json={"stock": 1}, headers=admin
    )
    assert restocked.status_code == 200 and restocked.json()["stock"] == 1
    for path, patch, status in (
        (f"/v1/admin/rewards/{new_id('none')}", {"stock": 1}, 404),
        (f"/v1/admin/rewards/{reward_id}", {"status": "gone"}, 422),
        (f"/v1/admin/rewards/{reward_id}", {}, 422),
    ):
        assert (await client.patch(path, json=patch, headers=admin)).status_code == status
    to_ship = await client.get("/v1/admin/reward-orders?status=ordered", headers=admin)
    assert other_order.json()["id"] in [o["id"] for o in to_ship.json()]
    bad_filter = await client.get("/v1/admin/reward-orders?status=lost", headers=admin)
    assert bad_filter.status_code == 422
    cancelled = await client.post(
        f"/v1/admin/reward-orders/{other_order.json()['id']}/cancel", headers=admin
    )
    assert cancelled.status_code == 200 and cancelled.json()["balances"]["available"] == 900
    catalogue = await client.get("/v1/admin/rewards", headers=admin)
    assert next(r for r in catalogue.json() if r["id"] == reward_id)["stock"] == 2
