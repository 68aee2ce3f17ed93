"""Bad input and failed authentication: a 4xx problem each, nothing posted."""

import time

import jwt
import pytest

from tests.api.conftest import SECRET

PROBLEM = "application/problem+json"


async def _adjust(client, headers, body=None, content=None):
    return await client.post(
        "/v1/staff/adjustments",
        headers={**headers, "content-type": "application/json"},
        json=body,
        content=content,
    )


@pytest.fixture
async def member(new_member) -> str:
    return await new_member()


@pytest.mark.parametrize(
    ("content", "status", "problem"),
    [
        (b'{"member_id": "m1", "amount": 5,', 400, "malformed-request"),
        (b'{"member_id": "m1", "amount": "5", "reason": "x"}', 400, "validation-error"),
        (b'{"member_id": "m1", "amount": 5, "reason": "x", "extra": 1}', 400, "validation-error"),
        (b'{"member_id": "m1", "amount": 5.5, "reason": "x"}', 400, "validation-error"),
        (b"[]", 400, "validation-error"),
        (b'{"member_id": "m1", "amount": 0, "reason": "x"}', 422, "invalid-amount"),
        (b'{"member_id": "m1", "amount": 5, "reason": " "}', 422, "reason-required"),
        (b'{"member_id": "bad id!", "amount": 5, "reason": "x"}', 422, "invalid-account"),
        (b'{"member_id": "m1", "amount": 5, "reason": "x", "asset": "EUR"}', 422, "invalid-amount"),
        (
            b'{"member_id": "m1", "amount": 5, "reason": "' + b"x" * 70_000 + b'"}',
            413,
            "payload-too-large",
        ),
    ],
)
async def test_bad_bodies_get_problems_and_post_nothing(
    client, token, ledger, member, content, status, problem
):
    # An enrolled member: the body alone is what is wrong.
    content = content.replace(b'"m1"', b'"' + member.encode() + b'"')
    response = await _adjust(client, token(), content=content)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"/problems/{problem}"
    assert body["status"] == status and body["title"] and body["detail"]
    assert (await ledger.balances(member)).available == 0


async def test_unknown_entry_and_account(client, token, member):
    missing = await client.get("/v1/staff/entries/987654321", headers=token())
    assert (missing.status_code, missing.json()["type"]) == (404, "/problems/entry-not-found")
    bad = await client.get("/v1/staff/accounts/bank:x:y/balance", headers=token())
    assert (bad.status_code, bad.json()["type"]) == (422, "/problems/invalid-account")
    cursor = await client.get(f"/v1/staff/members/{member}/history?cursor=zzz", headers=token())
    assert (cursor.status_code, cursor.json()["type"]) == (400, "/problems/invalid-cursor")
    route = await client.get("/v1/nowhere")
    assert (route.status_code, route.json()["type"]) == (404, "/problems/not-found")


def _token(**claims) -> str:
    now = int(time.time())
    base = {
        "sub": "alice",
        "roles": ["admin"],
        "iss": "loyalty-dev",
        "aud": "loyalty-api",
        "iat": now,
        "exp": now + 300,
    }
    base.update(claims)
    algorithm = base.pop("alg", "HS256")
    key = base.pop("key", SECRET)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key, algorithm=algorithm)


@pytest.mark.parametrize(
    ("authorization", "problem"),
    [
        (None, "token-missing"),
        ("Basic YWxpY2U6cHc=", "token-missing"),
        ("Bearer not-a-jwt", "token-invalid"),
        ("Bearer " + _token(exp=int(time.time()) - 3600), "token-expired"),
        ("Bearer " + _token(aud="another-api"), "token-wrong-audience"),
        ("Bearer " + _token(iss="https://evil.example"), "token-wrong-issuer"),
        ("Bearer " + _token(alg="HS512"), "token-algorithm-not-allowed"),
        ("Bearer " + _token(key="another-secret-" + "x" * 64), "token-invalid"),
        ("Bearer " + _token(exp=None), "token-invalid"),
        (
            "Bearer " + jwt.encode({"sub": "alice", "roles": ["admin"]}, None, algorithm="none"),
            "token-algorithm-not-allowed",
        ),
    ],
)
async def test_authentication_failures_are_401_problems(client, authorization, problem):
    headers = {"Authorization": authorization} if authorization else {}
    response = await _adjust(client, headers, {"member_id": "m1", "amount": 5, "reason": "x"})
    assert response.status_code == 401, response.text
    assert response.json()["type"] == f"/problems/{problem}"
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_token_without_a_staff_role_is_forbidden(client):
    response = await client.get(
        "/v1/staff/members/m1/balances",
        headers={"Authorization": "Bearer " + _token(roles=["member"])},
    )
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/missing-role"
