"""`loyalty demo --members N --months M [--seed S]`: generate a coalition
programme with its history into the database (simulation/), with a progress
bar on a terminal (api/progress.py) and the generation's summary at the end."""

import asyncio
import sys
from datetime import UTC, datetime

import click

from api.cli_support import database, load_settings, partner_registry, with_ledger

DEFAULT_MEMBERS = 20_000
DEFAULT_MONTHS = 18
DEFAULT_SEED = 1


def generate_demo(members: int | None, months: int | None, seed: int | None) -> None:
    """Generate the demo (defaults for what is not given) and print its summary."""
    from api.process_heap import batch_collector
    from api.progress import progress_for
    from simulation.loader import generate
    from simulation.model import DemoConfig

    config = DemoConfig(
        end=datetime.now(UTC).replace(microsecond=0),
        members=members or DEFAULT_MEMBERS,
        months=months or DEFAULT_MONTHS,
        seed=DEFAULT_SEED if seed is None else seed,
    )
    with database(load_settings()) as settings:

        async def work(ledger):
            with batch_collector():
                return await generate(
                    ledger.engine,
                    partner_registry(settings, ledger),
                    config,
                    ledger.config,
                    settings.tier_period,
                    progress_for(sys.stderr),
                )

        summary = asyncio.run(with_ledger(settings, work))
    for label, value in summary.lines():
        click.echo(f"{label + ':':<30}{value}")
