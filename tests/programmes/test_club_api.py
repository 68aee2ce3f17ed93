"""Clubs and the service module over HTTP (api/routes/clubs.py): the admin's
club and service plan, a member joining, paying (staff record the fee),
cancelling and registering a product, a dealer's signed visit report, and
the problem each refusal answers with (401, 403, 404, 409, 422), none of
them writing anything."""

import uuid
from datetime import UTC, datetime

from sqlalchemy import text

from partners.client import PartnerAuth
from partners.registry import Registry
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY


def problem(response) -> tuple[int, str]:
    return response.status_code, response.json()["type"]


async def count(engine, table: str) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()


ROUTES = (
    ("get", "/v1/me/clubs", "member"),
    ("post", "/v1/me/clubs/some-club/join", "member"),
    ("post", "/v1/me/clubs/some-club/cancel", "member"),
    ("get", "/v1/me/products", "member"),
    ("post", "/v1/me/products", "member"),
    ("get", "/v1/admin/clubs", "admin"),
    ("post", "/v1/admin/clubs", "admin"),
    ("patch", "/v1/admin/clubs/some-club", "admin"),
    ("put", "/v1/admin/service-plans/some-maker", "admin"),
    ("post", "/v1/staff/club-payments", "staff"),
)


async def test_every_route_wants_its_credentials(client, token):
    outsider = token("audit", roles=("auditor",))
    for method, path, who in ROUTES:
        call = getattr(client, method)
        body = {} if method != "get" else None
        kwargs = {"json": body} if body is not None else {}
        assert problem(await call(path, **kwargs)) == (401, "/problems/token-missing"), path
        if who == "member":
            answer = await call(path, headers=token("desk"), **kwargs)
            assert problem(answer) == (401, "/problems/token-wrong-audience"), path
        else:
            assert problem(await call(path, headers=outsider, **kwargs)) == (
                403,
                "/problems/missing-role",
            ), path


async def test_a_club_over_http(client, token, engine, new_partner, new_member, new_id):
    brand, member, other = await new_partner("brand"), await new_member(), await new_member()
    admin, finance = token("desk"), token("clerk", roles=("finance",))
    me = token(member, roles=("member",))
    code = new_id("club")
    club = {
        "code": code,
        "name": "Cooking studio",
        "partner_id": brand,
        "fee_minor": 1227,
        "currency": "EUR",
        "welcome_points": 500,
    }

    assert problem(await client.post("/v1/admin/clubs", json=club)) == (
        401,
        "/problems/token-missing",
    )
    assert problem(await client.post("/v1/admin/clubs", json=club, headers=finance)) == (
        403,
        "/problems/missing-role",
    )
    for bad, expected in (
        ({**club, "fee_minor": 0}, (422, "/problems/invalid-club")),
        ({**club, "code": "Not A Code"}, (422, "/problems/invalid-club")),
        ({**club, "partner_id": "no-such-brand"}, (404, "/problems/partner-not-found")),
    ):
        assert problem(await client.post("/v1/admin/clubs", json=bad, headers=admin)) == expected
    created = await client.post("/v1/admin/clubs", json=club, headers=admin)
    assert created.status_code == 201 and created.json()["term_months"] == 12
    assert problem(await client.post("/v1/admin/clubs", json=club, headers=admin)) == (
        409,
        "/problems/club-exists",
    )
    changed = await client.patch(f"/v1/admin/clubs/{code}", json={"fee_minor": 1500}, headers=admin)
    assert changed.json()["fee_minor"] == 1500
    assert problem(
        await client.patch("/v1/admin/clubs/no-such-club", json={"fee_minor": 1}, headers=admin)
    ) == (404, "/problems/club-not-found")
    assert problem(
        await client.patch(f"/v1/admin/clubs/{code}", json={"fee_minor": -1}, headers=admin)
    ) == (422, "/problems/invalid-club")

    # A member joins: pending payment until the fee is recorded.
    assert problem(await client.get("/v1/me/clubs")) == (401, "/problems/token-missing")
    assert problem(await client.post("/v1/me/clubs/no-such-club/join", headers=me)) == (
        404,
        "/problems/club-not-found",
    )
    joined = await client.post(f"/v1/me/clubs/{code}/join", headers=me)
    assert (joined.status_code, joined.json()["status"]) == (201, "pending_payment")
    assert problem(await client.post(f"/v1/me/clubs/{code}/join", headers=me)) == (
        409,
        "/problems/club-membership-exists",
    )

    payments = await count(engine, "club_payments")
    pay = {
        "payment_reference": new_id("psp"),
        "club": code,
        "member_id": member,
        "amount_minor": 1500,
        "currency": "EUR",
    }
    assert problem(await client.post("/v1/staff/club-payments", json=pay, headers=me)) == (
        401,
        "/problems/token-wrong-audience",
    )
    auditor = token("audit", roles=("auditor",))
    assert problem(await client.post("/v1/staff/club-payments", json=pay, headers=auditor)) == (
        403,
        "/problems/missing-role",
    )
    for bad, expected in (
        ({**pay, "amount_minor": 1227}, (422, "/problems/club-fee-mismatch")),
        ({**pay, "member_id": other}, (404, "/problems/club-membership-not-found")),
        ({**pay, "club": "no-such-club"}, (404, "/problems/club-not-found")),
        ({**pay, "payment_reference": ""}, (422, "/problems/invalid-club")),
    ):
        answer = await client.post("/v1/staff/club-payments", json=bad, headers=finance)
        assert problem(answer) == expected, bad
    assert await count(engine, "club_payments") == payments
    paid = await client.post("/v1/staff/club-payments", json=pay, headers=finance)
    assert paid.status_code == 201
    assert (paid.json()["welcome_points"], paid.json()["renewal"]) == (500, False)
    again = await client.post("/v1/staff/club-payments", json=pay, headers=admin)
    assert again.json() == paid.json()
    reused = {**pay, "amount_minor": 2000}
    assert problem(await client.post("/v1/staff/club-payments", json=reused, headers=admin)) == (
        409,
        "/problems/club-payment-reference-reused",
    )
    renewal = {**pay, "payment_reference": new_id("psp")}
    assert (await client.post("/v1/staff/club-payments", json=renewal, headers=admin)).json()[
        "renewal"
    ]
    early = {**pay, "payment_reference": new_id("psp")}
    assert problem(await client.post("/v1/staff/club-payments", json=early, headers=admin)) == (
        409,
        "/problems/club-renewal-too-early",
    )
    assert await count(engine, "club_payments") == payments + 2

    (mine,) = (await client.get("/v1/me/clubs", headers=me)).json()
    assert (mine["status"], mine["club"]) == ("active", code)
    cancelled = await client.post(f"/v1/me/clubs/{code}/cancel", headers=me)
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["cancels_at"]) == (
        "active",
        mine["paid_until"],
    )
    outsider = token(other, roles=("member",))
    assert problem(await client.post(f"/v1/me/clubs/{code}/cancel", headers=outsider)) == (
        404,
        "/problems/club-membership-not-found",
    )
    after_cancel = {**pay, "payment_reference": new_id("psp")}
    assert problem(
        await client.post("/v1/staff/club-payments", json=after_cancel, headers=admin)
    ) == (409, "/problems/club-membership-cancelled")


async def test_products_and_service_visits_over_http(
    client, token, engine, new_partner, new_member, new_id
):
    producer, dealer, garage = [await new_partner(p) for p in ("maker", "dealer", "garage")]
    member, other = await new_member(), await new_member()
    admin, me = token("desk"), token(member, roles=("member",))
    plan = {"interval_months": 12, "bonus_points": 250, "dealer_ids": [dealer]}
    assert problem(
        await client.put("/v1/admin/service-plans/no-such-maker", json=plan, headers=admin)
    ) == (404, "/problems/partner-not-found")
    assert problem(
        await client.put(
            f"/v1/admin/service-plans/{producer}",
            json={**plan, "dealer_ids": ["nobody"]},
            headers=admin,
        )
    ) == (422, "/problems/invalid-service-input")
    put = await client.put(f"/v1/admin/service-plans/{producer}", json=plan, headers=admin)
    assert (put.status_code, put.json()["dealer_ids"]) == (200, [dealer])

    vin = f"VIN-{uuid.uuid4().hex[:12]}"
    product = {"producer_id": producer, "product_id": vin}
    assert problem(
        await client.post("/v1/me/products", json={**product, "producer_id": garage}, headers=me)
    ) == (404, "/problems/service-plan-not-found")
    assert problem(
        await client.post("/v1/me/products", json={**product, "product_id": "a b"}, headers=me)
    ) == (422, "/problems/invalid-service-input")
    registered = await client.post("/v1/me/products", json=product, headers=me)
    assert (registered.status_code, registered.json()["member_id"]) == (201, member)
    assert problem(
        await client.post("/v1/me/products", json=product, headers=token(other, ("member",)))
    ) == (409, "/problems/product-registered")
    assert [p["product_id"] for p in (await client.get("/v1/me/products", headers=me)).json()] == [
        vin
    ]

    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    keys = {p: await registry.create_key(p, "staff:tests") for p in (dealer, garage)}

    async def report(partner: str, body: dict):
        signed = PartnerAuth(keys[partner].key_id, keys[partner].secret)
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        return await client.post(
            "/v1/partner/service-visits", json=body, headers=headers, auth=signed
        )

    now = datetime.now(UTC).isoformat()
    visit = {"producer_id": producer, "product_id": vin, "reference": "JOB-1", "visited_at": now}
    unsigned = await client.post("/v1/partner/service-visits", json=visit)
    assert problem(unsigned) == (401, "/problems/signature-missing")
    assert problem(await report(garage, visit)) == (403, "/problems/dealer-not-authorised")
    assert problem(await report(dealer, {**visit, "product_id": "VIN-unknown"})) == (
        404,
        "/problems/product-not-found",
    )
    assert problem(await report(dealer, {**visit, "visited_at": "2999-01-01T00:00:00Z"})) == (
        422,
        "/problems/invalid-service-input",
    )
    assert await count(engine, f"service_visits WHERE dealer_id = '{dealer}'") == 0
    first = await report(dealer, visit)
    assert (first.status_code, first.json()["bonus_points"], first.json()["interval"]) == (
        201,
        250,
        1,
    )
    # The same report under a new key: the stored visit (one per dealer and reference).
    assert (await report(dealer, visit)).json() == first.json()
    second = await report(dealer, {**visit, "reference": "JOB-2"})
    assert second.json()["bonus_points"] == 0  # the interval's bonus was paid
    moved = {**visit, "visited_at": datetime(2020, 1, 1, tzinfo=UTC).isoformat()}
    assert problem(await report(dealer, moved)) == (409, "/problems/service-visit-exists")
