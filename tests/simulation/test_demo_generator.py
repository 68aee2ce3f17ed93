"""The demo generator (simulation/): the model is deterministic and plants
what it says; a small generated programme (400 members, 8 months) verifies
clean, the lost-members query finds every planted churner, the top 20 % share
of spend lies in the configured range (and is the model's own figure), the
pairs show in the cross-shopping matrix, points expired with the moving
clock, and a second run is refused (exit code 3 on the command line)."""

import asyncio
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from api.cli import main
from api.embedded import drop_database
from insights import coalition, pareto, retention
from insights.reading import read_only, window
from ledger.database import create_engine
from ledger.verify import verify
from partners.registry import Registry
from partners.signing_keys import SecretBox
from simulation import model
from simulation.loader import DemoExists, generate
from tests.conftest import TEST_SECRET_KEY
from tests.insights.conftest import fresh_database

END = datetime(2026, 11, 20, 12, tzinfo=UTC)
# Points last 3 months here (to the quarter's end), so some expire within 8 months.
CONFIG = model.DemoConfig(end=END, members=400, months=8, seed=7, expiry_months=3)


def test_the_same_seed_gives_the_same_plan():
    one, two = model.members(CONFIG), model.members(CONFIG)
    assert one == two
    assert list(model.months(CONFIG, one)) == list(model.months(CONFIG, two))
    other = model.DemoConfig(end=END, members=400, months=8, seed=8)
    assert model.members(other) != one


def test_planted_churners_stop_for_good_after_a_last_purchase():
    members = model.members(CONFIG)
    churners = model.churners(members)
    assert len(churners) == 40  # 10 % of 400
    allowed = set(model.churn_months(CONFIG))
    assert set(churners.values()) <= allowed
    bought: dict[str, set[int]] = {m: set() for m in churners}
    for month in model.months(CONFIG, members):
        for sale in month.sales:
            if sale.member_id in churners:
                bought[sale.member_id].add(month.index)
    for member_id, stop in churners.items():
        assert max(bought[member_id]) == stop - 1, member_id
    # Enrolled early: each bought in at least two months.
    assert all(len(months) >= 2 for months in bought.values())


@pytest.fixture(scope="module")
async def generated(server_url):
    name, url = await fresh_database(server_url)
    engine = create_engine(url, pool_size=2)
    try:
        registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
        summary = await generate(engine, registry, CONFIG)
        yield engine, url, registry, summary
    finally:
        await engine.dispose()
        await drop_database(server_url, name)


async def test_a_generated_programme_verifies_clean(generated):
    engine, _, _, summary = generated
    assert (await verify(engine)).clean
    assert summary.members == 400
    async with engine.connect() as conn:
        purchases, enrolled_late = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM partner_purchases), "
                    "(SELECT count(*) FROM members WHERE enrolled_at >= :end)"
                ),
                {"end": END},
            )
        ).one()
    planned = sum(len(m.sales) for m in model.months(CONFIG, model.members(CONFIG)))
    assert purchases == summary.purchases == planned
    assert enrolled_late == 0  # enrolment times are the simulated ones
    assert summary.points_expired > 0 and summary.redemptions > 0 and summary.returns > 0


async def test_lost_members_finds_every_planted_churner(generated):
    engine, _, _, _ = generated
    days = CONFIG.inactive_days
    reference = retention.reference_window(None, None, END, days)
    async with read_only(engine) as conn:
        lost = await retention.lost_members(conn, reference, END, days, "EUR", limit=1000)
    assert lost.lost == len(lost.members)  # one page holds them all
    found = {m.member_id for m in lost.members}
    churners = set(model.churners(model.members(CONFIG)))
    assert churners <= found


async def test_the_top_fifth_holds_the_configured_share_of_spend(generated):
    engine, _, _, summary = generated
    async with read_only(engine) as conn:
        answer = await pareto.pareto(conn, window(None, None, END), "EUR")
        matrix = await coalition.coalition(conn, window(None, None, END), "EUR")
    spend = next(d for d in answer.distributions if d.partner_id is None and d.metric == "spend")
    top20 = next(t for t in spend.top if t.percent == 20)
    low, high = model.TOP20_RANGE
    assert low <= top20.share <= high
    assert top20.share == summary.top20_share
    # The planted pairs: the supermarket's members shop at the fuel station
    # more than at the fashion store, the pharmacy's at the fashion store more
    # than at the fuel station.
    shares = {(c.partner_id, c.also_at): c.share for c in matrix.cross_shopping}
    assert shares[("supermarket", "fuel")] > shares[("supermarket", "fashion")]
    assert shares[("pharmacy", "fashion")] > shares[("pharmacy", "fuel")]


async def test_a_second_run_is_refused_and_adds_nothing(generated, monkeypatch):
    engine, url, registry, _ = generated
    async with engine.connect() as conn:
        before = (await conn.execute(text("SELECT count(*) FROM journal_entries"))).scalar_one()
    with pytest.raises(DemoExists, match="holds a generated demo already"):
        await generate(engine, registry, CONFIG)
    for name, value in (("LOYALTY_DATABASE_URL", url), ("LOYALTY_SECRET_KEY", TEST_SECRET_KEY)):
        monkeypatch.setenv(name, value)
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["demo", "--members", "400", "--months", "8"]
    )
    assert result.exit_code == 3, result.output
    assert result.output.count("\n") == 1
    assert "demo-exists: this database holds a generated demo already (400 members)" in (
        result.output
    )
    async with engine.connect() as conn:
        after = (await conn.execute(text("SELECT count(*) FROM journal_entries"))).scalar_one()
    assert after == before


def test_too_few_months_are_refused_and_months_end_at_the_end():
    with pytest.raises(ValueError, match="months: 8 to 60"):
        model.DemoConfig(end=END, months=7)
    result = CliRunner().invoke(main, ["demo", "--members", "400", "--months", "7"])
    assert result.exit_code == 2 and "8<=x<=60" in result.output
    assert model.month_bounds(CONFIG, 0) == (
        datetime(2026, 4, 1, tzinfo=UTC),
        datetime(2026, 5, 1, tzinfo=UTC),
    )
    assert model.month_bounds(CONFIG, 7) == (datetime(2026, 11, 1, tzinfo=UTC), END)
