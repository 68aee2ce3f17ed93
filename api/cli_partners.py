"""`loyalty partner`: partners, their contract versions and keys, request
signing for a partner's developer, and transaction files
(`loyalty partner import`, api/cli_import.py)."""

import shlex
import sys

import click
import msgspec

from api.cli_import import import_file_command
from api.cli_support import actor, partner_registry, run, show, table


@click.group()
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
    view = run(lambda s, ledger: partner_registry(s, ledger).create_partner(data, actor()))
    show(view)


@partner.command("list")
def list_partners() -> None:
    """Every partner with the contract terms in force now."""
    partners = run(lambda s, ledger: partner_registry(s, ledger).partners())
    table(
        [msgspec.to_builtins(p) for p in partners],
        ("id", "name", "status", "currency", "return_window_days", "credit_limit_minor"),
    )


@partner.command("show")
@click.argument("partner_id")
def show_partner(partner_id) -> None:
    """A partner, every version of its contract, and its keys."""

    async def read(settings, ledger):
        registry = partner_registry(settings, ledger)
        return (
            await registry.partner(partner_id),
            await registry.contracts(partner_id),
            await registry.keys(partner_id),
        )

    view, contracts, keys = run(read)
    show(view)
    table(
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
    table([msgspec.to_builtins(k) for k in keys], ("key_id", "status"))


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

    from partners.contracts import ContractInput

    data = ContractInput(effective_from.replace(tzinfo=UTC), **_terms(terms))
    contract = run(
        lambda s, ledger: partner_registry(s, ledger).update_contract(partner_id, data, actor())
    )
    show(contract)


@partner.command("suspend")
@click.argument("partner_id")
def suspend_partner(partner_id) -> None:
    """Suspend a partner: its signed calls are refused until reactivated."""
    view = run(
        lambda s, ledger: partner_registry(s, ledger).set_status(partner_id, "suspended", actor())
    )
    show(view, "id", "status")


@partner.command("activate")
@click.argument("partner_id")
def activate_partner(partner_id) -> None:
    """Reactivate a suspended partner."""
    view = run(
        lambda s, ledger: partner_registry(s, ledger).set_status(partner_id, "active", actor())
    )
    show(view, "id", "status")


@partner.command("revoke-key")
@click.argument("partner_id")
@click.argument("key_id")
def revoke_key(partner_id, key_id) -> None:
    """Revoke a partner's key, at once."""
    run(lambda s, ledger: partner_registry(s, ledger).revoke_key(partner_id, key_id, actor()))
    click.echo(f"key {key_id} revoked")


@partner.command("create-key")
@click.argument("partner_id")
def create_key(partner_id: str) -> None:
    """Create an API key for a partner and print its id and secret (shown only
    now) as `export NAME=value` lines for the shell:
    `KEY=$(loyalty partner create-key PARTNER) && eval "$KEY"`. On a failure
    nothing is printed on stdout (and the exit code is not 0)."""
    key = run(lambda s, ledger: partner_registry(s, ledger).create_key(partner_id, actor()))
    # Quoted for `eval`, whatever characters a secret may ever hold.
    click.echo(f"export LOYALTY_KEY_ID={shlex.quote(key.key_id)}")
    click.echo(f"export LOYALTY_KEY_SECRET={shlex.quote(key.secret)}")


# What `partner sign -` reads at most: far above any request body the API
# takes (LOYALTY_MAX_BODY_BYTES, 1 MB by default).
MAX_SIGNED_BODY = 64 * 1024 * 1024


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

    from ledger.errors import InvalidIdempotencyKey
    from ledger.idempotency import check_key
    from partners.signing import signed_headers

    if idempotency_key:
        # Printed as a header line: a line break in it would add a header.
        try:
            check_key(idempotency_key)
        except InvalidIdempotencyKey as error:
            raise click.BadParameter(error.detail, param_hint="--idempotency-key") from None
    # Read no further than any request body could be (standard input may
    # be endless).
    raw = sys.stdin.buffer.read(MAX_SIGNED_BODY + 1) if body == "-" else body.encode()
    if len(raw) > MAX_SIGNED_BODY:
        raise click.BadParameter(
            f"more than {MAX_SIGNED_BODY:,} bytes, larger than any request body",
            param_hint="BODY",
        )
    path, _, query = target.partition("?")
    headers = signed_headers(key_id, secret, method, path, query, raw, time.time(), idempotency_key)
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    for name, value in headers.items():
        click.echo(f"{name}: {value}")


partner.add_command(import_file_command)
