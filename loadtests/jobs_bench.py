"""The expiry job against a bare set-based baseline: `python -m loadtests expire`.

Seeds N members (default 100,000; the issue's figure is 1,000,000), each with
one earning whose lot expired a year ago, in bulk SQL that keeps the ledger
consistent (entries, postings, balances, lots and their creating movements, as
`earn` would have written them). Then, on the same server:

- the baseline: one bare `INSERT ... SELECT` of one entry and two postings per
  due lot into plain copies of journal_entries and postings (same columns and
  indexes, no triggers, no foreign keys), and one `UPDATE` of the same lots in
  a plain copy of lots, in one transaction;
- the ledger's `expire_points()`, which runs until nothing is due.

Prints both rates (members, that is entries, per second) and their ratio, then
`verify` must be clean. The database is dropped by the caller.
"""

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from ledger.database import DatabaseLimits, create_engine
from ledger.service import LedgerService
from ledger.verify import verify

PARTNER = "bench-partner"
POINTS = 100

# Bulk seeding of N members that each earned POINTS long ago: what `earn`
# writes, row for row, loaded set-based. Trigger-free when the role may
# (session_replication_role; the totals are consistent either way).
SEED = (
    # Entry ids as the journal draws them (month-encoded, migration 0013).
    "CREATE TEMP TABLE seed AS SELECT m, "
    "ledger_id(nextval('journal_entries_id_seq')) AS e "
    "FROM unnest(CAST(:members AS text[])) AS t(m)",
    "INSERT INTO journal_entries (id, kind, member_id, partner_id, partner_reference, "
    "effective_at, posted_by, breakdown) "
    f"SELECT e, 'earn', m, '{PARTNER}', 'SEED-' || e, :earned, 'partner:{PARTNER}', "
    f"""'[{{"amount": {POINTS}, "asset": "PTS", "kind": "base"}}]' FROM seed""",
    "INSERT INTO partner_references (partner_id, partner_reference, entry_id) "
    f"SELECT '{PARTNER}', 'SEED-' || e, e FROM seed",
    "INSERT INTO postings (entry_id, account, asset, amount, member_id) "
    f"SELECT e, format('member:%s:available', m), 'PTS', {POINTS}, m FROM seed "
    f"UNION ALL SELECT e, 'partner:{PARTNER}:issued', 'PTS', -{POINTS}, NULL FROM seed",
    "WITH created AS (INSERT INTO lots (member_id, source_entry_id, earn_entry_id, amount, "
    f"remaining, earned_at, expires_at, source) SELECT m, e, e, {POINTS}, {POINTS}, :earned, "
    ":expires, 'earn' FROM seed RETURNING id, source_entry_id, amount) "
    "INSERT INTO lot_movements (entry_id, lot_id, amount) "
    "SELECT source_entry_id, id, amount FROM created",
    "INSERT INTO balances (account, asset, slot, balance, version, member_id) "
    f"SELECT format('member:%s:available', m), 'PTS', 0, {POINTS}, 1, m FROM seed",
    "INSERT INTO balances AS b (account, asset, slot, balance, version) "
    f"SELECT 'partner:{PARTNER}:issued', 'PTS', 0, -{POINTS} * count(*), count(*) "
    "FROM seed ON CONFLICT (account, asset, slot) DO UPDATE "
    "SET balance = b.balance + EXCLUDED.balance, version = b.version + EXCLUDED.version",
    "DROP TABLE seed",
)

# The baseline's plain tables: the ledger's columns, defaults and indexes,
# without triggers and foreign keys (CREATE TABLE ... LIKE copies neither).
BASELINE_SCHEMA = (
    "CREATE TABLE bench_entries (LIKE journal_entries INCLUDING ALL)",
    "CREATE TABLE bench_postings (LIKE postings INCLUDING ALL)",
    "CREATE TABLE bench_lots (LIKE lots INCLUDING ALL)",
    "INSERT INTO bench_lots OVERRIDING SYSTEM VALUE SELECT * FROM lots",
    "ANALYZE bench_lots",
)
BASELINE = (
    "WITH entries AS (INSERT INTO bench_entries (kind, member_id, effective_at, posted_by, "
    "reason, breakdown) SELECT 'expire', member_id, CAST(:now AS timestamptz), "
    "'job:expire-points', "
    "'1 lot(s) reached their expiry', jsonb_build_array(jsonb_build_object("
    "'lot_id', id, 'points', remaining, 'expires_at', expires_at)) "
    "FROM bench_lots WHERE remaining > 0 AND expires_at <= :now "
    "RETURNING id, member_id, (breakdown -> 0 ->> 'points')::bigint AS points) "
    "INSERT INTO bench_postings (entry_id, account, asset, amount, member_id) "
    "SELECT id, format('member:%s:available', member_id), 'PTS', -points, member_id "
    "FROM entries UNION ALL SELECT id, 'program:expired', 'PTS', points, NULL FROM entries",
    "UPDATE bench_lots SET remaining = 0 WHERE remaining > 0 AND expires_at <= :now",
)


async def seed(engine, ledger: LedgerService, members: list[str], earned: datetime) -> None:
    """Every member earned POINTS at `earned`, as `earn` would have posted it."""
    expires = ledger.config.expiry_policy.expires_at(earned)
    chunk = 200_000
    for start in range(0, len(members), chunk):
        async with engine.begin() as conn:
            try:
                async with conn.begin_nested():
                    await conn.execute(text("SET LOCAL session_replication_role = replica"))
            except Exception:  # not a superuser: the triggers check every row
                pass
            for statement in SEED:
                await conn.execute(
                    text(statement),
                    {
                        "members": members[start : start + chunk],
                        "earned": earned,
                        "expires": expires,
                    },
                )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in (
            "journal_entries",
            "partner_references",
            "postings",
            "lots",
            "lot_movements",
            "balances",
        ):
            await conn.execute(text(f"VACUUM ANALYZE {table}"))


async def checkpoint(engine) -> None:
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("CHECKPOINT"))


async def bench_expire(url: str, members: int) -> None:
    from loadtests.__main__ import enrol

    # Like `loyalty jobs run`: no statement or round-trip limit for a job.
    limits = DatabaseLimits(statement_timeout_ms=0, command_timeout_seconds=None)
    engine = create_engine(url, pool_size=2, limits=limits)
    ledger = LedgerService(engine)
    ids = [f"m{i:07d}" for i in range(members)]
    print(
        f"expire-points benchmark: {members:,} members, each with one due lot; per member "
        "one entry, two postings and its lot (the ledger adds the lot's movement and balances)"
    )
    started = time.perf_counter()
    await enrol(engine, [PARTNER], ids)
    await seed(engine, ledger, ids, datetime.now(UTC) - timedelta(days=5 * 365))
    async with engine.begin() as conn:
        for statement in BASELINE_SCHEMA:
            await conn.execute(text(statement))
    print(f"seeded in {time.perf_counter() - started:.1f} s")

    await checkpoint(engine)
    now = datetime.now(UTC)
    started = time.perf_counter()
    async with engine.begin() as conn:
        for statement in BASELINE:
            await conn.execute(text(statement), {"now": now})
    elapsed = time.perf_counter() - started
    baseline = members / elapsed
    print(
        f"{'baseline: INSERT ... SELECT + UPDATE':<38} {members:>9,} entries {elapsed:7.2f} s "
        f"{baseline:>9,.0f} /s"
    )

    await checkpoint(engine)
    started = time.perf_counter()
    expired = await ledger.expire_points(limit=members)
    elapsed = time.perf_counter() - started
    rate = expired / elapsed
    print(
        f"{'ledger expire_points()':<38} {expired:>9,} entries {elapsed:7.2f} s {rate:>9,.0f} /s"
        f"   ({ledger.job_batch:,} members per transaction, {ledger.job_lanes} at once)"
    )
    print(f"ratio expire_points / baseline: {rate / baseline:.2f}")
    async with engine.connect() as conn:
        left = (
            await conn.execute(
                text("SELECT count(*) FROM lots WHERE remaining > 0 AND expires_at <= :now"),
                {"now": now},
            )
        ).scalar_one()
    if expired != members or left:
        print(f"EXPECTED {members:,} members expired and none left: {expired:,}, {left:,} left")
    check = await verify(engine)
    print("verify:", "clean" if check.clean else check.render())
    await engine.dispose()
    if expired != members or left or not check.clean:
        raise SystemExit(1)
