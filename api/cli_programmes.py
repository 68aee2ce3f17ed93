"""`loyalty demo --programme NAME`: load a whole programme (programmes/) and
play its worked example into the configured database, printing each step
with the members' available points after it; loading again adds nothing."""

import asyncio
import importlib

import click

from api.cli_support import database, load_settings, partner_registry, with_ledger

# name -> the module holding the programme's data and its `load`
PROGRAMMES = ("coalition", "airline", "club")


def load_programme(name: str) -> None:
    programme = importlib.import_module(f"programmes.{name}")
    with database(load_settings()) as settings:

        async def work(ledger):
            outcomes = await programme.load(ledger, partner_registry(settings, ledger))
            return outcomes, await programme.available(ledger)

        outcomes, balances = asyncio.run(with_ledger(settings, work))
    members = list(balances)
    if outcomes:
        click.echo(f"{'date':<12}{'result':<28}" + "".join(f"{m:>8}" for m in members) + "  step")
        for outcome in outcomes:
            click.echo(
                f"{outcome.step.at.date().isoformat():<12}{outcome.result:<28}"
                + "".join(f"{outcome.available[m]:>8}" for m in members)
                + f"  {outcome.step.what}"
            )
    else:
        click.echo(f"programme {name} is loaded already: nothing added")
        click.echo("available points: " + ", ".join(f"{m} {p}" for m, p in balances.items()))
    policy = programme.EXPIRY_POLICY.describe()
    if settings.expiry_policy != policy:
        click.echo(
            f"note: this programme's points expire by {policy}; serve it with "
            f"LOYALTY_EXPIRY_POLICY={policy} (now {settings.expiry_policy})",
            err=True,
        )
