"""The partner contract enforced, through HTTP with signed requests against the
real PostgreSQL: the purchase-time window, the return window counted from
receipt, rules and promotions by the purchase time (late submissions), the
credit limit and a prepaid deposit, returns that give back QP and a used
coupon, partner-funded offers only at the partners they name, contract
versions with effective dates, and returns that give back the promotion
budget and member usage they paid for and undo the tier they caused."""

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from partners.client import PartnerAuth
from partners.programme import Programme
from partners.registry import Registry
from partners.rule_inputs import BurnRuleInput, EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.api.conftest import SECRET_KEY
from tests.conftest import SigningSeconds

FROM = datetime(2024, 1, 1, tzinfo=UTC)
ADMIN = "staff:tests"
SIGNING_SECONDS = SigningSeconds()  # no two requests signed in one second


@dataclasses.dataclass
class Shop:
    partner_id: str
    key_id: str
    secret: str
    card: str
    member_id: str

    def auth(self) -> PartnerAuth:
        return PartnerAuth(self.key_id, self.secret, clock=SIGNING_SECONDS)


def card_number() -> str:
    return "7" + str(uuid.uuid4().int)[:15]


@pytest.fixture
def open_shop(client, token, engine, ledger, new_id, new_member):
    """A partner registered through the admin API with the contract terms
    given, earning 1 point (and 1 QP) per EUR, redeeming 100 points per EUR,
    with a key and an enrolled member holding a card."""

    async def make(earn_rule=None, **terms) -> Shop:
        partner_id, member_id = new_id("shop"), await new_member()
        created = await client.post(
            "/v1/admin/partners",
            headers=token(),
            json={"id": partner_id, "name": "Contract shop", **terms},
        )
        assert created.status_code == 201, created.text
        rules = Rulebook(ledger)
        for rule in earn_rule or [EarnRuleInput(FROM, "EUR", Decimal(1), qp_per_unit=Decimal(1))]:
            await rules.create_earn_rule(partner_id, rule, ADMIN)
        await rules.create_burn_rule(partner_id, BurnRuleInput(FROM, "EUR", Decimal(100)), ADMIN)
        registry = Registry(engine, SecretBox(SECRET_KEY))
        number = card_number()
        await registry.issue_card(member_id, number, ADMIN)
        key = await registry.create_key(partner_id, ADMIN)
        return Shop(partner_id, key.key_id, key.secret, number, member_id)

    return make


async def add_card(engine, member_id: str) -> str:
    number = card_number()
    await Registry(engine, SecretBox(SECRET_KEY)).issue_card(member_id, number, ADMIN)
    return number


def earn_body(shop, reference, *amounts, at=None, card=None, coupons=None, category="groceries"):
    purchase = {
        "currency": "EUR",
        "lines": [{"amount_minor": a, "category": category} for a in amounts],
    }
    if at is not None:
        purchase["occurred_at"] = at.isoformat()
    body = {"card_number": card or shop.card, "reference": reference, "purchase": purchase}
    if coupons:
        body["coupons"] = coupons
    return body


async def post(client, shop, path, body):
    return await client.post(
        path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex}, auth=shop.auth()
    )


async def credit(client, shop) -> dict:
    response = await client.get("/v1/partner/credit", auth=shop.auth())
    assert response.status_code == 200, response.text
    return response.json()


def problem_type(response) -> str:
    return response.json()["type"].removeprefix("/problems/")


# -- 1. the purchase time window ----------------------------------------------------------


async def test_a_purchase_time_outside_the_window_is_refused_and_writes_nothing(
    client, open_shop, ledger
):
    shop = await open_shop()  # default window: 30 days back, 5 minutes ahead
    now = datetime.now(UTC)
    for at in (now - timedelta(days=30, minutes=1), now + timedelta(minutes=6)):
        refused = await post(client, shop, "/v1/partner/earn", earn_body(shop, "W-1", 1000, at=at))
        assert refused.status_code == 422, refused.text
        assert problem_type(refused) == "purchase-time-outside-window"
        assert refused.json()["late_submission_days"] == 30
        assert refused.json()["future_tolerance_seconds"] == 300
        earliest = datetime.fromisoformat(refused.json()["earliest"])
        assert timedelta(days=30) - timedelta(seconds=5) < now - earliest <= timedelta(days=30)
        quote = {
            "card_number": shop.card,
            "purchase": earn_body(shop, "-", 1000, at=at)["purchase"],
        }
        quoted = await post(client, shop, "/v1/partner/quote", quote)
        assert problem_type(quoted) == "purchase-time-outside-window"
    balances = await ledger.balances(shop.member_id)
    assert (balances.available, balances.pending, balances.qp) == (0, 0, 0)
    # Nothing was written: the same reference goes through with a time in the window.
    for reference, at in (("W-1", now - timedelta(days=29)), ("W-2", now + timedelta(minutes=4))):
        accepted = await post(
            client, shop, "/v1/partner/earn", earn_body(shop, reference, 1000, at=at)
        )
        assert accepted.status_code == 201, accepted.text
    assert (await ledger.balances(shop.member_id)).available == 20


async def test_the_window_is_the_contracts(client, open_shop):
    shop = await open_shop(late_submission_days=2, future_tolerance_seconds=0)
    now = datetime.now(UTC)
    three_days = earn_body(shop, "L-1", 1000, at=now - timedelta(days=3))
    assert problem_type(await post(client, shop, "/v1/partner/earn", three_days)) == (
        "purchase-time-outside-window"
    )
    ahead = earn_body(shop, "L-2", 1000, at=now + timedelta(seconds=30))
    assert problem_type(await post(client, shop, "/v1/partner/earn", ahead)) == (
        "purchase-time-outside-window"
    )
    one_day = earn_body(shop, "L-3", 1000, at=now - timedelta(days=1))
    assert (await post(client, shop, "/v1/partner/earn", one_day)).status_code == 201


async def test_a_purchase_without_a_time_is_inside_the_narrowest_window(client, open_shop):
    # No day back, no second ahead: only purchases at the moment the call
    # comes, which is the time a purchase without its own is given.
    shop = await open_shop(late_submission_days=0, future_tolerance_seconds=0)
    earned = await post(client, shop, "/v1/partner/earn", earn_body(shop, "N-1", 1000))
    assert earned.status_code == 201, earned.text
    quote = {key: v for key, v in earn_body(shop, "-", 1000).items() if key != "reference"}
    quoted = await post(client, shop, "/v1/partner/quote", quote)
    assert quoted.status_code == 200, quoted.text
    batch = {"items": [earn_body(shop, "N-3", 500)]}
    answered = await post(client, shop, "/v1/partner/earnings/batch", batch)
    assert [r["status"] for r in answered.json()["results"]] == [201], answered.text
    second_ago = earn_body(shop, "N-4", 1000, at=datetime.now(UTC) - timedelta(seconds=1))
    assert problem_type(await post(client, shop, "/v1/partner/earn", second_ago)) == (
        "purchase-time-outside-window"
    )


async def test_a_back_dated_purchase_still_waits_the_whole_return_window(client, open_shop, ledger):
    shop = await open_shop(return_window_days=14)
    now = datetime.now(UTC)
    response = await post(
        client,
        shop,
        "/v1/partner/earn",
        earn_body(shop, "B-1", 5000, at=now - timedelta(days=10)),
    )
    assert response.status_code == 201, response.text
    assert (response.json()["balances"]["pending"], response.json()["balances"]["available"]) == (
        50,
        0,
    )
    # From the receipt, not from the purchase: not in 4 days, in 14.
    release = datetime.fromisoformat(response.json()["release_at"])
    assert (
        timedelta(days=14) - timedelta(minutes=1) < release - now <= timedelta(days=14, seconds=5)
    )
    assert (await ledger.balances(shop.member_id)).pending == 50


async def test_the_rule_and_promotions_are_those_at_the_purchase_time(
    client, open_shop, token, new_id
):
    now = datetime.now(UTC)
    switch = now - timedelta(days=5)
    shop = await open_shop(
        earn_rule=[
            EarnRuleInput(FROM, "EUR", Decimal(1), valid_to=switch),
            EarnRuleInput(switch, "EUR", Decimal(3)),
        ]
    )

    async def promotion(late: bool, bonus: int) -> str:
        code = new_id("LATE" if late else "ENDED").upper()
        created = await client.post(
            "/v1/admin/promotions",
            headers=token(),
            json={
                "code": code,
                "name": "last week",
                "starts_at": (now - timedelta(days=10)).isoformat(),
                "ends_at": (now - timedelta(days=3)).isoformat(),
                "fixed_bonus": bonus,
                "partner_ids": [shop.partner_id],
                "accepts_late_submissions": late,
            },
        )
        assert created.status_code == 201, created.text
        assert created.json()["accepts_late_submissions"] is late
        return code

    ended, late = await promotion(False, 100), await promotion(True, 50)
    before = await post(
        client, shop, "/v1/partner/earn", earn_body(shop, "T-1", 1000, at=now - timedelta(days=6))
    )
    assert before.status_code == 201, before.text
    lines = [(ln["kind"], ln["amount"], ln["source"]) for ln in before.json()["earning"]["lines"]]
    # Rule version 1 (1 per EUR) was in force then; of the two promotions that
    # ran then and have ended since, only the one accepting late submissions pays.
    assert before.json()["earning"]["rule_version"] == 1
    assert lines == [("base", 10, None), ("promotion", 50, late)]
    assert ended not in [source for *_, source in lines]
    today = await post(client, shop, "/v1/partner/earn", earn_body(shop, "T-2", 1000))
    assert today.json()["earning"]["rule_version"] == 2
    assert [ln["kind"] for ln in today.json()["earning"]["lines"]] == ["base"]
    assert today.json()["earning"]["points"] == 30


# -- 2. the credit limit ------------------------------------------------------------------


async def test_earnings_stop_at_the_credit_limit_and_returns_and_redemptions_free_it(
    client, open_shop, token, ledger
):
    # 1 point per EUR at 0.01 EUR a point: 500 minor units is 500 points.
    shop = await open_shop(price_per_point="0.01", credit_limit_minor=500)
    standing = await credit(client, shop)
    assert (
        standing["credit_limit_minor"],
        standing["liability_minor"],
        standing["headroom_minor"],
    ) == (500, 0, 500)
    first = await post(client, shop, "/v1/partner/earn", earn_body(shop, "C-1", 30000))
    assert first.status_code == 201, first.text
    assert (await credit(client, shop))["headroom_minor"] == 200

    refused = await post(client, shop, "/v1/partner/earn", earn_body(shop, "C-2", 25000))
    assert (refused.status_code, problem_type(refused)) == (422, "credit-limit-exceeded")
    assert refused.json()["credit_limit_minor"] == 500
    assert (refused.json()["headroom_minor"], refused.json()["requested_minor"]) == (200, 250)
    assert (await ledger.balances(shop.member_id)).available == 300
    assert (await credit(client, shop))["liability_minor"] == 300

    exactly = await post(client, shop, "/v1/partner/earn", earn_body(shop, "C-3", 20000))
    assert exactly.status_code == 201, exactly.text  # up to the limit, not beyond
    assert (await credit(client, shop))["headroom_minor"] == 0

    returned = await post(
        client,
        shop,
        "/v1/partner/returns",
        {"reference": "C-1", "return_reference": "C-1-R", "amount_minor": 10000},
    )
    assert returned.json()["points_reversed"] == 100
    assert (await credit(client, shop))["headroom_minor"] == 100
    hold = await post(
        client,
        shop,
        "/v1/partner/redemptions",
        {
            "card_number": shop.card,
            "reference": "C-H",
            "currency": "EUR",
            "basket_minor": 5000,
            "points": 100,
        },
    )
    hold_id = hold.json()["hold"]["hold_id"]
    captured = await post(client, shop, f"/v1/partner/redemptions/{hold_id}/capture", {})
    assert captured.status_code == 200, captured.text
    standing = await credit(client, shop)
    # Issued 500 - 100 returned, minus 100 redeemed here.
    assert (standing["outstanding_points"], standing["headroom_minor"]) == (300, 200)
    admin_view = await client.get(f"/v1/admin/partners/{shop.partner_id}/credit", headers=token())
    assert admin_view.json() == standing
    again = await post(client, shop, "/v1/partner/earn", earn_body(shop, "C-2", 20000))
    assert again.status_code == 201, again.text


async def test_a_prepaid_partner_earns_up_to_its_deposit(client, open_shop, token):
    shop = await open_shop(price_per_point="0.02", credit_limit_minor=0, deposit_minor=1000)
    assert (await credit(client, shop))["headroom_minor"] == 1000
    assert (
        await post(client, shop, "/v1/partner/earn", earn_body(shop, "P-1", 50000))
    ).status_code == 201
    refused = await post(client, shop, "/v1/partner/earn", earn_body(shop, "P-2", 100))
    assert problem_type(refused) == "credit-limit-exceeded"
    assert refused.json()["deposit_minor"] == 1000
    # A top-up: a new contract version with a larger deposit, in force at once.
    topped = await client.post(
        f"/v1/admin/partners/{shop.partner_id}/contracts",
        headers=token(),
        json={"effective_from": datetime.now(UTC).isoformat(), "deposit_minor": 3000},
    )
    assert topped.status_code == 201, topped.text
    assert (topped.json()["version"], topped.json()["credit_limit_minor"]) == (2, 0)
    assert (await credit(client, shop))["headroom_minor"] == 2000
    assert (
        await post(client, shop, "/v1/partner/earn", earn_body(shop, "P-2", 100))
    ).status_code == 201


async def test_accruals_at_a_limited_partner_run_side_by_side(client, open_shop, engine):
    shop = await open_shop(price_per_point="0.01", credit_limit_minor=1_000_000)
    cards = [shop.card] + [await add_card(engine, shop.member_id) for _ in range(7)]
    app_ledger = client.app.state.ledger
    retries_before = sum(app_ledger.retries.values())
    answers = await asyncio.gather(
        *(
            post(client, shop, "/v1/partner/earn", earn_body(shop, f"X-{i}", 1000, card=card))
            for i, card in enumerate(cards)
        )
    )
    assert [a.status_code for a in answers] == [201] * 8
    assert (await credit(client, shop))["liability_minor"] == 80
    # Reading the liability locks nothing: no earning waited for another and retried.
    assert sum(app_ledger.retries.values()) == retries_before


# -- 3. returns unwind what the purchase caused ------------------------------------------


async def test_returns_take_back_qp_and_a_full_return_gives_back_the_coupon(
    client, open_shop, token, ledger, new_id
):
    shop = await open_shop()
    code, now = new_id("BACK").upper(), datetime.now(UTC)
    created = await client.post(
        "/v1/admin/coupons",
        headers=token(),
        json={
            "code": code,
            "name": "3x",
            "valid_from": (now - timedelta(days=1)).isoformat(),
            "valid_to": (now + timedelta(days=10)).isoformat(),
            "multiplier": "3",
            "partner_ids": [shop.partner_id],
        },
    )
    assert created.status_code == 201 and created.json()["funder"] == "partner"
    await client.post(
        f"/v1/admin/coupons/{code}/issue", headers=token(), json={"member_ids": [shop.member_id]}
    )
    programme = Programme(ledger)
    await programme.activate_coupon(shop.member_id, code)
    earned = await post(
        client, shop, "/v1/partner/earn", earn_body(shop, "Q-1", 10000, coupons=[code])
    )
    assert earned.json()["earning"]["points"] == 300 and earned.json()["balances"]["qp"] == 100
    assert [c.status for c in await programme.coupons(shop.member_id)] == ["used"]

    half = await post(
        client,
        shop,
        "/v1/partner/returns",
        {"reference": "Q-1", "return_reference": "Q-1-R1", "amount_minor": 5000},
    )
    assert half.json()["points_reversed"] == 150 and half.json()["balances"]["qp"] == 50
    assert half.json()["coupons_restored"] == []  # used for the whole purchase: still used
    assert [c.status for c in await programme.coupons(shop.member_id)] == ["used"]

    rest = await post(
        client,
        shop,
        "/v1/partner/returns",
        {"reference": "Q-1", "return_reference": "Q-1-R2", "amount_minor": 5000},
    )
    assert rest.json()["balances"]["qp"] == 0 and rest.json()["balances"]["available"] == 0
    assert rest.json()["coupons_restored"] == [code]
    assert [c.status for c in await programme.coupons(shop.member_id)] == ["activated"]
    again = await post(
        client, shop, "/v1/partner/earn", earn_body(shop, "Q-2", 10000, coupons=[code])
    )
    assert again.json()["earning"]["points"] == 300


# -- 4. partner-funded offers charge only the partners they name ----------------------------


async def test_partner_funded_offers_apply_only_at_the_partners_they_name(
    client, open_shop, token, ledger, engine, new_id
):
    shop, other = await open_shop(), await open_shop()
    now = datetime.now(UTC)
    window = {
        "valid_from": (now - timedelta(days=1)).isoformat(),
        "valid_to": (now + timedelta(days=10)).isoformat(),
    }
    nobody = await client.post(
        "/v1/admin/coupons",
        headers=token(),
        json={
            "code": new_id("NB").upper(),
            "name": "x",
            "multiplier": "2",
            "funder": "partner",
            **window,
        },
    )
    assert (nobody.status_code, nobody.json()["field"]) == (422, "partner_ids")
    two = await client.post(
        "/v1/admin/promotions",
        headers=token(),
        json={
            "code": new_id("TWO").upper(),
            "name": "x",
            "starts_at": window["valid_from"],
            "ends_at": window["valid_to"],
            "fixed_bonus": 10,
            "funder": "partner",
            "partner_ids": [shop.partner_id, other.partner_id],
        },
    )
    assert two.status_code == 422

    code = new_id("OWN").upper()
    await client.post(
        "/v1/admin/coupons",
        headers=token(),
        json={
            "code": code,
            "name": "5x",
            "multiplier": "5",
            "partner_ids": [shop.partner_id],
            **window,
        },
    )
    await client.post(
        f"/v1/admin/coupons/{code}/issue", headers=token(), json={"member_ids": [other.member_id]}
    )
    await Programme(ledger).activate_coupon(other.member_id, code)
    # The other partner's till sends the coupon: it is not the other partner's to pay.
    at_other = await post(
        client, other, "/v1/partner/earn", earn_body(other, "O-1", 1000, coupons=[code])
    )
    assert at_other.status_code == 201, at_other.text
    assert [ln["kind"] for ln in at_other.json()["earning"]["lines"]] == ["base", "qualifying"]
    issued = await ledger.account_balance(f"partner:{other.partner_id}:issued")
    assert issued.balances[0].balance == -10
    assert [c.status for c in await Programme(ledger).coupons(other.member_id)] == ["activated"]
    # At the partner it names, it pays (and that partner is charged).
    number = await add_card(engine, other.member_id)
    at_shop = await post(
        client, shop, "/v1/partner/earn", earn_body(shop, "O-2", 1000, card=number, coupons=[code])
    )
    assert ("coupon", 40) in [
        (ln["kind"], ln["amount"]) for ln in at_shop.json()["earning"]["lines"]
    ]
    issued = await ledger.account_balance(f"partner:{shop.partner_id}:issued")
    assert issued.balances[0].balance == -50


# -- 5. contracts with effective dates --------------------------------------------------------


async def test_contract_versions_with_effective_dates(client, open_shop, token, ledger):
    shop = await open_shop(price_per_point="0.01", redemption_value="0.008")
    admin, path = token(), f"/v1/admin/partners/{shop.partner_id}"
    listed = (await client.get("/v1/admin/partners", headers=admin)).json()
    mine = [p for p in listed if p["id"] == shop.partner_id]
    assert [(p["contract_version"], p["return_window_days"]) for p in mine] == [(1, 0)]
    now = datetime.now(UTC)
    amended = await client.post(
        f"{path}/contracts",
        headers=admin,
        json={"effective_from": (now - timedelta(days=3)).isoformat(), "return_window_days": 14},
    )
    assert amended.status_code == 201, amended.text
    assert amended.json()["version"] == 2
    assert amended.json()["price_per_point"] == "0.01"  # carried over
    scheduled = await client.post(
        f"{path}/contracts",
        headers=admin,
        json={"effective_from": (now + timedelta(days=30)).isoformat(), "price_per_point": "0.02"},
    )
    assert scheduled.json()["return_window_days"] == 14  # from the version it follows

    current = (await client.get(path, headers=admin)).json()
    assert (current["contract_version"], current["return_window_days"]) == (2, 14)
    assert current["price_per_point"] == "0.01"  # the scheduled change is not in force yet
    history = (await client.get(f"{path}/contracts", headers=admin)).json()
    assert [(c["version"], c["return_window_days"], c["price_per_point"]) for c in history] == [
        (1, 0, "0.01"),
        (2, 14, "0.01"),
        (3, 14, "0.02"),
    ]
    audit = (
        await client.get(
            f"/v1/admin/audit?entity=partner_contract&entity_id={shop.partner_id}/2", headers=admin
        )
    ).json()
    assert [(a["action"], a["before"]["version"], a["after"]["version"]) for a in audit] == [
        ("create", 1, 2)
    ]

    # The version in force at the purchase time applies.
    before = await post(
        client, shop, "/v1/partner/earn", earn_body(shop, "V-1", 1000, at=now - timedelta(days=4))
    )
    assert before.json()["balances"]["available"] == 10 and before.json()["release_at"] is None
    after = await post(
        client, shop, "/v1/partner/earn", earn_body(shop, "V-2", 1000, at=now - timedelta(days=2))
    )
    assert after.json()["balances"]["pending"] == 10 and after.json()["release_at"] is not None

    for body, field in (
        ({"effective_from": "2026-01-01T00:00:00"}, "effective_from"),
        ({"effective_from": now.isoformat(), "return_window_days": 400}, "return_window_days"),
        ({"effective_from": now.isoformat(), "price_per_point": "-1"}, "price_per_point"),
        ({"effective_from": now.isoformat(), "price_per_point": "1e-400"}, "price_per_point"),
        ({"effective_from": now.isoformat(), "redemption_value": "0.0000001"}, "redemption_value"),
        ({"effective_from": now.isoformat(), "credit_limit_minor": -5}, "credit_limit_minor"),
    ):
        bad = await client.post(f"{path}/contracts", headers=admin, json=body)
        assert (bad.status_code, bad.json().get("field")) == (422, field), bad.text
    missing = await client.post(
        "/v1/admin/partners/nobody-here/contracts",
        headers=admin,
        json={"effective_from": now.isoformat()},
    )
    assert (missing.status_code, problem_type(missing)) == (404, "partner-not-found")
    assert (
        await client.get("/v1/admin/partners/nobody-here/contracts", headers=admin)
    ).status_code == 404


# -- 6. a return unwinds the promotion and the tier it paid for ---------------------------


async def returned(client, shop, reference, return_reference, amount_minor) -> dict:
    response = await post(
        client,
        shop,
        "/v1/partner/returns",
        {
            "reference": reference,
            "return_reference": return_reference,
            "amount_minor": amount_minor,
        },
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


async def tier_of(client, token, member_id) -> tuple[str, str | None, list[dict]]:
    response = await client.get(f"/v1/staff/members/{member_id}/tier", headers=token())
    assert response.status_code == 200, response.text
    body = response.json()
    tier = body["progress"]["tier"]
    return tier["code"], body["progress"]["valid_until"], body["history"]


async def test_a_return_after_an_upgrade_moves_the_member_back_and_says_why(
    client, open_shop, token, programme_tiers
):
    shop = await open_shop()  # 1 point and 1 QP per EUR; silver at 1,000 QP
    earned = await post(client, shop, "/v1/partner/earn", earn_body(shop, "U-1", 120_000))
    assert earned.json()["new_tier"] == "silver"
    code, until, _ = await tier_of(client, token, shop.member_id)
    assert code == "silver" and until is not None

    back = await returned(client, shop, "U-1", "U-1-R1", 30_000)  # 900 QP left
    assert back["balances"]["qp"] == 900
    code, until, history = await tier_of(client, token, shop.member_id)
    assert (code, until) == ("base", None)
    last = history[-1]
    assert (last["from_tier"], last["to_tier"]) == ("silver", "base")
    assert "U-1-R1" in last["reason"] and "return" in last["reason"]
    assert last["entry_id"] == back["entry_id"]
    # Earning the QP again upgrades again.
    again = await post(client, shop, "/v1/partner/earn", earn_body(shop, "U-2", 10_000))
    assert again.json()["new_tier"] == "silver"


async def test_a_return_of_an_earlier_purchase_undoes_a_later_upgrade_of_the_period(
    client, open_shop, token, programme_tiers
):
    shop = await open_shop()
    await post(client, shop, "/v1/partner/earn", earn_body(shop, "E-1", 50_000))  # 500 QP
    second = await post(client, shop, "/v1/partner/earn", earn_body(shop, "E-2", 60_000))
    assert second.json()["new_tier"] == "silver"  # reached by E-2, after E-1
    await returned(client, shop, "E-1", "E-1-R", 50_000)  # 600 QP left
    code, _, history = await tier_of(client, token, shop.member_id)
    assert code == "base" and history[-1]["to_tier"] == "base"


async def test_a_tier_held_by_other_qp_stays(client, open_shop, token, programme_tiers):
    shop = await open_shop()
    first = await post(client, shop, "/v1/partner/earn", earn_body(shop, "H-1", 110_000))
    assert first.json()["new_tier"] == "silver"
    await post(client, shop, "/v1/partner/earn", earn_body(shop, "H-2", 50_000))
    _, until, history = await tier_of(client, token, shop.member_id)
    back = await returned(client, shop, "H-2", "H-2-R", 50_000)  # 1,100 QP left: still silver
    assert back["balances"]["qp"] == 1100
    code, until_after, history_after = await tier_of(client, token, shop.member_id)
    assert (code, until_after) == ("silver", until) and history_after == history


async def test_going_back_restores_the_status_and_validity_from_before_the_upgrade(
    client, open_shop, token, engine, programme_tiers
):
    """Silver requalified from last year's QP, gold reached by a purchase: a
    partial return goes back to silver with its old validity; returning the
    rest leaves silver alone (it was not this purchase's)."""
    from sqlalchemy import text

    shop = await open_shop()
    silver_until = datetime(datetime.now(UTC).year + 1, 3, 1, tzinfo=UTC)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO member_tiers (member_id, tier_code, qualified_at, valid_until) "
                "VALUES (:m, 'silver', :at, :until)"
            ),
            {"m": shop.member_id, "at": datetime.now(UTC), "until": silver_until},
        )
        await conn.execute(
            text(
                "INSERT INTO tier_changes (member_id, from_tier, to_tier, reason, changed_at) "
                "VALUES (:m, 'base', 'silver', 'requalification: 1200 QP', :at)"
            ),
            {"m": shop.member_id, "at": datetime.now(UTC) - timedelta(minutes=1)},
        )
    gold = await post(client, shop, "/v1/partner/earn", earn_body(shop, "G-1", 310_000))
    assert gold.json()["new_tier"] == "gold"
    _, gold_until, _ = await tier_of(client, token, shop.member_id)
    assert datetime.fromisoformat(gold_until) > silver_until

    await returned(client, shop, "G-1", "G-1-R1", 100_000)  # 2,100 QP: silver
    code, until, history = await tier_of(client, token, shop.member_id)
    assert (code, datetime.fromisoformat(until)) == ("silver", silver_until)
    assert (history[-1]["from_tier"], history[-1]["to_tier"]) == ("gold", "silver")

    await returned(client, shop, "G-1", "G-1-R2", 210_000)  # 0 QP: silver was not G-1's
    code, until, history_after = await tier_of(client, token, shop.member_id)
    assert (code, datetime.fromisoformat(until)) == ("silver", silver_until)
    assert history_after == history


async def create_budgeted_promotion(client, token, shop, code, budget, member_limit) -> None:
    now = datetime.now(UTC)
    created = await client.post(
        "/v1/admin/promotions",
        headers=token(),
        json={
            "code": code,
            "name": "double, budgeted",
            "starts_at": (now - timedelta(days=1)).isoformat(),
            "ends_at": (now + timedelta(days=10)).isoformat(),
            "multiplier": "2",
            "partner_ids": [shop.partner_id],
            "budget_points": budget,
            "per_member_limit": member_limit,
        },
    )
    assert created.status_code == 201, created.text


async def promotion_standing(engine, code, member_id) -> tuple[int, int]:
    from sqlalchemy import text

    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT p.budget_used, coalesce(u.points, 0) AS used FROM promotions p "
                    "LEFT JOIN promotion_usage u ON u.promotion_id = p.id AND u.member_id = :m "
                    "WHERE p.code = :c"
                ),
                {"c": code, "m": member_id},
            )
        ).one()
    return row.budget_used, row.used


async def test_returns_give_back_the_promotion_budget_and_member_usage_exactly(
    client, open_shop, token, engine, ledger, new_id
):
    shop = await open_shop()
    code = new_id("GIVE").upper()
    await create_budgeted_promotion(client, token, shop, code, 10_000, 5_000)
    earned = await post(client, shop, "/v1/partner/earn", earn_body(shop, "P-1", 9_999, 3_333))
    lines = earned.json()["earning"]["lines"]
    promoted = sum(ln["amount"] for ln in lines if ln["source"] == code)
    assert promoted == 133  # x2: 99 + 33 more on 133.32 EUR
    assert await promotion_standing(engine, code, shop.member_id) == (promoted, promoted)

    # Several partial returns of odd sizes: after each, what the promotion
    # still pays is exactly what the ledger's reversals left on
    # program:promotions (the only programme-funded line of this purchase).
    given_back = 0
    for i, amount in enumerate((4_001, 1, 2_999, 3_331, 3_000)):
        back = await returned(client, shop, "P-1", f"P-1-R{i}", amount)
        if back["entry_id"] is not None:
            entry = await ledger.entry(back["entry_id"])
            given_back += sum(p.amount for p in entry.postings if p.account == "program:promotions")
        assert await promotion_standing(engine, code, shop.member_id) == (
            promoted - given_back,
            promoted - given_back,
        )
    assert given_back == promoted  # the whole purchase came back
    assert await promotion_standing(engine, code, shop.member_id) == (0, 0)


async def test_a_full_return_frees_the_budget_and_the_member_limit_for_the_next_purchase(
    client, open_shop, token, engine, new_id
):
    shop = await open_shop()
    code = new_id("FREE").upper()
    await create_budgeted_promotion(client, token, shop, code, 50, 50)
    first = await post(client, shop, "/v1/partner/earn", earn_body(shop, "F-1", 10_000))
    assert [ln["amount"] for ln in first.json()["earning"]["lines"] if ln["source"] == code] == [
        50
    ]  # 100 asked, the budget pays 50
    exhausted = await post(client, shop, "/v1/partner/earn", earn_body(shop, "F-2", 10_000))
    assert not [ln for ln in exhausted.json()["earning"]["lines"] if ln["source"] == code]
    await returned(client, shop, "F-1", "F-1-R", 10_000)
    assert await promotion_standing(engine, code, shop.member_id) == (0, 0)
    again = await post(client, shop, "/v1/partner/earn", earn_body(shop, "F-3", 10_000))
    assert [ln["amount"] for ln in again.json()["earning"]["lines"] if ln["source"] == code] == [50]


# -- the request rate is a contract term ----------------------------------------------


async def test_a_partners_request_rate_is_its_contracts(client, token, open_shop):
    """The test service's default is 1,000 signed calls a second; a contract of
    3 refuses the fourth in a second with 429, and a new version raises it."""
    shop = await open_shop(requests_per_second=3)
    answers = [(await client.get("/v1/partner/credit", auth=shop.auth())) for _ in range(8)]
    statuses = [a.status_code for a in answers]
    limited = [a for a in answers if a.status_code == 429]
    assert statuses.count(200) >= 3 and limited, statuses  # 8 calls span at most 2 seconds
    assert problem_type(limited[0]) == "rate-limited"
    assert limited[0].headers["retry-after"] == "1"
    raised = await client.post(
        f"/v1/admin/partners/{shop.partner_id}/contracts",
        headers=token(),
        json={"effective_from": datetime.now(UTC).isoformat(), "requests_per_second": 100},
    )
    assert raised.status_code == 201 and raised.json()["requests_per_second"] == 100
    await asyncio.sleep(1)
    again = [
        (await client.get("/v1/partner/credit", auth=shop.auth())).status_code for _ in range(8)
    ]
    assert again == [200] * 8
    refused = await client.post(
        f"/v1/admin/partners/{shop.partner_id}/contracts",
        headers=token(),
        json={"effective_from": datetime.now(UTC).isoformat(), "requests_per_second": 0},
    )
    assert (refused.status_code, refused.json()["field"]) == (422, "requests_per_second")
