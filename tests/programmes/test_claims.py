"""Missing-points claims: filed within the window and checked as the earning
would be, confirmed through the earn path with the rule of the purchase
date, and booked once whoever books the receipt (a second confirmation, the
partner's own send before or after); an activated eCoupon pays once across
the till, the batch and a claim; and the API's answers for every refusal."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from ledger.errors import DuplicatePartnerReference
from partners.batch import EarnItem, earn_batch
from partners.claims import ClaimInput, Claims
from partners.earning import Purchase, PurchaseLine
from partners.errors import ClaimNotOpen, CouponNotUsable
from partners.programme import Programme, PurchaseInput, PurchaseLineInput
from partners.registry import Registry
from partners.rule_inputs import CouponInput, EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY


def purchase(partner_id: str, at: datetime, euros: int) -> Purchase:
    return Purchase(partner_id, at, "EUR", (PurchaseLine(euros * 100, "general"),))


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


async def available(ledger, member_id: str) -> int:
    return (await ledger.balances(member_id)).available


async def test_a_claim_confirmed_twice_posts_once_with_the_rule_of_the_purchase_date(
    ledger, new_member, shop, new_id
):
    # From 30 days ago the partner awards 1 point per EUR; the purchase, 60
    # days ago (beyond the partner's 30-day late-submission window), earns by
    # the rule then: 1 point per 2 EUR.
    await Rulebook(ledger).create_earn_rule(
        shop, EarnRuleInput(days_ago(30), "EUR", Decimal(1)), "staff:t"
    )
    member, receipt = await new_member(), new_id("R")
    claims = Claims(Programme(ledger))
    claim = await claims.file(member, ClaimInput(shop, receipt, days_ago(60), 10_000))
    assert (claim.status, claim.expected_points, claim.entry_id) == ("open", 50, None)

    first, second = await asyncio.gather(
        claims.confirm(claim.id, "staff:a"),
        claims.confirm(claim.id, "staff:b"),
        return_exceptions=True,
    )
    confirmed = [r for r in (first, second) if not isinstance(r, Exception)]
    refused = [r for r in (first, second) if isinstance(r, Exception)]
    assert len(confirmed) == 1 and isinstance(refused[0], ClaimNotOpen)
    assert (confirmed[0].status, confirmed[0].points) == ("confirmed", 50)
    with pytest.raises(ClaimNotOpen):
        await claims.confirm(claim.id, "staff:c")
    # The partner sends the receipt afterwards: a duplicate, nothing posted.
    with pytest.raises(DuplicatePartnerReference):
        await Programme(ledger).earn_purchase(member, purchase(shop, days_ago(1), 100), receipt)
    assert await available(ledger, member) == 50
    entry = await ledger.entry(confirmed[0].entry_id)
    assert entry.kind == "earn" and abs(entry.effective_at - claim.occurred_at) < timedelta(
        seconds=1
    )


async def test_the_partners_own_send_settles_an_open_claim(ledger, new_member, shop, new_id):
    member, receipt = await new_member(), new_id("R")
    claims = Claims(Programme(ledger))
    claim = await claims.file(member, ClaimInput(shop, receipt, days_ago(3), 4_000))
    sent = await Programme(ledger).earn_purchase(member, purchase(shop, days_ago(3), 40), receipt)
    settled = await claims.claim(claim.id)
    assert (settled.status, settled.entry_id, settled.points) == ("settled", sent.entry_id, 20)
    assert settled.resolved_by == f"partner:{shop}"
    with pytest.raises(ClaimNotOpen):
        await claims.confirm(claim.id, "staff:a")
    assert await available(ledger, member) == 20


async def test_an_activated_coupon_pays_once_across_till_batch_and_claim(
    engine, ledger, new_member, shop, new_id
):
    rules, programme = Rulebook(ledger), Programme(ledger)
    codes = [new_id("X10").upper(), new_id("X5").upper()]
    for code, multiplier in zip(codes, (10, 5), strict=True):
        await rules.create_coupon(
            CouponInput(
                code, code, days_ago(10), days_ago(-10), multiplier=Decimal(multiplier),
                partner_ids=[shop],
            ),
            "staff:t",
        )  # fmt: skip
    member, card = await new_member(), str(uuid.uuid4().int)[:16]
    await Registry(engine, SecretBox(TEST_SECRET_KEY)).issue_card(member, card, "staff:t")
    for code in codes:
        await rules.issue_coupon(code, [member], "staff:t")
        await programme.activate_coupon(member, code)
    now = datetime.now(UTC)

    # The till uses the first coupon: 20 base + 180 coupon.
    till = await programme.earn_purchase(
        member, purchase(shop, now, 40), new_id("T"), coupon_codes=(codes[0],)
    )
    assert till.earning.points == 200
    # The partner's batch names it again for another purchase: refused alone.
    batch = await earn_batch(
        programme,
        shop,
        [
            EarnItem(
                card,
                new_id("B"),
                PurchaseInput("EUR", [PurchaseLineInput(4000, "general")], occurred_at=now),
                [codes[0]],
            )
        ],
    )
    assert batch.outcomes[0].error.code == "coupon-not-usable" and batch.points == 0
    # So does a claim naming it.
    claims = Claims(programme)
    with pytest.raises(CouponNotUsable):
        await claims.file(member, ClaimInput(shop, new_id("C"), now, 4_000, coupons=[codes[0]]))
    # The other way round: a claim names the second coupon, the till uses it
    # first, and the confirmation is refused, posting nothing.
    claim = await claims.file(member, ClaimInput(shop, new_id("C"), now, 2_000, coupons=[codes[1]]))
    assert claim.expected_points == 50
    await programme.earn_purchase(
        member, purchase(shop, now, 20), new_id("T"), coupon_codes=(codes[1],)
    )
    with pytest.raises(CouponNotUsable):
        await claims.confirm(claim.id, "staff:a")
    assert (await claims.claim(claim.id)).status == "open"
    assert await available(ledger, member) == 200 + 50
    async with engine.connect() as conn:
        coupon_points = await conn.execute(
            text(
                "SELECT b ->> 'source', sum((b ->> 'amount')::int) FROM journal_entries e, "
                "jsonb_array_elements(e.breakdown) b WHERE e.member_id = :m "
                "AND b ->> 'kind' = 'coupon' GROUP BY 1"
            ),
            {"m": member},
        )
        assert dict(coupon_points.all()) == {codes[0]: 180, codes[1]: 40}


async def test_claims_over_http(client, token, new_member, shop, new_id):
    member = await new_member()
    me, admin = token(member, ("member",)), token("alice", ("admin",))
    finance = token("fred", ("finance",))
    receipt = new_id("R")
    body = {
        "partner_id": shop,
        "receipt": receipt,
        "occurred_at": days_ago(5).isoformat(),
        "amount_minor": 3_000,
        "lines": [
            {"amount_minor": 2_000, "category": "general"},
            {"amount_minor": 1_000, "category": "groceries"},
        ],
    }
    assert (await client.post("/v1/me/claims", json=body)).status_code == 401
    assert (await client.post("/v1/me/claims", json=body, headers=admin)).status_code == 401
    for change, status, problem in (
        ({"partner_id": new_id("nobody")}, 404, "partner-not-found"),
        ({"occurred_at": days_ago(-1).isoformat()}, 422, "invalid-claim"),
        ({"occurred_at": days_ago(91).isoformat()}, 422, "claim-outside-window"),
        ({"amount_minor": 0, "lines": []}, 422, "invalid-claim"),
        ({"amount_minor": 2_999}, 422, "invalid-claim"),
        ({"lines": [{"amount_minor": 3_000, "category": "nonsense"}]}, 422, "unknown-category"),
        ({"currency": "USD"}, 422, "currency-mismatch"),
        ({"coupons": ["NO-SUCH-COUPON"]}, 404, "coupon-not-found"),
    ):
        answer = await client.post("/v1/me/claims", json={**body, **change}, headers=me)
        assert (answer.status_code, answer.json()["type"]) == (status, f"/problems/{problem}"), (
            change
        )
    assert (await client.get("/v1/me/claims", headers=me)).json() == []  # nothing written

    filed = await client.post("/v1/me/claims", json=body, headers=me)
    assert filed.status_code == 201
    assert (filed.json()["status"], filed.json()["expected_points"]) == ("open", 15)
    claim_id = filed.json()["id"]
    again = await client.post("/v1/me/claims", json=body, headers=me)
    assert (again.status_code, again.json()["type"]) == (409, "/problems/claim-exists")
    assert again.json()["claim_id"] == claim_id

    listed = await client.get("/v1/staff/claims?status=open", headers=finance)
    assert claim_id in [c["id"] for c in listed.json()]
    assert (await client.get("/v1/staff/claims?status=lost", headers=admin)).status_code == 422
    no_role = await client.post(f"/v1/staff/claims/{claim_id}/confirm", headers=finance)
    assert (no_role.status_code, no_role.json()["type"]) == (403, "/problems/missing-role")
    assert (
        await client.post(f"/v1/staff/claims/{claim_id}/confirm", headers=me)
    ).status_code == 401
    unknown = await client.post("/v1/staff/claims/999999999/confirm", headers=admin)
    assert (unknown.status_code, unknown.json()["type"]) == (404, "/problems/claim-not-found")
    confirmed = await client.post(f"/v1/staff/claims/{claim_id}/confirm", headers=admin)
    assert confirmed.status_code == 200
    assert (confirmed.json()["status"], confirmed.json()["points"]) == ("confirmed", 15)
    twice = await client.post(f"/v1/staff/claims/{claim_id}/confirm", headers=admin)
    assert (twice.status_code, twice.json()["type"]) == (409, "/problems/claim-not-open")
    booked = await client.post("/v1/me/claims", json=body, headers=me)
    assert (booked.status_code, booked.json()["type"]) == (
        409,
        "/problems/duplicate-partner-reference",
    )

    other = await client.post("/v1/me/claims", json={**body, "receipt": new_id("R")}, headers=me)
    path = f"/v1/staff/claims/{other.json()['id']}/reject"
    blank = await client.post(path, json={"reason": " "}, headers=admin)
    assert (blank.status_code, blank.json()["type"]) == (422, "/problems/reason-required")
    rejected = await client.post(
        path, json={"reason": "no such receipt at the partner"}, headers=admin
    )
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert (await client.post(path, json={"reason": "again"}, headers=admin)).status_code == 409
    mine = (await client.get("/v1/me/claims", headers=me)).json()
    assert [(c["status"], c["points"]) for c in mine] == [("rejected", None), ("confirmed", 15)]
