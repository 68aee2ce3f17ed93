"""When the jobs run: an example crontab (`loyalty jobs schedule`) and the
in-service scheduler (`loyalty serve --with-scheduler`).

The scheduler is an asyncio task in every worker of every instance that has
it on; they share one schedule through the database: a worker whose clock
says a job may be due takes the job's advisory lock and runs it only if the
job's last run on the clock (from any worker, host or cron) started at least
its interval ago (`JobRunner.run(every=...)`). So each job runs once per
interval across the fleet, never twice at a time, and a worker that dies
mid-run releases the lock with its session; the next one continues.
"""

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from operations.runner import JobReport, JobRunner

log = logging.getLogger("loyalty.jobs")

# A scheduler wakes up at least this often (seconds) to see whether a job is due.
MAX_POLL = 30.0
# After a run that failed to start (the database unreachable), try again after
# at most this long, whatever the interval.
RETRY_AFTER = 60.0


def parse_intervals(spec: str, jobs: list[str]) -> dict[str, int]:
    """`name=seconds,...` (names from `jobs`, seconds at least 1) as a mapping;
    raises ValueError naming what is wrong."""
    intervals: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in jobs:
            raise ValueError(f"{part!r}: expected NAME=SECONDS with NAME one of {', '.join(jobs)}")
        try:
            seconds = int(value)
        except ValueError:
            raise ValueError(f"{part!r}: seconds must be a whole number") from None
        if seconds < 1:
            raise ValueError(f"{part!r}: at least 1 second")
        intervals[name] = seconds
    return intervals


def _closest(divisors: tuple[int, ...], wanted: float) -> int:
    return min(divisors, key=lambda d: abs(d - wanted))


def cron_schedule(seconds: int, slot: int) -> tuple[str, str | None]:
    """The cron expression closest to every `seconds`, with a note when cron
    cannot say it exactly (steps must divide the hour or the day). Hourly and
    daily runs start at minute (and hour) `slot` so that jobs do not all start
    at once."""
    minute, hour = (7 + 13 * slot) % 60, (2 + slot) % 24
    if seconds < 3600:
        step = _closest((1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30), seconds / 60)
        expression, said = ("* * * * *" if step == 1 else f"*/{step} * * * *"), step * 60
        unit = f"{step} min"
    elif seconds < 86400:
        step = _closest((1, 2, 3, 4, 6, 8, 12), seconds / 3600)
        expression = f"{minute} {'*' if step == 1 else f'*/{step}'} * * *"
        said, unit = step * 3600, f"{step} h"
    else:
        step = max(1, round(seconds / 86400))
        expression = f"{minute} {hour} {'*' if step == 1 else f'*/{step}'} * *"
        said, unit = step * 86400, f"{step} day(s)"
    note = None if said == seconds else f"every {seconds} s asked; cron says every {unit}"
    return expression, note


def crontab(
    executable: Path,
    intervals: Mapping[str, int],
    environment: Mapping[str, str],
    hints: tuple[str, ...] = (),
) -> str:
    """An example crontab: the environment lines (and commented `hints`), then
    one line per job."""
    lines = [
        "# loyalty scheduled jobs (install with `crontab -e`). Each run holds the job's",
        "# PostgreSQL advisory lock: a run that finds the previous one still going does",
        "# nothing and says so. Cron starts commands with a bare environment: give them",
        "# the service's LOYALTY_* settings (database, expiry policy, tier period, ...).",
    ]
    lines += [f"{name}={value}" for name, value in environment.items()]
    lines += [f"# {hint}" for hint in hints]
    for slot, (job, seconds) in enumerate(intervals.items()):
        expression, note = cron_schedule(seconds, slot)
        if note:
            lines.append(f"# {job}: {note}")
        lines.append(f"{expression} {executable} jobs run {job} >>$HOME/loyalty-jobs.log 2>&1")
    return "\n".join(lines) + "\n"


class Scheduler:
    """Runs each job of `runner` on its interval (seconds, by job name) until
    cancelled."""

    def __init__(self, runner: JobRunner, intervals: Mapping[str, int]) -> None:
        self.runner = runner
        self.intervals = dict(intervals)
        self.poll = max(0.5, min(MAX_POLL, min(self.intervals.values(), default=MAX_POLL) / 2))
        # When this worker next asks (monotonic seconds): now, for every job.
        self.next_check = dict.fromkeys(self.intervals, 0.0)
        self.reports: list[JobReport] = []  # this worker's runs, newest last (a few kept)

    async def run_forever(self) -> None:
        log.info("scheduler started: %s", self.intervals)
        while True:
            for name, seconds in self.intervals.items():
                if time.monotonic() >= self.next_check[name]:
                    await self.tick(name, seconds)
            await asyncio.sleep(self.poll)

    async def tick(self, name: str, seconds: int) -> JobReport | None:
        """Run the job if it is due across the fleet; a failure is logged (and
        recorded by the runner), never the end of the scheduler."""
        try:
            report = await self.runner.run(name, every=timedelta(seconds=seconds))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduled job %s failed", name)
            self.next_check[name] = time.monotonic() + min(seconds, RETRY_AFTER)
            return None
        # Busy or just run elsewhere: look again within the interval (the other
        # run's start decides); done here: after a whole interval.
        self.next_check[name] = time.monotonic() + (
            seconds if report.status == "done" else min(seconds, self.poll * 2)
        )
        if report.status == "done":
            self.reports = [*self.reports[-19:], report]
            if report.processed or report.remaining:
                log.info("scheduled %s", report.summary())
        return report
