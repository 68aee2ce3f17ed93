"""`loyalty jobs`: run a scheduled job until nothing is due (with a progress
bar, --as-of and --dry-run), and print an example crontab."""

import asyncio
import sys

import click

from api.cli_support import Timestamp, database, load_settings, with_ledger
from api.jobs_service import JOB_NAMES as JOBS
from api.settings import Settings


@click.group()
def jobs() -> None:
    """Scheduled jobs: cron-friendly, idempotent, resumable; one run of a job
    at a time (a PostgreSQL advisory lock)."""


@jobs.command("run")
@click.argument("name", type=click.Choice(JOBS))
@click.option(
    "--as-of",
    type=Timestamp(),
    default=None,
    help="Take this instant for now (ISO 8601 with offset, not in the past): due as of "
    "then, entries dated then and saying so in posted_by. For demonstrations and tests.",
)
@click.option(
    "--dry-run", is_flag=True, help="Count what is due and the points it would move; write nothing."
)
def run_job(name: str, as_of, dry_run: bool) -> None:
    """Run one job until nothing is due: batches of a thousand, each its own
    transaction (a rerun continues where a killed run stopped), a progress bar
    on a terminal (lines on stderr otherwise), then processed and remaining.
    A run that finds another run of the job going does nothing and says so."""
    from api.jobs_service import cli_runner
    from api.progress import progress_for

    def work(settings: Settings):
        async def run(ledger):
            return await cli_runner(settings, ledger).run(
                name, as_of=as_of, dry_run=dry_run, progress=progress_for(sys.stderr)
            )

        return run

    with database(load_settings()) as settings:
        report = asyncio.run(with_ledger(settings, work(settings)))
    click.echo(report.summary())


def _loyalty_executable():
    """The absolute path of this `loyalty` command (the virtualenv's script)."""
    import shutil
    from pathlib import Path

    invoked = Path(sys.argv[0])
    if invoked.name == "loyalty" and invoked.exists():
        return invoked.absolute()
    beside = Path(sys.executable).parent / "loyalty"  # run as python -m or under a test
    if beside.exists():
        return beside
    found = shutil.which("loyalty")
    return Path(found).absolute() if found else invoked.absolute()


@jobs.command("schedule")
def schedule_jobs() -> None:
    """Print an example crontab: one line per job at its interval
    (LOYALTY_JOB_INTERVALS), with the absolute path of this `loyalty`. Or let
    the service run them: `loyalty serve --with-scheduler`."""
    from api.jobs_service import intervals
    from operations.schedule import crontab

    settings = load_settings()
    environment, hints = {}, ()
    if settings.embedded:
        # The embedded database lives under the data directory: cron's working
        # directory is not this one.
        environment["LOYALTY_DATA_DIR"] = str(settings.data_dir.resolve())
    else:
        hints = ("LOYALTY_DATABASE_URL=postgresql://USER@HOST:5432/DATABASE (the service's)",)
    click.echo(crontab(_loyalty_executable(), intervals(settings), environment, hints), nl=False)
