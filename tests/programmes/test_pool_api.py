"""The family pool's HTTP surface (api/routes/pools.py): opening, joining
(admins), viewing, leaving and redeeming, and the problem each refusal
answers with (401, 403, 404, 409, 422), none of them writing anything."""

from ledger.commands import Adjust


def problem(response) -> tuple[int, str]:
    return response.status_code, response.json()["type"]


async def test_a_family_pool_over_http(client, token, new_member, new_partner, ledger):
    airline = await new_partner("air")
    mum, dad, kid, other = [await new_member(n) for n in ("mum", "dad", "kid", "other")]
    for member, miles in ((mum, 1000), (dad, 500), (kid, 250)):
        await ledger.adjust(Adjust(member, miles, "flown"), "staff:tests")
    as_mum, as_kid = token(mum, roles=("member",)), token(kid, roles=("member",))
    admin, finance = token("desk"), token("clerk", roles=("finance",))

    assert problem(await client.get("/v1/me/pool", headers=as_mum)) == (
        404,
        "/problems/pool-not-found",
    )
    opened = await client.post("/v1/me/pool", json={"name": "Weber"}, headers=as_mum)
    assert opened.status_code == 201
    pool_id = opened.json()["id"]
    members = f"/v1/staff/pools/{pool_id}/members"
    for member, role in ((dad, "adult"), (kid, "child")):
        added = await client.post(members, json={"member_id": member, "role": role}, headers=admin)
        assert added.status_code == 201

    view = (await client.get("/v1/me/pool", headers=as_kid)).json()
    assert view["pooled_available"] == 1750
    assert [(m["member_id"], m["role"]) for m in view["members"]] == [
        (mum, "adult"),
        (dad, "adult"),
        (kid, "child"),
    ]
    assert (await client.get(f"/v1/staff/pools/{pool_id}", headers=finance)).json() == view

    redeem = {"partner_id": airline, "amount": 1600}
    done = await client.post(
        "/v1/me/pool/redemptions", json=redeem, headers={**as_mum, "Idempotency-Key": "r-1"}
    )
    assert done.status_code == 201
    assert done.json()["pooled_available"] == 150
    again = await client.post(
        "/v1/me/pool/redemptions", json=redeem, headers={**as_mum, "Idempotency-Key": "r-1"}
    )
    assert again.json() == done.json()

    refusals = [
        (client.get("/v1/me/pool"), (401, "/problems/token-missing")),
        (
            client.post(members, json={"member_id": other, "role": "adult"}, headers=finance),
            (403, "/problems/missing-role"),
        ),
        (
            client.post(
                "/v1/me/pool/redemptions",
                json={"partner_id": airline, "amount": 10},
                headers={**as_kid, "Idempotency-Key": "k-1"},
            ),
            (403, "/problems/pool-redeem-refused"),
        ),
        (client.get("/v1/staff/pools/999999999", headers=admin), (404, "/problems/pool-not-found")),
        (
            client.post(
                "/v1/staff/pools/999999999/members",
                json={"member_id": other, "role": "adult"},
                headers=admin,
            ),
            (404, "/problems/pool-not-found"),
        ),
        (
            client.post(members, json={"member_id": "nobody-x", "role": "adult"}, headers=admin),
            (404, "/problems/member-not-found"),
        ),
        (
            client.post(
                "/v1/me/pool/redemptions",
                json={"partner_id": "no-such-airline", "amount": 10},
                headers={**as_mum, "Idempotency-Key": "k-2"},
            ),
            (404, "/problems/partner-not-found"),
        ),
        (
            client.post(members, json={"member_id": dad, "role": "adult"}, headers=admin),
            (409, "/problems/already-in-pool"),
        ),
        (
            client.post(members, json={"member_id": other, "role": "adult"}, headers=admin),
            (409, "/problems/pool-full"),
        ),
        (
            client.post("/v1/me/pool", json={"name": "Again"}, headers=as_mum),
            (409, "/problems/already-in-pool"),
        ),
        (
            client.post(
                "/v1/me/pool/redemptions",
                json={"partner_id": airline, "amount": 151},
                headers={**as_mum, "Idempotency-Key": "k-3"},
            ),
            (422, "/problems/insufficient-pooled-points"),
        ),
        (
            client.post(
                "/v1/me/pool/redemptions",
                json={"partner_id": airline, "amount": 0},
                headers={**as_mum, "Idempotency-Key": "k-4"},
            ),
            (422, "/problems/invalid-amount"),
        ),
        (
            client.post(members, json={"member_id": other, "role": "baby"}, headers=admin),
            (422, "/problems/invalid-pool"),
        ),
        (
            client.post(
                "/v1/me/pool", json={"name": "  "}, headers=token(other, roles=("member",))
            ),
            (422, "/problems/invalid-pool"),
        ),
        (
            client.post("/v1/me/pool/redemptions", json=redeem, headers=as_mum),
            (400, "/problems/idempotency-key-missing"),
        ),
    ]
    for call, expected in refusals:
        assert problem(await call) == expected
    assert (await client.get("/v1/me/pool", headers=as_mum)).json()["pooled_available"] == 150

    left = await client.post("/v1/me/pool/leave", headers=as_kid)
    assert left.status_code == 200
    assert problem(await client.post("/v1/me/pool/leave", headers=as_kid)) == (
        404,
        "/problems/pool-not-found",
    )
    refused = await client.post("/v1/me/pool", json={"name": "Kid's"}, headers=as_kid)
    assert problem(refused) == (409, "/problems/pool-cool-off")
    assert refused.json()["may_join_from"] == left.json()["may_join_from"]
