"""The `loyalty` command: serve, migrate, demo, verify, token, jobs."""

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace

import click

from api.settings import Settings, SettingsError

JOBS = ("release-pending", "expire-holds", "expire-points", "requalify-tiers", "purge-idempotency")


class _Commands(click.Group):
    """A configuration error ends any command with one line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SettingsError as error:
            raise click.ClickException(str(error)) from None


def _settings() -> Settings:
    return Settings.from_env()


@contextlib.contextmanager
def _database(settings: Settings, *, with_redis: bool = False) -> Iterator[Settings]:
    """Settings with a migrated database (and Redis): configured, or embedded
    under the data directory. An embedded server another process (a running
    `loyalty serve`) already runs there is joined, never started twice; only
    the process that started a server stops it on exit."""
    from api.embedded import EmbeddedPostgres, EmbeddedRedis, ensure_database, with_database
    from api.migrate import upgrade

    with contextlib.ExitStack() as stack:
        if settings.embedded:
            from api.auth import dev_secret

            if settings.jwt_secret is None:
                settings = replace(settings, jwt_secret=dev_secret(settings, "staff"))
            if settings.member_jwt_secret is None:
                settings = replace(settings, member_jwt_secret=dev_secret(settings, "member"))
        if settings.embedded and settings.secret_key is None:
            from api.auth import dev_secret_key

            settings = replace(settings, secret_key=dev_secret_key(settings))
        if settings.database_url is None:
            postgres = EmbeddedPostgres(settings.data_dir.resolve() / "postgres")
            if postgres.running():
                click.echo(
                    f"using embedded PostgreSQL in {postgres.data_dir} (already running)", err=True
                )
            else:
                click.echo(f"starting embedded PostgreSQL in {postgres.data_dir}", err=True)
            admin_url = postgres.start()
            stack.callback(postgres.stop)  # the wheel stops it with its last user
            asyncio.run(ensure_database(admin_url, "loyalty"))
            settings = replace(settings, database_url=with_database(admin_url, "loyalty"))
        if with_redis and settings.redis_url is None:
            redis_server = EmbeddedRedis(settings.data_dir.resolve() / "redis")

            def announce(action: str) -> None:
                if action == "starting":
                    click.echo(f"starting embedded Redis in {redis_server.data_dir}", err=True)
                else:
                    click.echo(
                        f"using embedded Redis in {redis_server.data_dir} (already running)",
                        err=True,
                    )

            url, _ = redis_server.start_or_join(announce)
            stack.callback(redis_server.stop)  # a no-op unless this process started it
            settings = replace(settings, redis_url=url)
        upgrade(settings.database_url)
        yield settings


async def _with_ledger(settings: Settings, work):
    """Run `work` with a ledger on the database. Nothing to tell the API's
    balance cache: every cached read is checked against PostgreSQL."""
    from ledger.database import create_engine
    from ledger.service import LedgerService

    # Jobs and verify scan whole tables: no statement or round-trip limit for
    # them (lock waits stay bounded, and retried, as in the API).
    limits = replace(
        settings.database_limits(), statement_timeout_ms=0, command_timeout_seconds=None
    )
    ledger = LedgerService(
        create_engine(settings.database_url, pool_size=2, limits=limits),
        settings.ledger_config(),
    )
    try:
        return await work(ledger)
    finally:
        await ledger.engine.dispose()


@click.group(cls=_Commands)
def main() -> None:
    """Loyalty ledger: a double-entry points ledger for coalition programmes."""


@main.command()
@click.option("--host", default=None, help="Bind address (LOYALTY_HOST).")
@click.option("--port", type=int, default=None, help="Port (LOYALTY_PORT).")
@click.option("--workers", type=int, default=None, help="Worker processes (LOYALTY_WORKERS).")
@click.option("--demo", is_flag=True, help="Load the demo programme before serving.")
def serve(host, port, workers, demo) -> None:
    """Serve the HTTP API (embedded PostgreSQL and Redis when none is configured)."""
    import uvicorn

    settings = _settings()
    settings = replace(
        settings,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
    )
    with _database(settings, with_redis=True) as resolved:
        from api.auth import TokenVerifier

        TokenVerifier(resolved)  # key trouble ends the command here, not in every worker
        if demo:
            _print_balances(asyncio.run(_with_ledger(resolved, _load_demo_with(resolved))))
        # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into
        # SystemExit lets the embedded servers stop with us.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        click.echo(f"serving on http://{resolved.host}:{resolved.port} (docs at /docs)", err=True)
        if resolved.workers > 1:
            os.environ.update(resolved.as_environ())
            uvicorn.run(
                "api.app:create_app_from_env",
                factory=True,
                host=resolved.host,
                port=resolved.port,
                workers=resolved.workers,
                log_level="info",
            )
        else:
            from api.app import create_app

            uvicorn.run(
                create_app(resolved), host=resolved.host, port=resolved.port, log_level="info"
            )


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    with _database(_settings()) as settings:
        click.echo(f"database at head revision: {settings.database_url.rsplit('/', 1)[-1]}")


def _registry(settings: Settings, ledger):
    from partners.registry import Registry, SecretBox

    if not settings.secret_key:
        raise click.UsageError("set LOYALTY_SECRET_KEY (a Fernet key) to manage partner keys")
    return Registry(ledger.engine, SecretBox(settings.secret_key))


def _load_demo_with(settings: Settings):
    async def load(ledger):
        from api.demo import load_demo

        return await load_demo(ledger, _registry(settings, ledger))

    return load


def _print_balances(rows) -> None:
    click.echo(f"{'member':<10}{'available':>10}{'pending':>10}{'held':>8}{'qp':>7}  tier")
    for b, tier in rows:
        click.echo(f"{b.member_id:<10}{b.available:>10}{b.pending:>10}{b.held:>8}{b.qp:>7}  {tier}")


@main.command()
def demo() -> None:
    """Load the demo programme (3 members, 2 partners); safe to run twice."""
    with _database(_settings()) as settings:
        _print_balances(asyncio.run(_with_ledger(settings, _load_demo_with(settings))))


@main.command()
def verify() -> None:
    """Recompute balances from postings and check every invariant; exit 1 on a mismatch."""
    from ledger.verify import verify as run_verify

    with _database(_settings()) as settings:
        report = asyncio.run(_with_ledger(settings, lambda ledger: run_verify(ledger.engine)))
    click.echo(report.render())
    if not report.clean:
        sys.exit(1)


@main.command()
@click.option("--sub", "subject", required=True, help="Subject: staff user or member id.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    help="Role claim, repeatable: admin, finance (a staff token) or member (a member token).",
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
    from api.auth import mint_token

    settings = _settings()
    key = open(private_key).read() if private_key else None
    try:
        click.echo(mint_token(settings, subject, list(roles), ttl, key, kid))
    except ValueError as error:  # SettingsError included
        raise click.ClickException(str(error)) from None


async def _job(ledger, name: str) -> int:
    if name == "purge-idempotency":
        from datetime import timedelta

        from api.partner_requests import purge

        days = _settings().idempotency_retention_days
        return await purge(ledger.engine, timedelta(days=days))
    if name == "requalify-tiers":
        from partners.programme import Programme

        return await Programme(ledger, _settings().tier_period).requalify_tiers()
    return await getattr(ledger, name.replace("-", "_"))()


@main.group()
def jobs() -> None:
    """Scheduled jobs: cron-friendly, idempotent, resumable."""


@jobs.command("run")
@click.argument("name", type=click.Choice(JOBS))
def run_job(name: str) -> None:
    """Run one job to completion."""
    with _database(_settings()) as settings:
        count = asyncio.run(_with_ledger(settings, lambda ledger: _job(ledger, name)))
    click.echo(f"{name}: {count} processed")


@main.group()
def partner() -> None:
    """Partner keys and request signing."""


@partner.command("create-key")
@click.argument("partner_id")
def create_key(partner_id: str) -> None:
    """Create an API key for a partner and print its id and secret (shown only now)."""
    with _database(_settings()) as settings:

        async def create(ledger):
            return await _registry(settings, ledger).create_key(partner_id, "cli")

        key = asyncio.run(_with_ledger(settings, create))
    click.echo(f"LOYALTY_KEY_ID={key.key_id}")
    click.echo(f"LOYALTY_KEY_SECRET={key.secret}")


@partner.command("sign")
@click.option("--key-id", envvar="LOYALTY_KEY_ID", required=True, help="or LOYALTY_KEY_ID")
@click.option("--secret", envvar="LOYALTY_KEY_SECRET", required=True, help="or LOYALTY_KEY_SECRET")
@click.option(
    "--idempotency-key",
    default="",
    help="The request's Idempotency-Key (signed, and printed as a header).",
)
@click.argument("method")
@click.argument("target")
@click.argument("body", required=False, default="")
def sign_request(
    key_id: str, secret: str, idempotency_key: str, method: str, target: str, body: str
) -> None:
    """Print the signature headers for METHOD TARGET (path?query) with BODY, one per
    line, for `curl -H @file` (BODY '-' reads standard input); with
    --idempotency-key, the Idempotency-Key header too, as it was signed."""
    import time

    from partners.signing import signed_headers

    raw = sys.stdin.buffer.read() if body == "-" else body.encode()
    path, _, query = target.partition("?")
    headers = signed_headers(key_id, secret, method, path, query, raw, time.time(), idempotency_key)
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    for name, value in headers.items():
        click.echo(f"{name}: {value}")


if __name__ == "__main__":
    main()
