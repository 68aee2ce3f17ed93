"""`loyalty insights ...`: the figures of insights/ in the terminal (one
aligned table per part of a figure) or as CSV (`--csv`, one table: the first,
or the one `--table` names), the same functions the API answers with.

Windows are purchase time, [from, to), at most 367 days; default the 365
days up to now (or `--as-of`). A bad window, instant or parameter is one
line and exit code 2, before any database is touched; an unknown member or
partner exit code 4. Reads go to `LOYALTY_ANALYTICS_DATABASE_URL` (default:
the main database) in read-only transactions without a statement limit.

Registered on the main group at the bottom of api/cli.py."""

import asyncio
import csv
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import click
import msgspec

from finance.errors import InvalidPeriod
from finance.journal_export import csv_text
from insights import coalition, overview, pareto, promotions, retention, rfm, tiers
from insights.errors import InvalidInsightParameter
from insights.reading import bounded, currency, instant, window

Tables = dict[str, tuple[list[str], list[list]]]


class BadInput(click.ClickException):
    """A window, instant or parameter that cannot be used: one line, exit code 2."""

    exit_code = 2


def _checked(make: Callable):
    try:
        return make()
    except (InvalidPeriod, InvalidInsightParameter) as error:
        raise BadInput(f"{error.code}: {error.detail}") from None


def _run(read):
    """`read(conn)` in a read-only snapshot on the analytics database."""
    from api.cli_support import database, load_settings

    async def work(settings):
        from insights.reading import create_insights_engine, read_only

        limits = replace(
            settings.database_limits(), statement_timeout_ms=0, command_timeout_seconds=None
        )
        engine = create_insights_engine(
            settings.analytics_database_url or settings.database_url, limits
        )
        try:
            async with read_only(engine, long=True) as conn:
                return await read(conn)
        finally:
            await engine.dispose()

    with database(load_settings()) as settings:
        return asyncio.run(work(settings))


def _cell(value, empty: str) -> str:
    if value is None:
        return empty
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return msgspec.json.encode(value).decode().strip('"')  # as the API writes it
    return str(value)


def write_csv(stream, columns: list[str], rows: list[list]) -> None:
    """One table as CSV (the terminal's `--csv`, the dashboard's CSV links)."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        # A text cell starting like a formula (a promotion code may start
        # with '-') is neutralised as in the journal export; numbers never.
        writer.writerow([csv_text(v) if isinstance(v, str) else _cell(v, "") for v in row])


def _show(tables: Tables, as_csv: bool, table: str | None, as_json, answer) -> None:
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(answer)).decode())
        return
    if table is not None and table not in tables:
        raise BadInput(f"--table: one of {', '.join(tables)}")
    if as_csv:
        write_csv(sys.stdout, *tables[table or next(iter(tables))])
        return
    for name, (columns, rows) in tables.items():
        if table is not None and name != table:
            continue
        click.echo(f"== {name}")
        cells = [[_cell(v, "-") for v in row] for row in rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in cells:
            click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        click.echo()


def output(function):
    """--csv, --table and --json, shared by every command."""
    function = click.option("--json", "as_json", is_flag=True, help="The whole answer as JSON.")(
        function
    )
    function = click.option("--table", default=None, help="Only this table (with --csv too).")(
        function
    )
    return click.option("--csv", "as_csv", is_flag=True, help="One table as CSV (the first).")(
        function
    )


def period_options(function):
    function = click.option("--to", "end", default=None, help="End (excluded); default now.")(
        function
    )
    return click.option("--from", "start", default=None, help="First instant (a date: 00:00 UTC).")(
        function
    )


def currency_option(function):
    return click.option("--currency", "money", default=None, help="Spend's currency (EUR).")(
        function
    )


def as_of_option(function):
    return click.option("--as-of", "as_of", default=None, help="The instant taken for now.")(
        function
    )


@click.group()
def insights() -> None:
    """Insights: the overview (KPIs), Pareto, RFM, lost members, churn and
    cohorts, cross-shopping, promotions, tiers and the expiry outlook
    (purchase time; read-only)."""


@insights.command("pareto")
@period_options
@currency_option
@click.option("--partner", default=None, help="One partner only.")
@click.option("--points", default=pareto.DEFAULT_POINTS, show_default=True, type=int)
@output
def pareto_command(start, end, money, partner, points, as_csv, table, as_json) -> None:
    """Share of spend, points issued and redemptions held by the top 1/5/10/20 %
    of members, the Gini coefficient (tables `pareto`) and the Lorenz curve
    (`lorenz`), programme-wide and per partner."""
    period, code = _checked(lambda: (window(start, end), currency(money)))
    _checked(lambda: bounded("points", points, 2, 100))
    answer = _run(lambda conn: pareto.pareto(conn, period, code, partner, points))
    _show(pareto.tables(answer), as_csv, table, as_json, answer)


@insights.command("rfm")
@period_options
@currency_option
@output
def rfm_command(start, end, money, as_csv, table, as_json) -> None:
    """RFM segments with members and spend (`segments`), and every (R, F, M)
    cell (`cells`)."""
    period, code = _checked(lambda: (window(start, end), currency(money)))
    answer = _run(lambda conn: rfm.rfm(conn, period, code))
    _show(rfm.tables(answer), as_csv, table, as_json, answer)


@insights.command("member")
@click.argument("member_id")
@period_options
@currency_option
@output
def member_command(member_id, start, end, money, as_csv, table, as_json) -> None:
    """One member's RFM scores and segment, partners, balance and expiring points."""
    period, code = _checked(lambda: (window(start, end), currency(money)))
    answer = _run(lambda conn: rfm.member_insight(conn, member_id, period, code))
    _show(rfm.member_tables(answer), as_csv, table, as_json, answer)


@insights.command("lost")
@period_options
@as_of_option
@click.option("--inactive-days", default=retention.DEFAULT_INACTIVE_DAYS, show_default=True)
@currency_option
@click.option("--limit", default=100, show_default=True, type=int)
@click.option("--offset", default=0, show_default=True, type=int)
@output
def lost_command(
    start, end, as_of, inactive_days, money, limit, offset, as_csv, table, as_json
) -> None:
    """Members active in the reference window (--from/--to; default the 365
    days before the cut-off) and inactive for --inactive-days since."""

    def parse():
        moment = instant(as_of, "as-of")
        bounded("inactive-days", inactive_days, 1, 730)
        bounded("limit", limit, 1, 1_000_000)
        bounded("offset", offset, 0, 10_000_000)
        return moment, retention.reference_window(start, end, moment, inactive_days)

    moment, reference = _checked(parse)
    code = _checked(lambda: currency(money))
    answer = _run(
        lambda conn: retention.lost_members(
            conn, reference, moment, inactive_days, code, limit, offset
        )
    )
    if not (as_csv or as_json):
        click.echo(
            f"lost: {answer.lost} of {answer.reference_members} members active in "
            f"{answer.reference_from} .. {answer.reference_to} (share {answer.lost_share}); "
            f"inactive since {answer.inactive_since}"
        )
    _show(retention.lost_tables(answer), as_csv, table, as_json, answer)


@insights.command("retention")
@period_options
@as_of_option
@click.option("--inactive-days", default=retention.DEFAULT_INACTIVE_DAYS, show_default=True)
@click.option("--months-since", default=retention.DEFAULT_MONTHS, show_default=True)
@output
def retention_command(
    start, end, as_of, inactive_days, months_since, as_csv, table, as_json
) -> None:
    """Monthly churn rate (`churn`) and cohort retention (`retention`) over the
    months of [--from, --to) (default the 12 before this month)."""

    def parse():
        moment = instant(as_of, "as-of")
        bounded("inactive-days", inactive_days, 1, 730)
        bounded("months-since", months_since, 0, retention.MAX_MONTHS)
        return moment, retention.month_range(start, end, moment)

    moment, (first, last) = _checked(parse)
    answer = _run(
        lambda conn: retention.retention_figures(
            conn, first, last, moment, inactive_days, months_since
        )
    )
    _show(retention.figures_tables(answer), as_csv, table, as_json, answer)


@insights.command("coalition")
@period_options
@currency_option
@output
def coalition_command(start, end, money, as_csv, table, as_json) -> None:
    """Members per number of partners (`reach`), per partner (`partners`) and
    the cross-shopping matrix (`cross_shopping`)."""
    period, code = _checked(lambda: (window(start, end), currency(money)))
    answer = _run(lambda conn: coalition.coalition(conn, period, code))
    _show(coalition.tables(answer), as_csv, table, as_json, answer)


@insights.command("promotions")
@period_options
@as_of_option
@currency_option
@output
def promotions_command(start, end, as_of, money, as_csv, table, as_json) -> None:
    """Each promotion and coupon of the window: reach, points per funder,
    budget, spend before and during, uplift."""

    def parse():
        moment = instant(as_of, "as-of")
        return moment, window(start, end, moment), currency(money)

    moment, period, code = _checked(parse)
    answer = _run(lambda conn: promotions.promotions(conn, period, moment, code))
    if not (as_csv or as_json):
        click.echo(f"method: {answer.method}")
    _show(promotions.tables(answer), as_csv, table, as_json, answer)


@insights.command("tiers")
@period_options
@output
def tiers_command(start, end, as_csv, table, as_json) -> None:
    """Members per tier now (`tiers`) and upgrades and downgrades per month
    of the window (`movement`)."""
    period = _checked(lambda: window(start, end))
    answer = _run(lambda conn: tiers.tiers(conn, period, instant(None, "as-of")))
    _show(tiers.tables(answer), as_csv, table, as_json, answer)


@insights.command("expiry")
@as_of_option
@output
def expiry_command(as_of, as_csv, table, as_json) -> None:
    """Points expiring per month for the 12 months from --as-of's (and overdue)."""
    moment = _checked(lambda: instant(as_of, "as-of"))
    answer = _run(lambda conn: tiers.expiry_outlook(conn, moment))
    _show(tiers.outlook_tables(answer), as_csv, table, as_json, answer)


@insights.command("overview")
@as_of_option
@output
def overview_command(as_of, as_csv, table, as_json) -> None:
    """The KPIs: members active in the 30 days before --as-of, points issued
    and redeemed in its month so far (purchase time); points outstanding now,
    their money value (deferred revenue) and the breakage rate (finance's)."""
    moment = _checked(lambda: instant(as_of, "as-of"))
    answer = _run(lambda conn: overview.overview(conn, moment))
    _show(overview.tables(answer), as_csv, table, as_json, answer)
