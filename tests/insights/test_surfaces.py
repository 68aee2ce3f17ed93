"""The insights over HTTP and the command line on the ten-member programme:
the `finance` or `admin` role required (403 without), bad windows and
parameters as 422 problems, unknown members and partners as 404s; the CLI
prints the figures the API answers (CSV against JSON), bad input is one line
and exit code 2, an unknown member exit code 4; the analytics URL is where
insights read."""

import asyncio
import csv
import io

import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import mint_token
from api.cli import main
from api.settings import Settings, SettingsError
from tests.api.conftest import MEMBER_SECRET, SECRET
from tests.conftest import TEST_SECRET_KEY

PROBLEM = "application/problem+json"
WINDOW = {"from": "2026-01-01", "to": "2026-07-01"}
AS_OF = "2026-07-01"


@pytest.fixture
def settings(programme10, redis_url, tmp_path) -> Settings:
    # The analytics URL names the same database: insights read through it.
    return Settings(
        database_url=programme10.url,
        analytics_database_url=programme10.url,
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


def staff(settings, *roles: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(settings, "olga", list(roles))}


FIGURES = [
    ("/v1/insights/pareto", WINDOW),
    ("/v1/insights/rfm", WINDOW),
    ("/v1/insights/members/m03", WINDOW),
    ("/v1/insights/lost-members", {"as_of": AS_OF}),
    ("/v1/insights/retention", {**WINDOW, "as_of": AS_OF}),
    ("/v1/insights/coalition", WINDOW),
    ("/v1/insights/promotions", {**WINDOW, "as_of": AS_OF}),
    ("/v1/insights/tiers", WINDOW),
    ("/v1/insights/expiry-outlook", {"as_of": AS_OF}),
]


@pytest.mark.parametrize(("path", "params"), FIGURES)
async def test_roles(client, settings, path, params):
    assert (await client.get(path, params=params)).status_code == 401
    refused = await client.get(path, params=params, headers=staff(settings))
    assert refused.status_code == 403
    assert refused.json()["type"] == "/problems/missing-role"
    for role in ("finance", "admin"):
        answer = await client.get(path, params=params, headers=staff(settings, role))
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("path", "params", "status", "problem"),
    [
        ("/v1/insights/pareto", {"from": "2026-07-01", "to": "2026-01-01"}, 422, "invalid-period"),
        ("/v1/insights/rfm", {"from": "yesterday"}, 422, "invalid-period"),
        ("/v1/insights/pareto", {"from": "2024-01-01", "to": "2026-01-01"}, 422, "invalid-period"),
        ("/v1/insights/coalition", {"currency": "eur"}, 422, "invalid-query-parameter"),
        ("/v1/insights/coalition", {"currency": "ZZZ"}, 422, "invalid-query-parameter"),
        ("/v1/insights/pareto", {"points": "1"}, 422, "invalid-query-parameter"),
        ("/v1/insights/lost-members", {"limit": "0"}, 422, "invalid-query-parameter"),
        ("/v1/insights/lost-members", {"as_of": "2026-07-01", "to": "2026-08-01"}, 422,
         "invalid-period"),
        ("/v1/insights/retention", {"from": "2024-01-01", "to": "2026-07-01"}, 422,
         "invalid-period"),
        ("/v1/insights/members/nobody", {}, 404, "member-not-found"),
        ("/v1/insights/pareto", {"partner": "nowhere"}, 404, "partner-not-found"),
    ],
)  # fmt: skip
async def test_bad_input(client, settings, path, params, status, problem):
    answer = await client.get(path, params=params, headers=staff(settings, "finance"))
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    assert answer.json()["type"] == f"/problems/{problem}"


async def test_json_figures(client, settings):
    headers = staff(settings, "admin")
    pareto = (await client.get("/v1/insights/pareto", params=WINDOW, headers=headers)).json()
    spend = pareto["distributions"][0]
    assert (spend["metric"], spend["partner_id"], spend["gini"]) == ("spend", None, "0.6785")
    member = (await client.get("/v1/insights/members/m03", params=WINDOW, headers=headers)).json()
    assert member["rfm"]["segment"] == "cannot_lose"
    lost = (
        await client.get(
            "/v1/insights/lost-members", params={"as_of": AS_OF, "limit": 1}, headers=headers
        )
    ).json()
    assert (lost["lost"], [m["member_id"] for m in lost["members"]]) == (4, ["m03"])


def loyalty(programme10, tmp_path, *args: str):
    env = {
        "LOYALTY_DATABASE_URL": programme10.url,
        "LOYALTY_ANALYTICS_DATABASE_URL": programme10.url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }
    # The command runs its own event loop: in a thread, beside the tests' loop.
    return asyncio.to_thread(CliRunner().invoke, main, ["insights", *args], env=env)


def rows(output: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(output)))


async def test_cli_prints_what_the_api_answers(client, settings, programme10, tmp_path):
    headers = staff(settings, "finance")
    window = ["--from", "2026-01-01", "--to", "2026-07-01"]

    result = await loyalty(programme10, tmp_path, "pareto", *window, "--csv")
    assert result.exit_code == 0, result.output
    api = (await client.get("/v1/insights/pareto", params=WINDOW, headers=headers)).json()
    printed = rows(result.output)
    assert len(printed) == len(api["distributions"])
    for line, d in zip(printed, api["distributions"], strict=True):
        assert line["partner"] == (d["partner_id"] or "(programme)")
        assert (line["metric"], int(line["total"]), line["gini"]) == (
            d["metric"], d["total"], d["gini"] or "",
        )  # fmt: skip
        assert [line[f"top_{t['percent']}pct"] for t in d["top"]] == [
            t["share"] or "" for t in d["top"]
        ]

    result = await loyalty(programme10, tmp_path, "rfm", *window, "--csv")
    api = (await client.get("/v1/insights/rfm", params=WINDOW, headers=headers)).json()
    assert [(r["segment"], int(r["members"]), int(r["spend"])) for r in rows(result.output)] == [
        (s["segment"], s["members"], s["spend"]) for s in api["segments"]
    ]

    result = await loyalty(programme10, tmp_path, "lost", "--as-of", AS_OF, "--csv")
    api = (
        await client.get("/v1/insights/lost-members", params={"as_of": AS_OF}, headers=headers)
    ).json()
    assert [(r["member"], r["last_activity_at"], int(r["spend"])) for r in rows(result.output)] == [
        (m["member_id"], m["last_activity_at"], m["spend"]) for m in api["members"]
    ]

    result = await loyalty(
        programme10, tmp_path, "coalition", *window, "--csv", "--table", "cross_shopping"
    )
    api = (await client.get("/v1/insights/coalition", params=WINDOW, headers=headers)).json()
    matrix = {(c["partner_id"], c["also_at"]): c["share"] for c in api["cross_shopping"]}
    for line in rows(result.output):
        for other, value in line.items():
            if other != "partner":
                assert value == matrix[(line["partner"], other)]

    result = await loyalty(programme10, tmp_path, "promotions", *window, "--as-of", AS_OF, "--csv")
    (offer,) = rows(result.output)
    assert (offer["code"], offer["uplift"], offer["points_program"]) == (
        "DS-DOUBLE",
        "5.6000",
        "165",
    )

    for command in (
        ["retention", *window, "--as-of", AS_OF],
        ["tiers", *window],
        ["expiry", "--as-of", AS_OF],
        ["member", "m03", *window],
    ):
        result = await loyalty(programme10, tmp_path, *command)
        assert result.exit_code == 0, result.output
        assert "== " in result.output
    result = await loyalty(programme10, tmp_path, "expiry", "--as-of", AS_OF, "--csv")
    assert rows(result.output)[1] == {
        "month": "2026-07", "points": "395", "protected": "100", "members": "6",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["pareto", "--from", "2026-07-01", "--to", "2026-01-01"], 2, "invalid-period"),
        (["rfm", "--currency", "euro"], 2, "invalid-query-parameter"),
        (["lost", "--inactive-days", "0"], 2, "invalid-query-parameter"),
        (["member", "nobody"], 4, "member-not-found"),
        (["pareto", "--partner", "nowhere"], 4, "partner-not-found"),
    ],
)
async def test_cli_refusals(programme10, tmp_path, args, code, message):
    result = await loyalty(programme10, tmp_path, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_analytics_url_is_checked():
    with pytest.raises(SettingsError, match="LOYALTY_ANALYTICS_DATABASE_URL"):
        Settings.from_env({"LOYALTY_ANALYTICS_DATABASE_URL": "mysql://x/y"})


def test_cli_csv_neutralises_formula_text(capsys):
    """A text cell that a spreadsheet would run as a formula (a promotion code
    may start with '-') is neutralised; numbers, negative ones too, are not."""
    from api.cli_insights import _show

    _show({"promotions": (["code", "points"], [["-A1", -3], ["=1+1", 5]])}, True, None, False, None)
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["code", "points"], ["'-A1", "-3"], ["'=1+1", "5"]]
