"""The trust boundaries for tokens and signatures, over HTTP against the real
PostgreSQL and Redis: member and staff tokens kept apart, weak secrets refused
at start-up, token lifetime and `nbf`, replays refused after a Redis flush,
the Idempotency-Key under the signature, member answers that do not tell
whether a card exists, the per-member rate limit, and secret files private
from the moment they exist."""

import dataclasses
import json
import os
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import redis.asyncio as redis
from click.testing import CliRunner
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import dev_secret, dev_secret_key, mint_token
from api.cli import main
from api.settings import Settings
from ledger.commands import Adjust
from partners.registry import Registry
from partners.signing import signed_headers
from partners.signing_keys import SecretBox
from tests.api import test_partner_api
from tests.api.conftest import MEMBER_SECRET, SECRET, SECRET_KEY

shop = test_partner_api.shop  # the fixture: a partner with rules, a key and a card
earn_body = test_partner_api.earn_body
STAFF_ROUTE = "/v1/staff/accounts/program:expired/balance"


def bearer(secret: str, kind: str = "staff", **claims) -> dict[str, str]:
    """A token of `kind`'s issuer and audience signed with `secret`; a claim
    given as None is left out."""
    keys = Settings().token_keys(kind)
    now = int(time.time())
    body = {
        "sub": "alice",
        "roles": ["admin"] if kind == "staff" else ["member"],
        "iss": keys.issuer,
        "aud": keys.audience,
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    encoded = jwt.encode({k: v for k, v in body.items() if v is not None}, secret, "HS256")
    return {"Authorization": f"Bearer {encoded}"}


def cli(*args: str, **env: str | None):
    base = {
        "LOYALTY_DATABASE_URL": "postgresql://unused/unused",
        "LOYALTY_JWT_SECRET": SECRET,
        "LOYALTY_MEMBER_JWT_SECRET": MEMBER_SECRET,
    }
    return CliRunner().invoke(main, list(args), env={**base, **env})


def problem_type(response) -> str:
    return response.json()["type"].removeprefix("/problems/")


async def test_member_and_staff_tokens_do_not_cross(client, token, new_member):
    member = token(await new_member(), roles=("member",))
    assert (await client.get("/v1/me/balance", headers=member)).status_code == 200
    for response in (
        await client.get(STAFF_ROUTE, headers=member),
        await client.get("/v1/admin/tiers", headers=member),
        await client.get("/v1/me/balance", headers=token("alice", roles=("admin",))),
    ):
        assert response.status_code == 401, response.text
        assert problem_type(response) == "token-wrong-audience"
        assert response.headers["www-authenticate"].startswith("Bearer")
    # Whatever holds the member key cannot make a staff token, even one that
    # claims the staff issuer and audience...
    forged = await client.get(STAFF_ROUTE, headers=bearer(MEMBER_SECRET, "staff"))
    assert (forged.status_code, problem_type(forged)) == (401, "token-invalid")
    # ...nor the staff key a member token.
    forged = await client.get("/v1/me/balance", headers=bearer(SECRET, "member"))
    assert (forged.status_code, problem_type(forged)) == (401, "token-invalid")
    # A staff token without a staff role is still refused as before.
    no_role = await client.get(STAFF_ROUTE, headers=bearer(SECRET, roles=["member"]))
    assert (no_role.status_code, problem_type(no_role)) == (403, "missing-role")


async def test_the_token_command_mints_either_kind(client, new_member):
    member_id = await new_member()
    minted = cli("token", "--sub", member_id, "--role", "member")
    assert minted.exit_code == 0, minted.output
    member = {"Authorization": f"Bearer {minted.output.strip()}"}
    assert (await client.get("/v1/me/balance", headers=member)).status_code == 200
    assert problem_type(await client.get(STAFF_ROUTE, headers=member)) == "token-wrong-audience"
    minted = cli("token", "--sub", "fiona", "--role", "finance")
    staff = {"Authorization": f"Bearer {minted.output.strip()}"}
    assert (await client.get(STAFF_ROUTE, headers=staff)).status_code == 200
    assert problem_type(await client.get("/v1/me/balance", headers=staff)) == (
        "token-wrong-audience"
    )
    for refused in (
        cli("token", "--sub", "x", "--role", "member", "--role", "admin"),
        cli("token", "--sub", "x", "--role", "admin", "--ttl", "3601"),
    ):
        assert refused.exit_code == 1
        assert len(refused.output.strip().splitlines()) == 1, refused.output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOYALTY_JWT_SECRET": "short-secret"}, "LOYALTY_JWT_SECRET is 12 bytes"),
        ({"LOYALTY_MEMBER_JWT_SECRET": "x" * 31}, "LOYALTY_MEMBER_JWT_SECRET is 31 bytes"),
        ({"LOYALTY_MEMBER_JWT_SECRET": SECRET}, "different keys"),
        ({"LOYALTY_MEMBER_JWT_SECRET": None}, "member tokens need LOYALTY_MEMBER_JWT_SECRET"),
    ],
)
def test_weak_or_missing_token_keys_stop_the_start_with_one_line(
    database_url, redis_url, env, message
):
    result = cli(
        "serve",
        LOYALTY_DATABASE_URL=database_url,
        LOYALTY_REDIS_URL=redis_url,
        LOYALTY_SECRET_KEY=SECRET_KEY,
        LOYALTY_PORT="1",  # never reached
        **env,
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


async def test_token_lifetime_not_before_and_issued_at(client):
    now = int(time.time())
    accepted = [
        bearer(SECRET, iat=now, exp=now + 3600),  # the longest lifetime accepted
        bearer(SECRET, nbf=now + 20),  # within the 30 s leeway
        bearer(SECRET, iat=now + 20, exp=now + 320),
    ]
    for headers in accepted:
        response = await client.get(STAFF_ROUTE, headers=headers)
        assert response.status_code == 200, response.text
    refused = {
        "lifetime": bearer(SECRET, iat=now, exp=now + 3601),
        "no iat": bearer(SECRET, iat=None),
        "nbf ahead": bearer(SECRET, nbf=now + 120),
        "iat ahead": bearer(SECRET, iat=now + 120, exp=now + 420),
        "member lifetime": bearer(MEMBER_SECRET, "member", iat=now - 10, exp=now + 3600),
    }
    for case, headers in refused.items():
        path = "/v1/me/balance" if case.startswith("member") else STAFF_ROUTE
        response = await client.get(path, headers=headers)
        assert (response.status_code, problem_type(response)) == (401, "token-invalid"), case
    lifetime = await client.get(STAFF_ROUTE, headers=refused["lifetime"])
    assert "at most 3600 s" in lifetime.json()["detail"]


async def test_a_replay_is_refused_after_redis_is_flushed(client, shop, ledger, redis_url):
    fixed = time.time()
    body = earn_body(shop, "RF-1", 1000)
    first = await client.post(
        "/v1/partner/earn",
        json=body,
        headers={"Idempotency-Key": "rf-1"},
        auth=shop.auth(clock=lambda: fixed),
    )
    assert first.status_code == 201, first.text
    connection = redis.from_url(redis_url)
    try:
        await connection.flushdb()  # as after a failover to a replica that missed the write
    finally:
        await connection.aclose()
    again = await client.post(
        "/v1/partner/earn",
        json=body,
        headers={"Idempotency-Key": "rf-1"},
        auth=shop.auth(clock=lambda: fixed),
    )
    assert (again.status_code, problem_type(again)) == (401, "signature-replayed")
    assert "idempotent-replayed" not in again.headers
    assert (await ledger.balances(shop.member_id)).available == 10  # posted once


async def test_the_idempotency_key_is_under_the_signature(client, shop, ledger):
    raw = json.dumps(earn_body(shop, "IK-1", 1000)).encode()
    json_body = {"content-type": "application/json"}

    def send(signed_key: str, sent_key: str):
        headers = signed_headers(
            shop.key_id, shop.secret, "POST", "/v1/partner/earn", "", raw, time.time(), signed_key
        )
        headers.update({**json_body, "Idempotency-Key": sent_key})
        return client.post("/v1/partner/earn", content=raw, headers=headers)

    # A captured request sent again under another key (to post it twice) fails,
    # and so does a key added to a request signed without one.
    for signed_key, sent_key in (("ik-1", "ik-2"), ("", "ik-3")):
        response = await send(signed_key, sent_key)
        assert (response.status_code, problem_type(response)) == (401, "signature-invalid")
    assert (await ledger.balances(shop.member_id)).available == 0
    # `loyalty partner sign --idempotency-key` prints the headers that go with it.
    printed = CliRunner().invoke(
        main,
        ["partner", "sign", "--idempotency-key", "ik-4", "POST", "/v1/partner/earn", raw.decode()],
        env={"LOYALTY_KEY_ID": shop.key_id, "LOYALTY_KEY_SECRET": shop.secret},
    )
    assert printed.exit_code == 0, printed.output
    headers = dict(line.split(": ", 1) for line in printed.output.strip().splitlines())
    assert headers["Idempotency-Key"] == "ik-4"
    earned = await client.post("/v1/partner/earn", content=raw, headers={**headers, **json_body})
    assert earned.status_code == 201, earned.text
    assert (await ledger.balances(shop.member_id)).available == 10


async def test_a_transfer_does_not_tell_an_unknown_card_from_a_blocked_one(
    client, token, engine, ledger, new_member
):
    registry = Registry(engine, SecretBox(SECRET_KEY))
    sender, other = await new_member(), await new_member()
    blocked_card = str(uuid.uuid4().int)[:16]
    await registry.issue_card(other, blocked_card, "staff:tests")
    await registry.block_card(other, blocked_card, "staff:tests")
    await ledger.adjust(Adjust(sender, 1000, "start"), "staff:tests")
    answers = []
    for number in (blocked_card, str(uuid.uuid4().int)[:16]):
        response = await client.post(
            "/v1/me/transfers",
            json={"to_card_number": number, "amount": 200},
            headers={**token(sender, roles=("member",)), "Idempotency-Key": uuid.uuid4().hex},
        )
        body = {k: v for k, v in response.json().items() if k != "request_id"}  # per request
        answers.append((response.status_code, body))
    assert answers[0] == answers[1]
    assert answers[0][0] == 404 and answers[0][1]["type"] == "/problems/card-not-found"
    assert (await ledger.balances(sender)).available == 1000


async def test_member_routes_are_rate_limited_per_member(api_settings, token, new_member):
    limited = dataclasses.replace(api_settings, member_rate_limit=3)
    busy = token(await new_member(), roles=("member",))
    other = token(await new_member(), roles=("member",))
    async with AsyncTestClient(create_app(limited)) as client:
        responses = [await client.get("/v1/me/balance", headers=busy) for _ in range(8)]
        neighbour = await client.get("/v1/me/balance", headers=other)
    throttled = [r for r in responses if r.status_code == 429]
    assert throttled, [r.status_code for r in responses]
    assert throttled[0].headers["retry-after"] == "1"
    assert problem_type(throttled[0]) == "rate-limited"
    assert neighbour.status_code == 200  # the window is the member's own


def test_secret_files_are_private_from_the_moment_they_exist(tmp_path, monkeypatch):
    """Under umask 0 a plain write would create the file world-readable; with
    every chmod failing, the files can only be private if created so."""

    def no_chmod(*args, **kwargs):
        raise AssertionError("a secret file was created with a looser mode, then chmod-ed")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    previous = os.umask(0)
    try:
        minted = cli(
            "token",
            "--sub",
            "anna",
            "--role",
            "member",
            LOYALTY_DATABASE_URL=None,  # embedded mode: secrets in the data directory
            LOYALTY_JWT_SECRET=None,
            LOYALTY_MEMBER_JWT_SECRET=None,
            LOYALTY_DATA_DIR=str(tmp_path),
        )
        embedded = Settings(data_dir=tmp_path)
        staff, key = dev_secret(embedded, "staff"), dev_secret_key(embedded)
        fresh = Settings(data_dir=tmp_path / "race")
        with ThreadPoolExecutor(8) as pool:  # racing creators all get the one secret
            racing = set(pool.map(lambda _: dev_secret(fresh, "member"), range(8)))
    finally:
        os.umask(previous)
    assert minted.exit_code == 0, minted.output
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert files == ["dev-jwt-secret", "dev-member-jwt-secret", "secret-key"]  # no drafts left
    for name in files:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    member_secret = (tmp_path / "dev-member-jwt-secret").read_text()
    assert member_secret != staff and len(member_secret) >= 64 and key
    claims = jwt.decode(
        minted.output.strip(), member_secret, ["HS256"], audience=embedded.member_jwt_audience
    )
    assert claims["sub"] == "anna"
    assert len(racing) == 1
    assert mint_token(embedded, "fiona", ["finance"])  # the staff secret is read back
