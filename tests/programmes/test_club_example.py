"""The club programme (programmes/club.py) loaded into a database of its own
(any other is refused),
its worked example played through the real services: the README's tables
show these figures (the story step by step, the postings of the co-funded
promotion per funder, the two partners' October statements), the ledger
verifies clean, and loading again adds nothing."""

from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from finance.settlement import statement
from ledger.database import create_engine
from ledger.service import LedgerService
from ledger.verify import verify
from partners.registry import Registry
from partners.signing_keys import SecretBox
from programmes import club
from tests.conftest import TEST_SECRET_KEY, own_database
from tests.finance.test_worked_month import number, readme_table


@dataclass
class Loaded:
    engine: AsyncEngine
    ledger: LedgerService
    registry: Registry
    outcomes: list[club.Outcome]


@pytest.fixture(scope="module")
def club_url(server_url):
    with own_database(server_url, "loyalty_club") as url:
        yield url


@pytest.fixture(scope="module")
async def loaded(club_url):
    engine = create_engine(club_url, pool_size=4)
    ledger = LedgerService(engine)
    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    outcomes = await club.load(ledger, registry)
    yield Loaded(engine, ledger, registry, outcomes)
    await engine.dispose()


def test_the_readme_shows_the_story_step_by_step(loaded):
    rows = readme_table("club step")
    assert len(rows) == len(club.STORY) == len(loaded.outcomes)
    for number_, (cells, outcome) in enumerate(zip(rows, loaded.outcomes, strict=True), 1):
        assert cells[:2] == [str(number_), outcome.step.at.date().isoformat()]
        assert cells[3] == outcome.result, cells
        assert [number(c) for c in cells[4:]] == list(outcome.available.values()), cells


async def test_the_autumn_check_is_posted_per_funder(loaded):
    async with loaded.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT p.account, -sum(p.amount) AS points FROM postings p "
                    "JOIN journal_entries e ON e.id = p.entry_id "
                    "WHERE e.partner_reference = 'AN-26-1014' AND p.account LIKE 'partner:%' "
                    "GROUP BY p.account"
                )
            )
        ).all()
    posted = {row.account: row.points for row in rows}
    table = {cells[0].strip("`"): number(cells[1]) for cells in readme_table("funder's account")}
    assert posted == table == {"partner:autohaus-nord:issued": 584, "partner:autowerk:issued": 194}


async def test_the_two_statements_charge_each_partner_its_share(loaded):
    rows = readme_table("October statement")
    shown = {
        (cells[0], cells[1]): (number(cells[2]) if cells[2] else None, cells[3]) for cells in rows
    }
    for partner in ("autohaus-nord", "autowerk"):
        issued = await statement(loaded.engine, f"ST-{partner}-2026-10-1")
        for line in issued.lines:
            assert shown.pop((partner, line.label)) == (
                line.points,
                f"{line.amount_minor / 100:.2f}",
            )
        assert shown.pop((partner, "net, owed by the partner")) == (
            None,
            f"{issued.net_minor / 100:.2f}",
        )
    assert shown == {}


async def test_the_programme_verifies_clean_and_loads_once(loaded):
    report = await verify(loaded.engine)
    assert report.clean, report.render()
    assert await club.load(loaded.ledger, loaded.registry) == []
    assert await club.available(loaded.ledger) == loaded.outcomes[-1].available


@pytest.fixture
def another_url(server_url):
    with own_database(server_url, "loyalty_club_other") as url:
        yield url


async def test_a_database_holding_anything_else_is_refused_before_anything_is_written(
    another_url,
):
    from members.registry import MemberInput, Members
    from partners.programme import Programme
    from programmes.story import DatabaseNotEmpty

    engine = create_engine(another_url, pool_size=2)
    try:
        ledger = LedgerService(engine)
        # The plain demo's anna, say, whom the club would enrol again.
        await Members(ledger, Programme(ledger)).enrol(MemberInput("anna"), "staff:tests")
        with pytest.raises(DatabaseNotEmpty):
            await club.load(ledger, Registry(engine, SecretBox(TEST_SECRET_KEY)))
        async with engine.connect() as conn:
            counts = await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM members), (SELECT count(*) FROM partners), "
                    "(SELECT count(*) FROM journal_entries)"
                )
            )
            assert tuple(counts.one()) == (1, 0, 0)
    finally:
        await engine.dispose()
