"""Breakage (IFRS 15) through the programme's own report, on databases of
this module's own (estimates and redemptions here would change the worked
month's figures):

- the IFRS 15 illustrative example IE267-IE270: a partner paying 0.90 EUR a
  point, 10,000 points earned, finance expects 97 % to be redeemed, 4,500
  are redeemed (period 1), finance raises the estimate to 99 %, 4,000 more
  are redeemed (period 2), then the last 1,500 (period 3: more than
  expected, so all the consideration is recognised and no more);
- the history method: redemptions (net of a refund) and expiries in the
  trailing window give redeemed / (redeemed + expired), the default 0.95
  before there is any history, and two currencies recognised by the same
  fraction;
- estimates: stored append-only, never back-dated (not even with raw SQL),
  refused outside (0, 1]; the API's status codes and problem types and the
  command line's output and exit codes; the README's worked example."""

import asyncio
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from api.app import create_app
from api.auth import mint_token
from api.cli import main
from api.embedded import drop_database
from api.settings import Settings
from finance.breakage import (
    DEFAULT_RATE,
    breakage_period,
    breakage_report,
    check_rate,
    cumulative_revenue,
    history_rate,
    list_estimates,
    months_before,
    set_estimate,
)
from finance.errors import BreakageEstimateBackdated, InvalidBreakageRate
from finance.period import EARLIEST, Period, stamp
from ledger.commands import Burn, Earn, Reverse
from ledger.database import create_engine
from ledger.expiry import RollingToQuarterEnd
from ledger.history import server_time
from ledger.service import LedgerConfig, LedgerService
from members.registry import MemberInput, Members
from partners.money import units
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.signing_keys import SecretBox
from tests.api.conftest import MEMBER_SECRET, SECRET
from tests.conftest import TEST_SECRET_KEY, Clock
from tests.finance.conftest import ADMIN, fresh_database

PROBLEM = "application/problem+json"
README = Path(__file__).resolve().parents[2] / "README.md"


# -- the formula (pure) --------------------------------------------------------------


def test_the_ifrs_example_by_the_formula():
    # IE267-IE270 in whole units: 9,000 x 4,500 / 9,700 and 9,000 x 8,500 / 9,900.
    first = cumulative_revenue(9_000, 4_500, Decimal("0.97"), 10_000)
    second = cumulative_revenue(9_000, 8_500, Decimal("0.99"), 10_000)
    assert (first, second - first) == (4_175, 3_552)
    assert (9_000 - first, 9_000 - second) == (4_825, 1_273)


def test_cumulative_revenue_rounds_half_up_once_and_never_exceeds_the_consideration():
    assert cumulative_revenue(900_000, 4_500, Decimal("0.97"), 10_000) == 417_526  # 417,525.77
    assert cumulative_revenue(3, 1, Decimal("1"), 2) == 2  # 1.5 rounds up
    assert cumulative_revenue(5, 1, Decimal("1"), 4) == 1  # 1.25 rounds down
    # More redeemed than expected: the consideration, no more.
    assert cumulative_revenue(900_000, 10_000, Decimal("0.99"), 10_000) == 900_000
    assert cumulative_revenue(900_000, 9_999, Decimal("0.5"), 10_000) == 900_000
    for nothing in ((0, 10, Decimal("0.9"), 10), (10, 0, Decimal("0.9"), 10)):
        assert cumulative_revenue(*nothing) == 0
    assert cumulative_revenue(10, -5, Decimal("0.9"), 10) == 0  # refunds beyond redemptions


def test_history_rate_and_calendar_months():
    assert history_rate(4_500, 500) == Decimal("0.9")
    assert history_rate(2, 1) == Decimal("0.666667")  # half up, 6 places
    assert history_rate(1, 10**9) == Decimal("0.000001")  # never 0
    assert history_rate(0, 300) is None and history_rate(0, 0) is None
    moment = datetime(2026, 3, 31, 12, tzinfo=UTC)
    assert months_before(moment, 1) == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert months_before(moment, 12) == datetime(2025, 3, 31, 12, tzinfo=UTC)
    assert months_before(datetime(2024, 1, 15, tzinfo=UTC), 13) == datetime(
        2022, 12, 15, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "rate", ["0", "-0.5", "1.000001", "1.5", "NaN", "Infinity", "0.9999999", "x"]
)
def test_rates_outside_zero_to_one_are_refused(rate):
    with pytest.raises(InvalidBreakageRate):
        check_rate(rate)


def test_rates_inside_are_kept():
    assert check_rate("1") == Decimal("1.000000")
    assert check_rate(Decimal("0.000001")) == Decimal("0.000001")


# -- the IFRS example through the report ---------------------------------------------


def config() -> LedgerConfig:
    return LedgerConfig(expiry_policy=RollingToQuarterEnd(1))


async def now(engine) -> datetime:
    async with engine.connect() as conn:
        return await server_time(conn)


async def services(engine, clock: Clock):
    ledger = LedgerService(engine, config(), clock=clock)
    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    members = Members(ledger, Programme(ledger))
    return ledger, registry, members


class Story:
    def __init__(self, url: str, engine) -> None:
        self.url, self.engine = url, engine
        self.marks: dict[str, datetime] = {}

    def period(self, start: str, end: str) -> Period:
        return Period(self.marks[start], self.marks[end])


@pytest.fixture(scope="module")
async def ifrs(server_url):
    """IE267-IE270 booked through the services: marks begin < t0 < t1 < t2 < t3."""
    name, url = await fresh_database(server_url)
    engine = create_engine(url, pool_size=4)
    try:
        story = Story(url, engine)
        clock = Clock()
        ledger, registry, members = await services(engine, clock)
        story.marks["begin"] = await now(engine)
        await registry.create_partner(
            PartnerInput(
                "airline",
                "Airline",
                price_per_point=Decimal("0.90"),
                redemption_value=Decimal("0.80"),
            ),
            ADMIN,
        )
        for member in ("ida", "jon"):
            await members.enrol(MemberInput(id=member), ADMIN)
        await ledger.earn(Earn.simple("ida", "airline", "AL-1", 6_000))
        await ledger.earn(Earn.simple("jon", "airline", "AL-2", 4_000))
        await set_estimate(engine, "0.97", "IFRS 15 IE267: 97 % expected", "staff:fiona")
        story.marks["t0"] = await now(engine)
        await ledger.burn(Burn("ida", "airline", "AL-R-1", 2_500))
        await ledger.burn(Burn("jon", "airline", "AL-R-2", 2_000))
        story.marks["t1"] = await now(engine)
        await set_estimate(engine, "0.99", "IFRS 15 IE269: raised to 9,900", "staff:fiona")
        await ledger.burn(Burn("ida", "airline", "AL-R-3", 2_500))
        await ledger.burn(Burn("jon", "airline", "AL-R-4", 1_500))
        story.marks["t2"] = await now(engine)
        await ledger.burn(Burn("ida", "airline", "AL-R-5", 1_000))
        await ledger.burn(Burn("jon", "airline", "AL-R-6", 500))
        story.marks["t3"] = await now(engine)
        yield story
    finally:
        await engine.dispose()
        await drop_database(server_url, name)


def eur(report):
    (line,) = report.currencies
    assert line.currency == "EUR"
    return line


async def test_period_1_recognises_4175_of_9000(ifrs):
    report = await breakage_report(ifrs.engine, ifrs.period("t0", "t1"))
    assert (report.start.issued, report.end.issued) == (10_000, 10_000)
    assert (report.end.issued_partner, report.end.issued_promotions) == (10_000, 0)
    assert (report.start.redeemed, report.end.redeemed, report.redeemed_in_period) == (
        0,
        4_500,
        4_500,
    )
    for at in (report.start, report.end):
        assert (at.rate.rate, at.rate.method) == (Decimal("0.97"), "estimate")
        assert at.rate.estimate.reason == "IFRS 15 IE267: 97 % expected"
        assert (at.expected_redemptions, at.expected_breakage) == (9_700, 300)
    line = eur(report)
    assert (line.consideration_start, line.consideration) == (900_000, 900_000)  # 9,000.00 EUR
    assert (line.cumulative_revenue_start, line.cumulative_revenue) == (0, 417_526)
    assert line.revenue == 417_526  # 4,175.26 EUR: 4,175 in whole units, as IE268
    assert line.deferred_revenue == 482_474  # 4,824.74 EUR: 4,825
    assert round(units(line.revenue, "EUR")) == 4_175
    assert round(units(line.deferred_revenue, "EUR")) == 4_825


async def test_period_2_catches_up_with_the_raised_estimate(ifrs):
    report = await breakage_report(ifrs.engine, ifrs.period("t1", "t2"))
    # At the start the 97 % of period 1 was in force; at the end finance's 99 %.
    assert report.start.rate.rate == Decimal("0.97") and report.end.rate.rate == Decimal("0.99")
    assert report.end.rate.method == "estimate"
    assert (report.end.expected_redemptions, report.end.expected_breakage) == (9_900, 100)
    assert (report.start.redeemed, report.end.redeemed) == (4_500, 8_500)
    line = eur(report)
    assert (line.cumulative_revenue_start, line.cumulative_revenue) == (417_526, 772_727)
    assert line.revenue == 355_201  # 7,727.27 - 4,175.26 = 3,552.01 EUR: 3,552 as IE269
    assert (line.deferred_revenue_start, line.deferred_revenue) == (482_474, 127_273)
    assert round(units(line.revenue, "EUR")) == 3_552
    assert round(units(line.deferred_revenue, "EUR")) == 1_273


async def test_periods_add_up_to_the_cumulative_figure(ifrs):
    whole = eur(await breakage_report(ifrs.engine, ifrs.period("begin", "t2")))
    parts = [
        eur(await breakage_report(ifrs.engine, ifrs.period(a, b))).revenue
        for a, b in (("begin", "t0"), ("t0", "t1"), ("t1", "t2"))
    ]
    assert parts == [0, 417_526, 355_201]
    assert whole.revenue == sum(parts) == whole.cumulative_revenue == 772_727


async def test_more_redeemed_than_expected_recognises_the_consideration_and_no_more(ifrs):
    report = await breakage_report(ifrs.engine, ifrs.period("t2", "t3"))
    assert report.end.redeemed == 10_000 > report.end.expected_redemptions == 9_900
    line = eur(report)
    assert line.cumulative_revenue == line.consideration == 900_000
    assert (line.revenue, line.deferred_revenue) == (127_273, 0)


async def test_before_any_estimate_or_history_the_default_rate(ifrs):
    report = await breakage_report(
        ifrs.engine, Period(ifrs.marks["begin"], ifrs.marks["begin"] + timedelta(microseconds=1))
    )
    rate = report.end.rate
    assert (rate.rate, rate.method, rate.estimate) == (DEFAULT_RATE, "default", None)
    assert (rate.history.redeemed, rate.history.expired, rate.history.rate) == (0, 0, None)
    assert report.currencies == []


async def test_estimates_cannot_be_back_dated(ifrs):
    before = await list_estimates(ifrs.engine)
    with pytest.raises(BreakageEstimateBackdated):
        await set_estimate(ifrs.engine, "0.5", "back to period 1", "staff:x", ifrs.marks["t0"])
    with pytest.raises(InvalidBreakageRate):
        await set_estimate(ifrs.engine, "1.01", "too high", "staff:x")
    # Raw SQL too: the database refuses a start in the past, and any change.
    async with ifrs.engine.connect() as conn:
        for statement in (
            "INSERT INTO breakage_estimates (rate, effective_from, set_by, reason) "
            "VALUES (0.5, now() - interval '1 second', 'sql', 'back-dated')",
            "UPDATE breakage_estimates SET rate = 0.5",
            "DELETE FROM breakage_estimates",
            "INSERT INTO breakage_estimates (rate, set_by, reason) VALUES (0, 'sql', 'zero')",
        ):
            with pytest.raises(Exception, match=r"cannot start before|append-only|rate_check"):
                await conn.execute(text(statement))
            await conn.rollback()
    assert await list_estimates(ifrs.engine) == before
    report = await breakage_report(ifrs.engine, ifrs.period("t0", "t1"))
    assert eur(report).revenue == 417_526


# -- the history method, two currencies ----------------------------------------------


@pytest.fixture(scope="module")
async def history(server_url):
    """No estimates: ida earns 1,000 at a EUR partner and 500 at a CHF partner
    in January (expiring April 1st), redeems 600 at the grocer and gets 100
    of them refunded, and what is left expires in April."""
    name, url = await fresh_database(server_url)
    engine = create_engine(url, pool_size=4)
    try:
        story = Story(url, engine)
        clock = Clock()
        clock.now = datetime(2026, 1, 20, 10, tzinfo=UTC)
        ledger, registry, members = await services(engine, clock)
        for partner, currency, price in (("grocer", "EUR", "0.01"), ("alpine", "CHF", "0.03")):
            await registry.create_partner(
                PartnerInput(partner, partner.title(), currency, price_per_point=Decimal(price)),
                ADMIN,
            )
        await members.enrol(MemberInput(id="ida"), ADMIN)
        story.marks["begin"] = await now(engine)
        await ledger.earn(Earn.simple("ida", "grocer", "G-1", 1_000))
        await ledger.earn(Earn.simple("ida", "alpine", "A-1", 500))
        clock.now = datetime(2026, 2, 10, 10, tzinfo=UTC)
        burn = await ledger.burn(Burn("ida", "grocer", "G-R-1", 600))
        await ledger.reverse(Reverse(burn.entry_id, 100, reason="refund"), "partner:grocer")
        story.marks["redeemed"] = await now(engine)
        clock.now = datetime(2026, 4, 5, 10, tzinfo=UTC)
        await ledger.expire_points()
        story.marks["end"] = await now(engine)
        yield story
    finally:
        await engine.dispose()
        await drop_database(server_url, name)


async def test_the_history_method_gives_redeemed_over_redeemed_and_expired(history):
    report = await breakage_report(history.engine, history.period("redeemed", "end"))
    start, end = report.start.rate, report.end.rate
    # Before the expiry: only redemptions in the window, so 100 %.
    assert (start.method, start.rate, start.history.redeemed, start.history.expired) == (
        "history",
        Decimal(1),
        500,
        0,
    )
    assert (end.method, end.history.redeemed, end.history.expired) == ("history", 500, 1_000)
    assert end.rate == Decimal("0.333333") == history_rate(500, 1_000)
    assert end.history.months == 12
    assert end.history.window_from == stamp(months_before(history.marks["end"], 12))
    assert (report.end.issued, report.end.redeemed, report.end.expired) == (1_500, 500, 1_000)
    assert report.end.expected_redemptions == 500  # 0.333333 x 1,500 = 499.9995, half up


async def test_each_currency_is_recognised_by_the_same_programme_wide_fraction(history):
    first = await breakage_report(history.engine, history.period("begin", "redeemed"))
    assert first.start.rate.method == "default"  # nothing booked before: no history
    # 500 redeemed, none expired yet: 100 % expected, 1,500 issued; a third done.
    assert (first.end.rate.rate, first.end.issued, first.end.redeemed) == (1, 1_500, 500)
    lines = {line.currency: line for line in first.currencies}
    assert sorted(lines) == ["CHF", "EUR"]
    assert (lines["EUR"].points_issued_partner, lines["EUR"].consideration) == (1_000, 1_000)
    assert (lines["CHF"].points_issued_partner, lines["CHF"].consideration) == (500, 1_500)
    assert (lines["EUR"].revenue, lines["EUR"].deferred_revenue) == (333, 667)  # 333.33
    assert (lines["CHF"].revenue, lines["CHF"].deferred_revenue) == (500, 1_000)
    # Then 1,000 expire: the history rate falls to a third, 500 redeemed is all
    # that is expected (just over: 0.333333 x 1,500), and both catch up in full.
    second = await breakage_report(history.engine, history.period("redeemed", "end"))
    lines = {line.currency: line for line in second.currencies}
    assert (lines["EUR"].revenue, lines["EUR"].deferred_revenue) == (667, 0)
    assert (lines["CHF"].revenue, lines["CHF"].deferred_revenue) == (1_000, 0)


async def test_the_trailing_window_is_a_parameter(history):
    late = history.marks["end"] + timedelta(days=1)
    report = await breakage_report(history.engine, Period(EARLIEST, late), trailing_months=1)
    window = report.end.rate.history
    assert report.trailing_months == window.months == 1
    assert window.window_from == stamp(months_before(late, 1))
    assert (window.redeemed, window.expired, report.end.rate.method) == (500, 1_000, "history")
    nothing = await breakage_report(history.engine, Period(EARLIEST, history.marks["begin"]))
    assert nothing.end.rate.method == "default" and nothing.end.rate.history.rate is None


# -- the API -----------------------------------------------------------------------


@pytest.fixture
def settings(ifrs, redis_url, tmp_path) -> Settings:
    return Settings(
        database_url=ifrs.url,
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


def auth(settings, *roles: str, subject: str = "fiona") -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(settings, subject, list(roles))}


def window(story, start: str, end: str) -> dict[str, str]:
    return {"from": stamp(story.marks[start]), "to": stamp(story.marks[end])}


async def test_api_report_is_the_service_report(ifrs, client, settings):
    finance = auth(settings, "finance")
    for start, end in (("t0", "t1"), ("t1", "t2")):
        answer = await client.get(
            "/v1/finance/breakage", params=window(ifrs, start, end), headers=finance
        )
        assert answer.status_code == 200
        body = answer.json()
        (line,) = body["currencies"]
        expected = eur(await breakage_report(ifrs.engine, ifrs.period(start, end)))
        assert line == {
            "currency": "EUR",
            "points_issued_partner": 10_000,
            "consideration_start": 900_000,
            "consideration": 900_000,
            "cumulative_revenue_start": expected.cumulative_revenue_start,
            "cumulative_revenue": expected.cumulative_revenue,
            "revenue": expected.revenue,
            "deferred_revenue_start": expected.deferred_revenue_start,
            "deferred_revenue": expected.deferred_revenue,
        }
        assert body["end"]["rate"]["method"] == "estimate"
    assert body["end"]["rate"]["rate"] == "0.99" and body["start"]["rate"]["rate"] == "0.97"
    assert line["revenue"] == 355_201


async def test_api_refuses_bad_input_with_problems(ifrs, client, settings):
    finance = auth(settings, "finance")
    cases = [
        ({"trailing_months": "0"}, 422, "invalid-trailing-months"),
        ({"trailing_months": "121"}, 422, "invalid-trailing-months"),
        ({"from": "yesterday"}, 422, "invalid-period"),
        ({**window(ifrs, "t1", "t0")}, 422, "invalid-period"),
    ]
    for params, status, code in cases:
        answer = await client.get("/v1/finance/breakage", params=params, headers=finance)
        assert answer.status_code == status, (params, answer.text)
        assert answer.headers["content-type"].startswith(PROBLEM)
        assert answer.json()["type"] == f"/problems/{code}"
    assert (await client.get("/v1/finance/breakage")).status_code == 401
    for path in ("/v1/finance/breakage", "/v1/finance/breakage/estimates"):
        refused = await client.get(path, headers=auth(settings, "admin"))
        assert refused.status_code == 403 and refused.json()["type"] == "/problems/missing-role"


async def test_api_sets_and_lists_estimates_and_refuses_bad_ones(ifrs, client, settings):
    finance = auth(settings, "finance", subject="fiona")
    before = (await client.get("/v1/finance/breakage/estimates", headers=finance)).json()
    assert [e["rate"] for e in before[:2]] == ["0.97", "0.99"]
    refused = [
        ({"rate": "0", "reason": "x"}, 422, "invalid-breakage-rate"),
        ({"rate": 1.5, "reason": "x"}, 422, "invalid-breakage-rate"),
        ({"rate": "-0.1", "reason": "x"}, 422, "invalid-breakage-rate"),
        ({"rate": "0.96", "reason": "  "}, 422, "reason-required"),
        (
            {"rate": "0.96", "reason": "x", "effective_from": stamp(ifrs.marks["t1"])},
            422,
            "breakage-estimate-backdated",
        ),
        ({"rate": "0.96", "reason": "x", "effective_from": "soon"}, 422, "invalid-period"),
        ({"rate": "abc", "reason": "x"}, 400, "validation-error"),
        ({"rate": "0.96", "reason": "x", "set_by": "me"}, 400, "validation-error"),
    ]
    for body, status, code in refused:
        answer = await client.post("/v1/finance/breakage/estimates", json=body, headers=finance)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["type"] == f"/problems/{code}"
    admin = await client.post(
        "/v1/finance/breakage/estimates",
        json={"rate": "0.96", "reason": "x"},
        headers=auth(settings, "admin"),
    )
    assert admin.status_code == 403
    assert (await client.get("/v1/finance/breakage/estimates", headers=finance)).json() == before

    later = datetime.now(UTC) + timedelta(days=30)
    made = await client.post(
        "/v1/finance/breakage/estimates",
        json={"rate": 0.985, "reason": "next quarter's study", "effective_from": later.isoformat()},
        headers=finance,
    )
    assert made.status_code == 201, made.text
    estimate = made.json()
    assert estimate["rate"] == "0.985" and estimate["set_by"] == "staff:fiona"
    assert estimate["effective_from"] == stamp(later)
    after = (await client.get("/v1/finance/breakage/estimates", headers=finance)).json()
    assert after == [*before, estimate]
    # Reported periods keep their figures; the estimate rules from its start.
    report = await breakage_report(ifrs.engine, ifrs.period("t1", "t2"))
    assert eur(report).revenue == 355_201
    future = await breakage_report(ifrs.engine, breakage_period(None, later))
    assert future.end.rate.estimate.id == estimate["id"]


# -- the command line --------------------------------------------------------------


async def loyalty(story, tmp_path, *args: str):
    env = {
        "LOYALTY_DATABASE_URL": story.url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


async def test_cli_report_shows_the_ifrs_figures(ifrs, tmp_path):
    args = ("finance", "breakage", "--from", stamp(ifrs.marks["t1"]), "--to")
    shown = await loyalty(ifrs, tmp_path, *args, stamp(ifrs.marks["t2"]))
    assert shown.exit_code == 0, shown.output
    rows = {
        re.split(r"\s{2,}", line.strip())[0]: re.split(r"\s{2,}", line.strip())[1:]
        for line in shown.output.splitlines()
    }
    assert rows["expected redemption rate"] == ["0.97", "0.99"]
    assert rows["expected redemptions"] == ["9,700", "9,900"]
    assert rows["points redeemed"] == ["4,500", "8,500"]
    assert rows["EUR consideration"] == ["9,000.00", "9,000.00"]
    assert rows["EUR cumulative revenue"] == ["4,175.26", "7,727.27"]
    assert rows["EUR deferred revenue"] == ["4,824.74", "1,272.73"]
    assert rows["EUR revenue of the period"] == ["3,552.01"]
    assert "rate at the end:   estimate #2 by staff:fiona" in shown.output
    as_json = await loyalty(ifrs, tmp_path, *args, stamp(ifrs.marks["t2"]), "--json")
    assert as_json.exit_code == 0
    assert '"revenue": 355201' in as_json.output


async def test_cli_estimates_and_bad_input(ifrs, tmp_path):
    count = len(await list_estimates(ifrs.engine))
    for args, message in (
        (("--rate", "1.5", "--reason", "x"), "invalid-breakage-rate"),
        (("--rate", "0", "--reason", "x"), "invalid-breakage-rate"),
        (("--rate", "0.9", "--reason", " "), "reason-required"),
        (
            ("--rate", "0.9", "--reason", "x", "--effective-from", "2020-01-01"),
            "breakage-estimate-backdated",
        ),
    ):
        result = await loyalty(ifrs, tmp_path, "finance", "breakage-estimate", *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    bad = await loyalty(ifrs, tmp_path, "finance", "breakage", "--trailing-months", "0")
    assert bad.exit_code == 2 and "invalid-trailing-months" in bad.output
    assert len(await list_estimates(ifrs.engine)) == count

    later = (datetime.now(UTC) + timedelta(days=400)).strftime("%Y-%m-%d")
    made = await loyalty(
        ifrs,
        tmp_path,
        "finance",
        "breakage-estimate",
        "--rate",
        "0.97",
        "--reason",
        "next year's study",
        "--effective-from",
        later,
    )
    assert made.exit_code == 0, made.output
    stored = (await list_estimates(ifrs.engine))[-1]
    assert made.output.startswith(f"estimate #{stored.id}: rate 0.97 from {later}T00:00:00.0")
    assert (stored.rate, stored.set_by.startswith("cli:")) == (Decimal("0.97"), True)
    listed = await loyalty(ifrs, tmp_path, "finance", "breakage-estimates")
    assert listed.exit_code == 0 and "next year's study" in listed.output


# -- the README's worked example ---------------------------------------------------


async def test_readme_worked_example_is_the_report(ifrs):
    text_ = README.read_text()
    section = text_[text_.index("### Breakage (IFRS 15)") :]
    section = re.split(r"\n##+ ", section[4:])[0]  # to the next heading
    table: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3:
            table[cells[0]] = cells[1:]
    reports = [
        await breakage_report(ifrs.engine, ifrs.period(a, b))
        for a, b in (("t0", "t1"), ("t1", "t2"))
    ]

    def money(minor: int) -> str:
        return f"{units(minor, 'EUR'):,}"

    assert table["points issued"] == [f"{r.end.issued:,}" for r in reports]
    assert table["expected redemption rate (finance's estimate)"] == [
        str(r.end.rate.rate) for r in reports
    ]
    assert table["expected redemptions"] == [f"{r.end.expected_redemptions:,}" for r in reports]
    assert table["points redeemed, cumulative"] == [f"{r.end.redeemed:,}" for r in reports]
    assert table["consideration, EUR"] == [money(eur(r).consideration) for r in reports]
    assert table["cumulative revenue at the end"] == [
        money(eur(r).cumulative_revenue) for r in reports
    ]
    assert table["revenue of the period"] == [money(eur(r).revenue) for r in reports]
    assert table["deferred revenue at the end"] == [money(eur(r).deferred_revenue) for r in reports]
    assert table["IFRS 15 (whole EUR): revenue / deferred"] == ["4,175 / 4,825", "3,552 / 1,273"]
