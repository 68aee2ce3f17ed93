"""Card holders' API: balances through the Redis cache (hit, miss, refresh
after every kind of posting and after a tier change, the fill guard, a stale
or expired entry, Redis going away and coming back), history, tier, coupons,
transfers and cards; a member sees only their own data."""

import asyncio
import dataclasses
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as redis
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from api.app import create_app
from api.cache import BalanceCache, key
from api.embedded import EmbeddedRedis
from ledger.commands import Adjust, Authorise, Burn, Earn, Reverse, Void
from ledger.service import LedgerConfig, LedgerService
from partners.registry import Registry
from partners.rule_inputs import CouponInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.api.conftest import SECRET_KEY


def card() -> str:
    return str(uuid.uuid4().int)[:16]


@pytest.fixture
async def member(engine, new_member):
    """An enrolled member with a card, and the card registry."""
    registry = Registry(engine, SecretBox(SECRET_KEY))
    member_id, number = await new_member(), card()
    await registry.issue_card(member_id, number, "staff:tests")
    return member_id, number, registry


def writer(engine) -> LedgerService:
    """A ledger in the test's own event loop (as a job or another worker would be),
    telling nobody about its commits: the cache checks every read against them."""
    return LedgerService(engine, LedgerConfig())


def me(token, member_id):
    return token(member_id, roles=("member",))


async def balance(client, headers):
    response = await client.get("/v1/me/balance", headers=headers)
    assert response.status_code == 200, response.text
    return response.headers["x-cache"], response.json()


async def test_cache_miss_then_hit_and_refresh_after_every_kind_of_posting(
    client, token, member, engine, new_partner
):
    member_id, _, _ = member
    headers, partner = me(token, member_id), await new_partner()
    ledger = writer(engine)
    assert (await balance(client, headers))[0] == "miss"
    assert (await balance(client, headers))[0] == "hit"

    earned = await ledger.earn(Earn.simple(member_id, partner, "R-1", 500))
    steps = [
        ("earn", None, 500),
        ("burn", lambda: ledger.burn(Burn(member_id, partner, "B-1", 50)), 450),
        ("hold", lambda: ledger.authorise(Authorise(member_id, partner, 100)), 350),
        ("adjust", lambda: ledger.adjust(Adjust(member_id, 25, "goodwill"), "staff:t"), 375),
        ("reverse", lambda: ledger.reverse(Reverse(earned.entry_id, 75), "staff:t"), 300),
    ]
    for kind, step, expected in steps:
        if step is not None:
            await step()
        source, view = await balance(client, headers)
        assert (source, view["available"]) == ("miss", expected), kind
        assert (await balance(client, headers)) == ("hit", view), kind
    hold = await ledger.authorise(Authorise(member_id, partner, 10))
    assert (await balance(client, headers))[1]["held"] == 110
    await ledger.void(Void(hold.hold.hold_id, partner))
    assert (await balance(client, headers))[1]["held"] == 100


async def test_pending_releases_expiring_points_and_tier_are_in_the_view(
    client, token, member, engine, new_partner
):
    member_id, _, _ = member
    ledger = writer(engine)
    release = datetime.now(UTC) + timedelta(days=14)
    partner = await new_partner()
    await ledger.earn(Earn.simple(member_id, partner, "R-1", 80, release_at=release))
    _, view = await balance(client, me(token, member_id))
    assert view["pending"] == 80
    assert view["pending_releases"][0]["points"] == 80
    assert view["tier"]["code"] == "base" and view["expiring"] == []


async def test_a_tier_change_alone_is_a_miss(client, token, member, engine):
    member_id, _, _ = member
    headers = me(token, member_id)
    await writer(engine).adjust(Adjust(member_id, 40, "start"), "staff:t")
    await balance(client, headers)
    assert (await balance(client, headers))[0] == "hit"
    async with engine.begin() as conn:  # what requalification writes, no posting
        await conn.execute(
            text(
                "INSERT INTO tier_changes (member_id, from_tier, to_tier, reason, changed_at) "
                "VALUES (:m, 'base', 'base', 'test', now())"
            ),
            {"m": member_id},
        )
    assert (await balance(client, headers))[0] == "miss"
    assert (await balance(client, headers))[0] == "hit"


class Source:
    """A stand-in for the programme: the token the cache is checked against."""

    def __init__(self) -> None:
        self.token = (0, 0)
        self.changes_at = None  # when the view changes by time alone

    async def balance_token(self, member_id, conn=None):
        return self.token

    async def balance_view(self, member_id):
        return {"token": list(self.token)}, self.token, self.changes_at


async def test_the_fill_guard_and_the_token_check(redis_url, new_id):
    client = redis.from_url(redis_url)
    source = Source()
    cache = BalanceCache(client, source, ttl_seconds=60)
    member_id, now = new_id(), time.time()
    until = now + 60
    try:
        assert await cache.fill(member_id, (7, 2), b'{"v": 7}', now, until)
        assert not await cache.fill(member_id, (6, 2), b'{"v": 6}', now + 1, until)  # slow reader
        assert not await cache.fill(member_id, (7, 1), b'{"v": 7.1}', now + 1, until)
        assert not await cache.fill(member_id, (7, 2), b'{"v": "older"}', now - 1, until)
        assert await cache.fill(member_id, (7, 2), b'{"v": "later"}', now + 1, until)  # refresh
        assert await cache.fill(member_id, (8, 1), b'{"v": 8}', now, until)  # not older in both
        source.token = (8, 1)
        assert await cache.balance(member_id) == (b'{"v": 8}', True)
        source.token = (9, 1)  # committed, and nobody told Redis
        assert await cache.balance(member_id) == (b'{"token":[9,1]}', False)
        assert await cache.balance(member_id) == (b'{"token":[9,1]}', True)
        await client.hset(key(member_id), mapping={"versions": 8})  # an old snapshot's entry
        assert (await cache.balance(member_id))[1] is False
        assert await cache.balance(member_id) == (b'{"token":[9,1]}', True)
    finally:
        await client.delete(key(member_id))
        await client.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_an_unchanged_balance_is_served_from_redis_until_time_changes_it(redis_url, new_id):
    """Minutes after the last write the view still hits, with the default TTL;
    a write, or a lot's expiry coming into the window, makes the next read a miss."""
    client, source, clock = redis.from_url(redis_url), Source(), FakeClock()
    cache = BalanceCache(client, source, clock=clock)
    member_id = new_id()
    source.token = (3, 0)
    try:
        assert (await cache.balance(member_id))[1] is False
        clock.now += 120  # two minutes, no write
        assert (await cache.balance(member_id))[1] is True
        clock.now += 1800
        assert (await cache.balance(member_id))[1] is True
        source.token = (4, 0)  # a write
        assert (await cache.balance(member_id))[1] is False
        assert (await cache.balance(member_id))[1] is True
        # A lot's expiry enters the 90-day window in 10 minutes: served until then.
        source.token = (5, 0)
        source.changes_at = datetime.fromtimestamp(clock.now + 600, UTC)
        assert (await cache.balance(member_id))[1] is False
        clock.now += 599
        assert (await cache.balance(member_id))[1] is True
        clock.now += 2
        assert (await cache.balance(member_id))[1] is False
    finally:
        await client.delete(key(member_id))
        await client.aclose()


async def test_an_expired_view_is_refreshed_with_the_same_token(
    api_settings, token, member, engine
):
    """Time alone (no write) ends a view's life, and the same token's next build
    replaces it: the cache keeps hitting after the TTL."""
    member_id, _, _ = member
    await writer(engine).adjust(Adjust(member_id, 60, "start"), "staff:t")
    settings = dataclasses.replace(api_settings, balance_cache_ttl_seconds=1)
    headers = me(token, member_id)
    async with AsyncTestClient(create_app(settings)) as client:
        for _ in range(3):
            assert (await balance(client, headers))[0] == "miss"
            assert (await balance(client, headers))[0] == "hit"
            await asyncio.sleep(1.1)


async def test_redis_going_away_and_coming_back(api_settings, token, member, engine):
    member_id, _, _ = member
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="loyalty-redis-")))
    url = server.start()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    settings = dataclasses.replace(api_settings, redis_url=url, balance_cache_ttl_seconds=2)
    headers = me(token, member_id)
    try:
        async with AsyncTestClient(create_app(settings)) as client:
            ledger = writer(engine)
            await ledger.adjust(Adjust(member_id, 300, "start"), "staff:t")
            await balance(client, headers)
            assert (await balance(client, headers))[0] == "hit"
            server.stop()  # Redis goes away (it saves the view it holds)
            await ledger.adjust(Adjust(member_id, 20, "during the outage"), "staff:t")
            _, view = await balance(client, headers)
            assert view["available"] == 320  # from PostgreSQL, never the stale view
            ready = (await client.get("/health/ready")).json()
            assert ready["status"] == "degraded" and ready["postgres"] == "ok"
            server.start(port)  # back, with the stale view of 300 on disk
            for _ in range(3):
                assert (await balance(client, headers))[1]["available"] == 320
            assert (await client.get("/health/ready")).json()["status"] == "ready"
    finally:
        server.remove()


async def test_history_tier_coupons_and_cards(client, token, member, ledger, new_id, new_partner):
    member_id, number, _ = member
    headers = me(token, member_id)
    partner = await new_partner()
    for i in range(3):
        await ledger.earn(Earn.simple(member_id, partner, f"R-{i}", 10 + i))
    page = (await client.get("/v1/me/history?limit=2", headers=headers)).json()
    assert [e["partner_reference"] for e in page["entries"]] == ["R-2", "R-1"]
    rest = (
        await client.get(f"/v1/me/history?limit=2&cursor={page['next_cursor']}", headers=headers)
    ).json()
    assert [e["partner_reference"] for e in rest["entries"]] == ["R-0"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert (await client.get(f"/v1/me/history?since={future}", headers=headers)).json()[
        "entries"
    ] == []
    tier = (await client.get("/v1/me/tier", headers=headers)).json()
    assert tier["tier"]["code"] == "base" and tier["qp_needed"] >= 0

    code, now = new_id("C").upper(), datetime.now(UTC)
    await Rulebook(ledger).create_coupon(
        CouponInput(
            code, "5x", now - timedelta(days=1), now + timedelta(days=5), multiplier=Decimal(5)
        ),
        "staff:t",
    )
    await Rulebook(ledger).issue_coupon(code, [member_id], "staff:t")
    assert [c["status"] for c in (await client.get("/v1/me/coupons", headers=headers)).json()] == [
        "issued"
    ]
    for _ in range(2):  # activating twice is fine
        activated = await client.post(f"/v1/me/coupons/{code}/activate", headers=headers)
        assert activated.status_code == 200 and activated.json()["status"] == "activated"

    cards = (await client.get("/v1/me/cards", headers=headers)).json()
    assert [c["card_number"] for c in cards] == [number]
    blocked = await client.post(f"/v1/me/cards/{number}/block", headers=headers)
    assert blocked.json()["status"] == "blocked"


async def test_a_token_naming_no_enrolled_member_reads_no_balance_and_caches_nothing(
    client, token, new_id, redis_url
):
    stranger = new_id("m")  # a subject signed with the member key, never enrolled
    for _ in range(2):
        response = await client.get("/v1/me/balance", headers=me(token, stranger))
        assert response.status_code == 404, response.text
        assert response.json()["type"] == "/problems/member-not-found"
    assert client.app.state.redis is not None
    store = redis.Redis.from_url(redis_url)
    try:
        assert not await store.exists(key(stranger))
    finally:
        await store.aclose()


async def test_a_member_cannot_reach_another_members_data(client, token, member, new_member):
    _, other_card, _ = member
    intruder = await new_member()
    headers = me(token, intruder)
    response = await client.post(f"/v1/me/cards/{other_card}/block", headers=headers)
    assert (response.status_code, response.json()["type"]) == (404, "/problems/card-not-found")
    coupon = await client.post("/v1/me/coupons/NOT-MINE/activate", headers=headers)
    assert coupon.status_code == 404
    member_on_staff_api = await client.get("/v1/staff/members/x/balances", headers=headers)
    assert member_on_staff_api.json()["type"] == "/problems/token-wrong-audience"
    staff_on_member_api = await client.get("/v1/me/balance", headers=token("alice"))
    assert staff_on_member_api.json()["type"] == "/problems/token-wrong-audience"


async def test_transfers_follow_the_rules_and_are_idempotent(
    client, token, member, engine, new_member
):
    ledger = writer(engine)
    member_id, _, registry = member
    receiver, receiver_card = await new_member(), card()
    await registry.issue_card(receiver, receiver_card, "staff:t")
    await ledger.adjust(Adjust(member_id, 30_000, "start"), "staff:t")
    headers = {**me(token, member_id), "Idempotency-Key": "t-1"}
    body = {"to_card_number": receiver_card, "amount": 500}
    first = await client.post("/v1/me/transfers", headers=headers, json=body)
    assert first.status_code == 201, first.text
    again = await client.post("/v1/me/transfers", headers=headers, json=body)
    assert again.json() == first.json()
    assert first.json()["balances"]["available"] == 29_500
    _, view = await balance(client, me(token, receiver))
    assert view["available"] == 500  # read-your-writes on the receiver's side too
    small = await client.post(
        "/v1/me/transfers",
        json={**body, "amount": 99},
        headers={**me(token, member_id), "Idempotency-Key": "t-2"},
    )
    assert small.json()["type"] == "/problems/transfer-refused"
    big = await client.post(
        "/v1/me/transfers",
        json={**body, "amount": 19_600},
        headers={**me(token, member_id), "Idempotency-Key": "t-3"},
    )
    assert (big.status_code, big.json()["daily_limit"]) == (422, 20_000)
    missing = await client.post("/v1/me/transfers", json=body, headers=me(token, member_id))
    assert missing.json()["type"] == "/problems/idempotency-key-missing"
    tabbed = await client.post(
        "/v1/me/transfers", json=body, headers={**me(token, member_id), "Idempotency-Key": "a\tb"}
    )
    assert (tabbed.status_code, tabbed.json()["type"]) == (
        400,
        "/problems/invalid-idempotency-key",
    )
