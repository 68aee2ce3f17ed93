"""The airline programme (programmes/airline.py) loaded into a database of its
own, its worked example played through the real services: the README's
tables show these figures (the programme's segments and status levels, the
story step by step, the family pool's award flight lot by lot, the expiry
run that spares a status holder's miles, the status earned in March, the
transfer's fresh validity), the app sees the same over the API, the ledger
verifies clean, loading again adds nothing, and the lost status gives the
protected miles a fresh validity."""

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from api.auth import mint_token
from ledger.database import create_engine
from ledger.service import LedgerService
from ledger.verify import verify
from partners.expiry_notice import parse_window
from partners.programme import Programme
from partners.registry import Registry
from partners.signing_keys import SecretBox
from programmes import airline
from tests.conftest import TEST_SECRET_KEY, own_database
from tests.finance.test_worked_month import number, readme_table

NAMES = {member: name.split()[0] for member, (name, _card) in airline.MEMBERS.items()}


@dataclass
class Loaded:
    url: str
    engine: AsyncEngine
    ledger: LedgerService
    registry: Registry
    outcomes: list[airline.Outcome]


@pytest.fixture(scope="module")
def airline_url(server_url):
    with own_database(server_url, "loyalty_airline") as url:
        yield url


@pytest.fixture(scope="module")
async def loaded(airline_url):
    engine = create_engine(airline_url, pool_size=4)
    ledger = LedgerService(engine)
    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    outcomes = await airline.load(ledger, registry)
    yield Loaded(airline_url, engine, ledger, registry, outcomes)
    await engine.dispose()


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def test_the_readme_shows_the_programme_as_loaded():
    segments = readme_table("segment: cabin, route class")
    assert {cells[1].strip("`"): number(cells[2]) for cells in segments} == airline.SEGMENT_QP
    levels = readme_table("status level")
    assert [(c[0], number(c[1])) for c in levels[1:]] == [
        (tier.name, tier.qp_threshold) for tier in airline.TIERS.values()
    ]
    assert all(tier.expiry_protected for tier in airline.TIERS.values())
    assert airline.STATUS_BONUS.multiplier * airline.EARN_RULES["hansair"].points_per_unit == 6


def test_the_readme_shows_the_story_step_by_step(loaded):
    rows = readme_table("airline step")
    assert len(rows) == len(airline.STORY) == len(loaded.outcomes)
    for number_, (cells, outcome) in enumerate(zip(rows, loaded.outcomes, strict=True), 1):
        assert cells[:2] == [str(number_), outcome.step.at.date().isoformat()]
        assert cells[3] == outcome.result, cells
        assert [number(c) for c in cells[4:]] == list(outcome.available.values()), cells


async def lots(engine: AsyncEngine, members: list[str]) -> list[dict]:
    """The members' lots by expiry: whether each was there before the pooled
    award, what the award and the expiry run took from it, and what it had
    left after the award."""
    async with engine.connect() as conn:
        award = (
            (
                await conn.execute(
                    text("SELECT entry_id FROM pool_redemption_parts ORDER BY entry_id")
                )
            )
            .scalars()
            .all()
        )
        rows = (
            await conn.execute(
                text(
                    "SELECT l.id, l.member_id, l.earned_at, l.amount, l.expires_at, l.remaining, "
                    "l.source_entry_id, "
                    "m.entry_id, m.amount AS moved, e.kind FROM lots l "
                    "JOIN lot_movements m ON m.lot_id = l.id "
                    "JOIN journal_entries e ON e.id = m.entry_id "
                    "WHERE l.member_id = ANY(:members) ORDER BY l.expires_at, l.id, m.entry_id"
                ),
                {"members": members},
            )
        ).all()
    found: dict[int, dict] = {}
    for row in rows:
        lot = found.setdefault(
            row.id,
            {
                "member": row.member_id,
                "earned": row.earned_at.date().isoformat(),
                "miles": row.amount,
                "expires": row.expires_at.date().isoformat(),
                "award": 0,
                "after_award": 0,
                "expired": 0,
                "left": row.remaining,
                "before_award": row.source_entry_id < min(award),
            },
        )
        if row.entry_id in award:
            lot["award"] += row.moved
        if row.entry_id <= max(award):
            lot["after_award"] += row.moved
        if row.kind == "expire":
            lot["expired"] += row.moved
    return list(found.values())


def pool_cells(lot: dict) -> list[str]:
    taken = f"{lot['award']:+,}" if lot["award"] else ""
    miles, left = f"{lot['miles']:,}", f"{lot['after_award']:,}"
    return [NAMES[lot["member"]], lot["earned"], miles, lot["expires"], taken, left]


async def test_the_pooled_award_took_the_soonest_expiring_miles_of_two_members(loaded):
    pool = [
        lot for lot in await lots(loaded.engine, ["petra", "jonas", "mia"]) if lot["before_award"]
    ]
    assert readme_table("Weber pool lot of") == [pool_cells(lot) for lot in pool]
    # Jonas's lot and Petra's oldest expired first (1 January 2026): those
    # two paid the 1,500 miles; Mia's (April 2027) and Petra's newer ones not.
    assert [(lot["member"], lot["award"]) for lot in pool if lot["award"]] == [
        ("jonas", -1_192),
        ("petra", -308),
    ]


async def test_the_expiry_run_spares_the_status_holders_miles(loaded):
    due = [
        lot
        for lot in await lots(loaded.engine, list(airline.MEMBERS))
        if lot["expires"] == "2026-01-01" and lot["after_award"] > 0
    ]
    rows = readme_table("expiry run, 2026-01-01")
    assert [
        [NAMES[lot["member"]], lot["earned"], f"{lot['after_award']:,}", f"{-lot['expired']:,}"]
        for lot in due
    ] == [cells[:4] for cells in rows]
    assert [(lot["member"], lot["expired"]) for lot in due] == [("petra", 0), ("lukas", -500)]


async def test_status_earned_in_march_lasts_to_the_end_of_february_of_the_year_after_next(loaded):
    year_end = LedgerService(loaded.engine, clock=lambda: at("2025-12-31T12:00"))
    programme = Programme(year_end)
    rows = {cells[0]: cells for cells in readme_table("status at the end of 2025")}
    for member, name in NAMES.items():
        progress = await programme.tier_progress(member)
        cells = rows[name]
        assert number(cells[1]) == progress.qp_this_period
        assert cells[2] == progress.tier.name
        last_day = progress.valid_until and progress.valid_until.date().toordinal() - 1
        assert cells[3] == (datetime.fromordinal(last_day).date().isoformat() if last_day else "")
    # Reached with the flight of 26 March 2025, valid to the end of February 2027.
    (change,) = await programme.tier_history("petra")
    assert (change["to_tier"], change["changed_at"]) == (
        "frequent-traveller",
        at("2025-03-26T22:05"),
    )
    assert (await programme.tier_progress("petra")).valid_until == at("2027-03-01T00:00")


async def test_transferred_miles_start_a_fresh_validity(loaded):
    lukas = await lots(loaded.engine, ["lukas"])
    rows = readme_table("Lukas's lot, earned")
    assert [
        [lot["earned"], f"{lot['miles']:,}", lot["expires"], f"{lot['left']:,}"] for lot in lukas
    ] == rows
    assert lukas[-1]["expires"] == "2029-04-01"


def readme_statement() -> dict:
    """The README's example of an airline member's expiring view."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index('"expiring_by_quarter": [')
    return json.loads("{" + readme[start : readme.index("]", start) + 1] + "}")


async def test_the_statement_shows_what_expires_this_quarter_and_next(loaded):
    shown = readme_statement()
    window = parse_window(airline.SETTINGS["LOYALTY_EXPIRING_VIEW"])
    november = LedgerService(loaded.engine, clock=lambda: at("2026-11-15T10:00"))
    view, _token, changes_at = await Programme(november, expiring=window).balance_view("mia")
    assert msgspec.to_builtins(list(view.expiring_by_quarter)) == shown["expiring_by_quarter"]
    assert [(e.expires_at, e.points) for e in view.expiring] == [(at("2027-04-01"), 960)]
    assert changes_at == at("2027-01-01")  # the quarter turns


async def test_the_app_sees_the_pool_and_the_status(loaded, api_settings):
    settings = replace(api_settings, database_url=loaded.url)

    def member(name: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + mint_token(settings, name, ["member"])}

    async with AsyncTestClient(create_app(settings)) as client:
        pool = (await client.get("/v1/me/pool", headers=member("mia"))).json()
        assert [(m["member_id"], m["role"]) for m in pool["members"]] == [
            ("petra", "adult"),
            ("mia", "child"),
        ]
        assert pool["pooled_available"] == 37_412 + 960
        tier = (await client.get("/v1/me/tier", headers=member("petra"))).json()
        assert tier["tier"]["code"] == "frequent-traveller"
        assert tier["valid_until"] == "2027-03-01T00:00:00Z"
        brandt = (await client.get("/v1/me/pool", headers=member("jonas"))).json()
        assert [m["member_id"] for m in brandt["members"]] == ["lukas", "jonas"]


async def test_clean_loaded_once_and_a_lost_status_gives_a_fresh_validity(loaded):
    report = await verify(loaded.engine)
    assert report.clean, report.render()
    assert await airline.load(loaded.ledger, loaded.registry) == []

    # 1 March 2027: Petra's status ran out and 2026 earned her no QP; her
    # miles, protected until now, get 36 months from today to the quarter end.
    march = LedgerService(loaded.engine, loaded.ledger.config, clock=lambda: at("2027-03-01"))
    assert await Programme(march).requalify_tiers() == 1
    assert (await Programme(march).tier_progress("petra")).tier.code == "base"
    petra = await lots(loaded.engine, ["petra"])
    assert {lot["expires"] for lot in petra if lot["left"]} == {"2030-04-01"}
    report = await verify(loaded.engine)
    assert report.clean, report.render()
