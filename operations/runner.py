"""Running a scheduled job to completion: `JobRunner.run`.

A run counts what is due (one statement: the progress bar's total), runs the
job's batches until nothing is due (each batch its own transaction: a run
killed loses at most the batch in flight, and the next run continues), tells
a `Progress` of every batch, counts what is left at the end and records the
run in `job_runs` (operations/runs.py).

The record says how far a run got as it goes: after each batch has committed
its processed count and points are written to the run's row (one small
UPDATE, `RunLog.progressed`, on a connection of its own in autocommit, not
in the batch's transaction: the batch's transaction belongs to the ledger
(ledger/jobs.py, retried as a whole on a conflict) and the record must not
take part in its retries or its rollback). So a run killed half-way (`kill
-9`, a lost host) leaves its row at the batches it committed, short by at
most the one whose count was being written; one that fails is recorded as
far as it got when it ends.

One run of a job at a time, across processes and hosts: a run holds the
job's PostgreSQL advisory lock (`pg_try_advisory_lock`, on a connection of
its own outside any transaction) from before it counts until after it has
recorded its end; a run that finds the lock held does nothing and says so
(`busy`). The jobs are safe to run concurrently anyway (SKIP LOCKED, see
ledger/jobs.py): the lock keeps a cron run and a scheduler, or two workers,
from doing the same work side by side.

`--as-of` (a run that takes another instant for now) is checked here before
anything is done: the job must accept one, the instant must carry an offset
and not be before the clock, and no member the run would post for may have an
entry (or tier change) after it; ledger/jobs.py says why, and checks the
members again under their locks. A dry run counts what is due, and the points
it would move, with the same statements and writes nothing but its record;
it takes no lock.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.errors import AsOfRefused
from ledger.jobs import Batch, check_as_of
from ledger.service import utc_now
from operations.jobs import Job
from operations.runs import RAN_BY, RunLog


class Progress(Protocol):
    """Where a run reports as it goes (a progress bar, log lines, nothing)."""

    def start(self, job: str, unit: str, total: int) -> None: ...

    def advance(self, items: int, points: int = 0) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, job: str, unit: str, total: int) -> None:
        pass

    def advance(self, items: int, points: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass(frozen=True)
class JobReport:
    """What a run did. `status`: `done`, `dry-run`, `busy` (another run of the
    job holds its lock: nothing done) or `not-due` (a scheduled run within the
    job's interval of the last one: nothing done)."""

    job: str
    unit: str
    status: str
    due: int = 0  # items due at the start
    processed: int = 0
    points: int | None = None  # moved (a dry run: would move); None: the job moves none
    remaining: int = 0  # items still due at the end (a dry run: everything due)
    as_of: datetime | None = None
    run_id: int | None = None

    def summary(self) -> str:
        """One line for people and logs."""
        when = f" as of {self.as_of.isoformat()}" if self.as_of else ""
        if self.status == "busy":
            return f"{self.job}: another run of it holds its lock; nothing done"
        if self.status == "not-due":
            return f"{self.job}: ran within its interval; nothing done"
        points = f", {self.points} points" if self.points is not None else ""
        if self.status == "dry-run":
            moves = f", {self.points} points would move" if self.points is not None else ""
            return f"{self.job} (dry run{when}): {self.due} {self.unit} due{moves}; nothing written"
        return (
            f"{self.job}: {self.processed} processed, {self.remaining} remaining "
            f"({self.unit}{points}){when}"
        )


def lock_key(job: str) -> int:
    """The job's advisory lock key: stable across processes and releases."""
    digest = hashlib.sha256(f"loyalty.job:{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@asynccontextmanager
async def job_lock(engine: AsyncEngine, job: str) -> AsyncIterator[bool]:
    """Hold the job's advisory lock while the block runs, if nobody else does
    (yields whether it was taken). Session-level, on a connection outside any
    transaction, so batches commit on other connections while it is held and
    a process that dies releases it with its session."""
    key = lock_key(job)
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        taken = (
            await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
        ).scalar_one()
        try:
            yield taken
        finally:
            if taken:
                try:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except BaseException:
                    # Never hand the pool a session that may still hold the
                    # lock: closing it releases the lock.
                    await conn.invalidate()
                    raise


def describe(error: BaseException) -> str:
    code = getattr(error, "code", None)
    detail = getattr(error, "detail", None) or str(error) or type(error).__name__
    return f"{code}: {detail}" if code else f"{type(error).__name__}: {detail}"


class JobRunner:
    """Runs the jobs it is given on one engine, as `ran_by` (`cli` or
    `scheduler`) and `runner` (who or which process, for the record)."""

    def __init__(
        self,
        engine: AsyncEngine,
        jobs: Mapping[str, Job],
        ran_by: str,
        runner: str,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if ran_by not in RAN_BY:
            raise ValueError(f"ran_by is one of {RAN_BY}")
        self.engine = engine
        self.jobs = dict(jobs)
        self.ran_by = ran_by
        self.runner = runner
        self.clock = clock
        self.log = RunLog(engine)

    def check_as_of(self, job: Job, as_of: datetime) -> None:
        """What can be told of an as-of before touching the database."""
        if not job.takes_as_of:
            raise AsOfRefused(f"{job.name} runs on the clock only: it takes no as-of")
        check_as_of(as_of, self.clock())

    async def run(
        self,
        name: str,
        *,
        as_of: datetime | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
        every: timedelta | None = None,
    ) -> JobReport:
        """Run job `name` until nothing is due (or, `dry_run`, count what would
        be done). `every`: a scheduled run, which does nothing when the job
        started (on the clock, not dry) within that interval; checked under
        the job's lock, so workers and hosts share one schedule."""
        job = self.jobs[name]
        progress = progress or NoProgress()
        if as_of is not None:
            self.check_as_of(job, as_of)
        if dry_run:
            return await self._recorded(job, as_of, True, progress)
        async with job_lock(self.engine, name) as taken:
            if not taken:
                return JobReport(name, job.unit, "busy", as_of=as_of)
            if every is not None:
                last = await self.log.last_scheduled_start(name)
                if last is not None and self.clock() - last < every:
                    return JobReport(name, job.unit, "not-due")
            return await self._recorded(job, as_of, False, progress)

    async def _recorded(
        self, job: Job, as_of: datetime | None, dry_run: bool, progress: Progress
    ) -> JobReport:
        run_id = await self.log.start(
            job.name, self.ran_by, self.runner, as_of, dry_run, self.clock()
        )
        done = Batch(0, 0)
        remaining: int | None = None
        recording: set[asyncio.Task] = set()  # the batches' progress writes in flight

        def on_batch(batch: Batch) -> None:
            # Called once the batch has committed, between batches (no await:
            # the write runs beside the next batch, and is awaited at the end).
            nonlocal done
            done = Batch(done.items + batch.items, done.points + batch.points)
            task = asyncio.ensure_future(
                self.log.progressed(run_id, done.items, done.points if job.moves_points else None)
            )
            recording.add(task)
            task.add_done_callback(recording.discard)
            progress.advance(batch.items, batch.points)

        async def recorded_so_far() -> None:
            """The progress writes in flight, done (one that failed only
            leaves the row behind: the run's end writes it whole)."""
            if recording:
                await asyncio.gather(*recording, return_exceptions=True)

        try:
            due = await job.due(as_of)
            await self.log.counted(run_id, due.items)
            if as_of is not None:
                blocked = await job.blocked(as_of)
                if blocked:
                    raise AsOfRefused(
                        f"as-of {as_of.isoformat()} is before entries already posted for "
                        f"{', '.join(blocked)}: their history would be out of order",
                        members=blocked,
                    )
            if dry_run:
                report = JobReport(
                    job.name,
                    job.unit,
                    "dry-run",
                    due=due.items,
                    points=due.points if job.moves_points else None,
                    remaining=due.items,
                    as_of=as_of,
                    run_id=run_id,
                )
            else:
                progress.start(job.name, job.unit, due.items)
                try:
                    await job.run(as_of, on_batch)
                finally:
                    progress.finish()
                remaining = (await job.due(as_of)).items
                report = JobReport(
                    job.name,
                    job.unit,
                    "done",
                    due=due.items,
                    processed=done.items,
                    points=done.points if job.moves_points else None,
                    remaining=remaining,
                    as_of=as_of,
                    run_id=run_id,
                )
        except BaseException as error:
            # Recorded as far as it got (the batches committed stay done),
            # then raised: a cancelled run is recorded as such too.
            await recorded_so_far()
            await self.log.finish(
                run_id,
                self.clock(),
                done.items,
                done.points if job.moves_points else None,
                remaining,
                describe(error),
            )
            raise
        await recorded_so_far()
        await self.log.finish(
            run_id, self.clock(), report.processed, report.points, report.remaining
        )
        return report
