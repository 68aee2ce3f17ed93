"""Partner API through HTTP with signed requests, against the real PostgreSQL
and Redis: signature failures, key rotation, idempotency, the whole earn /
return / redeem flow, bad input, and replays refused with Redis down."""

import asyncio
import dataclasses
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from partners.client import PartnerAuth
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import BurnRuleInput, EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.api.conftest import SECRET_KEY

FROM = datetime(2024, 1, 1, tzinfo=UTC)


@dataclasses.dataclass
class Shop:
    partner_id: str
    key_id: str
    secret: str
    card: str
    member_id: str
    registry: Registry

    def auth(self, **kwargs) -> PartnerAuth:
        return PartnerAuth(self.key_id, self.secret, **kwargs)


@pytest.fixture
async def shop(engine, ledger, new_id, new_member) -> Shop:
    return await open_shop(engine, ledger, new_id, new_member)


async def open_shop(engine, ledger, new_id, new_member, return_window_days: int = 0) -> Shop:
    """A partner earning 1 point per EUR (burning 100 points per EUR), a
    member with a card, and a key."""
    registry = Registry(engine, SecretBox(SECRET_KEY))
    partner_id, member_id = new_id("shop"), await new_member()
    await registry.create_partner(
        PartnerInput(partner_id, "Test shop", return_window_days=return_window_days),
        "staff:tests",
    )
    rules = Rulebook(ledger)
    await rules.create_earn_rule(partner_id, EarnRuleInput(FROM, "EUR", Decimal(1)), "staff:tests")
    await rules.create_burn_rule(
        partner_id, BurnRuleInput(FROM, "EUR", Decimal(100)), "staff:tests"
    )
    card = str(uuid.uuid4().int)[:16]
    await registry.issue_card(member_id, card, "staff:tests")
    key = await registry.create_key(partner_id, "staff:tests")
    return Shop(partner_id, key.key_id, key.secret, card, member_id, registry)


OLD = "2020-01-01T00:00:00+00:00"  # before any contract window


def earn_body(shop: Shop, reference: str, *amounts: int, currency="EUR", category="groceries"):
    return {
        "card_number": shop.card,
        "reference": reference,
        "purchase": {
            "currency": currency,
            "lines": [{"amount_minor": a, "category": category} for a in amounts],
        },
    }


async def post(client, shop, path, body, key=None, auth=None, **kwargs):
    headers = {"Idempotency-Key": key or uuid.uuid4().hex}
    return await client.post(path, json=body, headers=headers, auth=auth or shop.auth(), **kwargs)


async def test_signature_failures_are_distinct_401s_and_post_nothing(client, shop, ledger):
    body = earn_body(shop, "R-1", 1000)
    wrong = dataclasses.replace(shop, secret="not-the-secret")
    unknown = dataclasses.replace(shop, key_id="pk_nope")
    stale = shop.auth(clock=lambda: time.time() - 301)
    cases = [
        (None, {}, "signature-missing"),
        (None, {"X-Loyalty-Key-Id": shop.key_id}, "signature-malformed"),
        (unknown.auth(), {}, "key-unknown"),
        (stale, {}, "signature-stale"),
        (wrong.auth(), {}, "signature-invalid"),
    ]
    for auth, headers, code in cases:
        response = await client.post(
            "/v1/partner/earn", json=body, headers={"Idempotency-Key": "k", **headers}, auth=auth
        )
        assert response.status_code == 401, (code, response.text)
        assert response.json()["type"] == f"/problems/{code}"
    assert (await ledger.balances(shop.member_id)).available == 0


async def test_a_body_sent_as_another_media_type_than_json_is_a_415_posting_nothing(
    client, shop, ledger
):
    body = json.dumps(earn_body(shop, "R-1", 1000))
    for media in ("text/plain", "application/x-www-form-urlencoded"):
        response = await client.post(
            "/v1/partner/earn",
            content=body,
            headers={"Idempotency-Key": uuid.uuid4().hex, "Content-Type": media},
            auth=shop.auth(),
        )
        assert response.status_code == 415, (media, response.text)
        assert response.json()["type"] == "/problems/unsupported-media-type"
    assert (await ledger.balances(shop.member_id)).available == 0
    charset = {"Content-Type": "application/json; charset=utf-8"}
    accepted = await client.post(
        "/v1/partner/earn",
        content=body,
        headers={"Idempotency-Key": uuid.uuid4().hex, **charset},
        auth=shop.auth(),
    )
    assert accepted.status_code == 201, accepted.text


async def test_a_replayed_signature_is_refused(client, shop, ledger):
    fixed = time.time()
    body = earn_body(shop, "R-1", 1000)
    first = await post(
        client, shop, "/v1/partner/earn", body, key="k1", auth=shop.auth(clock=lambda: fixed)
    )
    assert first.status_code == 201
    again = await post(
        client, shop, "/v1/partner/earn", body, key="k1", auth=shop.auth(clock=lambda: fixed)
    )
    assert (again.status_code, again.json()["type"]) == (401, "/problems/signature-replayed")
    assert (await ledger.balances(shop.member_id)).available == 10


async def test_clock_skew_within_tolerance_is_accepted(client, shop):
    for skew in (-295, 295):
        response = await client.get(
            f"/v1/partner/cards/{shop.card}/balance",
            auth=shop.auth(clock=lambda s=skew: time.time() + s),
        )
        assert response.status_code == 200, response.text
    late = await client.get(
        f"/v1/partner/cards/{shop.card}/balance", auth=shop.auth(clock=lambda: time.time() + 305)
    )
    assert late.json()["type"] == "/problems/signature-stale"


async def test_key_rotation_with_overlap_then_revocation(client, shop):
    second = await shop.registry.create_key(shop.partner_id, "staff:tests")
    new = dataclasses.replace(shop, key_id=second.key_id, secret=second.secret)
    path = f"/v1/partner/cards/{shop.card}/balance"
    assert (await client.get(path, auth=shop.auth())).status_code == 200
    assert (await client.get(path, auth=new.auth())).status_code == 200
    from partners.errors import TooManyKeys

    with pytest.raises(TooManyKeys):
        await shop.registry.create_key(shop.partner_id, "staff:tests")
    await shop.registry.revoke_key(shop.partner_id, shop.key_id, "staff:tests")
    # Signed seconds before the first call: not that call's signature again.
    revoked = await client.get(path, auth=shop.auth(clock=lambda: time.time() - 3))
    assert (revoked.status_code, revoked.json()["type"]) == (401, "/problems/key-revoked")
    # Signed seconds earlier: the same request at the same second is a replay
    # (a second apart was not enough when the first call fell on the next second).
    assert (await client.get(path, auth=new.auth(clock=lambda: time.time() - 7))).status_code == 200


async def test_idempotent_retry_changed_payload_and_concurrency(client, shop, ledger, engine):
    body = earn_body(shop, "R-1", 2500)
    first = await post(client, shop, "/v1/partner/earn", body, key="same")
    await asyncio.sleep(1.05)  # a retry is signed anew
    retry = await post(client, shop, "/v1/partner/earn", body, key="same")
    assert retry.status_code == 201 and retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    changed = await post(client, shop, "/v1/partner/earn", earn_body(shop, "R-1", 2600), key="same")
    assert (changed.status_code, changed.json()["type"]) == (
        422,
        "/problems/idempotency-key-reused",
    )
    assert (await ledger.balances(shop.member_id)).available == 25

    racing = earn_body(shop, "R-2", 1000)
    signed_at = time.time()  # one base time: four distinct timestamps, four signatures
    responses = await asyncio.gather(
        *(
            post(
                client,
                shop,
                "/v1/partner/earn",
                racing,
                key="race",
                auth=shop.auth(clock=lambda i=i: signed_at - i),
            )
            for i in range(4)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) >= 1 and set(statuses) <= {201, 409}
    assert {r.json()["entry_id"] for r in responses if r.status_code == 201}.__len__() == 1
    assert (await ledger.balances(shop.member_id)).available == 35


async def test_earn_return_redeem_capture_and_void(client, shop, ledger, assert_clean):
    earned = await post(client, shop, "/v1/partner/earn", earn_body(shop, "S-1", 30000, 10000))
    assert earned.status_code == 201, earned.text
    assert earned.json()["balances"]["available"] == 400
    returned = await post(
        client,
        shop,
        "/v1/partner/returns",
        {
            "reference": "S-1",
            "return_reference": "S-1-R",
            "lines": [{"amount_minor": 10000, "category": "groceries"}],
        },
    )
    assert returned.status_code == 201, returned.text
    assert (returned.json()["points_reversed"], returned.json()["balances"]["available"]) == (
        100,
        300,
    )
    too_much = await post(
        client,
        shop,
        "/v1/partner/returns",
        {"reference": "S-1", "return_reference": "S-1-R2", "amount_minor": 30001},
    )
    assert too_much.json()["type"] == "/problems/return-exceeds-purchase"

    hold = await post(
        client,
        shop,
        "/v1/partner/redemptions",
        {
            "card_number": shop.card,
            "reference": "H-1",
            "currency": "EUR",
            "basket_minor": 5000,
            "points": 200,
        },
    )
    assert hold.status_code == 201, hold.text
    assert hold.json()["value_minor"] == 200
    assert (hold.json()["balances"]["available"], hold.json()["balances"]["held"]) == (100, 200)
    hold_id = hold.json()["hold"]["hold_id"]
    captured = await post(
        client, shop, f"/v1/partner/redemptions/{hold_id}/capture", {"points": 150}
    )
    assert captured.status_code == 200, captured.text
    assert (captured.json()["balances"]["available"], captured.json()["balances"]["held"]) == (
        150,
        0,
    )
    other = await post(
        client,
        shop,
        "/v1/partner/redemptions",
        {
            "card_number": shop.card,
            "reference": "H-2",
            "currency": "EUR",
            "basket_minor": 5000,
            "points": 100,
        },
    )
    voided = await post(
        client, shop, f"/v1/partner/redemptions/{other.json()['hold']['hold_id']}/void", {}
    )
    assert voided.status_code == 200
    assert voided.json()["balances"]["available"] == 150
    till = await client.get(f"/v1/partner/cards/{shop.card}/balance", auth=shop.auth())
    assert till.json() == {"available": 150, "value_minor": 150, "currency": "EUR"}
    await assert_clean()


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        (b'{"card_number": "1234", "reference": "x",', 400, "malformed-request"),
        (
            {
                "card_number": "99999999999",
                "reference": "B-1",
                "purchase": {
                    "currency": "EUR",
                    "lines": [{"amount_minor": 100, "category": "groceries"}],
                },
            },
            404,
            "card-not-found",
        ),
        ("negative", 422, "invalid-purchase"),
        ("currency", 422, "unknown-currency"),
        ("lines", 422, "invalid-purchase"),
    ],
)
async def test_bad_input_is_a_problem_and_posts_nothing(
    client, shop, ledger, body, status, problem
):
    if body == "negative":
        body = earn_body(shop, "B-1", -500)
    elif body == "currency":
        body = earn_body(shop, "B-1", 500, currency="XTS")
    elif body == "lines":
        body = earn_body(shop, "B-1", *[1] * 201)
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = await client.post(
        "/v1/partner/earn",
        auth=shop.auth(),
        headers={"Idempotency-Key": uuid.uuid4().hex, "content-type": "application/json"},
        **kwargs,
    )
    assert response.status_code == status, response.text
    assert response.json()["type"] == f"/problems/{problem}"
    assert (await ledger.balances(shop.member_id)).available == 0


async def test_suspended_partner_blocked_card_and_missing_key(client, shop, ledger):
    missing = await client.post(
        "/v1/partner/earn", json=earn_body(shop, "M-1", 100), auth=shop.auth()
    )
    assert missing.json()["type"] == "/problems/idempotency-key-missing"
    malformed = await post(client, shop, "/v1/partner/earn", earn_body(shop, "M-1", 100), "a\tb")
    assert (malformed.status_code, malformed.json()["type"]) == (
        400,
        "/problems/invalid-idempotency-key",
    )
    await shop.registry.block_card(shop.member_id, shop.card, "staff:tests")
    blocked = await post(client, shop, "/v1/partner/earn", earn_body(shop, "M-2", 100))
    assert (blocked.status_code, blocked.json()["type"]) == (422, "/problems/card-blocked")
    await shop.registry.set_status(shop.partner_id, "suspended", "staff:tests")
    suspended = await client.get(f"/v1/partner/cards/{shop.card}/balance", auth=shop.auth())
    assert (suspended.status_code, suspended.json()["type"]) == (403, "/problems/partner-suspended")
    assert (await ledger.balances(shop.member_id)).available == 0


async def test_replays_are_refused_with_redis_down(api_settings, shop):
    dead = dataclasses.replace(api_settings, redis_url="redis://127.0.0.1:9/0")
    async with AsyncTestClient(create_app(dead)) as client:
        fixed = time.time()
        path = f"/v1/partner/cards/{shop.card}/balance"
        first = await client.get(path, auth=shop.auth(clock=lambda: fixed))
        assert first.status_code == 200
        again = await client.get(path, auth=shop.auth(clock=lambda: fixed))
        assert again.json()["type"] == "/problems/signature-replayed"
        ready = (await client.get("/health/ready")).json()
        assert ready["status"] == "degraded"


async def test_rate_limit_is_a_429_with_retry_after(api_settings, shop):
    limited = dataclasses.replace(api_settings, partner_rate_limit=3)
    signed_at = time.time()
    async with AsyncTestClient(create_app(limited)) as client:
        responses = [
            await client.get(
                f"/v1/partner/cards/{shop.card}/balance",
                auth=shop.auth(clock=lambda i=i: signed_at - i),
            )
            for i in range(8)
        ]
    throttled = [r for r in responses if r.status_code == 429]
    assert throttled, [r.status_code for r in responses]
    assert throttled[0].headers["retry-after"] == "1"
    assert throttled[0].json()["type"] == "/problems/rate-limited"


async def test_a_retry_while_the_first_call_is_in_flight_is_409(client, shop, engine, ledger):
    from sqlalchemy import text

    raw = json.dumps(earn_body(shop, "F-1", 10000)).encode()
    headers = {"Idempotency-Key": "busy", "content-type": "application/json"}
    # The first call with this key, still running: its transaction holds the key.
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"partner:{shop.partner_id}\nbusy"},
        )
        response = await client.post(
            "/v1/partner/earn", content=raw, auth=shop.auth(), headers=headers
        )
        assert (response.status_code, response.json()["type"]) == (
            409,
            "/problems/request-in-flight",
        )
        assert response.headers["retry-after"] == "1"
        assert (await ledger.balances(shop.member_id)).available == 0
    # The 409 was not stored as the answer: once the first call is over, the
    # retry runs.
    later = shop.auth(clock=lambda: time.time() + 1)  # a new signature for the same request
    retried = await client.post("/v1/partner/earn", content=raw, auth=later, headers=headers)
    assert retried.status_code == 201, retried.text
    assert (await ledger.balances(shop.member_id)).available == 100


async def _entries(engine, partner_id: str) -> int:
    from sqlalchemy import text

    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT count(*) FROM journal_entries WHERE partner_id = :p"),
                {"p": partner_id},
            )
        ).scalar_one()


async def test_a_crash_before_the_posting_commits_leaves_nothing_and_the_retry_posts_once(
    client, shop, engine, ledger, monkeypatch
):
    """The worker dies after posting, before its transaction commits: the
    key, the entry and the lots roll back together; the retry posts once."""
    import partners.accrual as accrual

    body = earn_body(shop, "K-1", 10000)
    # No occurred_at: the server fills in the purchase time.
    real_record = accrual.record_call  # the call's last statement, after the posting

    async def crash(*args, **kwargs):
        raise ConnectionResetError("worker killed")

    monkeypatch.setattr(accrual, "record_call", crash)
    failed = await post(client, shop, "/v1/partner/earn", body, key="crash-1")
    assert failed.status_code >= 500
    assert await _entries(engine, shop.partner_id) == 0
    monkeypatch.setattr(accrual, "record_call", real_record)
    later = shop.auth(clock=lambda: time.time() + 1)  # a new signature for the same request
    retried = await post(client, shop, "/v1/partner/earn", body, key="crash-1", auth=later)
    assert retried.status_code == 201, retried.text
    assert await _entries(engine, shop.partner_id) == 1
    assert (await ledger.balances(shop.member_id)).available == 100


async def test_a_crash_after_the_posting_before_the_answer_is_stored_replays_the_201(
    client, shop, engine, ledger, monkeypatch
):
    """The worker dies after the ledger committed (the receipt stored with the
    key is the answer: nothing else is stored), before it answered. The retry,
    a second later and with the purchase time left to the server, is the same
    request: the original 201, one entry."""
    from ledger.service import LedgerService

    body = earn_body(shop, "K-2", 10000)
    real_run = LedgerService.run

    async def crash(self, *args, **kwargs):
        await real_run(self, *args, **kwargs)
        raise ConnectionResetError("worker killed")

    monkeypatch.setattr(LedgerService, "run", crash)
    failed = await post(client, shop, "/v1/partner/earn", body, key="crash-2")
    assert failed.status_code >= 500
    assert await _entries(engine, shop.partner_id) == 1
    monkeypatch.setattr(LedgerService, "run", real_run)
    await asyncio.sleep(1.1)  # the server clock moves on; the request does not
    retried = await post(client, shop, "/v1/partner/earn", body, key="crash-2")
    assert retried.status_code == 201, retried.text
    assert await _entries(engine, shop.partner_id) == 1
    assert (await ledger.balances(shop.member_id)).available == 100
    later = shop.auth(clock=lambda: time.time() + 1)
    again = await post(client, shop, "/v1/partner/earn", body, key="crash-2", auth=later)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == retried.json()


async def test_an_error_answer_is_not_kept_once_a_retry_has_posted(
    client, shop, engine, ledger, monkeypatch
):
    """A call fails (the card is not issued yet) and rolls back; before its
    error answer is stored, the card is issued and a retry under the same key
    posts. The error is then not kept: later retries get the 201, not a 404
    that contradicts the posted purchase."""
    import api.partner_requests as requests
    from ledger.idempotency import IdempotencyKey
    from ledger.service import LedgerService
    from partners.earning import Purchase, PurchaseLine
    from partners.programme import Programme

    card = str(uuid.uuid4().int)[:16]
    body = {**earn_body(shop, "LATE-CARD", 1000), "card_number": card}
    real_store = requests.store_response

    async def retry_first(app_engine, partner_id, key, digest, *answer):
        # On the app's own engine (its event loop): the retry, as the route
        # runs it, under the same key and request digest.
        await Registry(app_engine, SecretBox(SECRET_KEY)).issue_card(
            shop.member_id, card, "staff:tests"
        )
        app_ledger = LedgerService(app_engine)
        await Programme(app_ledger).earn_purchase(
            None,
            Purchase(partner_id, datetime.now(UTC), "EUR", (PurchaseLine(1000, "groceries"),)),
            "LATE-CARD",
            idempotency=IdempotencyKey(f"partner:{partner_id}", key, digest),
            card_number=card,
        )
        await real_store(app_engine, partner_id, key, digest, *answer)

    monkeypatch.setattr(requests, "store_response", retry_first)
    first = await post(client, shop, "/v1/partner/earn", body, key="late-card")
    monkeypatch.setattr(requests, "store_response", real_store)
    assert first.status_code == 404, first.text
    again = await post(
        client, shop, "/v1/partner/earn", body, key="late-card",
        auth=shop.auth(clock=lambda: time.time() + 1),
    )  # fmt: skip
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert await _entries(engine, shop.partner_id) == 1


async def test_stored_responses_are_purged_after_the_retention(client, shop, engine):
    from datetime import timedelta

    from sqlalchemy import text

    from api.partner_requests import purge

    # A success is kept with the ledger's key, an error as a stored answer.
    await post(client, shop, "/v1/partner/earn", earn_body(shop, "P-1", 100), key="old")
    await post(client, shop, "/v1/partner/earn", earn_body(shop, "P-1", 100), key="old-error")
    count = (
        "SELECT (SELECT count(*) FROM partner_requests WHERE partner_id = :p) "
        "+ (SELECT count(*) FROM idempotency_keys WHERE caller = 'partner:' || :p)"
    )
    async with engine.begin() as conn:
        assert (await conn.execute(text(count), {"p": shop.partner_id})).scalar_one() == 2
        for table, column, value in (
            ("partner_requests", "partner_id", shop.partner_id),
            ("idempotency_keys", "caller", f"partner:{shop.partner_id}"),
        ):
            await conn.execute(
                text(
                    f"UPDATE {table} SET created_at = now() - interval '8 days' WHERE {column} = :v"
                ),
                {"v": value},
            )
    assert await purge(engine, timedelta(days=7)) >= 2
    async with engine.connect() as conn:
        left = (await conn.execute(text(count), {"p": shop.partner_id})).scalar_one()
    assert left == 0


async def test_points_wait_in_pending_for_the_partners_return_window(
    client, engine, ledger, new_id, new_member
):
    shop = await open_shop(engine, ledger, new_id, new_member, return_window_days=14)
    response = await post(client, shop, "/v1/partner/earn", earn_body(shop, "W-1", 5000))
    assert response.status_code == 201, response.text
    assert (response.json()["balances"]["pending"], response.json()["balances"]["available"]) == (
        50,
        0,
    )
    release = datetime.fromisoformat(response.json()["release_at"])
    assert timedelta(days=13) < release - datetime.now(UTC) <= timedelta(days=14)


async def test_a_batch_of_earnings_over_http(client, shop, ledger):
    """Signed like every partner call; each item answered in order, as a single
    call would have been; the whole batch idempotent under its key."""
    items = [
        earn_body(shop, "BATCH-1", 1000),
        earn_body(shop, "BATCH-2", 2500),
        earn_body(shop, "BATCH-1", 700),  # the reference again
        {**earn_body(shop, "BATCH-3", 300), "card_number": "0000000000000000"},
        earn_body(shop, "BATCH-4", 500, currency="ZZZ"),
        # Outside the contract's window: a problem with two extensions.
        {
            **earn_body(shop, "BATCH-5", 500),
            "purchase": {**earn_body(shop, "BATCH-5", 500)["purchase"], "occurred_at": OLD},
        },
    ]
    first = await post(client, shop, "/v1/partner/earnings/batch", {"items": items}, key="night-1")
    assert first.status_code == 200, first.text
    answer = first.json()
    assert [r["status"] for r in answer["results"]] == [201, 201, 409, 404, 422, 422]
    assert [r["reference"] for r in answer["results"]] == [
        "BATCH-1", "BATCH-2", "BATCH-1", "BATCH-3", "BATCH-4", "BATCH-5"
    ]  # fmt: skip
    assert {"earliest", "latest"} <= answer["results"][5]["problem"].keys()
    assert answer["results"][0]["receipt"]["earning"]["points"] == 10
    assert answer["results"][2]["problem"]["type"] == "/problems/duplicate-partner-reference"
    assert answer["results"][3]["problem"]["type"] == "/problems/card-not-found"
    assert (answer["posted"], answer["duplicates"], answer["rejected"], answer["points"]) == (
        2,
        1,
        3,
        35,
    )
    assert (await ledger.balances(shop.member_id)).available == 35
    await asyncio.sleep(1.05)  # a retry is signed anew
    again = await post(client, shop, "/v1/partner/earnings/batch", {"items": items}, key="night-1")
    # The first answer's bytes (the receipt is kept as jsonb, which orders
    # an object's names its own way).
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert (await ledger.balances(shop.member_id)).available == 35
    empty = await post(client, shop, "/v1/partner/earnings/batch", {"items": []})
    assert empty.status_code == 400 and empty.json()["type"] == "/problems/validation-error"
