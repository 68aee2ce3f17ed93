"""The finance API on the worked month: the `finance` role required, bad
periods as 422 problems, the streamed journal byte for byte what `loyalty
finance export-journal` writes, its control totals, the trial balance, one
account's balance and the roll-forward."""

import json
import time

import jwt
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import mint_token
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


@pytest.fixture
async def client(settings):
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def auth(settings):
    """A token: a member token for `member_token`, else a staff token (signed
    with the staff key, whatever its roles say)."""

    def make(*roles: str, subject: str = "fiona", member_token: bool = False) -> dict[str, str]:
        if member_token:
            return {"Authorization": "Bearer " + mint_token(settings, subject, ["member"])}
        keys = settings.token_keys("staff")
        now = int(time.time())
        claims = {
            "sub": subject,
            "roles": list(roles),
            "iss": keys.issuer,
            "aud": keys.audience,
            "iat": now,
            "exp": now + 300,
        }
        return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}

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
    for roles in (("admin",), ("member",), ("partner",)):
        # A staff token without the finance role (its role named as a member's
        # or a partner's would be) is forbidden.
        refused = await client.get(path, params=params, headers=auth(*roles))
        assert refused.status_code == 403, (roles, refused.text)
        assert refused.json()["type"] == "/problems/missing-role"
    # A card holder's token (the members' key, issuer and audience) is not a
    # staff token at all.
    member = await client.get(path, params=params, headers=auth(subject="anna", member_token=True))
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
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    assert response.headers["content-type"].startswith(media)
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
    assert (rf["opening"], rf["closing"], rf["difference"], rf["ties"]) == (1300, 640, 0, True)
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
