"""Free access to a reward for club members (partners/rewards.py
`free_for_clubs`): a member whose paid club term covers the order orders it
for 0 points with no entry, the stock taken all the same and given back by a
cancellation; a non-member and a lapsed member pay the points price; the
stock holds under concurrent orders; an unknown club is refused."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from clubs.club_views import ClubInput, PaymentInput
from clubs.membership import Clubs
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from partners.errors import InvalidReward, RewardOutOfStock
from partners.rewards import RewardChange, RewardInput, Rewards


async def entries_of(ledger: LedgerService, member: str) -> int:
    async with ledger.engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(DISTINCT entry_id) FROM postings WHERE account LIKE :a"),
            {"a": f"member:{member}:%"},
        )
        return found.scalar_one()


async def stock(rewards: Rewards, reward_id: str) -> int:
    return next(r.stock for r in await rewards.catalogue(active_only=False) if r.id == reward_id)


class ClubShop:
    def __init__(self, ledger: LedgerService, club: str, reward: str) -> None:
        self.ledger, self.club, self.reward = ledger, club, reward
        self.rewards = Rewards(ledger)
        self.payments = 0

    async def member(self, funded, paid_ago: timedelta | None) -> str:
        """A member with 1,000 points; a club member paid `paid_ago` ago."""
        member = await funded(1_000)
        if paid_ago is not None:
            then = self.ledger.clock() - paid_ago
            clubs = Clubs(LedgerService(self.ledger.engine, clock=lambda: then))
            await clubs.join(member, self.club)
            self.payments += 1
            reference = f"psp-{self.club}-{self.payments}"
            await clubs.pay(PaymentInput(reference, self.club, member, 1227, "EUR"), "staff:t")
        return member

    async def order(self, member: str, key: str = "o-1"):
        return await self.rewards.order(
            member, self.reward, IdempotencyKey(f"member:{member}", key)
        )


@pytest.fixture
async def shop(ledger, new_partner, new_id) -> ClubShop:
    brand = await new_partner("brand")
    club = new_id("club")
    await Clubs(ledger).create(ClubInput(club, "Cooking studio", brand, 1227, "EUR"), "staff:t")
    reward = await Rewards(ledger).create(
        RewardInput(new_id("apron"), "Club apron", 500, 5, brand, free_for_clubs=[club]),
        "staff:t",
    )
    assert reward.free_for_clubs == (club,)
    return ClubShop(ledger, club, reward.id)


async def test_a_club_member_orders_free_and_a_cancel_returns_the_stock(shop, funded_member):
    member = await shop.member(funded_member, timedelta(days=30))
    entries = await entries_of(shop.ledger, member)
    order = await shop.order(member)
    assert (order.points, order.free_club, order.order_entry_id) == (0, shop.club, None)
    assert order.balances.available == 1_000
    assert await entries_of(shop.ledger, member) == entries  # no entry, not even of 0
    assert await stock(shop.rewards, shop.reward) == 4

    cancelled = await shop.rewards.cancel(order.id, f"member:{member}", member_id=member)
    assert (cancelled.status, cancelled.cancel_entry_id) == ("cancelled", None)
    assert await stock(shop.rewards, shop.reward) == 5
    assert (await shop.ledger.balances(member)).available == 1_000
    assert await entries_of(shop.ledger, member) == entries


async def test_a_non_member_and_a_lapsed_member_pay_the_points(shop, funded_member):
    outsider = await shop.member(funded_member, None)
    lapsed = await shop.member(funded_member, timedelta(days=400))  # 12-month term ended
    for member in (outsider, lapsed):
        order = await shop.order(member)
        assert (order.points, order.free_club) == (500, None)
        assert order.order_entry_id is not None
        assert (await shop.ledger.balances(member)).available == 500
    assert await stock(shop.rewards, shop.reward) == 3


async def test_concurrent_free_and_paid_orders_take_the_stock_exactly(shop, funded_member):
    club_members = {await shop.member(funded_member, timedelta(days=1)) for _ in range(4)}
    members = [*club_members] + [await shop.member(funded_member, None) for _ in range(4)]

    async def attempt(member: str):
        try:
            return await shop.order(member, "race")
        except RewardOutOfStock:
            return None

    placed = [o for o in await asyncio.gather(*(attempt(m) for m in members)) if o]
    assert len(placed) == 5 and await stock(shop.rewards, shop.reward) == 0
    for order in placed:
        assert order.points == (0 if order.member_id in club_members else 500)
    spent = [1_000 - (await shop.ledger.balances(m)).available for m in members]
    assert sum(spent) == sum(o.points for o in placed)


async def test_an_unknown_club_is_refused(shop, ledger):
    with pytest.raises(InvalidReward) as refused:
        await shop.rewards.change(shop.reward, RewardChange(free_for_clubs=["no-club"]), "t")
    assert refused.value.code == "invalid-reward"
    (item,) = [r for r in await shop.rewards.catalogue(active_only=False) if r.id == shop.reward]
    assert item.free_for_clubs == (shop.club,)


async def test_free_orders_over_http(client, token, shop, funded_member):
    member = await shop.member(funded_member, timedelta(days=30))
    me = token(member, roles=("member",))
    ordered = await client.post(
        "/v1/me/reward-orders",
        json={"reward_id": shop.reward},
        headers={**me, "Idempotency-Key": "free-1"},
    )
    assert ordered.status_code == 201, ordered.text
    assert (ordered.json()["points"], ordered.json()["free_club"]) == (0, shop.club)
    bad = await client.patch(
        f"/v1/admin/rewards/{shop.reward}", json={"free_for_clubs": ["no-club"]}, headers=token()
    )
    assert (bad.status_code, bad.json()["type"]) == (422, "/problems/invalid-reward")
