"""The service's scheduled jobs: the programme's four (operations/jobs.py) and
the API's own purge of idempotency keys and seen signatures, with their
intervals from the settings; the runner the command line and the scheduler
use; and the in-service scheduler started with the app (`loyalty serve
--with-scheduler`, or `LOYALTY_SCHEDULER=1`) in every worker, its runs shared
out through advisory locks and the run records (operations/schedule.py).

The jobs get an engine of their own (a small pool, no statement timeout:
they scan what is due), not the request pool with its 10 s statement limit.
"""

import asyncio
import contextlib
import getpass
import os
import socket
from dataclasses import replace
from datetime import datetime, timedelta

from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.partner_requests import purge
from api.settings import Settings
from ledger.database import create_engine
from ledger.jobs import Batch, OnBatch
from ledger.service import LedgerService
from operations.jobs import INTERVALS, Job, standard_jobs
from operations.runner import JobRunner
from operations.schedule import Scheduler, parse_intervals

# Every job, in the order the commands and the crontab list them.
JOB_NAMES = (
    "release-pending",
    "expire-holds",
    "expire-points",
    "requalify-tiers",
    "create-partitions",
    "purge-idempotency",
    "lapse-club-memberships",
    "club-anniversary-gifts",
)
# Seconds between scheduled runs unless LOYALTY_JOB_INTERVALS says otherwise:
# keys past their retention are purged hourly (small deletes).
DEFAULT_INTERVALS = {**INTERVALS, "purge-idempotency": 3600}


class PurgeIdempotency:
    """Idempotency keys and stored answers past their retention, and seen
    signatures past their window, deleted (api/partner_requests.py `purge`,
    one transaction). On the database's clock: no as-of, which would forget
    keys still inside their retention and let a retried request post twice."""

    name = "purge-idempotency"
    unit = "keys"
    moves_points = False
    takes_as_of = False

    def __init__(self, engine: AsyncEngine, retention: timedelta) -> None:
        self.engine = engine
        self.retention = retention

    async def due(self, as_of: datetime | None) -> Batch:
        async with self.engine.connect() as conn:
            count = (
                await conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM partner_requests "
                        "WHERE created_at < now() - CAST(:r AS interval)) + "
                        "(SELECT count(*) FROM idempotency_keys "
                        "WHERE created_at < now() - CAST(:r AS interval))"
                    ),
                    {"r": self.retention},
                )
            ).scalar_one()
        return Batch(count, 0)

    async def blocked(self, as_of: datetime) -> list[str]:
        return []

    async def run(self, as_of: datetime | None, on_batch: OnBatch) -> int:
        count = await purge(self.engine, self.retention)
        on_batch(Batch(count, 0))
        return count


def service_jobs(settings: Settings, ledger: LedgerService) -> dict[str, Job]:
    jobs: dict[str, Job] = standard_jobs(ledger, settings.tier_period)
    jobs["purge-idempotency"] = PurgeIdempotency(
        ledger.engine, timedelta(days=settings.idempotency_retention_days)
    )
    return {name: jobs[name] for name in JOB_NAMES}


def intervals(settings: Settings) -> dict[str, int]:
    """Seconds between runs by job: the defaults, then LOYALTY_JOB_INTERVALS."""
    return {
        **{name: DEFAULT_INTERVALS[name] for name in JOB_NAMES},
        **parse_intervals(settings.job_intervals, list(JOB_NAMES)),
    }


def jobs_engine(settings: Settings) -> AsyncEngine:
    """A small pool for jobs: the advisory lock's connection, the batches'
    and the counts'; no statement or round-trip limit (lock waits stay
    bounded, and retried, as in the API)."""
    limits = replace(
        settings.database_limits(), statement_timeout_ms=0, command_timeout_seconds=None
    )
    return create_engine(settings.database_url, pool_size=2, limits=limits)


def cli_runner(settings: Settings, ledger: LedgerService) -> JobRunner:
    return JobRunner(
        ledger.engine, service_jobs(settings, ledger), "cli", f"cli:{getpass.getuser()}"
    )


def with_scheduler(app: Litestar, settings: Settings) -> Litestar:
    """The app with the scheduler running beside it in this worker: started
    after the app's own start-up, cancelled (its batch in flight rolled back,
    the run recorded as cancelled) before the app's shutdown."""
    state: dict[str, object] = {}

    async def start() -> None:
        engine = jobs_engine(settings)
        # The app's business clock (api/app.py); the runner's intervals stay real time.
        ledger = LedgerService(engine, settings.ledger_config(), clock=app.state.clock)
        jobs = service_jobs(settings, ledger)
        runner = JobRunner(
            engine, jobs, "scheduler", f"scheduler@{socket.gethostname()}:{os.getpid()}"
        )
        scheduler = Scheduler(runner, intervals(settings))
        state.update(
            engine=engine,
            scheduler=scheduler,
            task=asyncio.create_task(scheduler.run_forever(), name="loyalty-scheduler"),
        )
        app.state.scheduler = scheduler

    async def stop() -> None:
        task = state.get("task")
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        engine = state.get("engine")
        if isinstance(engine, AsyncEngine):
            await engine.dispose()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app


def create_app_from_env() -> Litestar:
    """Factory for server workers: the app, with the scheduler when the
    settings ask for it (`loyalty serve --with-scheduler` passes it on)."""
    from api.app import create_app
    from api.worker_process import ready_worker

    settings = Settings.from_env()
    app = create_app(settings)
    app = with_scheduler(app, settings) if settings.scheduler else app
    ready_worker()
    return app
