"""The jobs against bare set-based baselines: `python -m loadtests expire`,
`release` and `requalify`.

Seeds N members (default 100,000; the issue's figure is 1,000,000) in bulk SQL
that keeps the ledger consistent (entries, postings, balances and what the job
works on, as the ledger would have written them):

- `expire`: each member has one earning whose lot expired a year ago;
- `release`: each member has one earning still pending whose return window
  closed an hour ago;
- `requalify`: each member's silver status ran out yesterday, and last
  year's QP (0, 800, 1,500 or 3,500 in turn) drop, keep or raise it.

Then, on the same server:

- the baseline: the job's rows written by bare `INSERT ... SELECT`, `UPDATE`
  (and `DELETE`) statements in one transaction, into plain copies of the
  ledger's tables (same columns and indexes, no triggers, no foreign keys):
  for `expire` one entry and two postings per due lot and the lots' update;
  for `release` one entry, two postings and a lot per due earning and the
  earnings' update; for `requalify` each member's QP of last year summed, the
  status updated or dropped and a tier change;
- the job itself (`expire_points()`, `release_pending()`, or `loyalty jobs run
  requalify-tiers`'s runner), until nothing is due.

Prints both rates (members per second) and their ratio; then the job's outcome
must be the baseline's (lots' remaining points, members' tiers) and `verify`
must be clean. The database is dropped by the caller.
"""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from ledger.database import DatabaseLimits, create_engine
from ledger.service import LedgerService
from ledger.verify import verify

PARTNER = "bench-partner"
POINTS = 100

# Entry ids as the journal draws them (month-encoded, migration 0013), one
# per member of the chunk; every seed starts with it and ends dropping it.
SEED_ENTRIES = (
    "CREATE TEMP TABLE seed AS SELECT m, "
    "ledger_id(nextval('journal_entries_id_seq')) AS e "
    "FROM unnest(CAST(:members AS text[])) AS t(m)"
)
SEED_EARNINGS = (
    "INSERT INTO journal_entries (id, kind, member_id, partner_id, partner_reference, "
    "effective_at, posted_by, breakdown) "
    f"SELECT e, 'earn', m, '{PARTNER}', 'SEED-' || e, :earned, 'partner:{PARTNER}', "
    f"""'[{{"amount": {POINTS}, "asset": "PTS", "kind": "base"}}]' FROM seed""",
    "INSERT INTO partner_references (partner_id, partner_reference, entry_id) "
    f"SELECT '{PARTNER}', 'SEED-' || e, e FROM seed",
)
SEED_PARTNER_BALANCE = (
    "INSERT INTO balances AS b (account, asset, slot, balance, version) "
    f"SELECT 'partner:{PARTNER}:issued', 'PTS', 0, -{POINTS} * count(*), count(*) "
    "FROM seed ON CONFLICT (account, asset, slot) DO UPDATE "
    "SET balance = b.balance + EXCLUDED.balance, version = b.version + EXCLUDED.version"
)


def member_earnings(account: str) -> tuple[str, ...]:
    """Each member earned POINTS to `account` (available or pending): the
    entry, its reference, its postings and the balances."""
    return (
        *SEED_EARNINGS,
        "INSERT INTO postings (entry_id, account, asset, amount, member_id) "
        f"SELECT e, format('member:%s:{account}', m), 'PTS', {POINTS}, m FROM seed "
        f"UNION ALL SELECT e, 'partner:{PARTNER}:issued', 'PTS', -{POINTS}, NULL FROM seed",
        "INSERT INTO balances (account, asset, slot, balance, version, member_id) "
        f"SELECT format('member:%s:{account}', m), 'PTS', 0, {POINTS}, 1, m FROM seed",
        SEED_PARTNER_BALANCE,
    )


# The baseline's plain tables: the ledger's columns, defaults and indexes,
# without triggers and foreign keys (CREATE TABLE ... LIKE copies neither).
PLAIN_LEDGER = (
    "CREATE TABLE bench_entries (LIKE journal_entries INCLUDING ALL)",
    "CREATE TABLE bench_postings (LIKE postings INCLUDING ALL)",
    "CREATE TABLE bench_lots (LIKE lots INCLUDING ALL)",
)


@dataclass(frozen=True)
class JobBench:
    """One job's benchmark: how its due rows are seeded, the bare statements
    that write the same rows, and the job itself."""

    job: str  # as `loyalty jobs run` names it
    seeded: str  # what each member has, for the first line printed
    seed: tuple[str, ...]  # per chunk: :members, :earned, :expires, :release, :steps
    tables: tuple[str, ...]  # analysed after seeding
    baseline_schema: tuple[str, ...]
    baseline: tuple[str, ...]  # :now
    still_due: str  # counts what is due at :now
    differs: str  # counts the rows where the job's outcome and the baseline's differ
    run: Callable[[LedgerService, int], Awaitable[int]]
    earned: Callable[[datetime], datetime]  # when the seeded earnings were, from now
    shape: str = "{batch:,} members per transaction, {lanes} at once"  # of the ledger's jobs


EXPIRE = JobBench(
    job="expire-points",
    seeded="one due lot; per member one entry, two postings and its lot "
    "(the ledger adds the lot's movement and balances)",
    seed=(
        SEED_ENTRIES,
        *member_earnings("available"),
        "WITH created AS (INSERT INTO lots (member_id, source_entry_id, earn_entry_id, amount, "
        f"remaining, earned_at, expires_at, source) SELECT m, e, e, {POINTS}, {POINTS}, "
        ":earned, :expires, 'earn' FROM seed RETURNING id, source_entry_id, amount) "
        "INSERT INTO lot_movements (entry_id, lot_id, amount) "
        "SELECT source_entry_id, id, amount FROM created",
        "DROP TABLE seed",
    ),
    tables=(
        "journal_entries",
        "partner_references",
        "postings",
        "lots",
        "lot_movements",
        "balances",
    ),
    baseline_schema=(
        *PLAIN_LEDGER,
        "INSERT INTO bench_lots OVERRIDING SYSTEM VALUE SELECT * FROM lots",
        "ANALYZE bench_lots",
    ),
    baseline=(
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
    ),
    still_due="SELECT count(*) FROM lots WHERE remaining > 0 AND expires_at <= :now",
    differs="SELECT count(*) FROM lots l FULL JOIN bench_lots b USING (id) "
    "WHERE l.remaining IS DISTINCT FROM b.remaining",
    run=lambda ledger, members: ledger.expire_points(limit=members),
    earned=lambda now: now - timedelta(days=5 * 365),
)

RELEASE = JobBench(
    job="release-pending",
    seeded="one pending earning whose return window has closed; per member one entry, "
    "two postings and a lot (the ledger adds the lot's movement and balances)",
    seed=(
        SEED_ENTRIES,
        *member_earnings("pending"),
        "INSERT INTO pending_points (earn_entry_id, member_id, amount, remaining, earned_at, "
        f"release_at) SELECT e, m, {POINTS}, {POINTS}, :earned, :release FROM seed",
        "DROP TABLE seed",
    ),
    tables=("journal_entries", "partner_references", "postings", "pending_points", "balances"),
    baseline_schema=(
        *PLAIN_LEDGER,
        "CREATE TABLE bench_pending (LIKE pending_points INCLUDING ALL)",
        "INSERT INTO bench_pending SELECT * FROM pending_points",
        "ANALYZE bench_pending",
    ),
    baseline=(
        "WITH due AS (SELECT earn_entry_id, member_id, remaining, earned_at, "
        "ledger_id(nextval('journal_entries_id_seq')) AS entry_id FROM bench_pending "
        "WHERE release_entry_id IS NULL AND remaining > 0 AND release_at <= :now), "
        "entries AS (INSERT INTO bench_entries (id, kind, member_id, effective_at, posted_by, "
        "reason, breakdown) SELECT entry_id, 'release', member_id, CAST(:now AS timestamptz), "
        "'job:release-pending', 'return window of entry ' || earn_entry_id || ' passed', "
        "'[]' FROM due), "
        "posted AS (INSERT INTO bench_postings (entry_id, account, asset, amount, member_id) "
        "SELECT entry_id, format('member:%s:pending', member_id), 'PTS', -remaining, member_id "
        "FROM due UNION ALL SELECT entry_id, format('member:%s:available', member_id), 'PTS', "
        "remaining, member_id FROM due), "
        "lotted AS (INSERT INTO bench_lots (member_id, source_entry_id, earn_entry_id, amount, "
        "remaining, earned_at, expires_at, source) SELECT member_id, entry_id, earn_entry_id, "
        "remaining, remaining, earned_at, CAST(:now AS timestamptz) + interval '3 years', "
        "'earn' FROM due) "
        "UPDATE bench_pending p SET remaining = 0, release_entry_id = due.entry_id FROM due "
        "WHERE p.earn_entry_id = due.earn_entry_id",
    ),
    still_due="SELECT count(*) FROM pending_points WHERE release_entry_id IS NULL "
    "AND remaining > 0 AND release_at <= :now",
    differs="SELECT count(*) FROM (SELECT member_id, sum(remaining) AS r FROM lots "
    "GROUP BY 1) AS l FULL JOIN (SELECT member_id, sum(remaining) AS r FROM bench_lots "
    "GROUP BY 1) AS b USING (member_id) WHERE l.r IS DISTINCT FROM b.r",
    run=lambda ledger, members: ledger.release_pending(limit=members),
    earned=lambda now: now - timedelta(days=15),
)

# Requalification looks back on last year (the calendar period, the default):
# member i earned QP_STEPS[i % 4] QP there, so a quarter each falls to the base
# tier, keeps silver, and reaches gold (1,000 and 3,000 QP, put_tiers).
QP_STEPS = (0, 800, 1_500, 3_500)


async def put_tiers(engine) -> None:
    """Silver from 1,000 QP, gold from 3,000."""
    from decimal import Decimal

    from partners.rule_inputs import TierInput
    from partners.rulebook import Rulebook

    rules = Rulebook(LedgerService(engine))
    await rules.put_tier("silver", TierInput("Silver", 1, 1000, Decimal("1.25")), "bench")
    await rules.put_tier("gold", TierInput("Gold", 2, 3000, Decimal("1.5")), "bench")


async def requalify(ledger: LedgerService, members: int) -> int:
    """`loyalty jobs run requalify-tiers`, as the command runs it."""
    from operations.jobs import RequalifyTiers

    return await RequalifyTiers(ledger, "calendar").run(None, lambda batch: None)


REQUALIFY = JobBench(
    job="requalify-tiers",
    seeded="a silver status that ran out yesterday and last year's QP (0, 800, 1,500 or "
    "3,500 in turn): per member the tier kept, raised or dropped and a tier change",
    seed=(
        SEED_ENTRIES,
        "INSERT INTO journal_entries (id, kind, member_id, partner_id, partner_reference, "
        "effective_at, posted_by, breakdown) "
        f"SELECT e, 'earn', m, '{PARTNER}', 'SEED-' || e, :earned, 'partner:{PARTNER}', "
        "'[]' FROM seed",
        "INSERT INTO partner_references (partner_id, partner_reference, entry_id) "
        f"SELECT '{PARTNER}', 'SEED-' || e, e FROM seed",
        "CREATE TEMP TABLE seed_qp AS SELECT m, e, "
        f"(CAST(:steps AS bigint[]))[1 + right(m, 7)::int % {len(QP_STEPS)}] AS qp FROM seed",
        # Every member's entry moves QP (a zero-QP member's too: one point).
        "INSERT INTO postings (entry_id, account, asset, amount, member_id) "
        "SELECT e, format('member:%s:qp', m), 'QP', greatest(qp, 1), m FROM seed_qp "
        "UNION ALL SELECT e, 'program:qp_source', 'QP', -greatest(qp, 1), NULL FROM seed_qp",
        # What the postings trigger (migration 0025) writes, when triggers are off.
        "INSERT INTO member_qp_movements (entry_id, member_id, effective_at, amount) "
        "SELECT e, m, :earned, greatest(qp, 1) FROM seed_qp "
        "WHERE current_setting('session_replication_role') = 'replica'",
        "INSERT INTO balances (account, asset, slot, balance, version, member_id) "
        "SELECT format('member:%s:qp', m), 'QP', 0, greatest(qp, 1), 1, m FROM seed_qp",
        # The member's mutex row, made by the earning that locked the member.
        "INSERT INTO balances (account, asset, slot, member_id) "
        "SELECT format('member:%s:available', m), 'PTS', 0, m FROM seed",
        "INSERT INTO balances AS b (account, asset, slot, balance, version) "
        "SELECT 'program:qp_source', 'QP', 0, -sum(greatest(qp, 1)), count(*) FROM seed_qp "
        "ON CONFLICT (account, asset, slot) DO UPDATE "
        "SET balance = b.balance + EXCLUDED.balance, version = b.version + EXCLUDED.version",
        "INSERT INTO member_tiers (member_id, tier_code, qualified_at, valid_until) "
        "SELECT m, 'silver', :earned, CAST(:release AS timestamptz) - interval '1 day' "
        "FROM seed",
        "DROP TABLE seed_qp",
        "DROP TABLE seed",
    ),
    tables=(
        "journal_entries",
        "partner_references",
        "postings",
        "balances",
        "member_qp_movements",
        "member_tiers",
    ),
    baseline_schema=(
        "CREATE TABLE bench_member_tiers (LIKE member_tiers INCLUDING ALL)",
        "INSERT INTO bench_member_tiers SELECT * FROM member_tiers",
        "CREATE TABLE bench_tier_changes (LIKE tier_changes INCLUDING ALL)",
        "ANALYZE bench_member_tiers",
    ),
    baseline=(
        "WITH due AS (SELECT t.member_id, t.tier_code, t.valid_until, (SELECT "
        "coalesce(sum(q.amount), 0) FROM member_qp_movements q WHERE q.member_id = t.member_id "
        "AND q.effective_at >= date_trunc('year', CAST(:now AS timestamptz) - interval '1 year') "
        "AND q.effective_at < date_trunc('year', CAST(:now AS timestamptz))) AS qp "
        "FROM bench_member_tiers t WHERE t.valid_until <= :now), "
        "new AS (SELECT *, CASE WHEN qp >= 3000 THEN 'gold' WHEN qp >= 1000 THEN 'silver' "
        "ELSE 'base' END AS tier FROM due), "
        "changed AS (INSERT INTO bench_tier_changes (member_id, from_tier, to_tier, reason, "
        "changed_at, previous_valid_until) SELECT member_id, tier_code, tier, "
        "'requalification: ' || qp || ' QP in the last period', :now, valid_until FROM new), "
        "dropped AS (DELETE FROM bench_member_tiers t USING new "
        "WHERE t.member_id = new.member_id AND new.tier = 'base') "
        "UPDATE bench_member_tiers t SET tier_code = new.tier, qualified_at = :now, "
        "valid_until = CAST(:now AS timestamptz) + interval '2 years' FROM new "
        "WHERE t.member_id = new.member_id AND new.tier <> 'base'",
    ),
    still_due="SELECT count(*) FROM member_tiers WHERE valid_until <= :now",
    differs="SELECT count(*) FROM member_tiers t FULL JOIN bench_member_tiers b "
    "USING (member_id) WHERE t.tier_code IS DISTINCT FROM b.tier_code",
    run=requalify,
    # In the middle of last year: the period requalification looks back on.
    earned=lambda now: datetime(now.year - 1, 7, 1, tzinfo=UTC),
    shape="the command's passes of 1,000 members, one at a time",
)

JOBS = {"expire": EXPIRE, "release": RELEASE, "requalify": REQUALIFY}


async def seed(engine, bench: JobBench, members: list[str], earned: datetime, expires) -> None:
    """Every member's due rows, as the ledger would have written them."""
    chunk = 200_000
    for start in range(0, len(members), chunk):
        async with engine.begin() as conn:
            try:
                async with conn.begin_nested():
                    await conn.execute(text("SET LOCAL session_replication_role = replica"))
            except Exception:  # not a superuser: the triggers check every row
                pass
            for statement in bench.seed:
                await conn.execute(
                    text(statement),
                    {
                        "members": members[start : start + chunk],
                        "earned": earned,
                        "expires": expires,
                        "release": datetime.now(UTC) - timedelta(hours=1),
                        "steps": list(QP_STEPS),
                    },
                )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in bench.tables:
            await conn.execute(text(f"VACUUM ANALYZE {table}"))


async def checkpoint(engine) -> None:
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("CHECKPOINT"))


async def bench_job(url: str, members: int, bench: JobBench) -> None:
    from loadtests.__main__ import enrol

    # Like `loyalty jobs run`: no statement or round-trip limit for a job.
    limits = DatabaseLimits(statement_timeout_ms=0, command_timeout_seconds=None)
    engine = create_engine(url, pool_size=2, limits=limits)
    ledger = LedgerService(engine)
    ids = [f"m{i:07d}" for i in range(members)]
    print(f"{bench.job} benchmark: {members:,} members, each with {bench.seeded}")
    started = time.perf_counter()
    await enrol(engine, [PARTNER], ids)
    if bench is REQUALIFY:
        await put_tiers(engine)
    earned = bench.earned(datetime.now(UTC))
    await seed(engine, bench, ids, earned, ledger.config.expiry_policy.expires_at(earned))
    async with engine.begin() as conn:
        for statement in bench.baseline_schema:
            await conn.execute(text(statement))
    print(f"seeded in {time.perf_counter() - started:.1f} s")

    await checkpoint(engine)
    now = datetime.now(UTC)
    started = time.perf_counter()
    async with engine.begin() as conn:
        for statement in bench.baseline:
            await conn.execute(text(statement), {"now": now})
    elapsed = time.perf_counter() - started
    baseline = members / elapsed
    print(
        f"{'baseline: INSERT ... SELECT + UPDATE':<38} {members:>9,} members {elapsed:7.2f} s "
        f"{baseline:>9,.0f} /s"
    )

    await checkpoint(engine)
    started = time.perf_counter()
    done = await bench.run(ledger, members)
    elapsed = time.perf_counter() - started
    rate = done / elapsed
    print(
        f"{'ledger ' + bench.job:<38} {done:>9,} members {elapsed:7.2f} s {rate:>9,.0f} /s"
        f"   ({bench.shape.format(batch=ledger.job_batch, lanes=ledger.job_lanes)})"
    )
    print(f"ratio {bench.job} / baseline: {rate / baseline:.2f}")
    async with engine.connect() as conn:
        left = (await conn.execute(text(bench.still_due), {"now": now})).scalar_one()
        differ = (await conn.execute(text(bench.differs))).scalar_one()
    if done != members or left:
        print(f"EXPECTED {members:,} members done and none left: {done:,}, {left:,} left")
    print(f"rows where the job and the baseline differ: {differ:,}")
    check = await verify(engine)
    print("verify:", "clean" if check.clean else check.render())
    await engine.dispose()
    if done != members or left or differ or not check.clean:
        raise SystemExit(1)
