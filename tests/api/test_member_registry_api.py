"""The member registry over HTTP (admin API): enrol, find, close, merge and
erase; and no endpoint that writes accepts an unknown or closed member or an
unregistered partner (a 404/422 problem, nothing written)."""

import uuid

from ledger.commands import Earn


def problem_type(response) -> str:
    return response.json()["type"].rsplit("/", 1)[-1]


async def test_enrol_search_close_and_erase_over_http(client, token, ledger, new_partner):
    admin = token()
    member = f"h-{uuid.uuid4().hex[:10]}"
    enrolled = await client.post(
        "/v1/admin/members",
        headers=admin,
        json={"id": member, "display_name": "Hana", "email": "hana@example.org"},
    )
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["status"] == "active"
    again = await client.post("/v1/admin/members", headers=admin, json={"id": member})
    assert (again.status_code, problem_type(again)) == (409, "member-exists")
    bad = await client.post("/v1/admin/members", headers=admin, json={"email": "nope"})
    assert (bad.status_code, problem_type(bad)) == (422, "invalid-member")

    card = "6001" + str(uuid.uuid4().int)[:12]
    issued = await client.post(
        f"/v1/admin/members/{member}/cards", headers=admin, json={"card_number": card}
    )
    assert issued.status_code == 201, issued.text
    found = await client.get(f"/v1/admin/members?card={card}", headers=admin)
    assert [m["id"] for m in found.json()["members"]] == [member]
    by_mail = await client.get("/v1/admin/members?email=HANA@example.org", headers=admin)
    assert member in [m["id"] for m in by_mail.json()["members"]]

    await ledger.earn(Earn.simple(member, await new_partner(), f"r-{member}", 120))
    refused = await client.post(
        f"/v1/admin/members/{member}/close", headers=admin, json={"reason": "asked"}
    )
    assert (refused.status_code, problem_type(refused)) == (409, "member-accounts-not-settled")
    early_erase = await client.post(f"/v1/admin/members/{member}/erase", headers=admin)
    assert (early_erase.status_code, problem_type(early_erase)) == (409, "member-still-active")

    closed = await client.post(
        f"/v1/admin/members/{member}/close",
        headers=admin,
        json={"reason": "asked", "balance": "forfeit"},
    )
    assert closed.status_code == 200, closed.text
    forfeit = closed.json()["forfeit_entry_id"]
    entry = (await client.get(f"/v1/staff/entries/{forfeit}", headers=admin)).json()
    assert entry["kind"] == "forfeit"
    assert sorted(p["amount"] for p in entry["postings"]) == [-120, 120]
    cards = (await client.get(f"/v1/admin/members/{member}/cards", headers=admin)).json()
    assert [c["status"] for c in cards] == ["blocked"]

    erased = await client.post(f"/v1/admin/members/{member}/erase", headers=admin)
    assert erased.status_code == 200
    assert (erased.json()["email"], erased.json()["display_name"]) == (None, None)
    events = (await client.get(f"/v1/admin/members/{member}/events", headers=admin)).json()
    assert [e["event"] for e in events] == ["enrolled", "closed", "erased"]
    assert events[1]["entry_id"] == forfeit and events[1]["actor"] == "staff:alice"


async def test_merge_over_http(client, token, ledger, new_member, new_partner):
    admin = token()
    source, target, partner = await new_member(), await new_member(), await new_partner()
    await ledger.earn(Earn.simple(source, partner, f"r-{source}", 70, 7))
    merged = await client.post(
        f"/v1/admin/members/{source}/merge",
        headers=admin,
        json={"into": target, "reason": "two cards, one person"},
    )
    assert merged.status_code == 200, merged.text
    body = merged.json()
    assert body["source"]["status"] == "merged" and body["source"]["merged_into"] == target
    balances = (await client.get(f"/v1/staff/members/{target}/balances", headers=admin)).json()
    assert (balances["balances"]["available"], balances["balances"]["qp"]) == (70, 7)
    twice = await client.post(
        f"/v1/admin/members/{source}/merge", headers=admin, json={"into": target, "reason": "x"}
    )
    assert (twice.status_code, problem_type(twice)) == (422, "member-not-active")
    adjusted = await client.post(
        "/v1/staff/adjustments",
        headers=admin,
        json={"member_id": source, "amount": 5, "reason": "after the merge"},
    )
    assert (adjusted.status_code, problem_type(adjusted)) == (422, "member-not-active")


async def test_writes_naming_unknown_parties_are_refused_and_write_nothing(
    client, token, new_member, new_id
):
    admin = token()
    ghost, ghost_partner = new_id("typo"), new_id("nopartner")
    adjusted = await client.post(
        "/v1/staff/adjustments",
        headers=admin,
        json={"member_id": ghost, "amount": 500, "reason": "typo"},
    )
    assert (adjusted.status_code, problem_type(adjusted)) == (404, "member-not-found")
    for read in ("balances", "history", "tier"):
        answer = await client.get(f"/v1/staff/members/{ghost}/{read}", headers=admin)
        assert (answer.status_code, problem_type(answer)) == (404, "member-not-found")
    card = await client.post(
        f"/v1/admin/members/{ghost}/cards",
        headers=admin,
        json={"card_number": "6001" + str(uuid.uuid4().int)[:12]},
    )
    assert (card.status_code, problem_type(card)) == (404, "member-not-found")
    rule = await client.post(
        f"/v1/admin/partners/{ghost_partner}/earn-rules",
        headers=admin,
        json={"valid_from": "2024-01-01T00:00:00Z", "currency": "EUR", "points_per_unit": "1"},
    )
    assert (rule.status_code, problem_type(rule)) == (404, "partner-not-found")
    assert (
        await client.get(f"/v1/admin/partners/{ghost_partner}/earn-rules", headers=admin)
    ).json() == []
    promotion = await client.post(
        "/v1/admin/promotions",
        headers=admin,
        json={
            "code": new_id("P").upper(),
            "name": "ghost partner",
            "starts_at": "2030-01-01T00:00:00Z",
            "ends_at": "2030-02-01T00:00:00Z",
            "multiplier": "2",
            "partner_ids": [ghost_partner],
        },
    )
    assert (promotion.status_code, problem_type(promotion)) == (404, "partner-not-found")
    coupon_code = new_id("C").upper()
    created = await client.post(
        "/v1/admin/coupons",
        headers=admin,
        json={
            "code": coupon_code,
            "name": "ten times",
            "valid_from": "2030-01-01T00:00:00Z",
            "valid_to": "2030-02-01T00:00:00Z",
            "multiplier": "10",
        },
    )
    assert created.status_code == 201, created.text
    member = await new_member()
    issued = await client.post(
        f"/v1/admin/coupons/{coupon_code}/issue",
        headers=admin,
        json={"member_ids": [member, ghost]},
    )
    assert (issued.status_code, problem_type(issued)) == (404, "member-not-found")
    coupons = await client.get("/v1/me/coupons", headers=token(member, roles=("member",)))
    assert coupons.json() == []  # one transaction: not even the known member got it
    mine = await client.get(f"/v1/admin/members/{member}", headers=admin)
    assert mine.status_code == 200
    unknown = await client.get(f"/v1/admin/members/{ghost}", headers=admin)
    assert (unknown.status_code, problem_type(unknown)) == (404, "member-not-found")


async def test_member_search_refuses_bad_parameters(client, token):
    admin = token()
    for query in ("status=sleeping", "limit=0", "limit=201", "prefix=" + "x" * 300):
        response = await client.get(f"/v1/admin/members?{query}", headers=admin)
        assert response.status_code in (400, 422), (query, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    member_token = token("someone", roles=("member",))
    assert (await client.get("/v1/admin/members", headers=member_token)).status_code == 401
