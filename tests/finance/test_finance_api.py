"""The finance API on the worked month: the `finance` role required, bad
periods as 422 problems, the streamed journal byte for byte what `loyalty
finance export-journal` writes, its control totals, the trial balance, one
account's balance and the roll-forward. Exports on a pool of their own: a
busy export pool answers 503 before any byte of a stream, and the request
pool serves the other routes meanwhile (and the other way round); unknown
members and partners are 404."""

import asyncio
import dataclasses
import json
import time

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import mint_token
from api.routes import finance as finance_routes
from api.routes.finance import EXPORT_CONNECTIONS, export_pool
from api.settings import Settings
from finance.period import stamp
from tests.api.conftest import MEMBER_SECRET, SECRET
from tests.conftest import TEST_SECRET_KEY
from tests.finance.test_journal_export import export

PROBLEM = "application/problem+json"


@pytest.fixture
def settings(month, redis_url, tmp_path) -> Settings:
    return Settings(
        database_url=month.url,
        redis_url=redis_url,
        jwt_secret=SECRET,
        member_jwt_secret=MEMBER_SECRET,
        data_dir=tmp_path,
        secret_key=TEST_SECRET_KEY,
    )


def make_app(settings):
    return create_app(settings)


@pytest.fixture
async def client(settings):
    async with AsyncTestClient(make_app(settings)) as client:
        yield client


@pytest.fixture
def auth(settings):
    """A token as `loyalty token` mints it: the role `member` alone is a card
    holder's token, any other roles a staff token."""

    def make(*roles: str, subject: str = "fiona") -> dict[str, str]:
        return {"Authorization": "Bearer " + mint_token(settings, subject, list(roles))}

    return make


def window(month, **more) -> dict[str, str]:
    return {"from": stamp(month.start), "to": stamp(month.end), **more}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/finance/journal",
        "/v1/finance/journal/totals",
        "/v1/finance/trial-balance",
        "/v1/finance/roll-forward",
        "/v1/finance/balances/member:anna:available",
    ],
)
async def test_the_finance_role_is_required(client, auth, month, path):
    params = window(month)
    allowed = await client.get(path, params=params, headers=auth("finance"))
    assert allowed.status_code == 200, allowed.text
    for roles in (("admin",), ("partner",), ()):
        # A staff token without the finance role is forbidden.
        refused = await client.get(path, params=params, headers=auth(*roles))
        assert refused.status_code == 403, (roles, refused.text)
        assert refused.json()["type"] == "/problems/missing-role"
    # A card holder's token (the members' key, issuer and audience) is not a
    # staff token at all.
    member = await client.get(path, params=params, headers=auth("member", subject="anna"))
    assert member.status_code == 401 and member.json()["type"] == "/problems/token-wrong-audience"
    anonymous = await client.get(path, params=params)
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("path", "params", "problem"),
    [
        ("/v1/finance/journal", {"from": "2026-05-01", "to": "2026-04-01"}, "invalid-period"),
        ("/v1/finance/journal", {"from": "2026-04-01", "to": "2028-04-01"}, "invalid-period"),
        ("/v1/finance/journal", {"from": "soon", "to": "2026-04-01"}, "invalid-period"),
        (
            "/v1/finance/journal",
            {"from": "2026-04-01", "to": "2026-05-01", "format": "xml"},
            "invalid-export-format",
        ),
        (
            "/v1/finance/journal/totals",
            {"from": "2026-04-01", "to": "2026-04-01"},
            "invalid-period",
        ),
        ("/v1/finance/roll-forward", {"from": "2026-04-02", "to": "2026-04-01"}, "invalid-period"),
        ("/v1/finance/trial-balance", {"as_of": "2026-02-30"}, "invalid-period"),
        ("/v1/finance/balances/bank:x:y", {}, "invalid-account"),
    ],
)
async def test_bad_periods_are_422_problems(client, auth, path, params, problem):
    response = await client.get(path, params=params, headers=auth("finance"))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"/problems/{problem}" and body["status"] == 422 and body["detail"]


async def test_missing_period_is_a_400(client, auth):
    response = await client.get(
        "/v1/finance/journal", params={"from": "2026-04-01"}, headers=auth("finance")
    )
    assert response.status_code == 400 and response.json()["type"] == "/problems/validation-error"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_the_streamed_journal_is_the_clis_file(client, auth, month, tmp_path, fmt):
    path = await export(month, tmp_path, fmt)
    response = await client.get(
        "/v1/finance/journal", params=window(month, format=fmt), headers=auth("finance")
    )
    assert response.status_code == 200
    assert response.content == path.read_bytes()
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    assert response.headers["content-type"] == media  # one charset, not two
    assert response.headers["x-period-time"] == "created_at"
    assert response.headers["content-disposition"].startswith("attachment; filename=")


async def test_journal_totals_match_the_clis_sidecar(client, auth, month, tmp_path):
    await export(month, tmp_path, "csv")
    written = json.loads((tmp_path / "journal.csv.totals.json").read_text())
    response = await client.get(
        "/v1/finance/journal/totals", params=window(month), headers=auth("finance")
    )
    totals = response.json()
    for key in ("entries", "postings", "first_entry_id", "last_entry_id", "assets"):
        assert totals[key] == written[key], key
    assert totals["sha256"] is None and totals["period_time"] == "created_at"


async def test_trial_balance_roll_forward_and_balances(client, auth, month):
    finance = auth("finance")
    tb = (
        await client.get(
            "/v1/finance/trial-balance", params={"as_of": stamp(month.end)}, headers=finance
        )
    ).json()
    assert tb["totals"] == {"PTS": 0, "QP": 0} and tb["balanced"]
    assert {"account": "program:expired", "asset": "PTS"}.items() <= next(
        line for line in tb["lines"] if line["account"] == "program:expired"
    ).items()
    rf = (
        await client.get("/v1/finance/roll-forward", params=window(month), headers=finance)
    ).json()
    assert (rf["opening"], rf["closing"], rf["difference"], rf["ties"]) == (1300, 840, 0, True)
    fuel = next(
        line
        for line in rf["lines"]
        if line["code"] == "redeemed" and line["partner_id"] == "fuelstation"
    )
    assert fuel["money"] == [
        {
            "currency": "EUR",
            "contract_version": 2,
            "basis": "redemption_value",
            "rate": "0.010",
            "points": -400,
            "minor": -400,
        }
    ]
    clara = (
        await client.get(
            "/v1/finance/balances/member:clara:available",
            params={"as_of": stamp(month.end)},
            headers=finance,
        )
    ).json()
    assert clara["balances"] == {"PTS": -150, "QP": 0}
    now = (await client.get("/v1/finance/balances/program:expired", headers=finance)).json()
    assert now["balances"]["PTS"] == 300


async def test_finance_problems_are_listed(client):
    listed = {p["type"] for p in (await client.get("/problems")).json()}
    assert {"/problems/invalid-period", "/problems/invalid-export-format"} <= listed


# -- the exports' own pool -------------------------------------------------------------


@pytest.fixture
def small_pools(settings, monkeypatch) -> Settings:
    """A request pool of 2 connections (1 + overflow) that gives up after 1 s,
    and an export pool that gives up after 0.2 s."""
    monkeypatch.setattr(finance_routes, "EXPORT_POOL_WAIT_SECONDS", 0.2)
    return dataclasses.replace(settings, db_pool_size=1, db_pool_timeout_seconds=1)


async def hold(client, engine, count: int) -> list:
    """`count` connections of the app's engine, checked out on the app's event
    loop (the test client runs the app on a loop of its own)."""

    async def connect():
        return [await engine.connect() for _ in range(count)]

    return await asyncio.to_thread(client.blocking_portal.call, connect)


async def release(client, connections: list) -> None:
    async def close():
        for conn in connections:
            await conn.close()

    await asyncio.to_thread(client.blocking_portal.call, close)


async def test_a_busy_export_pool_answers_503_and_the_api_still_serves(small_pools, auth, month):
    app = make_app(small_pools)
    async with AsyncTestClient(app) as client:
        # Every export connection taken, as by slow downloads.
        held = await hold(client, export_pool(app).engine, EXPORT_CONNECTIONS)
        try:
            started = time.monotonic()
            busy = await client.get(
                "/v1/finance/journal", params=window(month), headers=auth("finance")
            )
            assert time.monotonic() - started < 5
            assert busy.status_code == 503, busy.text
            assert busy.headers["content-type"].startswith(PROBLEM)
            assert busy.headers["retry-after"] == str(finance_routes.EXPORT_RETRY_AFTER_SECONDS)
            assert "content-disposition" not in busy.headers
            assert busy.json()["type"] == "/problems/exports-busy"
            # The request pool is untouched: a staff read and readiness answer.
            balance = await client.get(
                "/v1/finance/balances/member:anna:available", headers=auth("finance")
            )
            assert balance.status_code == 200 and balance.json()["balances"]["PTS"] == 875
            assert (await client.get("/health/ready")).status_code == 200
        finally:
            await release(client, held)
        again = await client.get(
            "/v1/finance/journal", params=window(month), headers=auth("finance")
        )
        assert again.status_code == 200 and again.content.startswith(b"entry_id,")


async def test_exports_do_not_use_the_request_pool(small_pools, auth, month, tmp_path):
    app = make_app(small_pools)
    async with AsyncTestClient(app) as client:
        # Every connection of the request pool taken: the export still streams
        # the whole file, on its own pool.
        held = await hold(client, app.state.engine, 2)
        try:
            response = await client.get(
                "/v1/finance/journal", params=window(month), headers=auth("finance")
            )
        finally:
            await release(client, held)
        assert response.status_code == 200, response.text
        assert response.content == (await export(month, tmp_path, "csv")).read_bytes()


async def test_the_export_pool_is_made_on_first_use_and_disposed_at_shutdown(settings, auth, month):
    app = make_app(settings)
    async with AsyncTestClient(app) as client:
        await client.get("/v1/finance/trial-balance", headers=auth("finance"))
        assert app.state.get(finance_routes.STATE_KEY) is None  # no export yet
        response = await client.get(
            "/v1/finance/journal", params=window(month), headers=auth("finance")
        )
        assert response.status_code == 200
        engine = export_pool(app).engine
        assert engine.pool.checkedout() == 0  # the stream gave its connection back
    assert export_pool(app)._engine is None  # disposed with the app


# -- unknown accounts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "problem"),
    [
        ("member:nobody:available", "member-not-found"),
        ("member:ANNA:available", "member-not-found"),  # ids are case-sensitive
        ("member:nobody:qp", "member-not-found"),
        ("partner:nobody:issued", "partner-not-found"),
    ],
)
async def test_an_unknown_member_or_partner_is_a_404(client, auth, account, problem):
    response = await client.get(f"/v1/finance/balances/{account}", headers=auth("finance"))
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["type"] == f"/problems/{problem}"


@pytest.mark.parametrize(
    ("account", "pts"),
    [
        ("member:anna:available", 875),
        ("partner:drugstore:redeemed", 180),
        ("program:expired", 300),
        ("program:qp_source", 0),
    ],
)
async def test_known_accounts_answer_their_balance(client, auth, account, pts):
    response = await client.get(f"/v1/finance/balances/{account}", headers=auth("finance"))
    assert response.status_code == 200, response.text
    assert response.json()["balances"]["PTS"] == pts
