"""Operating the jobs (operations/, `loyalty jobs ...`): a run goes on until
nothing is due, over as many batches as it takes, and says what it did and
what is left; a run as of a later instant dates its entries then and says
so, and is refused where that would put a member's history out of order; a
dry run writes nothing and tells what the real run then does; one run of a
job at a time (advisory lock), also between schedulers in several workers;
every run is recorded; the example crontab names every job.

Jobs act on everything due in their database, so each test has a database of
its own."""

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from api.cli import main
from api.jobs_service import JOB_NAMES, service_jobs
from api.settings import Settings
from ledger.commands import Authorise, Earn
from ledger.database import create_engine
from ledger.errors import AsOfRefused
from ledger.expiry import RollingToQuarterEnd
from ledger.jobs import Batch
from ledger.partitions import PARTITIONED, partitions
from ledger.service import LedgerConfig, LedgerService
from ledger.verify import verify
from operations.jobs import CreatePartitions, RequalifyTiers
from operations.runner import JobRunner, job_lock
from operations.schedule import Scheduler
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import TierInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY, own_database

pytestmark = pytest.mark.long  # tens of seconds: handed out first (tests/conftest.py)

CONFIG = LedgerConfig(expiry_policy=RollingToQuarterEnd(36))  # the CLI's default policy
HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture
def database(server_url):
    with own_database(server_url, "loyalty_jobs") as url:
        yield url


@pytest.fixture
async def engine(database):
    engine = create_engine(database, pool_size=10)
    yield engine
    await engine.dispose()


@pytest.fixture
def cli(database, tmp_path):
    """`await cli(*args)`: the `loyalty` command on the test's database (in a
    thread: the command runs its own event loop)."""
    env = {
        "LOYALTY_DATABASE_URL": database,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }

    async def invoke(*args: str):
        return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)

    return invoke


def ledger_at(engine, when: datetime | None = None) -> LedgerService:
    """A ledger whose clock says `when` (default: the real clock)."""
    if when is None:
        return LedgerService(engine, CONFIG)
    return LedgerService(engine, CONFIG, clock=lambda: when)


def runner(engine, ledger: LedgerService | None = None) -> JobRunner:
    ledger = ledger or LedgerService(engine, CONFIG)
    return JobRunner(engine, service_jobs(Settings(), ledger), "cli", "cli:tests")


async def enrol(engine, members: int) -> tuple[str, list[str]]:
    """A partner and `members` members (one statement, as a member import)."""
    run = uuid.uuid4().hex[:6]
    partner = f"shop-{run}"
    await Registry(engine, SecretBox(TEST_SECRET_KEY)).create_partner(
        PartnerInput(id=partner, name=partner), "staff:tests"
    )
    ids = [f"m-{run}-{i:04d}" for i in range(members)]
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO members (id, enrolled_by) SELECT unnest(CAST(:ids AS text[])), 't'"),
            {"ids": ids},
        )
    return partner, ids


async def in_chunks(calls, size: int = 20) -> None:
    # No more at once than the engine's pool (20): an overflow connection is
    # closed when returned, and a new one prepares every statement again.
    calls = list(calls)
    for start in range(0, len(calls), size):
        await asyncio.gather(*calls[start : start + size])


async def due_holds(engine, members: int, per_member: int, points: int = 10) -> list[str]:
    """Holds authorised an hour ago for a minute: all due now."""
    partner, ids = await enrol(engine, members)
    past = ledger_at(engine, HOUR_AGO)
    await in_chunks(past.earn(Earn.simple(m, partner, f"e-{m}", 100)) for m in ids)
    await in_chunks(
        past.authorise(Authorise(m, partner, points, expires_in_seconds=60))
        for _ in range(per_member)
        for m in ids  # a chunk's holds are of different members: none waits on another
    )
    return ids


async def snapshot(engine) -> tuple:
    """Everything a job may write, but the record of runs."""
    async with engine.connect() as conn:
        return tuple(
            (
                await conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM journal_entries), "
                        "(SELECT count(*) FROM lot_movements), "
                        "(SELECT coalesce(string_agg(account || asset || slot || '=' || "
                        "balance || '/' || version, ',' ORDER BY account, asset, slot), '') "
                        "FROM balances), "
                        "(SELECT coalesce(string_agg(member_id || tier_code || "
                        "coalesce(valid_until::text, '-'), ',' ORDER BY member_id), '') "
                        "FROM member_tiers), "
                        "(SELECT count(*) FROM holds WHERE status = 'open'), "
                        "(SELECT count(*) FROM pending_points WHERE release_entry_id IS NULL)"
                    )
                )
            ).one()
        )


async def runs(engine, job: str) -> list:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT * FROM job_runs WHERE job = :job ORDER BY started_at"), {"job": job}
            )
        ).all()


async def assert_verified(engine) -> None:
    report = await verify(engine)
    assert report.clean, report.render()


async def test_one_run_expires_every_due_hold_over_several_batches(engine, cli):
    """The issue's case: 1,005 due holds, one `jobs run`: all of them, in two
    batches of at most a thousand, and it says none is left."""
    ids = await due_holds(engine, members=201, per_member=5)

    result = await cli("jobs", "run", "expire-holds")
    assert result.exit_code == 0, result.output
    assert result.stdout == "expire-holds: 1005 processed, 0 remaining (holds, 10050 points)\n"
    assert "expire-holds: 1,005 holds to do" in result.stderr  # progress, not a terminal: lines

    async with engine.connect() as conn:
        voids = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT hold_id), min(posted_by), max(posted_by) "
                    "FROM journal_entries WHERE kind = 'void'"
                )
            )
        ).one()
        held = (
            await conn.execute(
                text("SELECT coalesce(sum(balance), 0) FROM balances WHERE account LIKE :held"),
                {"held": "member:%:held"},
            )
        ).scalar_one()
    assert tuple(voids) == (1005, 1005, "job:expire-holds", "job:expire-holds")
    assert held == 0
    assert {(await LedgerService(engine).balances(m)).available for m in ids} == {100}

    (run,) = await runs(engine, "expire-holds")
    assert (run.ran_by, run.dry_run, run.as_of, run.error) == ("cli", False, None, None)
    assert (run.due, run.processed, run.remaining, run.points) == (1005, 1005, 0, 10050)
    assert run.runner.startswith("cli:") and run.finished_at >= run.started_at

    # Batches as the runner sees them: full ones and the rest (batches of 4
    # here, so that ten holds show what a thousand and five did above).
    more = await due_holds(engine, members=5, per_member=2)
    small_batches = LedgerService(engine, CONFIG)
    small_batches.job_batch = 4
    seen: list[Batch] = []

    class Recorder:
        def start(self, job, unit, total):
            seen.append(Batch(total, -1))

        def advance(self, items, points=0):
            seen.append(Batch(items, points))

        def finish(self):
            pass

    report = await runner(engine, small_batches).run("expire-holds", progress=Recorder())
    # Two lanes at once: the batch of two may be heard of before a full one.
    assert seen[0] == Batch(10, -1)
    assert sorted((b.items, b.points) for b in seen[1:]) == [(2, 20), (4, 40), (4, 40)]
    assert (report.processed, report.remaining) == (10, 0)
    assert {(await LedgerService(engine).balances(m)).held for m in more} == {0}
    await assert_verified(engine)


async def test_as_of_a_later_instant_expires_what_is_due_then_and_says_so(engine, cli):
    partner, (anna, ben) = await enrol(engine, 2)
    ledger = LedgerService(engine, CONFIG)
    await ledger.earn(Earn.simple(anna, partner, "a-1", 120))
    await ledger.earn(Earn.simple(ben, partner, "b-1", 30))
    async with engine.connect() as conn:
        expires = (await conn.execute(text("SELECT max(expires_at) FROM lots"))).scalar_one()
    as_of = expires + timedelta(days=1)
    stamp = as_of.astimezone(UTC).isoformat().replace("+00:00", "Z")

    nothing = await cli("jobs", "run", "expire-points")  # on the clock: nothing due yet
    assert nothing.stdout.startswith("expire-points: 0 processed, 0 remaining"), nothing.output

    dry = await cli("jobs", "run", "expire-points", "--as-of", stamp, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"dry run as of {as_of.isoformat()}" in dry.stdout
    assert "2 members due, 150 points would move; nothing written" in dry.stdout

    result = await cli("jobs", "run", "expire-points", "--as-of", stamp)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("expire-points: 2 processed, 0 remaining (members, 150 points)")
    assert (await ledger.balances(anna)).available == 0
    assert (await ledger.account_balance("program:expired")).balances[0].balance == 150
    async with engine.connect() as conn:
        entries = (
            await conn.execute(
                text(
                    "SELECT member_id, effective_at, posted_by FROM journal_entries "
                    "WHERE kind = 'expire' ORDER BY member_id"
                )
            )
        ).all()
    assert [tuple(e) for e in entries] == [
        (anna, as_of, f"job:expire-points as-of {stamp}"),
        (ben, as_of, f"job:expire-points as-of {stamp}"),
    ]
    recorded = await runs(engine, "expire-points")
    assert [(r.dry_run, r.as_of, r.processed, r.points) for r in recorded] == [
        (False, None, 0, 0),
        (True, as_of, 0, 150),
        (False, as_of, 2, 150),
    ]

    # Refused: an as-of in the past, one without an offset, and one earlier
    # than entries a member already has (anna's expiry, dated at the as-of).
    past = await cli("jobs", "run", "expire-points", "--as-of", "2020-01-01T00:00:00Z")
    assert past.exit_code == 3 and "as-of-refused" in past.stderr, past.output
    naive = await cli("jobs", "run", "expire-points", "--as-of", "2030-01-01T00:00:00")
    assert naive.exit_code == 2 and "has no offset" in naive.stderr, naive.output
    purge = await cli("jobs", "run", "purge-idempotency", "--as-of", stamp)
    assert purge.exit_code == 3 and "takes no as-of" in purge.stderr, purge.output

    soon = datetime.now(UTC) + timedelta(hours=1)
    await ledger.earn(Earn.simple(anna, partner, "a-2", 40, release_at=soon))
    earlier = (soon + timedelta(hours=1)).isoformat()
    for args in ((), ("--dry-run",)):
        refused = await cli("jobs", "run", "release-pending", "--as-of", earlier, *args)
        assert refused.exit_code == 3, refused.output
        assert "as-of-refused" in refused.stderr and anna in refused.stderr
    assert (await ledger.balances(anna)).pending == 40  # nothing released
    # The ledger refuses it too, member by member under their locks.
    with pytest.raises(AsOfRefused, match="out of order"):
        await ledger.release_pending(as_of=soon + timedelta(hours=1))
    # An as-of after everything the member has: released, dated then.
    later = await cli(
        "jobs", "run", "release-pending", "--as-of", (as_of + timedelta(days=1)).isoformat()
    )
    assert later.stdout.startswith("release-pending: 1 processed, 0 remaining"), later.output
    await assert_verified(engine)


async def test_a_dry_run_writes_nothing_and_tells_what_the_run_does(engine, cli):
    partner, ids = await enrol(engine, 60)
    past = ledger_at(engine, HOUR_AGO)
    long_ago = datetime.now(UTC) - timedelta(days=4 * 365)
    await Rulebook(LedgerService(engine)).put_tier(
        "silver", TierInput("Silver", 1, 1000, Decimal("1.25"), Decimal("0.05")), "staff:tests"
    )
    await in_chunks(
        past.earn(Earn.simple(m, partner, f"old-{m}", 10 + i % 7, effective_at=long_ago))
        for i, m in enumerate(ids)
    )
    await in_chunks(past.earn(Earn.simple(m, partner, f"new-{m}", 100)) for m in ids)
    await in_chunks(
        past.earn(
            Earn.simple(m, partner, f"p-{m}", 5 + i % 3, release_at=HOUR_AGO + timedelta(minutes=1))
        )
        for i, m in enumerate(ids[::2])
    )
    await in_chunks(
        past.authorise(Authorise(m, partner, 20 + i % 5, expires_in_seconds=60))
        for i, m in enumerate(ids[::3])
    )
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO member_tiers (member_id, tier_code, qualified_at, valid_until) "
                "SELECT m, 'silver', :at, :until FROM unnest(CAST(:ids AS text[])) AS t(m)"
            ),
            {"ids": ids[::5], "at": long_ago, "until": HOUR_AGO},
        )
    jobs = runner(engine)

    for job in ("release-pending", "expire-holds", "expire-points", "requalify-tiers"):
        before = await snapshot(engine)
        dry = await jobs.run(job, dry_run=True)
        assert dry.status == "dry-run" and dry.due > 0, dry
        assert await snapshot(engine) == before, job
        done = await jobs.run(job)
        assert (done.processed, done.points, done.remaining) == (dry.due, dry.points, 0), job
        assert await snapshot(engine) != before, job
    expected = {
        "release-pending": (30, sum(5 + i % 3 for i in range(30))),
        "expire-holds": (20, sum(20 + i % 5 for i in range(20))),
        # every member's old lot, and the earnings released from an hour ago
        # are not due (their lots expire 36 months on)
        "expire-points": (60, sum(10 + i % 7 for i in range(60))),
        "requalify-tiers": (12, None),
    }
    for job, (items, points) in expected.items():
        dry, real = (r for r in await runs(engine, job))
        assert (dry.dry_run, dry.due, dry.processed, dry.remaining) == (True, items, 0, items)
        assert (real.dry_run, real.processed, real.points) == (False, items, points), job

    result = await cli("jobs", "run", "expire-points", "--dry-run")
    assert (
        result.stdout
        == "expire-points (dry run): 0 members due, 0 points would move; nothing written\n"
    )
    await assert_verified(engine)


async def test_one_run_of_a_job_at_a_time_and_each_item_once(engine, database):
    """A run that finds the job's advisory lock held does nothing; two runners
    on their own connections, started together, void each hold once."""
    await due_holds(engine, members=100, per_member=3)
    other = create_engine(database, pool_size=3)
    try:
        async with job_lock(other, "expire-holds") as taken:
            assert taken
            busy = await runner(engine).run("expire-holds")
            assert busy.status == "busy" and busy.processed == 0
            dry = await runner(engine).run("expire-holds", dry_run=True)  # a dry run takes no lock
            assert dry.due == 300
        assert await runs(engine, "expire-holds") != []  # the dry run, recorded
        assert all(r.dry_run for r in await runs(engine, "expire-holds"))  # the busy one: not

        first, second = LedgerService(engine, CONFIG), LedgerService(other, CONFIG)
        first.job_batch = second.job_batch = 40  # a run of several batches
        reports = await asyncio.gather(
            runner(engine, first).run("expire-holds"), runner(other, second).run("expire-holds")
        )
        assert sum(r.processed for r in reports) == 300
        # The second found the first going, or (started after it ended) nothing left.
        assert sorted(r.status for r in reports) in (["busy", "done"], ["done", "done"])
    finally:
        await other.dispose()
    async with engine.connect() as conn:
        per_hold = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM journal_entries WHERE kind = 'void' GROUP BY hold_id "
                    "HAVING count(*) > 1"
                )
            )
        ).all()
        voids = (
            await conn.execute(text("SELECT count(*) FROM journal_entries WHERE kind = 'void'"))
        ).scalar_one()
    assert per_hold == [] and voids == 300
    await assert_verified(engine)


async def test_schedulers_in_two_workers_share_one_schedule(engine, database):
    """Two workers' schedulers, every job each second: each run of a job
    alone (never two at a time), about one per second between them, and the
    due holds voided once."""
    await due_holds(engine, members=40, per_member=2)
    engines = [create_engine(database, pool_size=3) for _ in range(2)]
    every = dict.fromkeys(JOB_NAMES, 1)
    schedulers = [
        Scheduler(
            JobRunner(
                e,
                service_jobs(Settings(), LedgerService(e, CONFIG)),
                "scheduler",
                f"scheduler@test:{n}",
            ),
            every,
        )
        for n, e in enumerate(engines)
    ]
    tasks = [asyncio.create_task(s.run_forever()) for s in schedulers]
    try:
        await asyncio.sleep(3.5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for e in engines:
            await e.dispose()
    for job in JOB_NAMES:
        recorded = await runs(engine, job)
        assert 1 <= len(recorded) <= 5, (job, len(recorded))
        assert all(r.ran_by == "scheduler" and not r.dry_run for r in recorded)
        finished = [r for r in recorded if r.finished_at is not None]
        for earlier, later in itertools.pairwise(finished):
            assert later.started_at >= earlier.finished_at, job  # never two at a time
            assert later.started_at - earlier.started_at >= timedelta(seconds=1), job
    holds = await runs(engine, "expire-holds")
    assert sum(r.processed for r in holds) == 80 and holds[0].processed == 80
    await assert_verified(engine)


async def test_the_service_runs_the_scheduler_when_asked(engine, database, redis_url, tmp_path):
    from api.app import create_app
    from api.jobs_service import with_scheduler
    from tests.api.conftest import MEMBER_SECRET, SECRET

    ids = await due_holds(engine, members=5, per_member=1)
    settings = Settings(
        database_url=database,
        redis_url=redis_url,
        jwt_secret=SECRET,
        member_jwt_secret=MEMBER_SECRET,
        secret_key=TEST_SECRET_KEY,
        data_dir=tmp_path,
        scheduler=True,
        job_intervals="expire-holds=1",
    )
    app = with_scheduler(create_app(settings), settings)
    async with AsyncTestClient(app):
        for _ in range(50):
            if all([(await LedgerService(engine).balances(m)).held == 0 for m in ids]):
                break
            await asyncio.sleep(0.1)
        assert app.state.scheduler.intervals["expire-holds"] == 1
    recorded = await runs(engine, "expire-holds")
    assert (recorded[0].ran_by, recorded[0].processed, recorded[0].remaining) == ("scheduler", 5, 0)
    assert sum(r.processed for r in recorded) == 5
    assert recorded[0].runner.startswith("scheduler@")


def test_the_example_crontab_names_every_job(tmp_path):
    env = {
        "LOYALTY_DATABASE_URL": "postgresql://loyalty@db.example:5432/loyalty",
        "LOYALTY_JOB_INTERVALS": "expire-holds=120,expire-points=86400",
    }
    from api.cli_jobs import JOBS

    assert JOBS == JOB_NAMES  # what `jobs run` accepts is what the service schedules
    result = CliRunner().invoke(main, ["jobs", "schedule"], env=env)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == len(JOB_NAMES)
    for job, line in zip(JOB_NAMES, lines, strict=True):
        fields = line.split()
        assert fields[6:9] == ["jobs", "run", job], line
        assert fields[5].startswith("/") and fields[5].endswith("loyalty"), line
    assert lines[1].startswith("*/2 * * * * ")  # expire-holds every two minutes
    assert lines[2].split()[1:5] == ["4", "*", "*", "*"]  # expire-points daily, at 04:33
    assert lines[0].startswith("*/15 * * * * ")  # release-pending: its default


def test_job_intervals_are_checked_when_the_settings_are_read():
    from api.jobs_service import intervals
    from api.settings import SettingsError

    for wrong in ("expire-hold=60", "expire-holds=0", "expire-holds=soon", "expire-holds"):
        with pytest.raises(SettingsError, match="LOYALTY_JOB_INTERVALS"):
            Settings.from_env({"LOYALTY_JOB_INTERVALS": wrong})
    chosen = intervals(Settings.from_env({"LOYALTY_JOB_INTERVALS": " expire-holds=30 , "}))
    assert chosen["expire-holds"] == 30 and chosen["release-pending"] == 900


async def test_create_partitions_makes_the_months_ahead_once(engine, cli):
    """The migration made this month and the next three; asked for four ahead,
    the job makes the fifth month of the four tables, once, and postings land
    in their month's partition."""
    job = CreatePartitions(LedgerService(engine, CONFIG), months_ahead=4)
    assert (await job.due(None)).items == 4
    jobs = {**service_jobs(Settings(), LedgerService(engine, CONFIG)), job.name: job}
    report = await JobRunner(engine, jobs, "cli", "cli:tests").run(job.name)
    assert (report.processed, report.remaining) == (4, 0)
    assert (await job.due(None)).items == 0
    result = await cli("jobs", "run", "create-partitions")  # three ahead: nothing to do
    assert result.exit_code == 0, result.output
    assert "create-partitions: 0 processed, 0 remaining" in result.stdout
    async with engine.connect() as conn:
        month = (await conn.execute(text("SELECT ledger_month_index(now())"))).scalar_one()
        made = [p for p in await partitions(conn) if p.month == month + 4]
    assert sorted(p.table for p in made) == sorted(PARTITIONED)
    refused = await cli("jobs", "run", "create-partitions", "--as-of", "2099-01-01T00:00:00Z")
    assert refused.exit_code != 0


async def test_a_killed_run_leaves_a_record_of_the_batches_it_committed(engine):
    """A run killed after two of its batches (the process gone: it never
    records its end) shows what those two batches did, not 0."""
    from operations.runs import RunLog

    await due_holds(engine, members=30, per_member=5)  # 150 holds of 10 points
    ledger = LedgerService(engine, CONFIG)
    ledger.job_batch = 40  # batches of 40, 40, 40, 30
    # One lane: with two, the other lane's third batch may commit before the
    # second is heard of, and what "killed after two" leaves is a race.
    ledger.job_lanes = 1
    killed = runner(engine, ledger)

    class NoEnd(type(killed.log)):
        async def finish(self, *args, **kwargs):  # the process died before its end
            pass

    killed.log = NoEnd(engine)

    class Killed(BaseException):
        pass

    class KillAfterTwo:
        batches = 0

        def start(self, job, unit, total):
            pass

        def advance(self, items, points=0):
            self.batches += 1
            if self.batches == 2:
                raise Killed

        def finish(self):
            pass

    with pytest.raises(Killed):
        await killed.run("expire-holds", progress=KillAfterTwo())
    (run,) = await runs(engine, "expire-holds")
    assert run.finished_at is None and run.due == 150
    assert (run.processed, run.points) == (80, 800)
    async with engine.connect() as conn:
        open_holds = (
            await conn.execute(text("SELECT count(*) FROM holds WHERE status = 'open'"))
        ).scalar_one()
    assert open_holds == 70  # the two batches committed, nothing more

    # Seen through the staff API as well: how far the killed run got.
    latest = (await RunLog(engine).latest(["expire-holds"]))["expire-holds"]
    assert (latest.id, latest.processed, latest.finished_at) == (run.id, 80, None)


async def due_statuses(engine, members: int) -> tuple[list[str], dict[str, int]]:
    """Members whose silver status ran out, the later enrolled the longer
    ago (an hour apart), and their QP of last year: 1,500 (kept) or 10
    (dropped) in turn."""
    partner, ids = await enrol(engine, members)
    ledger = ledger_at(engine)
    rules = Rulebook(ledger)
    await rules.put_tier("silver", TierInput("Silver", 1, 1000, Decimal("1.25")), "staff:tests")
    last_year = datetime(datetime.now(UTC).year - 1, 6, 1, tzinfo=UTC)
    qp = {m: 1_500 if i % 2 else 10 for i, m in enumerate(ids)}
    await in_chunks(
        ledger.earn(Earn.simple(m, partner, f"q-{m}", 1, qp[m], effective_at=last_year))
        for m in ids
    )
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO member_tiers (member_id, tier_code, qualified_at, valid_until) "
                "SELECT m, 'silver', :at, CAST(:now AS timestamptz) - n * interval '1 hour' "
                "FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS t(m, n)"
            ),
            {"ids": ids, "at": last_year, "now": datetime.now(UTC)},
        )
    return ids, qp


async def test_requalification_runs_in_passes_until_no_status_is_due(engine):
    """Passes of `batch` statuses, the longest overdue first, until none is
    due: each member requalified once, on what last year's QP give."""
    ids, qp = await due_statuses(engine, 12)
    ledger = ledger_at(engine)
    passes: list[Batch] = []
    job = RequalifyTiers(ledger, "calendar", batch=5)
    assert await job.run(None, passes.append) == 12
    assert [p.items for p in passes] == [5, 5, 2]
    assert (await job.due(None)).items == 0
    async with engine.connect() as conn:
        changes = (
            await conn.execute(
                text("SELECT member_id, to_tier FROM tier_changes ORDER BY id"),
            )
        ).all()
    # One change each, the longest overdue (the last enrolled) in the first pass.
    assert {c.member_id for c in changes[:5]} == set(ids[-5:])
    assert sorted(changes) == sorted((m, "silver" if qp[m] >= 1000 else "base") for m in ids)
    await assert_verified(engine)


async def test_requalification_passes_over_members_busy_elsewhere(engine, database):
    """The most overdue members held by another transaction (a batch earning
    them, say): a pass takes the next due ones instead of stopping, and the
    busy ones are left due for a later run."""
    ids, qp = await due_statuses(engine, 12)
    busy = ids[-5:]  # the five longest overdue: the first page of a pass
    job = RequalifyTiers(ledger_at(engine), "calendar", batch=5)
    other = create_engine(database, pool_size=1)
    try:
        async with other.begin() as conn:
            await conn.execute(
                text(
                    "SELECT 1 FROM balances WHERE account = ANY(CAST(:accounts AS text[])) "
                    "AND asset = 'PTS' AND slot = 0 FOR NO KEY UPDATE"
                ),
                {"accounts": [f"member:{m}:available" for m in busy]},
            )
            passes: list[Batch] = []
            assert await job.run(None, passes.append) == 7
            assert [p.items for p in passes] == [5, 2]
        assert (await job.due(None)).items == 5  # the busy ones, free now
        assert await job.run(None, passes.append) == 5
    finally:
        await other.dispose()
    async with engine.connect() as conn:
        changes = (await conn.execute(text("SELECT member_id, to_tier FROM tier_changes"))).all()
    assert sorted(changes) == sorted((m, "silver" if qp[m] >= 1000 else "base") for m in ids)
    await assert_verified(engine)
