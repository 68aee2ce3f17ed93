"""`loyalty finance settle`, `statements` and `statement`: partner settlement
statements (finance/settlement.py), the same functions and the same document
bytes as `/v1/finance/settlements...` (api/routes/finance_settlement.py).

Exit codes: 2 for a malformed month or format (before any database is
touched); 3 for a run refused (the month not over, settled already, before
the partner's last settled month); 4 for an unknown partner or statement.
Imported by api/cli.py so the commands register on the `finance` group."""

from pathlib import Path

import click

from api.cli_finance import BadInput, _json, _run, finance
from api.cli_support import actor, output_file
from finance.errors import InvalidExportFormat, InvalidPeriod

FORMAT_HELP = "Write the statement as json, csv or html (default: a summary on the terminal)."


def _month(value: str) -> str:
    from finance.settlement import parse_month

    try:
        return f"{parse_month(value):%Y-%m}"
    except InvalidPeriod as error:
        raise BadInput(f"{error.code}: {error.detail}") from None


def _format(fmt: str | None) -> str | None:
    from finance.settlement_documents import check_document_format

    if fmt is None:
        return None
    try:
        return check_document_format(fmt)
    except InvalidExportFormat as error:
        raise BadInput(f"{error.code}: {error.detail}") from None


def _output(output: Path | None) -> None:
    if output is not None:
        output_file(output)


def _write(data: bytes, output: Path | None) -> None:
    if output is None:
        click.echo(data, nl=False)
    else:
        output.write_bytes(data)
        click.echo(f"wrote {output} ({len(data):,} bytes)", err=True)


def _amount(minor: int | None, currency: str) -> str:
    from partners.money import units

    return "" if minor is None else f"{units(minor, currency):,}"


def _show(st) -> None:
    click.echo(
        f"statement:  {st.number}" + (f" (supersedes {st.supersedes})" if st.supersedes else "")
    )
    if st.superseded_by:
        click.echo(f"            superseded by {st.superseded_by}")
    click.echo(f"partner:    {st.partner_name} ({st.partner_id}), {st.currency}")
    click.echo(f"period:     {st.period} (entries' effective time, UTC)")
    click.echo(f"issued:     {st.issued_at} by {st.issued_by}")
    if st.reason:
        click.echo(f"reason:     {st.reason}")
    rows = [
        (
            ln.label if ln.section == "regular" else f"{ln.label} ({ln.month}, adjustment)",
            ln.owed_by or "",
            ln.entries,
            ln.points,
            _amount(ln.amount_minor, st.currency),
        )
        for ln in st.lines
    ]
    width = max([len(r[0]) for r in rows] + [24]) + 2
    click.echo(f"{'line':<{width}}{'owed by':<11}{'entries':>8}{'points':>12}{'amount':>14}")
    for label, owed_by, entries, points, amount in rows:
        click.echo(f"{label:<{width}}{owed_by:<11}{entries:>8,}{points:>12,}{amount:>14}")
    for label, minor in (
        ("owed by the partner", st.owed_by_partner_minor),
        ("owed to the partner", st.owed_to_partner_minor),
        ("net (> 0: the partner pays)", st.net_minor),
    ):
        click.echo(f"{label:<{width + 31}}{_amount(minor, st.currency):>14}")


@finance.command("settle")
@click.option("--partner", "partner_id", required=True, help="The partner's id.")
@click.option("--period", required=True, help="The month, YYYY-MM (entries' effective time, UTC).")
@click.option("--reissue", is_flag=True, help="Recompute the month's latest statement anew.")
@click.option("--reason", default=None, help="Why (kept with the statement; for a reissue).")
@click.option("--format", "fmt", default=None, help=FORMAT_HELP)
@click.option(
    "--output",
    default=None,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the document to this file instead of standard output.",
)
def settle(partner_id, period, reissue, reason, fmt, output) -> None:
    """Run the partner's settlement statement for a month that is over: the
    month's entries make the regular lines, earlier entries not settled yet
    make adjustment lines; stored with a number, never changed. --reissue
    recomputes a settled month under the next number."""
    from finance.settlement import settle as run_settlement
    from finance.settlement_documents import render

    month, chosen = _month(period), _format(fmt)
    _output(output)
    by = actor()
    st = _run(
        lambda engine: run_settlement(engine, partner_id, month, by, reissue=reissue, reason=reason)
    )
    if chosen is None:
        _show(st)
    else:
        _write(render(st, chosen), output)


@finance.command("statements")
@click.option("--partner", "partner_id", default=None, help="Only this partner's.")
@click.option("--period", default=None, help="Only this month, YYYY-MM.")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def list_statements(partner_id, period, as_json) -> None:
    """The stored settlement statements, by partner, month and issue."""
    from finance.settlement import statements

    month = _month(period) if period is not None else None
    found = _run(lambda engine: statements(engine, partner_id, month))
    if as_json:
        _json(found)
        return
    for s in found:
        state = f"superseded by {s.superseded_by}" if s.superseded_by else "current"
        click.echo(
            f"{s.number:<40}{s.issued_at:<29}{s.entries:>8,} entries  net "
            f"{_amount(s.net_minor, s.currency):>12} {s.currency}  {state}"
        )


@finance.command("statement")
@click.argument("number")
@click.option("--format", "fmt", default=None, help=FORMAT_HELP)
@click.option("--entries", is_flag=True, help="Write the entries behind each line (CSV).")
@click.option(
    "--output",
    default=None,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of standard output.",
)
def show_statement(number, fmt, entries, output) -> None:
    """One stored statement: a summary, a document (--format), or the CSV of
    the entries behind its lines (--entries)."""
    from finance.settlement import statement, statement_in
    from finance.settlement_documents import entries_csv, render
    from ledger.history import snapshot

    chosen = _format(fmt)
    if entries and chosen is not None:
        raise BadInput("--entries writes CSV: leave out --format")
    _output(output)
    if not entries:
        st = _run(lambda engine: statement(engine, number))
        if chosen is None:
            _show(st)
        else:
            _write(render(st, chosen), output)
        return

    async def stream(engine) -> None:
        async with snapshot(engine) as conn:
            found = await statement_in(conn, number)
            target = output.open("wb") if output is not None else None
            try:
                async for chunk in entries_csv(conn, found):
                    if target is None:
                        click.echo(chunk, nl=False)
                    else:
                        target.write(chunk)
            finally:
                if target is not None:
                    target.close()

    _run(stream)
