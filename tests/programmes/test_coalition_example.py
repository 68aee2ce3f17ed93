"""The coalition programme (programmes/coalition.py) loaded into a database
of its own, its worked example played through the real services, then the
yearly expiry run: the README's tables show these figures, the run's result
is recorded where finance reads it, the ledger verifies clean, and loading
again adds nothing."""

from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from api.auth import mint_token
from api.jobs_service import service_jobs
from ledger.database import create_engine
from ledger.service import LedgerService
from ledger.verify import verify
from operations.runner import JobRunner
from partners.registry import Registry
from partners.signing_keys import SecretBox
from programmes import coalition
from tests.conftest import TEST_SECRET_KEY, own_database
from tests.finance.test_worked_month import number, readme_table

NAMES = {"lena": "Lena", "jonas": "Jonas"}


@dataclass
class Loaded:
    url: str
    engine: AsyncEngine
    ledger: LedgerService
    registry: Registry
    outcomes: list[coalition.Outcome]


@pytest.fixture(scope="module")
def coalition_url(server_url):
    with own_database(server_url, "loyalty_coalition") as url:
        yield url


@pytest.fixture(scope="module")
async def loaded(coalition_url):
    engine = create_engine(coalition_url, pool_size=4)
    ledger = LedgerService(engine)
    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    outcomes = await coalition.load(ledger, registry)
    yield Loaded(coalition_url, engine, ledger, registry, outcomes)
    await engine.dispose()


def test_the_readme_shows_the_story_step_by_step(loaded):
    rows = readme_table("coalition step")
    assert len(rows) == len(coalition.STORY) == len(loaded.outcomes)
    for number_, (cells, outcome) in enumerate(zip(rows, loaded.outcomes, strict=True), 1):
        assert cells[:2] == [str(number_), outcome.step.at.date().isoformat()]
        assert cells[3] == outcome.result, cells
        assert [number(c) for c in cells[4:]] == list(outcome.available.values()), cells


async def lena_lots(engine: AsyncEngine) -> list[dict]:
    """Lena's lots, oldest first, with what each entry of the story moved
    (the till's authorisation takes the points; its capture moves no lot)."""
    async with engine.connect() as conn:
        orders = (
            await conn.execute(
                text(
                    "SELECT order_entry_id, cancel_entry_id FROM reward_orders "
                    "WHERE member_id = 'lena' ORDER BY id"
                )
            )
        ).all()
        movements = (
            await conn.execute(
                text(
                    "SELECT l.id, l.earned_at, l.amount, l.expires_at, l.remaining, m.entry_id, "
                    "m.amount AS moved, e.kind FROM lots l JOIN lot_movements m ON m.lot_id = l.id "
                    "JOIN journal_entries e ON e.id = m.entry_id WHERE l.member_id = 'lena' "
                    "ORDER BY l.earned_at, m.entry_id"
                )
            )
        ).all()
    (espresso, cancelled), (mug, _) = orders
    lots: dict[int, dict] = {}
    for row in movements:
        lot = lots.setdefault(
            row.id,
            {
                "earned": row.earned_at.date().isoformat(),
                "points": row.amount,
                "expires": row.expires_at.date().isoformat(),
                "left": row.remaining,
            },
        )
        column = {espresso: "espresso", cancelled: "cancelled", mug: "mug"}.get(row.entry_id)
        if column is None and row.kind in ("hold", "expire"):
            column = {"hold": "till", "expire": "expired"}[row.kind]
        if column is not None:
            lot[column] = row.moved
    return list(lots.values())


def cells_of(lot: dict) -> list[str]:
    keys = ("espresso", "cancelled", "mug", "till")
    return [lot["earned"], f"{lot['points']:,}", lot["expires"]] + [
        f"{lot[k]:+,}" if k in lot else "" for k in keys
    ]


async def test_the_reward_order_and_its_cancellation_use_the_same_lots(loaded):
    lots = await lena_lots(loaded.engine)
    rows = readme_table("Lena's lot, earned")
    assert [cells[:7] for cells in rows] == [cells_of(lot) for lot in lots]
    # The oldest lots first; the cancellation gave back exactly what the order took.
    assert [lot.get("espresso", 0) for lot in lots] == [-243, -757, 0, 0, 0]
    assert all(lot.get("espresso", 0) == -lot.get("cancelled", 0) for lot in lots)
    # What was left before the yearly run (whether or not it has run yet).
    before_run = [lot["left"] - lot.get("expired", 0) for lot in lots]
    assert [number(cells[7]) for cells in rows] == before_run


async def test_the_yearly_expiry_run_and_its_record_for_finance(loaded, api_settings):
    # The run, as `loyalty jobs run expire-points --as-of 2027-01-01T00:00:00Z`
    # started on 31 December 2026.
    runner = JobRunner(
        loaded.engine,
        service_jobs(api_settings, loaded.ledger),
        "cli",
        "cli:tests",
        clock=lambda: datetime(2026, 12, 31, 12, tzinfo=UTC),
    )
    report = await runner.run("expire-points", as_of=coalition.EXPIRY_RUN)
    assert (report.status, report.processed, report.points) == ("done", 2, 201)

    rows = readme_table("yearly expiry run")
    after = await coalition.available(loaded.ledger)
    members = {cells[0]: cells for cells in rows[:-1]}
    for member_id, name in NAMES.items():
        assert number(members[name][2]) == after[member_id]
    lots = {lot["earned"]: lot for lot in await lena_lots(loaded.engine)}
    assert number(members["Lena"][1]) == -sum(lot.get("expired", 0) for lot in lots.values())
    assert lots["2023-08-19"]["expired"] == -155 and "expired" not in lots["2024-05-10"]
    assert rows[-1][0] == f"the run: {report.processed} members"
    assert number(rows[-1][1]) == report.points

    # Kept where finance reads it: the job's last run, and the expire entries.
    settings = replace(api_settings, database_url=loaded.url)
    finance = {"Authorization": "Bearer " + mint_token(settings, "fred", ["finance"])}
    async with AsyncTestClient(create_app(settings)) as client:
        jobs = (await client.get("/v1/staff/jobs", headers=finance)).json()
    last = next(job for job in jobs["jobs"] if job["job"] == "expire-points")["last_run"]
    assert (last["processed"], last["points"], last["as_of"][:10]) == (2, 201, "2027-01-01")
    async with loaded.engine.connect() as conn:
        expired = (
            await conn.execute(
                text(
                    "SELECT count(DISTINCT e.member_id), sum(p.amount) FROM journal_entries e "
                    "JOIN postings p ON p.entry_id = e.id WHERE e.kind = 'expire' "
                    "AND p.account = 'program:expired'"
                )
            )
        ).one()
    assert tuple(expired) == (2, 201)


async def test_loading_again_adds_nothing_and_the_ledger_verifies(loaded):
    async with loaded.engine.connect() as conn:
        before = (await conn.execute(text("SELECT count(*) FROM journal_entries"))).scalar()
    assert await coalition.load(loaded.ledger, loaded.registry) == []
    async with loaded.engine.connect() as conn:
        after = (await conn.execute(text("SELECT count(*) FROM journal_entries"))).scalar()
    assert after == before
    report = await verify(loaded.engine)
    assert report.clean, report.render()
