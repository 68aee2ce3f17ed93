"""Hostile input found by fuzzing the OpenAPI operations, each once a 500:
integers beyond their column's range, NUL characters, and a problem extension
that collided with the problem builder's own `status`. Each now answers a 422
(or its domain problem) and writes nothing. Also: the OpenAPI document states
the bounds and the headers the routes require."""

import base64
import itertools
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from api.input_guard import BIGINT_MAX, INT4_MAX, MAX_PARAMETER_LENGTH, MAX_TEXT_LENGTH
from api.problems import problem
from partners.client import PartnerAuth
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import BurnRuleInput, EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.api.conftest import SECRET_KEY

PROBLEM = "application/problem+json"
FROM = datetime(2024, 1, 1, tzinfo=UTC)


def assert_invalid_input(response) -> dict:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == "/problems/invalid-input"
    assert body["status"] == 422 and body["title"] and body["detail"]
    assert body["errors"], body
    return body


@pytest.fixture
async def funded_member(client, token, ledger, new_member) -> str:
    member = await new_member()
    response = await client.post(
        "/v1/staff/adjustments",
        headers=token(),
        json={"member_id": member, "amount": 500, "reason": "opening balance"},
    )
    assert response.status_code == 201, response.text
    return member


@pytest.fixture
async def shop(engine, ledger, new_id, funded_member):
    """A partner with earn and burn rules, a signing key, and a card of the
    funded member."""
    registry = Registry(engine, SecretBox(SECRET_KEY))
    partner_id = new_id("shop")
    await registry.create_partner(PartnerInput(partner_id, "Hostile shop"), "staff:tests")
    rules = Rulebook(ledger)
    await rules.create_earn_rule(partner_id, EarnRuleInput(FROM, "EUR", Decimal(1)), "staff:tests")
    await rules.create_burn_rule(
        partner_id, BurnRuleInput(FROM, "EUR", Decimal(100)), "staff:tests"
    )
    card = str(uuid.uuid4().int)[:16]
    await registry.issue_card(funded_member, card, "staff:tests")
    key = await registry.create_key(partner_id, "staff:tests")
    # Each request signed at another second: repeating one (a second void) is no replay.
    seconds_back = itertools.count()
    auth = PartnerAuth(key.key_id, key.secret, clock=lambda: time.time() - next(seconds_back))
    return {"partner_id": partner_id, "card": card, "auth": auth}


async def signed_post(client, shop, path, body):
    return await client.post(
        path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex}, auth=shop["auth"]
    )


# -- integers beyond their column ---------------------------------------------


@pytest.mark.parametrize("entry_id", [BIGINT_MAX + 1, 10**30, 0])
async def test_an_entry_id_beyond_bigint_is_invalid_input(client, token, entry_id):
    assert_invalid_input(await client.get(f"/v1/staff/entries/{entry_id}", headers=token()))


async def test_the_largest_bigint_entry_id_is_simply_not_found(client, token):
    response = await client.get(f"/v1/staff/entries/{BIGINT_MAX}", headers=token())
    assert (response.status_code, response.json()["type"]) == (404, "/problems/entry-not-found")


async def test_a_rule_version_beyond_int_is_invalid_input_and_retires_nothing(client, token, shop):
    partner_id = shop["partner_id"]
    retire = await client.post(
        f"/v1/admin/partners/{partner_id}/earn-rules/{INT4_MAX + 1}/retire", headers=token()
    )
    assert_invalid_input(retire)
    burn = await client.post(
        f"/v1/admin/partners/{partner_id}/burn-rules/{BIGINT_MAX + 1}/retire", headers=token()
    )
    assert_invalid_input(burn)
    rules = await client.get(f"/v1/admin/partners/{partner_id}/earn-rules", headers=token())
    assert [rule["retired_at"] for rule in rules.json()] == [None]


async def test_a_reversal_naming_an_id_beyond_bigint_reverses_nothing(
    client, token, ledger, funded_member
):
    response = await client.post(
        "/v1/staff/reversals",
        headers=token(),
        json={"entry_id": BIGINT_MAX + 1, "reason": "fuzzed"},
    )
    body = assert_invalid_input(response)
    assert body["errors"][0]["key"] == "/entry_id"
    assert (await ledger.balances(funded_member)).available == 500


async def test_capture_or_void_of_a_hold_id_beyond_bigint_changes_nothing(
    client, shop, ledger, funded_member
):
    for action, body in (("capture", {"points": 1}), ("void", {})):
        response = await signed_post(
            client, shop, f"/v1/partner/redemptions/{BIGINT_MAX + 1}/{action}", body
        )
        assert_invalid_input(response)
    balances = await ledger.balances(funded_member)
    assert (balances.available, balances.held) == (500, 0)


@pytest.mark.parametrize(
    "body",
    [
        {"amount": BIGINT_MAX + 1},
        {"amount": -(2**64)},
        {"reason": "x", "extra_precision": 10**40},  # refused before the schema looks
    ],
)
async def test_a_json_integer_beyond_bigint_is_invalid_input(
    client, token, ledger, funded_member, body
):
    request = {"member_id": funded_member, "amount": 5, "reason": "goodwill", **body}
    response = await client.post("/v1/staff/adjustments", headers=token(), json=request)
    assert_invalid_input(response)
    assert (await ledger.balances(funded_member)).available == 500


async def test_an_int_column_is_bounded_to_int(client, token, new_id):
    code = new_id("tier")
    tier = {"name": "Too high", "rank": INT4_MAX + 1, "qp_threshold": 10**9}
    body = assert_invalid_input(
        await client.put(f"/v1/admin/tiers/{code}", headers=token(), json=tier)
    )
    assert body["errors"][0]["key"] == "/rank"
    window = {"id": new_id("p"), "name": "Shop", "return_window_days": INT4_MAX + 1}
    assert_invalid_input(await client.post("/v1/admin/partners", headers=token(), json=window))
    tiers = await client.get("/v1/admin/tiers", headers=token())
    assert code not in [t["code"] for t in tiers.json()]


async def test_an_id_inside_a_cursor_beyond_bigint_is_not_a_cursor(client, token, funded_member):
    # The guard sees a short string; the history refuses the id decoded from it.
    cursor = base64.urlsafe_b64encode(f"e{10**30}".encode()).decode().rstrip("=")
    response = await client.get(
        f"/v1/staff/members/{funded_member}/history?cursor={cursor}", headers=token()
    )
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "/problems/invalid-cursor"


async def test_out_of_range_query_integers_are_invalid_input(client, token, funded_member):
    for query in ("limit=0", f"limit={BIGINT_MAX + 1}", "limit=" + "9" * 5000):
        response = await client.get(
            f"/v1/staff/members/{funded_member}/history?{query}", headers=token()
        )
        assert_invalid_input(response)


# -- NUL characters and unbounded strings -------------------------------------


async def test_a_nul_in_a_path_parameter_is_invalid_input(client, token):
    assert_invalid_input(await client.get("/v1/admin/partners/a%00b", headers=token()))
    assert_invalid_input(
        await client.get("/v1/staff/accounts/member:a%00b:available/balance", headers=token())
    )


async def test_a_nul_in_a_query_parameter_is_invalid_input(client, token, funded_member):
    for query in ("cursor=a%00b", "kind=earn&kind=a%00", "entity=a%00b"):
        path = (
            f"/v1/admin/audit?{query}"
            if query.startswith("entity")
            else f"/v1/staff/members/{funded_member}/history?{query}"
        )
        assert_invalid_input(await client.get(path, headers=token()))


async def test_a_nul_in_an_adjustment_reason_posts_nothing(client, token, ledger, funded_member):
    response = await client.post(
        "/v1/staff/adjustments",
        headers=token(),
        json={"member_id": funded_member, "amount": 5, "reason": "good\u0000will"},
    )
    body = assert_invalid_input(response)
    assert body["errors"][0] == {
        "source": "body",
        "key": "/reason",
        "message": "/reason contains a NUL character",
    }
    assert (await ledger.balances(funded_member)).available == 500


async def test_a_nul_in_a_card_number_issues_and_earns_nothing(
    client, token, shop, ledger, funded_member
):
    issued = await client.post(
        f"/v1/admin/members/{funded_member}/cards",
        headers=token(),
        json={"card_number": "1234\u00005678"},
    )
    assert_invalid_input(issued)
    earn = {
        "card_number": shop["card"] + "\u0000",
        "reference": "NUL-1",
        "purchase": {"currency": "EUR", "lines": [{"amount_minor": 1000}]},
    }
    assert_invalid_input(await signed_post(client, shop, "/v1/partner/earn", earn))
    blocked = await client.post(
        f"/v1/admin/members/{funded_member}/cards/{shop['card']}%00/block", headers=token()
    )
    assert_invalid_input(blocked)
    cards = await client.get("/v1/me/cards", headers=token(funded_member, roles=("member",)))
    assert [card["card_number"] for card in cards.json()] == [shop["card"]]
    assert (await ledger.balances(funded_member)).available == 500


async def test_a_card_number_of_other_digits_is_refused(client, token, funded_member):
    """Digits of other scripts (full-width, Arabic-Indic) are digits to Python
    but not a card number: 422, nothing issued."""
    for number in ("\uff16\uff10\uff10\uff11" * 4, "\u0661" * 16):
        issued = await client.post(
            f"/v1/admin/members/{funded_member}/cards",
            headers=token(),
            json={"card_number": number},
        )
        assert (issued.status_code, issued.json()["field"]) == (422, "card_number"), issued.text
    cards = await client.get("/v1/me/cards", headers=token(funded_member, roles=("member",)))
    assert all(card["card_number"].isascii() for card in cards.json())


async def test_a_nul_in_a_json_key_or_nested_value_is_invalid_input(
    client, token, shop, funded_member
):
    quote = {
        "member_id": funded_member,
        "partner_id": shop["partner_id"],
        "purchase": {"currency": "EUR", "lines": [{"amount_minor": 100, "category": "a\u0000"}]},
    }
    body = assert_invalid_input(await client.post("/v1/admin/quote", headers=token(), json=quote))
    assert body["errors"][0]["key"] == "/purchase/lines/0/category"
    # Several: named in the body's order, a name's "~" and "/" escaped (RFC 6901).
    quote["purchase"]["lines"] = [
        {"amount_minor": 100, "category": "a\u0000"},
        {"amount_minor": 100, "category": "b", "a/b~c": "x" * 1001},
        {"amount_minor": 100, "category": "c\u0000"},
    ]
    body = assert_invalid_input(await client.post("/v1/admin/quote", headers=token(), json=quote))
    assert [e["key"] for e in body["errors"]] == [
        "/purchase/lines/0/category",
        "/purchase/lines/1/a~1b~0c",
        "/purchase/lines/2/category",
    ]
    rule = {"valid_from": "2024-01-01T00:00:00Z", "currency": "EUR", "points_per_unit": "1"}
    rule["category_multipliers"] = {"gro\u0000ceries": "2"}
    response = await client.post(
        f"/v1/admin/partners/{shop['partner_id']}/earn-rules", headers=token(), json=rule
    )
    assert_invalid_input(response)


async def test_strings_are_bounded_in_length(client, token, ledger, funded_member):
    long_path = "p" * (MAX_PARAMETER_LENGTH + 1)
    assert_invalid_input(await client.get(f"/v1/admin/partners/{long_path}", headers=token()))
    reason = "r" * (MAX_TEXT_LENGTH + 1)
    response = await client.post(
        "/v1/staff/adjustments",
        headers=token(),
        json={"member_id": funded_member, "amount": 5, "reason": reason},
    )
    assert_invalid_input(response)
    # An Idempotency-Key too long, or sent empty, is malformed wherever it is
    # sent: 400 invalid-idempotency-key (an empty one no longer posts unkeyed).
    for bad in ("k" * (MAX_PARAMETER_LENGTH + 1), ""):
        response = await client.post(
            "/v1/staff/adjustments",
            headers={**token(), "Idempotency-Key": bad},
            json={"member_id": funded_member, "amount": 5, "reason": "goodwill"},
        )
        assert response.status_code == 400, response.text
        assert response.json()["type"] == "/problems/invalid-idempotency-key"
    assert (await ledger.balances(funded_member)).available == 500


async def test_a_deeply_nested_body_is_refused_without_a_crash(client, token):
    nested = b'{"member_id": "m1", "amount": 5, "reason": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = await client.post(
        "/v1/staff/adjustments",
        headers={**token(), "content-type": "application/json"},
        content=nested,
    )
    assert 400 <= response.status_code < 500, response.text


# -- a problem extension never collides with the builder's parameters ---------


async def test_capture_or_void_of_a_closed_hold_is_a_409_with_an_integer_status(
    client, shop, ledger, funded_member
):
    hold = await signed_post(
        client,
        shop,
        "/v1/partner/redemptions",
        {
            "card_number": shop["card"],
            "reference": "CLOSED-1",
            "currency": "EUR",
            "basket_minor": 5000,
            "points": 100,
        },
    )
    assert hold.status_code == 201, hold.text
    hold_id = hold.json()["hold"]["hold_id"]
    voided = await signed_post(client, shop, f"/v1/partner/redemptions/{hold_id}/void", {})
    assert voided.status_code == 200, voided.text
    for action, body in (("capture", {}), ("void", {})):
        again = await signed_post(client, shop, f"/v1/partner/redemptions/{hold_id}/{action}", body)
        assert again.status_code == 409, again.text
        problem_body = again.json()
        assert problem_body["type"] == "/problems/hold-not-open"
        assert problem_body["status"] == 409
        assert problem_body["hold_status"] == "voided"
    balances = await ledger.balances(funded_member)
    assert (balances.available, balances.held) == (500, 0)


def test_problem_extensions_cannot_replace_standard_members_or_parameters():
    response = problem(
        "hold-not-open",
        "hold 7 is already captured",
        "/v1/partner/redemptions/7/void",
        extensions={
            "status": "captured",
            "type": "about:blank",
            "headers": {"X-Evil": "1"},
            "code": "other",
            "retry_after": 2,
            "missing": None,
        },
    )
    assert response.status_code == 409
    assert response.content == {
        "type": "/problems/hold-not-open",
        "title": "Hold already resolved",
        "status": 409,
        "detail": "hold 7 is already captured",
        "instance": "/v1/partner/redemptions/7/void",
        "headers": {"X-Evil": "1"},
        "code": "other",
        "retry_after": 2,
    }
    assert response.headers["Retry-After"] == "2"
    assert "X-Evil" not in response.headers


# -- the OpenAPI document states the bounds and the required headers -----------


@pytest.fixture
async def openapi(client) -> dict:
    response = await client.get("/docs/openapi.json")
    assert response.status_code == 200
    return response.json()


def _parameters(openapi: dict, path: str, method: str) -> dict[str, dict]:
    return {p["name"].lower(): p for p in openapi["paths"][path][method].get("parameters", [])}


async def test_openapi_declares_the_signature_and_idempotency_headers(openapi):
    signature = {"x-loyalty-key-id", "x-loyalty-timestamp", "x-loyalty-signature"}
    partner_posts = [
        path
        for path, item in openapi["paths"].items()
        if path.startswith("/v1/partner/") and "post" in item
    ]
    # earn, earnings/batch, files, quote, returns, redemptions (3), service-visits
    assert len(partner_posts) == 9
    for path in partner_posts:
        parameters = _parameters(openapi, path, "post")
        for name in (*signature, "idempotency-key"):
            assert parameters[name]["in"] == "header", (path, name)
            assert parameters[name]["required"] is True, (path, name)
    balance = _parameters(openapi, "/v1/partner/cards/{card_number}/balance", "get")
    assert all(balance[name]["required"] for name in signature)
    assert "idempotency-key" not in balance
    transfer = _parameters(openapi, "/v1/me/transfers", "post")
    assert transfer["idempotency-key"]["required"] is True
    adjust = _parameters(openapi, "/v1/staff/adjustments", "post")
    assert adjust["idempotency-key"]["required"] is False


async def test_openapi_states_the_column_bounds_of_path_parameters(openapi):
    entry = _parameters(openapi, "/v1/staff/entries/{entry_id}", "get")["entry_id"]["schema"]
    assert (entry["minimum"], entry["maximum"]) == (1, BIGINT_MAX)
    hold = _parameters(openapi, "/v1/partner/redemptions/{hold_id}/void", "post")["hold_id"]
    assert hold["schema"]["maximum"] == BIGINT_MAX
    version = _parameters(
        openapi, "/v1/admin/partners/{partner_id}/earn-rules/{version}/retire", "post"
    )
    assert version["version"]["schema"]["maximum"] == INT4_MAX
    assert version["partner_id"]["schema"]["maxLength"] == MAX_PARAMETER_LENGTH
