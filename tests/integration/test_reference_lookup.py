"""The accrual's one question about references (which of a call's references
has the partner used before?) costs a few index probes per reference, however
many references the partner has and whatever PostgreSQL's statistics say.

A partner that starts a large file import, or grows faster than autovacuum
counts, has statistics that believe it has a handful of references: the
question asked as two EXISTS joined by OR was then planned as a hash of every
reference of the partner, read whole on every call (1 s per batch at 900,000
references in `python -m loadtests import`). The test builds that situation
in a database of its own, with autovacuum off, and counts the rows the
lookup's plan touches."""

import json
import uuid

import pytest
from sqlalchemy import event, text

from ledger.database import create_engine
from partners.accrual_sql import read_members
from tests.conftest import own_database
from tests.plans import rows_touched

REFERENCES = 50_000
ASKED = 1_000


@pytest.fixture
def stale_url(server_url):
    with own_database(server_url, "loyalty_refs") as url:
        yield url


async def test_used_references_are_probed_one_by_one_whatever_the_statistics(stale_url):
    engine = create_engine(stale_url, pool_size=2)
    tables = {"partner_references", "partner_purchases"}
    try:
        async with engine.begin() as conn:
            for table in tables:
                await conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
            # What the statistics will know: another partner's few references...
            await conn.execute(text("SET session_replication_role = replica"))
            await conn.execute(
                text(
                    "INSERT INTO partner_references (partner_id, partner_reference, entry_id) "
                    "SELECT 'old-shop', 'o-' || i, i FROM generate_series(1, 100) AS i"
                )
            )
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE partner_references"))
            await conn.execute(text("ANALYZE partner_purchases"))
            # ... then the big partner's file, which no ANALYZE has seen.
            await conn.execute(text("SET session_replication_role = replica"))
            big = f"FROM generate_series(1, {REFERENCES}) AS i"
            await conn.execute(
                text(
                    "INSERT INTO partner_references (partner_id, partner_reference, entry_id) "
                    f"SELECT 'big-shop', 'r-' || i, i {big}"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO partner_purchases (partner_id, partner_reference, member_id, "
                    "entry_id, currency, total_minor, occurred_at) "
                    f"SELECT 'big-shop', 'r-' || i, 'm', i, 'EUR', 100, now() {big}"
                )
            )
        asked = [f"r-{i}" for i in range(1, ASKED // 2 + 1)] + [
            f"new-{uuid.uuid4().hex}" for _ in range(ASKED // 2)
        ]
        sent = []

        def record(conn, cursor, statement, parameters, context, executemany):
            sent.append((statement, parameters))

        event.listen(engine.sync_engine, "before_cursor_execute", record)
        async with engine.connect() as conn:
            found = await read_members(conn, "big-shop", [], [], asked, [], [])
        event.remove(engine.sync_engine, "before_cursor_execute", record)
        assert found.taken == set(asked[: ASKED // 2])  # the used ones, and only them

        ((statement, parameters),) = sent
        async with engine.connect() as conn:
            explained = await conn.exec_driver_sql(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
            )
            value = explained.scalar_one()
        plan = (json.loads(value) if isinstance(value, str) else value)[0]["Plan"]
        # A probe per reference in each table: at most a row or two each,
        # never the partner's 50,000.
        assert rows_touched(plan, tables) <= 2 * ASKED * len(tables)
    finally:
        await engine.dispose()
