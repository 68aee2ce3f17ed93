"""The `loyalty` command: serve, migrate, demo, verify, token, jobs, and the
operator's registry commands (members, partners, keys, cards).

Exit codes: 0 done; 1 configuration error; 2 usage error (click); 3 the
programme refused the operation (unknown member, close refused, ...), with
the problem's code and detail on one line."""

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace

import click
import msgspec

from api.settings import Settings, SettingsError

JOBS = ("release-pending", "expire-holds", "expire-points", "requalify-tiers", "purge-idempotency")


class Refused(click.ClickException):
    """The programme refused the operation: one line, exit code 3."""

    exit_code = 3


class _Commands(click.Group):
    """A configuration error ends any command with one line and exit code 1,
    a refused operation with one line and exit code 3."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import DBAPIError

        from ledger.database import refused_party
        from ledger.errors import LedgerError

        try:
            return super().invoke(ctx)
        except SettingsError as error:
            raise click.ClickException(str(error)) from None
        except LedgerError as error:
            raise Refused(f"{error.code}: {error.detail}") from None
        except DBAPIError as error:
            refusal = refused_party(error)
            if refusal is None:
                raise
            raise Refused(f"{refusal.code}: {refusal.detail}") from None


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

    from api.http_protocol import PROTOCOL

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
                http=PROTOCOL,
            )
        else:
            from api.app import create_app

            uvicorn.run(
                create_app(resolved),
                host=resolved.host,
                port=resolved.port,
                log_level="info",
                http=PROTOCOL,
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


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _run(work):
    """Run `work(ledger)` on the configured (or embedded) database."""
    with _database(_settings()) as settings:
        return asyncio.run(_with_ledger(settings, lambda ledger: work(settings, ledger)))


def _members(settings: Settings, ledger):
    from members.registry import Members
    from partners.programme import Programme

    return Members(ledger, Programme(ledger, settings.tier_period))


def _show(record, *fields: str) -> None:
    """A record as aligned `field: value` lines (None shown as -)."""
    data = msgspec.to_builtins(record)
    names = fields or tuple(data)
    width = max(len(n) for n in names)
    for name in names:
        value = data.get(name)
        click.echo(f"{name + ':':<{width + 2}}{'-' if value is None else value}")


def _table(rows: list[dict], columns: tuple[str, ...]) -> None:
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@main.group()
def member() -> None:
    """The member registry: enrol, find, close, merge, erase; cards."""


@member.command("enrol")
@click.argument("member_id", required=False)
@click.option("--name", "display_name", default=None, help="Display name (optional).")
@click.option("--email", default=None, help="E-mail address (optional).")
def enrol_member(member_id, display_name, email) -> None:
    """Enrol a member (MEMBER_ID, or a member number is assigned)."""
    from members.registry import MemberInput

    data = MemberInput(member_id, display_name, email)
    view = _run(lambda s, ledger: _members(s, ledger).enrol(data, _actor()))
    _show(view, "id", "status", "enrolled_at")


@member.command("list")
@click.option("--prefix", default=None, help="Member ids starting with this.")
@click.option("--card", default=None, help="The member holding this card number.")
@click.option("--email", default=None, help="Members with this e-mail address.")
@click.option("--status", type=click.Choice(("active", "closed", "merged")), default=None)
@click.option("--after", default=None, help="Start after this member id (the next page).")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
def list_members(prefix, card, email, status, after, limit) -> None:
    """List members in id order."""
    page = _run(
        lambda s, ledger: _members(s, ledger).search(
            prefix=prefix, card=card, email=email, status=status, after=after, limit=limit
        )
    )
    _table(
        [msgspec.to_builtins(m) for m in page.members],
        ("id", "status", "enrolled_at", "display_name", "merged_into"),
    )
    if page.next_cursor:
        click.echo(f"more: --after {page.next_cursor}", err=True)


@member.command("show")
@click.argument("member_id")
def show_member(member_id) -> None:
    """A member's record, balances, cards and events."""

    async def read(settings, ledger):
        members = _members(settings, ledger)
        return (
            await members.member(member_id),
            await ledger.balances(member_id),
            await _registry(settings, ledger).cards(member_id),
            await members.events(member_id),
        )

    view, balances, cards, events = _run(read)
    _show(view)
    _show(balances, "available", "pending", "held", "qp")
    if cards:
        _table(cards, ("card_number", "status", "issued_at"))
    _table(
        [
            {**msgspec.to_builtins(e), "detail": msgspec.json.encode(e.detail).decode()}
            for e in events
        ],
        ("at", "event", "actor", "entry_id", "detail"),
    )


@member.command("close")
@click.argument("member_id")
@click.option("--reason", required=True, help="Why (kept in the journal and the member's events).")
@click.option(
    "--forfeit",
    is_flag=True,
    help="Forfeit points left to program:expired (without it, points left refuse the close).",
)
def close_member(member_id, reason, forfeit) -> None:
    """Close a member's account."""
    from members.registry import CloseInput

    data = CloseInput(reason, "forfeit" if forfeit else "refuse")
    closure = _run(lambda s, ledger: _members(s, ledger).close(member_id, data, _actor()))
    _show(closure.member, "id", "status", "closed_at")
    click.echo(f"forfeit entry: {closure.forfeit_entry_id or '-'}")


@member.command("merge")
@click.argument("source")
@click.argument("into")
@click.option("--reason", required=True, help="Why (kept in the journal and both members' events).")
def merge_members(source, into, reason) -> None:
    """Merge SOURCE into INTO (two accounts of one person): points, pending
    points, QP, the higher tier, cards and unused coupons move; SOURCE closes."""
    from members.registry import MergeInput

    merger = _run(
        lambda s, ledger: _members(s, ledger).merge(source, MergeInput(into, reason), _actor())
    )
    click.echo(f"{source} merged into {into}; entries: {merger.entry_ids or '-'}")
    click.echo(f"moved: {merger.moved}")


@member.command("erase")
@click.argument("member_id")
def erase_member(member_id) -> None:
    """Erase a closed member's personal data (GDPR art. 17); the journal stays."""
    view = _run(lambda s, ledger: _members(s, ledger).erase(member_id, _actor()))
    _show(view, "id", "status", "erased_at")


@member.command("issue-card")
@click.argument("member_id")
@click.argument("card_number")
def issue_card(member_id, card_number) -> None:
    """Issue a card (8 to 19 digits) to an active member."""
    card = _run(lambda s, ledger: _registry(s, ledger).issue_card(member_id, card_number, _actor()))
    click.echo(f"card {card['card_number']} issued to {card['member_id']}")


@member.command("block-card")
@click.argument("member_id")
@click.argument("card_number")
def block_card(member_id, card_number) -> None:
    """Block a member's card (lost or stolen)."""
    _run(lambda s, ledger: _registry(s, ledger).block_card(member_id, card_number, _actor()))
    click.echo(f"card {card_number} blocked")


@main.group()
def partner() -> None:
    """Partners, their contracts and keys; request signing."""


_TERMS = (
    click.option("--return-window-days", type=click.IntRange(0, 365), default=None),
    click.option("--price-per-point", type=str, default=None, help="Paid per point issued."),
    click.option("--redemption-value", type=str, default=None, help="Repaid per point redeemed."),
    click.option("--credit-limit-minor", type=click.IntRange(0), default=None),
    click.option("--deposit-minor", type=click.IntRange(0), default=None),
    click.option("--late-submission-days", type=click.IntRange(0, 730), default=None),
    click.option("--future-tolerance-seconds", type=click.IntRange(0, 86400), default=None),
    click.option(
        "--requests-per-second",
        type=click.IntRange(1, 1_000_000),
        default=None,
        help="Signed calls per second (default: LOYALTY_PARTNER_RATE_LIMIT).",
    ),
)


def _with_terms(command):
    for option in reversed(_TERMS):
        command = option(command)
    return command


def _terms(options: dict) -> dict:
    """The contract terms given on the command line, rates as exact decimals."""
    from decimal import Decimal, InvalidOperation

    terms = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in ("price_per_point", "redemption_value"):
            try:
                value = Decimal(value)
            except InvalidOperation:
                raise click.BadParameter(f"not a decimal number: {value!r}") from None
        terms[name] = value
    return terms


@partner.command("create")
@click.argument("partner_id")
@click.option("--name", required=True, help="The partner's name.")
@click.option("--currency", default="EUR", show_default=True)
@_with_terms
def create_partner(partner_id, name, currency, **terms) -> None:
    """Register a partner with the first version of its contract."""
    from partners.registry import PartnerInput

    data = PartnerInput(partner_id, name, currency, **_terms(terms))
    view = _run(lambda s, ledger: _registry(s, ledger).create_partner(data, _actor()))
    _show(view)


@partner.command("list")
def list_partners() -> None:
    """Every partner with the contract terms in force now."""
    partners = _run(lambda s, ledger: _registry(s, ledger).partners())
    _table(
        [msgspec.to_builtins(p) for p in partners],
        ("id", "name", "status", "currency", "return_window_days", "credit_limit_minor"),
    )


@partner.command("show")
@click.argument("partner_id")
def show_partner(partner_id) -> None:
    """A partner, every version of its contract, and its keys."""

    async def read(settings, ledger):
        registry = _registry(settings, ledger)
        return (
            await registry.partner(partner_id),
            await registry.contracts(partner_id),
            await registry.keys(partner_id),
        )

    view, contracts, keys = _run(read)
    _show(view)
    _table(
        [msgspec.to_builtins(c) for c in contracts],
        (
            "version",
            "effective_from",
            "return_window_days",
            "price_per_point",
            "credit_limit_minor",
            "deposit_minor",
        ),
    )
    _table([msgspec.to_builtins(k) for k in keys], ("key_id", "status"))


@partner.command("contract")
@click.argument("partner_id")
@click.option(
    "--effective-from",
    type=click.DateTime(("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S")),
    required=True,
    help="When the new terms apply (UTC).",
)
@_with_terms
def update_contract(partner_id, effective_from, **terms) -> None:
    """A new version of a partner's contract; terms not given stay as they were."""
    from datetime import UTC

    from partners.registry import ContractInput

    data = ContractInput(effective_from.replace(tzinfo=UTC), **_terms(terms))
    contract = _run(
        lambda s, ledger: _registry(s, ledger).update_contract(partner_id, data, _actor())
    )
    _show(contract)


@partner.command("suspend")
@click.argument("partner_id")
def suspend_partner(partner_id) -> None:
    """Suspend a partner: its signed calls are refused until reactivated."""
    view = _run(
        lambda s, ledger: _registry(s, ledger).set_status(partner_id, "suspended", _actor())
    )
    _show(view, "id", "status")


@partner.command("activate")
@click.argument("partner_id")
def activate_partner(partner_id) -> None:
    """Reactivate a suspended partner."""
    view = _run(lambda s, ledger: _registry(s, ledger).set_status(partner_id, "active", _actor()))
    _show(view, "id", "status")


@partner.command("revoke-key")
@click.argument("partner_id")
@click.argument("key_id")
def revoke_key(partner_id, key_id) -> None:
    """Revoke a partner's key, at once."""
    _run(lambda s, ledger: _registry(s, ledger).revoke_key(partner_id, key_id, _actor()))
    click.echo(f"key {key_id} revoked")


@partner.command("create-key")
@click.argument("partner_id")
def create_key(partner_id: str) -> None:
    """Create an API key for a partner and print its id and secret (shown only now)."""
    key = _run(lambda s, ledger: _registry(s, ledger).create_key(partner_id, _actor()))
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


from api.cli_import import import_file_command  # noqa: E402 (it uses the helpers above)

partner.add_command(import_file_command)

if __name__ == "__main__":
    main()
