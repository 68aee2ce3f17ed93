"""Admin API: rules created, versioned and retired over HTTP, every change
audited, invalid rules refused with a 422 naming the field."""

from datetime import UTC, datetime, timedelta

import pytest


async def test_earn_rule_versions_quote_and_audit(
    client, token, new_member, new_partner, programme_tiers
):
    partner, member = await new_partner("shop"), await new_member()
    admin = token()
    body = {
        "valid_from": "2024-01-01T00:00:00Z",
        "currency": "EUR",
        "points_per_unit": "0.5",
        "excluded_categories": ["vouchers"],
    }
    first = await client.post(f"/v1/admin/partners/{partner}/earn-rules", headers=admin, json=body)
    assert first.status_code == 201, first.text
    assert first.json()["version"] == 1
    second = await client.post(
        f"/v1/admin/partners/{partner}/earn-rules",
        headers=admin,
        json={**body, "points_per_unit": 2},
    )
    assert second.json()["version"] == 2
    quote = await client.post(
        "/v1/admin/quote",
        headers=admin,
        json={
            "member_id": member,
            "partner_id": partner,
            "purchase": {
                "currency": "EUR",
                "lines": [
                    {"amount_minor": 1000, "category": "groceries"},
                    {"amount_minor": 500, "category": "vouchers"},
                ],
            },
        },
    )
    assert quote.status_code == 200, quote.text
    assert quote.json()["points"] == 20 and quote.json()["rule_version"] == 2
    retired = await client.post(f"/v1/admin/partners/{partner}/earn-rules/2/retire", headers=admin)
    assert retired.status_code == 200 and retired.json()["retired_at"]
    audit = (
        await client.get(f"/v1/admin/audit?entity=earn_rule&entity_id={partner}/2", headers=admin)
    ).json()
    assert [a["action"] for a in audit] == ["retire", "create"]
    assert audit[0]["actor"] == "staff:alice"
    assert audit[0]["before"]["retired_at"] is None and audit[0]["after"]["retired_at"]


@pytest.mark.parametrize(
    ("body", "problem", "field"),
    [
        ({"points_per_unit": "-1"}, "invalid-rule", "points_per_unit"),
        # Rates beyond any programme's, which would make every earning there
        # a 422 for an amount of 300 digits, or 0 points whatever the basket.
        ({"points_per_unit": "1e308"}, "invalid-rule", "points_per_unit"),
        ({"points_per_unit": "1e-400"}, "invalid-rule", "points_per_unit"),
        ({"qp_per_unit": "10000.5"}, "invalid-rule", "qp_per_unit"),
        (
            {"category_multipliers": {"electronics": "1e300"}},
            "invalid-rule",
            "category_multipliers.electronics",
        ),
        ({"excluded_categories": ["spaceships"]}, "unknown-category", "excluded_categories"),
        (
            {"category_multipliers": {"electronics": "-2"}},
            "invalid-rule",
            "category_multipliers.electronics",
        ),
        ({"currency": "XXX"}, "invalid-rule", "currency"),
        ({"valid_to": "2023-01-01T00:00:00Z"}, "invalid-rule", "valid_to"),
        ({"cap_per_period": 100}, "invalid-rule", "cap_period"),
        # The calendar's ends, which the driver stores as PostgreSQL's
        # infinities and reads back without a zone (every earning there a 500).
        ({"valid_from": "0001-01-01T00:00:00Z"}, "invalid-rule", "valid_from"),
        ({"valid_to": "9999-12-31T23:59:59.999999Z"}, "invalid-rule", "valid_to"),
        ({"valid_from": "1999-12-31T23:59:59Z"}, "invalid-rule", "valid_from"),
    ],
)
async def test_invalid_earn_rules_are_422_naming_the_field(
    client, token, new_partner, body, problem, field
):
    partner = await new_partner("shop")
    base = {"valid_from": "2024-01-01T00:00:00Z", "currency": "EUR", "points_per_unit": "1"}
    response = await client.post(
        f"/v1/admin/partners/{partner}/earn-rules", headers=token(), json={**base, **body}
    )
    assert response.status_code == 422, response.text
    assert response.json()["type"] == f"/problems/{problem}"
    assert response.json()["field"] == field
    listed = await client.get(f"/v1/admin/partners/{partner}/earn-rules", headers=token())
    assert listed.json() == []


async def test_burn_rates_and_offer_multipliers_beyond_bounds_are_422(
    client, token, new_id, new_partner
):
    partner, now = await new_partner("shop"), datetime.now(UTC)
    burn = {"valid_from": "2024-01-01T00:00:00Z", "currency": "EUR", "points_per_unit": "1e-308"}
    refused = await client.post(
        f"/v1/admin/partners/{partner}/burn-rules", headers=token(), json=burn
    )
    assert (refused.status_code, refused.json()["field"]) == (422, "points_per_unit")
    promotion = {
        "code": new_id("X"),
        "name": "x",
        "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(days=7)).isoformat(),
        "multiplier": "1e300",
        "partner_ids": [partner],
    }
    refused = await client.post("/v1/admin/promotions", headers=token(), json=promotion)
    assert (refused.status_code, refused.json()["field"]) == (422, "multiplier")
    accepted = await client.post(
        "/v1/admin/promotions", headers=token(), json={**promotion, "multiplier": "100"}
    )
    assert accepted.status_code == 201, accepted.text


async def test_offers_and_burn_rules_dated_beyond_the_programme_are_422(
    client, token, new_id, new_partner
):
    partner = await new_partner("shop")
    for far in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2100-01-01T00:00:00Z"):
        start, end = ("2024-01-01T00:00:00Z", far) if far > "2024" else (far, None)
        promotion = {
            "code": new_id("P"),
            "name": "x",
            "starts_at": start,
            "ends_at": end or "2026-01-01T00:00:00Z",
            "multiplier": "2",
            "partner_ids": [partner],
        }
        coupon = {
            "code": new_id("C"),
            "name": "x",
            "valid_from": start,
            "valid_to": end or "2026-01-01T00:00:00Z",
            "fixed_bonus": 10,
        }
        burn = {"valid_from": start, "valid_to": end, "currency": "EUR", "points_per_unit": "1"}
        answers = [
            await client.post("/v1/admin/promotions", headers=token(), json=promotion),
            await client.post("/v1/admin/coupons", headers=token(), json=coupon),
            await client.post(
                f"/v1/admin/partners/{partner}/burn-rules", headers=token(), json=burn
            ),
        ]
        for answer in answers:
            assert answer.status_code == 422, answer.text
            assert answer.json()["type"] == "/problems/invalid-rule"


async def test_overlapping_exclusive_promotions_are_refused(client, token, new_id, new_partner):
    partner, now = await new_partner("shop"), datetime.now(UTC)

    def promo(code, start, days):
        return {
            "code": code,
            "name": code,
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(days=days)).isoformat(),
            "multiplier": "3",
            "partner_ids": [partner],
            "exclusive": True,
        }

    first = await client.post(
        "/v1/admin/promotions", headers=token(), json=promo(new_id("X"), now, 7)
    )
    assert first.status_code == 201, first.text
    clash = await client.post(
        "/v1/admin/promotions", headers=token(), json=promo(new_id("Y"), now + timedelta(days=3), 7)
    )
    assert clash.status_code == 422
    assert clash.json()["type"] == "/problems/overlapping-exclusive-promotion"
    assert clash.json()["field"] == "exclusive"
    after = await client.post(
        "/v1/admin/promotions", headers=token(), json=promo(new_id("Z"), now + timedelta(days=8), 7)
    )
    assert after.status_code == 201


async def test_tiers_coupons_and_roles(client, token, new_id, new_member, programme_tiers):
    tiers = (await client.get("/v1/admin/tiers", headers=token())).json()
    assert [t["code"] for t in tiers][:3] == ["base", "silver", "gold"]
    bad = await client.put(
        "/v1/admin/tiers/platinum",
        headers=token(),
        json={"name": "Platinum", "rank": 3, "qp_threshold": 2000},
    )
    assert bad.status_code == 422 and bad.json()["field"] == "qp_threshold"
    for code in ("__dict__", "Platinum", "-platinum", "p" * 41, "plätinum"):
        refused = await client.put(
            f"/v1/admin/tiers/{code}",
            headers=token(),
            json={"name": "Platinum", "rank": 3, "qp_threshold": 0},
        )
        assert refused.status_code == 422, (code, refused.text)
        assert refused.json()["type"] == "/problems/invalid-rule"
        assert refused.json()["field"] == "code"
    # "base" is the built-in tier at 0 QP: not to be defined at a threshold.
    based = await client.put(
        "/v1/admin/tiers/base",
        headers=token(),
        json={"name": "Base", "rank": 0, "qp_threshold": 10},
    )
    assert (based.status_code, based.json()["field"]) == (422, "qp_threshold"), based.text
    beside = await client.put(
        "/v1/admin/tiers/bronze",
        headers=token(),
        json={"name": "Bronze", "rank": 0, "qp_threshold": 500},
    )
    assert (beside.status_code, beside.json()["field"]) == (422, "rank"), beside.text
    listed = (await client.get("/v1/admin/tiers", headers=token())).json()
    assert [t["code"] for t in listed] == [t["code"] for t in tiers]
    assert [t["code"] for t in listed].count("base") == 1
    now = datetime.now(UTC)
    code = new_id("CPN").upper()
    created = await client.post(
        "/v1/admin/coupons",
        headers=token(),
        json={
            "code": code,
            "name": "5x",
            "valid_from": now.isoformat(),
            "valid_to": (now + timedelta(days=10)).isoformat(),
            "multiplier": "5",
        },
    )
    assert created.status_code == 201, created.text
    first, second = await new_member(), await new_member()
    issued = await client.post(
        f"/v1/admin/coupons/{code}/issue",
        headers=token(),
        json={"member_ids": [first, second, first]},
    )
    assert issued.json() == {"issued": 2}
    finance = token("fiona", roles=("finance",))
    assert (await client.get("/v1/admin/tiers", headers=finance)).status_code == 403


async def test_partners_keys_and_cards_over_http(client, token, new_id, new_member):
    admin, partner = token(), new_id("shop")
    created = await client.post(
        "/v1/admin/partners",
        headers=admin,
        json={
            "id": partner,
            "name": "Corner shop",
            "return_window_days": 14,
            "price_per_point": "0.01",
            "redemption_value": "0.008",
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active" and created.json()["return_window_days"] == 14
    duplicate = await client.post(
        "/v1/admin/partners", headers=admin, json={"id": partner, "name": "again"}
    )
    assert (duplicate.status_code, duplicate.json()["field"]) == (422, "id")
    # Printed on statements and terminals: one line of at most 200 characters.
    for name in ("", "   ", "two\nlines", "\x1b[31mred", "x" * 201):
        bad = await client.post(
            "/v1/admin/partners", headers=admin, json={"id": new_id("shop"), "name": name}
        )
        assert (bad.status_code, bad.json().get("field")) == (422, "name"), (name, bad.text)

    key = (await client.post(f"/v1/admin/partners/{partner}/keys", headers=admin)).json()
    assert key["secret"] and key["status"] == "active"
    listed = (await client.get(f"/v1/admin/partners/{partner}/keys", headers=admin)).json()
    assert listed == [
        {"key_id": key["key_id"], "partner_id": partner, "status": "active", "secret": None}
    ]  # never shown again
    await client.post(f"/v1/admin/partners/{partner}/keys", headers=admin)
    third = await client.post(f"/v1/admin/partners/{partner}/keys", headers=admin)
    assert (third.status_code, third.json()["type"]) == (409, "/problems/too-many-keys")
    revoked = await client.post(
        f"/v1/admin/partners/{partner}/keys/{key['key_id']}/revoke", headers=admin
    )
    assert revoked.json()["status"] == "revoked"

    suspended = await client.post(
        f"/v1/admin/partners/{partner}/status", headers=admin, json={"status": "suspended"}
    )
    assert suspended.json()["status"] == "suspended"
    audit = (
        await client.get(f"/v1/admin/audit?entity=partner&entity_id={partner}", headers=admin)
    ).json()
    assert [a["action"] for a in audit] == ["status:suspended", "create"]

    member, number = (
        await new_member(),
        "4" + new_id("").replace("-", "")[:10].translate(str.maketrans("abcdef", "123456")),
    )
    issued = await client.post(
        f"/v1/admin/members/{member}/cards", headers=admin, json={"card_number": number}
    )
    assert issued.status_code == 201, issued.text
    blocked = await client.post(f"/v1/admin/members/{member}/cards/{number}/block", headers=admin)
    assert blocked.json()["status"] == "blocked"
    missing = await client.get("/v1/admin/partners/nobody-here", headers=admin)
    assert (missing.status_code, missing.json()["type"]) == (404, "/problems/partner-not-found")


async def test_staff_see_a_members_tier(client, token, new_member):
    response = await client.get(
        f"/v1/staff/members/{await new_member()}/tier", headers=token("fiona", roles=("finance",))
    )
    assert response.status_code == 200
    assert response.json()["progress"]["tier"]["code"] in ("base", "silver", "gold")
    assert response.json()["history"] == []
