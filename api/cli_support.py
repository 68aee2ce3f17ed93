"""What the `loyalty` commands share: the settings from the environment, the
database (and Redis) they run on, configured or embedded, a ledger on it, the
partner registry and member registry over it, and the plain output helpers."""

import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import click
import msgspec

from api.cli_failures import DATABASE_META, ConfigurationInvalid
from api.settings import Settings, SettingsError


class UnusablePath(click.ClickException):
    """A path a command cannot write (or read): one line, exit code 2, told
    before the command does anything."""

    exit_code = 2


def output_file(path: str | Path, option: str = "--output") -> Path:
    """`path` as a file the command may write, checked before any work: its
    directory exists and takes a new file, and what is there now, if
    anything, is a regular file (a device, pipe or link would be replaced by
    the written file, or would block or swallow the write)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UnusablePath(f"{option}: no directory {str(path.parent)!r}")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UnusablePath(f"{option}: {str(path)!r} is not a regular file")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".loyalty-"):
            pass
    except OSError as error:
        raise UnusablePath(
            f"{option}: cannot write in {str(path.parent)!r} ({error.strerror})"
        ) from None
    return path


def input_file(path: str | Path, argument: str = "FILE") -> Path:
    """`path` as a file the command may read to its end: a regular file (a
    device or pipe may never end, and a file read twice must read the same)."""
    path = Path(path)
    if not path.is_file():
        raise UnusablePath(f"{argument}: {str(path)!r} is not a regular file")
    return path


def load_settings() -> Settings:
    """The settings from the environment, with URLs of a kind this can use."""
    from ledger.database import async_url

    settings = Settings.from_env()
    if settings.database_url is not None:
        scheme = settings.database_url.partition(":")[0]
        if scheme not in ("postgresql", "postgresql+asyncpg", "postgres"):
            # The scheme only: the rest of the URL may hold a password.
            raise SettingsError(
                "LOYALTY_DATABASE_URL is a PostgreSQL URL "
                f"(postgresql://USER@HOST:5432/DATABASE), not {scheme}:..."
            )
        try:
            async_url(settings.database_url)
        except ValueError as error:  # its message never holds the URL
            raise SettingsError(f"LOYALTY_DATABASE_URL: {error}") from None
        remember_database(server_of(settings.database_url))
    if settings.redis_url is not None and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        scheme = settings.redis_url.partition(":")[0]
        raise SettingsError(
            f"LOYALTY_REDIS_URL is a Redis URL (redis://HOST:6379/0), not {scheme}:..."
        )
    return settings


def server_of(url: str) -> str:
    """HOST:PORT of a PostgreSQL URL (never its user or password)."""
    from sqlalchemy.engine import make_url

    from ledger.database import async_url

    parts = make_url(async_url(url))
    return f"{parts.host or parts.query.get('host') or 'localhost'}:{parts.port or 5432}"


def remember_database(where: str) -> None:
    """Say where the command's database is in any failure message."""
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[DATABASE_META] = where


@contextlib.contextmanager
def servers(
    settings: Settings,
    *,
    with_redis: bool = False,
    announce_join: bool = False,
    upgrade_schema: bool = False,
) -> Iterator[Settings]:
    """Settings naming a database (and Redis): configured, or embedded under
    the data directory. An embedded server another process (a running
    `loyalty serve`) already runs there is joined, never started twice; only
    the process that started a server stops it on exit. Starting one is said
    on stderr; joining one only with `announce_join`. With `upgrade_schema`
    the database is migrated to the latest revision, before any Redis starts
    (a database that cannot be used ends the command with nothing started)."""
    from api.embedded import EmbeddedPostgres, EmbeddedRedis, ensure_database, with_database
    from api.migrate import upgrade

    def announcer(what: str, directory, fresh: bool = False) -> Callable[[str], None]:
        def announce(action: str) -> None:
            if action == "starting":
                # A command run from another directory finds no data under its
                # ./.loyalty: say so, rather than answer from an empty ledger.
                new = " (new and empty; LOYALTY_DATA_DIR names the data directory)"
                told = f"starting embedded {what} in {directory}" + (new if fresh else "")
                click.echo(told, err=True)
            elif announce_join:
                click.echo(f"using embedded {what} in {directory} (already running)", err=True)

        return announce

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
            remember_database(f"the embedded PostgreSQL in {postgres.data_dir}")
            fresh = not postgres.data_dir.exists()
            admin_url, _ = postgres.start_or_join(announcer("PostgreSQL", postgres.data_dir, fresh))
            stack.callback(postgres.stop)  # the wheel stops it with its last user
            asyncio.run(ensure_database(admin_url, "loyalty"))
            settings = replace(settings, database_url=with_database(admin_url, "loyalty"))
        if upgrade_schema:
            upgrade(settings.database_url)
        if with_redis and settings.redis_url is None:
            redis_server = EmbeddedRedis(settings.data_dir.resolve() / "redis")
            url, _ = redis_server.start_or_join(announcer("Redis", redis_server.data_dir))
            stack.callback(redis_server.stop)  # a no-op unless this process started it
            settings = replace(settings, redis_url=url)
        yield settings


@contextlib.contextmanager
def database(
    settings: Settings, *, with_redis: bool = False, announce_join: bool = False
) -> Iterator[Settings]:
    """`servers`, with the database's schema upgraded to the latest revision."""
    with servers(
        settings, with_redis=with_redis, announce_join=announce_join, upgrade_schema=True
    ) as resolved:
        yield resolved


async def with_ledger(settings: Settings, work):
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


def partner_registry(settings: Settings, ledger):
    from partners.registry import Registry
    from partners.signing_keys import SecretBox

    if not settings.secret_key:
        raise ConfigurationInvalid(
            "set LOYALTY_SECRET_KEY to a Fernet key to manage partner keys, e.g. the output "
            "of python -c 'from cryptography.fernet import Fernet as F; "
            "print(F.generate_key().decode())'"
        )
    return Registry(ledger.engine, SecretBox(settings.secret_key))


def actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def run(work):
    """Run `work(ledger)` on the configured (or embedded) database."""
    with database(load_settings()) as settings:
        return asyncio.run(with_ledger(settings, lambda ledger: work(settings, ledger)))


def members_of(settings: Settings, ledger):
    from members.registry import Members
    from partners.programme import Programme

    return Members(ledger, Programme(ledger, settings.tier_period))


def show(record, *fields: str) -> None:
    """A record (or a dict) as aligned `field: value` lines (None shown as -)."""
    data = record if isinstance(record, dict) else msgspec.to_builtins(record)
    names = fields or tuple(data)
    width = max(len(n) for n in names)
    for name in names:
        value = data.get(name)
        click.echo(f"{name + ':':<{width + 2}}{'-' if value is None else value}")


def table(rows: list[dict], columns: tuple[str, ...]) -> None:
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


class Timestamp(click.ParamType):
    """An ISO 8601 instant with its offset (2027-01-01T00:00:00Z)."""

    name = "TIMESTAMP"

    def convert(self, value, param, ctx):
        from datetime import datetime

        from finance.period import EARLIEST, LATEST

        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 timestamp (2027-01-01T00:00:00Z)", param, ctx)
        if parsed.tzinfo is None:
            self.fail(f"{value!r} has no offset: add Z or +01:00", param, ctx)
        if not EARLIEST <= parsed < LATEST:
            # Jobs add years to it (tier periods, expiry): stay far from datetime's end.
            self.fail(
                f"{value!r} is out of range: from {EARLIEST.year} to before {LATEST.year}",
                param,
                ctx,
            )
        return parsed
