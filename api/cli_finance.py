"""`loyalty finance ...`: the finance team's commands (finance/): the journal
export with its control totals and SHA-256, balances as of any instant, the
trial balance and the points-liability roll-forward.

Periods and instants are booking times (`created_at`): a date is its 00:00
UTC, a period [from, to) ends before `to` (April: `--from 2026-04-01 --to
2026-05-01`); see finance/period.py. A bad period or format is one line and
exit code 2, before any database is touched.

Registered on the main group at the bottom of api/cli.py; the helpers of
api/cli.py are imported when a command runs (api/cli.py imports this module
while it loads)."""

import sys
from pathlib import Path

import click
import msgspec

from api.cli_support import output_file
from api.progress import progress_for
from finance.errors import InvalidExportFormat, InvalidPeriod
from finance.journal_export import FORMATS
from finance.period import Period, parse_instant


class BadInput(click.ClickException):
    """A period, instant or format that cannot be used: one line, exit code 2."""

    exit_code = 2


def _period(start: str, end: str) -> Period:
    try:
        return Period.parse(start, end)
    except InvalidPeriod as error:
        raise BadInput(f"{error.code}: {error.detail}") from None


def _instant(value: str | None, parameter: str):
    if value is None:
        return None
    try:
        return parse_instant(value, parameter)
    except InvalidPeriod as error:
        raise BadInput(f"{error.code}: {error.detail}") from None


def _run(work):
    """`work(engine)` on the configured (or embedded) database."""
    from api.cli_support import run as run_with_ledger

    return run_with_ledger(lambda settings, ledger: work(ledger.engine))


def _json(value) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value)).decode())


@click.group()
def finance() -> None:
    """Finance: journal export, balances as of an instant, trial balance,
    roll-forward and breakage (by booking time, created_at); settlement
    statements (by effective month); partner file reconciliation; period close."""


# -- journal export ----------------------------------------------------------------


@finance.command("export-journal")
@click.option("--from", "start", required=True, help="First instant (a date: its 00:00 UTC).")
@click.option("--to", "end", required=True, help="End of the period (excluded).")
@click.option(
    "--format", "fmt", default="csv", show_default=True, help=f"One of {', '.join(FORMATS)}."
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="The file to write; FILE.sha256 and FILE.totals.json are written beside it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the control totals as JSON.")
def export_journal(start, end, fmt, output: Path, as_json: bool) -> None:
    """Export every entry booked in [--from, --to) with its postings, as CSV
    (one row per posting) or JSON Lines (one line per entry), streamed in
    constant memory; then FILE.sha256 (check it with `sha256sum -c`) and
    FILE.totals.json (entries, postings, debits and credits per asset)."""
    from finance.journal_export import check_format, export_journal, written_paths

    period = _period(start, end)
    try:
        check_format(fmt)
    except InvalidExportFormat as error:
        raise BadInput(f"{error.code}: {error.detail}") from None
    for path in written_paths(output):  # the file, its partial and its two sidecars
        output_file(path, "--output")
    progress = progress_for(sys.stderr)

    def started(totals) -> None:
        progress.start(f"exporting {output.name}", "postings", totals.postings)

    async def work(engine):
        try:
            return await export_journal(
                engine, period, fmt, output, started=started, progress=progress.advance
            )
        finally:
            progress.finish()

    totals = _run(work)
    if as_json:
        _json(totals)
        return
    click.echo(f"period:     {totals.period_from} .. {totals.period_to} (booking time)")
    click.echo(
        f"entries:    {totals.entries:,} (ids {totals.first_entry_id} .. {totals.last_entry_id})"
    )
    click.echo(f"postings:   {totals.postings:,}")
    for asset, sums in totals.assets.items():
        click.echo(
            f"{asset + ':':<11} {sums.postings:,} postings, debits {sums.debits:,}, "
            f"credits {sums.credits:,}"
        )
    click.echo(f"file:       {output} ({totals.bytes:,} bytes, {totals.format})")
    click.echo(f"sha256:     {totals.sha256} (in {output.name}.sha256)")
    click.echo(f"totals:     {output.name}.totals.json")


# -- balances and trial balance -----------------------------------------------------


@finance.command("balances")
@click.argument("account", required=False)
@click.option("--as-of", "as_of", default=None, help="The instant (default: now).")
@click.option("--json", "as_json", is_flag=True, help="JSON (one object per line for all).")
def balances(account: str | None, as_of: str | None, as_json: bool) -> None:
    """Balances as of an instant (entries booked before it): of ACCOUNT (an
    address such as member:anna:available), or of every account, one line
    per account and asset, streamed. A member who is not enrolled or a
    partner who is not registered is not found (exit code 4), not a zero."""
    from datetime import UTC, datetime

    from finance.trial_balance import balance_as_of
    from ledger.accounts import Address
    from ledger.errors import InvalidAccount
    from ledger.history import balances_as_of, snapshot

    moment = _instant(as_of, "as-of") or datetime.now(UTC)
    if account is not None:
        try:
            Address.parse(account)
        except InvalidAccount as error:
            raise BadInput(f"{error.code}: {error.detail}") from None
        found = _run(lambda engine: balance_as_of(engine, account, moment))
        if as_json:
            _json(found)
            return
        for asset, balance in found.balances.items():
            click.echo(f"{found.account}  {asset}  {balance:,}")
        return

    async def every(engine):
        async with snapshot(engine, long=True) as conn:
            async for address, asset, balance in balances_as_of(conn, moment):
                if as_json:
                    click.echo(
                        msgspec.json.encode(
                            {"account": address, "asset": asset, "balance": balance}
                        )
                    )
                else:
                    click.echo(f"{address}  {asset}  {balance}")

    _run(every)


def _show_trial_balance(tb) -> None:
    click.echo(f"trial balance as of {tb.as_of} (entries booked before it)")
    width = max([len(line.account) for line in tb.lines] + [20])
    click.echo(f"{'asset':<6}{'account':<{width + 2}}{'accounts':>10}{'balance':>16}")
    for asset in sorted({line.asset for line in tb.lines}, key=("PTS", "QP").index):
        for line in tb.lines:
            if line.asset == asset:
                click.echo(
                    f"{asset:<6}{line.account:<{width + 2}}{line.accounts:>10,}{line.balance:>16,}"
                )
        click.echo(f"{asset:<6}{'total':<{width + 2}}{'':>10}{tb.totals.get(asset, 0):>16,}")
    click.echo("balanced: " + ("yes" if tb.balanced else "NO, see the totals"))


@finance.command("trial-balance")
@click.option("--as-of", "as_of", default=None, help="The instant (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def trial_balance(as_of: str | None, as_json: bool) -> None:
    """The trial balance as of an instant: members' accounts summed per kind,
    partner and programme accounts one by one, per asset; each asset's lines
    add up to zero."""
    from datetime import UTC, datetime

    from finance.trial_balance import trial_balance as read

    moment = _instant(as_of, "as-of") or datetime.now(UTC)
    tb = _run(lambda engine: read(engine, moment))
    if as_json:
        _json(tb)
    else:
        _show_trial_balance(tb)
    if not tb.balanced:
        sys.exit(6)


def _money(line) -> str:
    from partners.money import units

    return "  ".join(
        f"{currency} {units(minor, currency):,}" for currency, minor in line.money_minor.items()
    )


def _show_roll_forward(rf) -> None:
    accounts = " + ".join(a.rsplit(":", 1)[1] for a in rf.liability_accounts)
    click.echo(
        f"points-liability roll-forward {rf.period_from} .. {rf.period_to} "
        f"(booking time), {rf.asset}, members' {accounts}"
    )
    rows: list[tuple[str, str, int | None, str]] = [("opening", "", rf.opening, "")]
    for line in rf.lines:
        rows.append(("  " + line.label, line.partner_id or "", line.points, _money(line)))
    rows += [
        ("= closing, computed", "", rf.closing_computed, ""),
        ("  closing, members' balances", "", rf.closing, ""),
        ("  difference", "", rf.difference, ""),
    ]
    width = max(len(r[0]) for r in rows) + 2
    for label, partner, points, money in rows:
        click.echo(f"{label:<{width}}{partner:<14}{points:>12,}  {money}".rstrip())
    for currency, per_basis in rf.money.items():
        from partners.money import units

        shown = ", ".join(
            f"{basis} {units(minor, currency):,}" for basis, minor in per_basis.items()
        )
        click.echo(f"money at contract rates ({currency}): {shown}")
    off = [c for c in rf.checks if c.difference]
    for check in off:
        click.echo(
            f"check {check.kind}: members' accounts moved {check.member_side:,}, "
            f"lines {check.lines:,}, difference {check.difference:,}"
        )
    click.echo("ties out: " + ("yes" if rf.ties else "NO, see the difference"))


@finance.command("roll-forward")
@click.option("--from", "start", required=True, help="First instant (a date: its 00:00 UTC).")
@click.option("--to", "end", required=True, help="End of the period (excluded).")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def roll_forward(start: str, end: str, as_json: bool) -> None:
    """The points-liability roll-forward of [--from, --to): opening, issued
    (per partner; promotions), returns, redeemed, refunds, expired,
    forfeited, transfer fees, adjustments, closing; partner lines valued at
    the contracts' effective-dated rates. Exit code 6 when it does not tie out."""
    from finance.rollforward import roll_forward as read

    period = _period(start, end)
    rf = _run(lambda engine: read(engine, period))
    if as_json:
        _json(rf)
    else:
        _show_roll_forward(rf)
    if not rf.ties:
        sys.exit(6)
