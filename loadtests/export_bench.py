"""Journal export benchmark: `python -m loadtests export [--postings N]`.

Seeds `--postings` postings (default 1,000,000: earnings of four postings
each, PTS to a member's `available` from a partner's `issued` and QP from
`program:qp_source`, with a rule breakdown) set-based through the ledger's own
tables (entries and postings by INSERT ... SELECT generate_series in chunks of
a transaction each, then balances, one lot per member and its creating
movement), which must pass `verify` before anything is measured: seeding is
fast, the ledger it leaves is a real one.

Measured, all on the same server in the same run:
- the export of the whole window by the real command, `loyalty finance
  export-journal` (CSV, then JSON Lines), in a process of its own: postings
  per second over the whole command (start-up, schema check, totals query,
  stream, SHA-256, sidecar files) and the process's peak RSS (`ru_maxrss`
  from `wait4`); the same for a window of the first chunk only (a tenth of
  the rows), so constant memory shows as the same peak for ten times the rows;
- the baseline: `COPY (SELECT <the export's own query>) TO STDOUT (FORMAT
  csv)` of the same rows into a file through asyncpg, and the ratio;
- the control totals of the file against `verify`'s counts (every entry of
  the database is in the window).
The caller (loadtests/__main__.py) drops the database at the end.
"""

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import asyncpg
from sqlalchemy import text

from finance.period import stamp
from ledger.database import create_engine
from ledger.history import WINDOW_ROWS, server_time
from ledger.verify import verify
from loadtests.commands import loyalty, run_measured

PARTNER = "bench-export"
POSTINGS_PER_ENTRY = 4
CHUNKS = 10

ENTRIES = r"""
WITH e AS (
    INSERT INTO journal_entries (kind, member_id, partner_id, partner_reference, effective_at,
                                 posted_by, breakdown)
    SELECT 'earn', 'x' || (g % :members), :partner, 'E' || g, now() - interval '1 hour',
           'partner:' || :partner,
           jsonb_build_array(
               jsonb_build_object('amount', 10 + g % 90, 'asset', 'PTS', 'reason', 'base',
                                  'funder', 'partner', 'kind', 'base'),
               jsonb_build_object('amount', 1 + g % 9, 'asset', 'QP',
                                  'reason', 'qualifying points', 'funder', 'program',
                                  'kind', 'qualifying'))
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
    RETURNING id, member_id, CAST(substr(partner_reference, 2) AS bigint) AS g)
INSERT INTO postings (entry_id, account, asset, amount, member_id)
SELECT e.id, v.account, v.asset, v.amount, v.member_id FROM e CROSS JOIN LATERAL (VALUES
    (1, 'member:' || e.member_id || '\:available', 'PTS', 10 + e.g % 90, e.member_id),
    (2, 'partner:' || CAST(:partner AS text) || '\:issued', 'PTS', -(10 + e.g % 90), NULL),
    (3, 'member:' || e.member_id || '\:qp', 'QP', 1 + e.g % 9, e.member_id),
    (4, 'program:qp_source', 'QP', -(1 + e.g % 9), NULL)) AS v(k, account, asset, amount, member_id)
ORDER BY e.id, v.k
"""

# A partner's reference is claimed in `partner_references` where that table
# exists (migration 0013: the partitioned journal cannot keep it unique).
CLAIMS = (
    "INSERT INTO partner_references (partner_id, partner_reference, entry_id) "
    "SELECT partner_id, partner_reference, id FROM journal_entries "
    "WHERE id > :after AND partner_id = :partner"
)

BALANCES_AND_LOTS = (
    "INSERT INTO balances (account, asset, slot, balance, version, member_id) "
    "SELECT account, asset, 0, sum(amount), count(*), member_id FROM postings "
    "GROUP BY account, asset, member_id",
    "WITH created AS (INSERT INTO lots (member_id, source_entry_id, earn_entry_id, amount, "
    "remaining, earned_at, expires_at, source) SELECT member_id, min(entry_id), min(entry_id), "
    "sum(amount), sum(amount), now(), now() + interval '3 years', 'earn' FROM postings "
    "WHERE asset = 'PTS' AND member_id IS NOT NULL GROUP BY member_id "
    "RETURNING id, source_entry_id, amount) "
    "INSERT INTO lot_movements (entry_id, lot_id, amount) "
    "SELECT source_entry_id, id, amount FROM created",
)


async def seed(engine, postings: int, members: int) -> tuple:
    """The ledger's tables filled set-based; returns the instants before the
    first chunk, after the first chunk and after the last."""
    from cryptography.fernet import Fernet

    from loadtests.__main__ import enrol  # the module that runs us
    from partners.registry import PartnerInput, Registry
    from partners.signing_keys import SecretBox

    await enrol(engine, [], [f"x{i}" for i in range(members)])
    await Registry(engine, SecretBox(Fernet.generate_key())).create_partner(
        PartnerInput(PARTNER, PARTNER), "bench"
    )
    entries = max(1, postings // POSTINGS_PER_ENTRY)
    per_chunk = -(-entries // CHUNKS)
    async with engine.connect() as conn:
        start = await server_time(conn)
    first = None
    async with engine.connect() as conn:
        claims = (
            await conn.execute(text("SELECT to_regclass('partner_references') IS NOT NULL"))
        ).scalar_one()
    for lo in range(0, entries, per_chunk):
        async with engine.begin() as conn:
            after = (
                await conn.execute(text("SELECT coalesce(max(id), 0) FROM journal_entries"))
            ).scalar_one()
            await conn.execute(
                text(ENTRIES),
                {
                    "members": members,
                    "partner": PARTNER,
                    "lo": lo,
                    "hi": min(entries, lo + per_chunk) - 1,
                },
            )
            if claims:
                await conn.execute(text(CLAIMS), {"partner": PARTNER, "after": after})
        if first is None:
            async with engine.connect() as conn:
                first = await server_time(conn)
    async with engine.begin() as conn:
        for statement in BALANCES_AND_LOTS:
            await conn.execute(text(statement))
        await conn.execute(text("ANALYZE journal_entries"))
        await conn.execute(text("ANALYZE postings"))
        end = await server_time(conn)
    return start, first, end


def run_export(url: str, tmp: Path, start, end, fmt: str, name: str):
    """The export command to its end: wall time, peak RSS (its own, from
    wait4) and the control totals it wrote."""
    output = tmp / name
    env = {
        **os.environ,
        "LOYALTY_DATABASE_URL": url,
        "LOYALTY_DATA_DIR": str(tmp),
    }
    command = [*loyalty(), "finance", "export-journal", "--from", stamp(start), "--to"]
    command += [stamp(end), "--format", fmt, "--output", str(output), "--json"]
    printed, elapsed, usage = run_measured(command, env, tmp / f"{name}.out", quiet=True)
    return elapsed, usage.ru_maxrss / 1024, json.loads(printed), output.stat().st_size


async def copy_baseline(url: str, start, end, path: Path) -> float:
    """COPY of the export's own query (same rows, same order) to a file: seconds."""
    plain = "postgresql://" + url.split("://", 1)[1]
    conn = await asyncpg.connect(plain)
    try:
        query = WINDOW_ROWS.replace(":start", "$1").replace(":end", "$2")
        started = time.perf_counter()
        await conn.copy_from_query(query, start, end, output=str(path), format="csv", header=True)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def bench_export(url: str, postings: int, members: int) -> None:
    engine = create_engine(url, pool_size=2)
    print(f"journal export benchmark: {postings:,} postings, {members:,} members")
    began = time.perf_counter()
    start, first, end = await seed(engine, postings, members)
    print(f"seeded in {time.perf_counter() - began:,.1f} s (set-based)")
    check = await verify(engine)
    if not check.clean:
        raise SystemExit("the seeded ledger does not verify:\n" + check.render())
    print(f"verify: clean ({check.entries:,} entries, {check.postings:,} postings)")
    await engine.dispose()
    print(f"load average: {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory(prefix="loyalty-export-bench-") as tmp:
        tmp_path = Path(tmp)
        small = await asyncio.to_thread(run_export, url, tmp_path, start, first, "csv", "s.csv")
        rates = {}
        for fmt in ("csv", "jsonl"):
            elapsed, peak, totals, size = await asyncio.to_thread(
                run_export, url, tmp_path, start, end, fmt, f"journal.{fmt}"
            )
            rates[fmt] = totals["postings"] / elapsed
            print(
                f"export {fmt:<5}: {totals['postings']:,} postings, {totals['entries']:,} "
                f"entries, {size / 1e6:,.1f} MB in {elapsed:,.1f} s = {rates[fmt]:,.0f} "
                f"postings/s; peak RSS {peak:,.0f} MB"
            )
            if (totals["entries"], totals["postings"]) != (check.entries, check.postings):
                raise SystemExit(f"control totals {totals} do not match verify's counts")
            for asset, sums in totals["assets"].items():
                if sums["debits"] + sums["credits"] != 0:
                    raise SystemExit(f"{asset}: debits and credits do not cancel")
        print(
            f"export csv of a tenth ({small[2]['postings']:,} postings): peak RSS "
            f"{small[1]:,.0f} MB (constant memory: the same peak for ten times the rows)"
        )
        print("control totals: entries and postings equal verify's; debits = -credits per asset")
        copy_seconds = await copy_baseline(url, start, end, tmp_path / "copy.csv")
        copy_rate = check.postings / copy_seconds
        print(f"baseline: COPY (SELECT ...) TO STDOUT, same rows: {copy_rate:,.0f} postings/s")
        print(f"ratio export csv / COPY: {rates['csv'] / copy_rate:.2f}")
        print(f"ratio export jsonl / COPY: {rates['jsonl'] / copy_rate:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
