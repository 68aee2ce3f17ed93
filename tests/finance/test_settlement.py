"""Partner settlement statements (finance/settlement.py).

On the worked month (tests/finance/conftest.py; statements post no journal
entry, so the other tests' figures stay as they are): March then April for
the drugstore and the fuel station, every line against the story (the fuel
station's rate change on 04-06, its return after spending valued at the
original rate, January's earning as an adjustment of its first statement),
the entries behind the lines, the stored rows refusing UPDATE, DELETE and
TRUNCATE, the API's answers and problems, the same bytes from the API and
the CLI, and the README's table.

On a database of its own: a partner-funded promotion charged to the partner,
a late entry after April was settled landing in May's statement as an
adjustment line while April's statement stays as it was, and a reissue after
a retroactive contract change (new number, old one kept and marked)."""

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from api.app import create_app
from api.auth import mint_token
from api.cli import main
from api.embedded import drop_database
from api.settings import Settings
from finance.settlement import settle, statement, statements
from finance.settlement_documents import render
from ledger.commands import Burn, Earn
from ledger.database import create_engine
from ledger.service import LedgerService
from members.registry import MemberInput, Members
from partners.contracts import ContractInput
from partners.earning import Purchase, PurchaseLine
from partners.money import units
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import EarnRuleInput, PromotionInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.api.conftest import MEMBER_SECRET, SECRET
from tests.conftest import TEST_SECRET_KEY, Clock
from tests.finance.conftest import ADMIN, RULES_FROM, config, fresh_database
from tests.finance.test_worked_month import number, readme_table

PROBLEM = "application/problem+json"
FINANCE = "staff:finance-tests"


def lines_of(st) -> list[tuple]:
    """(section, month, code, entries, points, amount) per line."""
    return [
        (ln.section, ln.month, ln.code, ln.entries, ln.points, ln.amount_minor) for ln in st.lines
    ]


def rates_of(st) -> dict[str, list[tuple]]:
    return {
        ln.code: [(m.contract_version, m.basis, str(m.rate), m.points, m.minor) for m in ln.money]
        for ln in st.lines
    }


@pytest.fixture(scope="module")
async def settled(month) -> dict:
    """March, then April, for both partners of the worked month."""
    done = {}
    for period in ("2026-03", "2026-04"):
        for partner in ("drugstore", "fuelstation"):
            done[(partner, period)] = await settle(month.engine, partner, period, FINANCE)
    return done


# -- the worked month ------------------------------------------------------------------


async def test_march_statements(settled):
    drugstore = settled[("drugstore", "2026-03")]
    assert drugstore.number == "ST-drugstore-2026-03-1" and drugstore.issue == 1
    # anna's 1,000 points of 03-25 at 0.01 EUR.
    assert lines_of(drugstore) == [("regular", "2026-03", "issued", 1, 1000, 1000)]
    assert (drugstore.owed_by_partner_minor, drugstore.owed_to_partner_minor) == (1000, 0)
    assert drugstore.net_minor == 1000 and drugstore.currency == "EUR"
    # The fuel station's first statement brings in ben's January earning (never
    # settled) as an adjustment line of its own month: 300 x 0.012.
    fuel = settled[("fuelstation", "2026-03")]
    assert lines_of(fuel) == [("adjustment", "2026-01", "issued", 1, 300, 360)]
    assert fuel.net_minor == 360 and fuel.entries == 1


async def test_the_drugstores_april_statement(settled):
    st = settled[("drugstore", "2026-04")]
    assert st.number == "ST-drugstore-2026-04-1"
    assert st.period_from == "2026-04-01T00:00:00.000000Z"
    assert st.period_to == "2026-05-01T00:00:00.000000Z"
    # anna's purchase: its 100 base points, and the 200 of the drugstore's
    # own coupon as promotion points charged to it (the programme's 100
    # promotion points are not the drugstore's to pay); clara's 150 and
    # anna's captured 30 redeemed; the open authorisation and the May
    # earning are not on it.
    assert lines_of(st) == [
        ("regular", "2026-04", "issued", 1, 100, 100),
        ("regular", "2026-04", "promotions", 1, 200, 200),
        ("regular", "2026-04", "redeemed", 2, 180, 180),
    ]
    assert rates_of(st) == {
        "issued": [(1, "price_per_point", "0.01", 100, 100)],
        "promotions": [(1, "price_per_point", "0.01", 200, 200)],
        "redeemed": [(1, "redemption_value", "0.01", 180, 180)],
    }
    # 3.00 owed by the drugstore - 1.80 owed to it: the drugstore pays 1.20.
    assert (st.owed_by_partner_minor, st.owed_to_partner_minor, st.net_minor) == (300, 180, 120)
    assert st.entries == 3


async def test_the_fuel_stations_april_statement(settled):
    st = settled[("fuelstation", "2026-04")]
    assert lines_of(st) == [
        ("regular", "2026-04", "issued", 1, 200, 240),
        # clara's return of 04-10, after she spent 150 of the points, is
        # netted at the rate of the earning it reverses (04-03: 0.012).
        ("regular", "2026-04", "returned", 1, -200, -240),
        # anna's 400 redeemed on 04-08, after the change of 04-06: 0.010.
        ("regular", "2026-04", "redeemed", 1, 400, 400),
    ]
    assert rates_of(st) == {
        "issued": [(1, "price_per_point", "0.012", 200, 240)],
        "returned": [(1, "price_per_point", "0.012", -200, -240)],
        "redeemed": [(2, "redemption_value", "0.010", 400, 400)],
    }
    assert (st.owed_by_partner_minor, st.owed_to_partner_minor, st.net_minor) == (0, 400, -400)


async def test_every_entry_is_settled_once(month, settled):
    async with month.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT partner_id, entry_id, statement FROM settlement_coverage")
            )
        ).all()
    covered = {(r.partner_id, r.entry_id): r.statement for r in rows}
    e = month.entries
    assert covered == {
        ("drugstore", e["anna-earn"]): "ST-drugstore-2026-03-1",
        ("drugstore", e["anna-promo-earn"]): "ST-drugstore-2026-04-1",
        ("drugstore", e["clara-burn"]): "ST-drugstore-2026-04-1",
        ("drugstore", e["capture"]): "ST-drugstore-2026-04-1",
        ("fuelstation", e["ben-earn"]): "ST-fuelstation-2026-03-1",
        ("fuelstation", e["clara-earn"]): "ST-fuelstation-2026-04-1",
        ("fuelstation", e["anna-burn"]): "ST-fuelstation-2026-04-1",
        ("fuelstation", e["clara-return"]): "ST-fuelstation-2026-04-1",
    }
    listed = await statements(month.engine, "fuelstation")
    assert [(s.number, s.net_minor, s.superseded_by) for s in listed] == [
        ("ST-fuelstation-2026-03-1", 360, None),
        ("ST-fuelstation-2026-04-1", -400, None),
    ]


def entry_rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


async def test_the_entries_behind_each_line(month, settled, tmp_path):
    result = await loyalty(
        month.url, tmp_path, "finance", "statement", "ST-fuelstation-2026-04-1", "--entries"
    )
    assert result.exit_code == 0, result.output
    rows = entry_rows(result.stdout_bytes)
    e = month.entries
    assert [
        (int(r["entry_id"]), r["line"], r["kind"], int(r["points"]), r["rate"], r["value"])
        for r in rows
    ] == [
        (e["clara-earn"], "issued", "earn", 200, "0.012", "2.400"),
        (e["clara-return"], "returned", "reverse", -200, "0.012", "-2.400"),
        (e["anna-burn"], "redeemed", "burn", 400, "0.010", "4.000"),
    ]
    assert rows[1]["reverses_entry_id"] == str(e["clara-earn"])
    assert rows[1]["effective_at"].startswith("2026-04-10")
    assert {r["section"] for r in rows} == {"regular"} and {r["currency"] for r in rows} == {"EUR"}


async def test_statements_refuse_update_delete_and_truncate(month, settled):
    for statement_sql in (
        "UPDATE settlement_statements SET net_minor = 0 WHERE number = 'ST-drugstore-2026-04-1'",
        "DELETE FROM settlement_statements WHERE number = 'ST-drugstore-2026-04-1'",
        "UPDATE settlement_statement_entries SET rate = 1 "
        "WHERE statement = 'ST-drugstore-2026-04-1'",
        "DELETE FROM settlement_statement_entries",
        "DELETE FROM settlement_coverage WHERE partner_id = 'drugstore'",
        "UPDATE settlement_coverage SET period = '2026-05-01'",
        "TRUNCATE settlement_coverage CASCADE",
        "TRUNCATE settlement_statements CASCADE",
    ):
        with pytest.raises(Exception, match="append-only"):
            async with month.engine.begin() as conn:
                await conn.execute(text(statement_sql))
    again = await statement(month.engine, "ST-drugstore-2026-04-1")
    assert render(again, "json") == render(settled[("drugstore", "2026-04")], "json")


async def test_the_readme_shows_the_drugstores_april_statement(settled):
    st = settled[("drugstore", "2026-04")]
    rows = readme_table("drugstore settlement statement, April 2026")
    body = rows[:-3]
    assert [(r[0], number(r[2]), number(r[3]), units_of(r[4])) for r in body] == [
        (ln.label, ln.entries, ln.points, units(ln.amount_minor, "EUR")) for ln in st.lines
    ]
    assert [units_of(r[4]) for r in rows[-3:]] == [
        units(st.owed_by_partner_minor, "EUR"),
        units(st.owed_to_partner_minor, "EUR"),
        units(st.net_minor, "EUR"),
    ]


def units_of(cell: str) -> Decimal:
    return Decimal(cell.replace("EUR", "").replace("*", "").strip())


# -- the API and the CLI ---------------------------------------------------------------


async def loyalty(url: str, tmp_path, *args: str):
    env = {
        "LOYALTY_DATABASE_URL": url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }
    # The command runs its own event loop: in a thread, beside the tests' loop.
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


def staff_headers(settings: Settings, *roles: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(settings, "fiona", list(roles))}


def settings_for(url: str, redis_url: str, tmp_path) -> Settings:
    return Settings(
        database_url=url,
        redis_url=redis_url,
        jwt_secret=SECRET,
        member_jwt_secret=MEMBER_SECRET,
        data_dir=tmp_path,
        secret_key=TEST_SECRET_KEY,
    )


@pytest.fixture
async def api(month, settled, redis_url, tmp_path):
    settings = settings_for(month.url, redis_url, tmp_path)
    async with AsyncTestClient(create_app(settings)) as client:
        yield client, staff_headers(settings, "finance")


def problem_of(response) -> tuple[int, str]:
    assert response.headers["content-type"].startswith(PROBLEM), response.text
    return response.status_code, response.json()["type"]


async def test_api_refusals_change_nothing(month, api):
    client, finance = api
    before = await statements(month.engine)
    this_month = datetime.now(UTC).strftime("%Y-%m")
    cases = [
        ({"partner_id": "drugstore", "period": "2026-04"}, 409, "settlement-exists"),
        ({"partner_id": "drugstore", "period": "2026-02"}, 409, "settlement-out-of-order"),
        ({"partner_id": "nobody", "period": "2026-04"}, 404, "partner-not-found"),
        ({"partner_id": "drugstore", "period": this_month}, 422, "settlement-period-open"),
        ({"partner_id": "drugstore", "period": "2026-13"}, 422, "invalid-period"),
        ({"partner_id": "drugstore", "period": "April"}, 422, "invalid-period"),
        ({"partner_id": "drugstore", "period": "0000-01"}, 422, "invalid-period"),
        (
            {"partner_id": "fuelstation", "period": "2026-02", "reissue": True},
            404,
            "statement-not-found",
        ),
    ]
    for body, status, code in cases:
        answer = await client.post("/v1/finance/settlements", json=body, headers=finance)
        assert problem_of(answer) == (status, f"/problems/{code}"), body
    # A body as text, or with a string for a boolean, is never read loosely.
    issuable = {"partner_id": "fuelstation", "period": "2026-04"}
    for body, media, status, code in (
        (issuable, "text/plain", 415, "unsupported-media-type"),
        ({**issuable, "reissue": "false"}, "application/json", 400, "validation-error"),
    ):
        answer = await client.post(
            "/v1/finance/settlements",
            content=json.dumps(body),
            headers={**finance, "Content-Type": media},
        )
        assert problem_of(answer) == (status, f"/problems/{code}"), body
    assert await statements(month.engine) == before


async def test_api_reads_and_roles(api, redis_url, month, tmp_path):
    client, finance = api
    settings = settings_for(month.url, redis_url, tmp_path)
    answer = await client.get("/v1/finance/settlements", headers=staff_headers(settings, "admin"))
    assert problem_of(answer) == (403, "/problems/missing-role")
    answer = await client.get("/v1/finance/settlements", params={"partner_id": "drugstore"})
    assert answer.status_code == 401
    listed = await client.get(
        "/v1/finance/settlements", params={"partner_id": "drugstore"}, headers=finance
    )
    assert listed.status_code == 200
    assert [s["number"] for s in listed.json()] == [
        "ST-drugstore-2026-03-1",
        "ST-drugstore-2026-04-1",
    ]
    answer = await client.get(
        "/v1/finance/settlements", params={"partner_id": "nobody"}, headers=finance
    )
    assert problem_of(answer) == (404, "/problems/partner-not-found")
    answer = await client.get(
        "/v1/finance/settlements", params={"period": "2026-4"}, headers=finance
    )
    assert problem_of(answer) == (422, "/problems/invalid-period")
    for path in ("/v1/finance/settlements/ST-nothing-1", "/v1/finance/settlements/X/entries"):
        assert problem_of(await client.get(path, headers=finance)) == (
            404,
            "/problems/statement-not-found",
        )
    answer = await client.get(
        "/v1/finance/settlements/ST-drugstore-2026-04-1",
        params={"format": "pdf"},
        headers=finance,
    )
    assert problem_of(answer) == (422, "/problems/invalid-export-format")


async def test_documents_are_the_same_bytes_from_the_api_and_the_cli(month, api, tmp_path):
    client, finance = api
    path = "/v1/finance/settlements/ST-drugstore-2026-04-1"
    for fmt, media in (("json", "application/json"), ("csv", "text/csv"), ("html", "text/html")):
        answer = await client.get(path, params={"format": fmt}, headers=finance)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(media)
        output = tmp_path / f"statement.{fmt}"
        result = await loyalty(
            month.url,
            tmp_path,
            "finance",
            "statement",
            "ST-drugstore-2026-04-1",
            "--format",
            fmt,
            "--output",
            str(output),
        )
        assert result.exit_code == 0, result.output
        assert output.read_bytes() == answer.content, fmt
    # By Accept when no format is named.
    answer = await client.get(path, headers={**finance, "Accept": "text/csv"})
    assert answer.content == (tmp_path / "statement.csv").read_bytes()
    document = json.loads((tmp_path / "statement.json").read_bytes())
    assert document["net_minor"] == 120 and document["number"] == "ST-drugstore-2026-04-1"
    rows = list(csv.reader(io.StringIO((tmp_path / "statement.csv").read_text())))
    assert [r[5:8] + r[11:14] for r in rows[1:]] == [
        ["issued", "points issued", "partner", "1", "100", "1.00"],
        ["promotions", "promotion points charged to the partner", "partner", "1", "200", "2.00"],
        ["redeemed", "points redeemed", "programme", "2", "180", "1.80"],
        ["owed-by-partner", "owed by the partner", "partner", "", "", "3.00"],
        ["owed-to-partner", "owed to the partner", "programme", "", "", "1.80"],
        ["net", "net: owed by the partner - owed to the partner", "", "", "", "1.20"],
    ]
    page = (tmp_path / "statement.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "@media print" in page
    assert "ST-drugstore-2026-04-1" in page and "1.20" in page
    # Self-contained: nothing fetched from elsewhere.
    assert "http" not in page.replace("GET /v1", "") and "<script" not in page
    entries = await client.get(path + "/entries", headers=finance)
    assert entries.status_code == 200 and entries.headers["content-type"].startswith("text/csv")
    result = await loyalty(
        month.url, tmp_path, "finance", "statement", "ST-drugstore-2026-04-1", "--entries"
    )
    assert result.stdout_bytes == entries.content
    # anna's purchase has a row per line (issued, promotions), then the two redemptions.
    assert [(r["line"], int(r["points"])) for r in entry_rows(entries.content)] == [
        ("issued", 100),
        ("promotions", 200),
        ("redeemed", 150),
        ("redeemed", 30),
    ]


async def test_cli_refusals_are_one_line_with_their_exit_code(month, settled, tmp_path):
    cases = [
        (["--partner", "drugstore", "--period", "2026-4"], 2, "invalid-period"),
        (["--partner", "drugstore", "--period", "2026-04", "--format", "pdf"], 2, "format"),
        (["--partner", "drugstore", "--period", "2026-04"], 3, "settlement-exists"),
        (["--partner", "nobody", "--period", "2026-04"], 4, "partner-not-found"),
    ]
    for args, code, message in cases:
        result = await loyalty(month.url, tmp_path, "finance", "settle", *args)
        assert result.exit_code == code, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    result = await loyalty(month.url, tmp_path, "finance", "statement", "ST-drugstore-2026-04-1")
    assert result.exit_code == 0 and "points redeemed" in result.output
    assert result.output.splitlines()[-1].split() == [
        "net",
        "(>",
        "0:",
        "the",
        "partner",
        "pays)",
        "1.20",
    ]
    result = await loyalty(month.url, tmp_path, "finance", "statement", "ST-nothing-1")
    assert result.exit_code == 4 and "statement-not-found" in result.output
    result = await loyalty(month.url, tmp_path, "finance", "statements", "--partner", "drugstore")
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == [
        "ST-drugstore-2026-03-1",
        "ST-drugstore-2026-04-1",
    ]


# -- late entries and reissues, on a database of its own --------------------------------


@pytest.fixture(scope="module")
async def bakery(server_url):
    """A bakery (0.02 EUR per point issued, 0.015 reimbursed) with a
    partner-funded bonus of 50 points in April; anna buys on 04-05 (20 + 50
    points) and redeems 30 on 04-10."""
    name, url = await fresh_database(server_url)
    engine = create_engine(url, pool_size=4)
    clock = Clock()
    clock.now = datetime(2026, 4, 5, 10, tzinfo=UTC)
    ledger = LedgerService(engine, config(), clock=clock)
    programme, rules = Programme(ledger), Rulebook(ledger)
    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    await registry.create_partner(
        PartnerInput(
            "bakery",
            "Bakery",
            price_per_point=Decimal("0.02"),
            redemption_value=Decimal("0.015"),
        ),
        ADMIN,
    )
    await Members(ledger, programme).enrol(MemberInput(id="anna"), ADMIN)
    await rules.create_earn_rule("bakery", EarnRuleInput(RULES_FROM, "EUR", Decimal(1)), ADMIN)
    await rules.create_promotion(
        PromotionInput(
            "BAKERY-BONUS",
            "50 bonus points, paid by the bakery",
            datetime(2026, 4, 1, tzinfo=UTC),
            datetime(2026, 5, 1, tzinfo=UTC),
            funder="partner",
            fixed_bonus=50,
            partner_ids=["bakery"],
        ),
        ADMIN,
    )
    receipt = await programme.earn_purchase(
        "anna", Purchase("bakery", clock.now, "EUR", (PurchaseLine(2000, "groceries"),)), "BK-0405"
    )
    clock.now = datetime(2026, 4, 10, 10, tzinfo=UTC)
    burn = await ledger.burn(Burn("anna", "bakery", "BK-R-0410", 30))
    try:
        yield {
            "url": url,
            "engine": engine,
            "ledger": ledger,
            "clock": clock,
            "registry": registry,
            "earn": receipt.entry_id,
            "burn": burn.entry_id,
        }
    finally:
        await engine.dispose()
        await drop_database(server_url, name)


async def test_partner_funded_promotions_are_charged_to_the_partner(bakery):
    st = await settle(bakery["engine"], "bakery", "2026-04", FINANCE)
    assert lines_of(st) == [
        ("regular", "2026-04", "issued", 1, 20, 40),  # 20 x 0.02
        ("regular", "2026-04", "promotions", 1, 50, 100),  # the bonus, the bakery's to pay
        ("regular", "2026-04", "redeemed", 1, 30, 45),  # 30 x 0.015
    ]
    assert st.net_minor == 140 - 45 and st.entries == 2


async def test_a_late_entry_goes_into_the_next_statement(bakery, tmp_path):
    engine = bakery["engine"]
    april = await statement(engine, "ST-bakery-2026-04-1")
    async with engine.connect() as conn:
        april_entries = [
            tuple(r)
            for r in await conn.execute(
                text(
                    "SELECT * FROM settlement_statement_entries "
                    "WHERE statement = 'ST-bakery-2026-04-1' ORDER BY entry_id, promotion"
                )
            )
        ]
    # Booked now, for a purchase of 04-28 (reported late), and one of May.
    bakery["clock"].now = datetime.now(UTC)
    late = await bakery["ledger"].earn(
        Earn.simple("anna", "bakery", "BK-0428", 7, effective_at=datetime(2026, 4, 28, tzinfo=UTC))
    )
    may = await bakery["ledger"].earn(
        Earn.simple("anna", "bakery", "BK-0503", 10, effective_at=datetime(2026, 5, 3, tzinfo=UTC))
    )
    output = tmp_path / "may.json"
    result = await loyalty(
        bakery["url"],
        tmp_path,
        "finance",
        "settle",
        "--partner",
        "bakery",
        "--period",
        "2026-05",
        "--format",
        "json",
        "--output",
        str(output),
    )
    assert result.exit_code == 0, result.output
    st = await statement(engine, "ST-bakery-2026-05-1")
    assert output.read_bytes() == render(st, "json") and st.issued_by.startswith("cli:")
    assert lines_of(st) == [
        ("regular", "2026-05", "issued", 1, 10, 20),
        ("adjustment", "2026-04", "issued", 1, 7, 14),
    ]
    assert st.net_minor == 34
    # April's statement is as it was: lines, totals, entries.
    again = await statement(engine, "ST-bakery-2026-04-1")
    assert render(again, "json") == render(april, "json")
    async with engine.connect() as conn:
        assert [
            tuple(r)
            for r in await conn.execute(
                text(
                    "SELECT * FROM settlement_statement_entries "
                    "WHERE statement = 'ST-bakery-2026-04-1' ORDER BY entry_id, promotion"
                )
            )
        ] == april_entries
        covered = dict(
            (
                await conn.execute(
                    text(
                        "SELECT entry_id, statement FROM settlement_coverage WHERE entry_id IN "
                        "(:late, :may)"
                    ),
                    {"late": late.entry_id, "may": may.entry_id},
                )
            ).all()
        )
    assert covered == {late.entry_id: "ST-bakery-2026-05-1", may.entry_id: "ST-bakery-2026-05-1"}
    result = await loyalty(bakery["url"], tmp_path, "finance", "statement", st.number, "--entries")
    rows = entry_rows(result.stdout_bytes)
    assert [(r["section"], r["month"], int(r["entry_id"])) for r in rows] == [
        ("regular", "2026-05", may.entry_id),
        ("adjustment", "2026-04", late.entry_id),
    ]


async def test_a_reissue_after_a_retroactive_contract_change(bakery, redis_url, tmp_path):
    engine = bakery["engine"]
    before = await statement(engine, "ST-bakery-2026-04-1")
    # The price was 0.03 from April 1st: corrected afterwards.
    await bakery["registry"].update_contract(
        "bakery",
        ContractInput(datetime(2026, 4, 1, tzinfo=UTC), price_per_point=Decimal("0.03")),
        ADMIN,
    )
    settings = settings_for(bakery["url"], redis_url, tmp_path)
    async with AsyncTestClient(create_app(settings)) as client:
        answer = await client.post(
            "/v1/finance/settlements",
            json={
                "partner_id": "bakery",
                "period": "2026-04",
                "reissue": True,
                "reason": "price per point corrected from 04-01",
            },
            headers=staff_headers(settings, "finance"),
        )
        assert answer.status_code == 201, answer.text
        reissued = answer.json()
    assert reissued["number"] == "ST-bakery-2026-04-2"
    assert reissued["supersedes"] == "ST-bakery-2026-04-1" and reissued["issue"] == 2
    assert reissued["issued_by"] == "staff:fiona"
    assert [
        (ln["code"], ln["points"], ln["amount_minor"], ln["money"][0]["contract_version"])
        for ln in reissued["lines"]
    ] == [
        ("issued", 20, 60, 2),  # 20 x 0.03
        ("promotions", 50, 150, 2),
        ("redeemed", 30, 45, 2),  # the redemption value stayed 0.015
    ]
    assert reissued["net_minor"] == 165
    # The old statement is kept as it was, and names its successor.
    old = await statement(engine, "ST-bakery-2026-04-1")
    assert lines_of(old) == lines_of(before) and old.net_minor == before.net_minor
    assert old.superseded_by == "ST-bakery-2026-04-2"
    # The same entries (the late one of 04-28 stays with May's statement).
    async with engine.connect() as conn:
        per_statement = {
            r.statement: r.entries
            for r in await conn.execute(
                text(
                    "SELECT statement, array_agg(DISTINCT entry_id ORDER BY entry_id) AS entries "
                    "FROM settlement_statement_entries WHERE statement LIKE 'ST-bakery-2026-04-%' "
                    "GROUP BY statement"
                )
            )
        }
    assert per_statement == {
        "ST-bakery-2026-04-1": sorted([bakery["earn"], bakery["burn"]]),
        "ST-bakery-2026-04-2": sorted([bakery["earn"], bakery["burn"]]),
    }
    listed = await statements(engine, "bakery", "2026-04")
    assert [(s.number, s.superseded_by) for s in listed] == [
        ("ST-bakery-2026-04-1", "ST-bakery-2026-04-2"),
        ("ST-bakery-2026-04-2", None),
    ]
    assert datetime.now(UTC) - datetime.fromisoformat(reissued["issued_at"]) < timedelta(minutes=5)
