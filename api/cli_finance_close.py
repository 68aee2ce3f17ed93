"""`loyalty finance close` and `loyalty finance periods`: the period close
(finance/close.py), the same functions as `/v1/finance/periods...`.

Exit codes: 2 for a malformed month (before any database is touched); 3 for a
close refused (not over yet, closed already, not the next month); 4 for a
month that was not closed; 6 when the recorded figures do not tie out (the
close stands: the figures are shown as they are). Imported by api/cli.py so
the commands register on the `finance` group."""

import sys

import click

from api.cli_finance import BadInput, _json, _run, finance
from finance.errors import InvalidPeriod


def _month(label: str) -> str:
    from finance.close import month_period

    try:
        month_period(label)
    except InvalidPeriod as error:
        raise BadInput(f"{error.code}: {error.detail}") from None
    return label.strip()


def _show(record) -> None:
    s = record.summary
    click.echo(f"period:            {s.period} ({s.period_start} .. {s.period_end})")
    click.echo(f"closed:            {s.closed_at} by {s.closed_by}")
    if not s.figures_recorded:
        click.echo("figures:           not recorded yet (close the month again to record them)")
        return
    click.echo(f"closing liability: {s.closing_liability:,} points")
    click.echo("trial balance:     " + ("balanced" if s.balanced else "NOT balanced"))
    click.echo("roll-forward:      " + ("ties out" if s.ties else "does NOT tie out"))


@finance.command("close")
@click.option("--period", required=True, help="The month to close, YYYY-MM (UTC).")
@click.option("--json", "as_json", is_flag=True, help="Print the close and its figures as JSON.")
def close(period: str, as_json: bool) -> None:
    """Close a month: afterwards no entry may be dated or booked before its
    end (the database refuses it); records the trial balance as of its end
    and its roll-forward. Months close in order."""
    import getpass

    from finance.close import close_period

    label = _month(period)
    by = f"cli:{getpass.getuser()}"
    record = _run(lambda engine: close_period(engine, label, by))
    if as_json:
        _json(record)
    else:
        _show(record)
    if record.summary.figures_recorded and not (record.summary.ties and record.summary.balanced):
        sys.exit(6)


@finance.command("periods")
@click.option("--period", default=None, help="One closed month (YYYY-MM) with its figures.")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def periods(period: str | None, as_json: bool) -> None:
    """The closed months, newest first, and the boundary (closed through);
    with --period, one close with the figures it recorded."""
    from finance.close import period_close, period_closes

    if period is not None:
        label = _month(period)
        record = _run(lambda engine: period_close(engine, label))
        if as_json:
            _json(record)
        else:
            _show(record)
        return
    listed = _run(period_closes)
    if as_json:
        _json(listed)
        return
    click.echo(f"closed through: {listed.closed_through or 'nothing closed'}")
    if listed.next_period:
        click.echo(f"next to close:  {listed.next_period}")
    for s in listed.closes:
        liability = f"{s.closing_liability:,}" if s.closing_liability is not None else "-"
        state = "ties" if s.ties else ("does not tie" if s.figures_recorded else "no figures")
        click.echo(
            f"{s.period}  closed {s.closed_at} by {s.closed_by}  liability {liability}  {state}"
        )
