"""The record of job runs (`job_runs`, migration 0012): one row per run,
written when it starts (so a run killed half-way shows as never finished),
brought up to date after every batch it committed (`progressed`: a run
killed half-way shows how far it got) and completed when it ends, with
what was due, done and left, the points moved, the error if any, the as-of
and whether it was a dry run, and who ran it (`cli` or `scheduler`, and
which user or process). Rows older than
`KEEP` go when the same job runs again; a job's last run is always kept.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

KEEP = timedelta(days=30)
RAN_BY = ("cli", "scheduler")

COLUMNS = (
    "id, job, ran_by, runner, as_of, dry_run, started_at, finished_at, due, processed, "
    "points, remaining, error"
)


class JobRun(msgspec.Struct):
    """One run of a job as recorded."""

    id: int
    job: str
    ran_by: str  # cli | scheduler
    runner: str  # the user (cli:NAME) or the process (scheduler@HOST:PID)
    as_of: datetime | None  # the instant the run took for now, if not the clock
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None  # None: still running, or the process died
    due: int | None  # items due when it started (None: not counted yet)
    processed: int
    points: int | None  # moved (in a dry run: that would move); None: the job moves none
    remaining: int | None  # items still due when it ended
    error: str | None


@dataclass(frozen=True)
class RunLog:
    """Reads and writes `job_runs` on its own short transactions (never in a
    job's batch: a batch that rolls back keeps its run's record)."""

    engine: AsyncEngine

    async def start(
        self,
        job: str,
        ran_by: str,
        runner: str,
        as_of: datetime | None,
        dry_run: bool,
        started_at: datetime,
    ) -> int:
        async with self.engine.begin() as conn:
            run_id = (
                await conn.execute(
                    text(
                        "INSERT INTO job_runs (job, ran_by, runner, as_of, dry_run, started_at) "
                        "VALUES (:job, :ran_by, :runner, :as_of, :dry_run, :started_at) "
                        "RETURNING id"
                    ),
                    {
                        "job": job,
                        "ran_by": ran_by,
                        "runner": runner,
                        "as_of": as_of,
                        "dry_run": dry_run,
                        "started_at": started_at,
                    },
                )
            ).scalar_one()
            await conn.execute(
                text("DELETE FROM job_runs WHERE job = :job AND started_at < :cutoff"),
                {"job": job, "cutoff": started_at - KEEP},
            )
        return run_id

    async def counted(self, run_id: int, due: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text("UPDATE job_runs SET due = :due WHERE id = :id"), {"id": run_id, "due": due}
            )

    async def progressed(self, run_id: int, processed: int, points: int | None) -> None:
        """What a run has done so far (after a batch committed). Never moves
        backwards: two of these in flight at once leave the larger."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(
                text(
                    # GREATEST ignores a NULL: a job that moves no points keeps none.
                    "UPDATE job_runs SET "
                    "processed = GREATEST(processed, CAST(:processed AS bigint)), "
                    "points = GREATEST(points, CAST(:points AS bigint)) "
                    "WHERE id = :id AND finished_at IS NULL"
                ),
                {"id": run_id, "processed": processed, "points": points},
            )

    async def finish(
        self,
        run_id: int,
        finished_at: datetime,
        processed: int,
        points: int | None,
        remaining: int | None,
        error: str | None = None,
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE job_runs SET finished_at = :finished_at, processed = :processed, "
                    "points = :points, remaining = :remaining, error = :error WHERE id = :id"
                ),
                {
                    "id": run_id,
                    "finished_at": finished_at,
                    "processed": processed,
                    "points": points,
                    "remaining": remaining,
                    "error": error,
                },
            )

    async def latest(self, jobs: list[str]) -> dict[str, JobRun]:
        """The last run (by start) of each of these jobs that has run, by job
        (one index probe per job)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT r.* FROM unnest(CAST(:jobs AS text[])) AS j(name) "
                    f"CROSS JOIN LATERAL (SELECT {COLUMNS} FROM job_runs WHERE job = j.name "
                    "ORDER BY started_at DESC, id DESC LIMIT 1) AS r"
                ),
                {"jobs": jobs},
            )
            return {r.job: JobRun(**r._mapping) for r in rows}

    async def last_scheduled_start(self, job: str) -> datetime | None:
        """When the job's last run that counts for its schedule started: any
        real run on the clock (scheduled or from the command line, finished or
        not); dry runs and runs as of another time do not count."""
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    text(
                        "SELECT max(started_at) FROM job_runs WHERE job = :job "
                        "AND NOT dry_run AND as_of IS NULL"
                    ),
                    {"job": job},
                )
            ).scalar_one()
