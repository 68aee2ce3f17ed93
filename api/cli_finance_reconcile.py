"""`loyalty finance reconcile ...`: partner file reconciliation from the
command line (finance/reconciliation*.py, the functions the API calls):

- `reconcile-mapping --partner ID [--reference-column ...]`: set (or with
  `--show`, show) how the partner's file is read;
- `reconcile --partner ID FILE [--from --to] [--repair] [--json]`: reconcile
  and store a run (and repair it at once);
- `reconciliations [--partner ID]`: the stored runs;
- `reconciliation ID [--class C]`: one run and its rows;
- `reconcile-repair ID`: post a run's rows missing in the ledger.

A bad file, mapping, period or query is one line and exit code 2, before
anything is stored; an unknown partner or run exit code 4; the rest as
every command (api/cli_failures.py). Registers on the `finance` group when
imported (api/cli.py imports it)."""

from pathlib import Path

import click
import msgspec

from api.cli_finance import BadInput, _json, finance

_BAD_INPUT = (
    "invalid-period",
    "invalid-reconciliation-mapping",
    "reconciliation-file-invalid",
    "invalid-query-parameter",
    "invalid-cursor",
)


def _run(work):
    """`work(settings, ledger)` on the configured database; bad input is exit 2."""
    from api.cli_support import run
    from ledger.errors import LedgerError

    try:
        return run(work)
    except LedgerError as error:
        if error.code in _BAD_INPUT:
            raise BadInput(f"{error.code}: {error.detail}") from None
        raise


def _period(start: str | None, end: str | None):
    from finance.errors import InvalidPeriod
    from finance.period import Period

    if start is None and end is None:
        return None
    try:
        if start is None or end is None:
            raise InvalidPeriod("--from" if start is None else "--to", "give both or neither")
        return Period.parse(start, end)
    except InvalidPeriod as error:
        raise BadInput(f"{error.code}: {error.detail}") from None


# -- the mapping -------------------------------------------------------------------


@finance.command("reconcile-mapping")
@click.option("--partner", "partner_id", required=True, help="The partner's id.")
@click.option("--reference-column", default="reference", show_default=True)
@click.option("--card-column", default="card", show_default=True)
@click.option("--date-column", default="date", show_default=True)
@click.option("--amount-column", default="amount", show_default=True)
@click.option("--points-column", default="points", show_default=True)
@click.option("--category-column", default=None, help="Optional: the purchase's category.")
@click.option("--delimiter", default=",", show_default=True)
@click.option(
    "--date-format",
    default="iso",
    show_default=True,
    help="iso, or a pattern such as DD.MM.YYYY or YYYY-MM-DD hh:mm:ss (UTC).",
)
@click.option("--amount-format", default="major", show_default=True, help="major or minor units.")
@click.option("--decimal-separator", default=".", show_default=True, help="'.' or ','.")
@click.option("--encoding", default="utf-8", show_default=True, help="utf-8 or cp1252.")
@click.option(
    "--points-basis",
    default="member",
    show_default=True,
    help="Compare the file's points with the member's (member) or the partner-funded (partner).",
)
@click.option(
    "--default-category",
    default="general",
    show_default=True,
    help="The category of a repaired purchase's line when the file has none.",
)
@click.option("--show", is_flag=True, help="Only show the mapping in force; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def reconcile_mapping(partner_id: str, show: bool, as_json: bool, **options) -> None:
    """Set how PARTNER's transaction file is read for reconciliation (every
    option left out takes its default, as a PUT of the API does), or show it."""
    from api.cli_support import actor
    from finance.reconciliation_files import Mapping
    from finance.reconciliation_mappings import get_mapping, set_mapping

    if show:
        view = _run(lambda settings, ledger: get_mapping(ledger.engine, partner_id))
    else:
        mapping = Mapping(**{f"{name}": value for name, value in options.items()})
        view = _run(
            lambda settings, ledger: set_mapping(ledger.engine, partner_id, mapping, actor())
        )
    if as_json:
        _json(view)
        return
    state = f"stored by {view.updated_by}" if view.stored else "the default (none stored)"
    click.echo(f"reconciliation mapping of {view.partner_id}: {state}")
    for name, value in msgspec.structs.asdict(view.mapping).items():
        click.echo(f"  {name + ':':<20}{'-' if value is None else value}")


# -- a run ----------------------------------------------------------------------------


def _money(minor: int, currency: str) -> str:
    from partners.money import units

    return f"{units(minor, currency):,}"


def _show_run(run) -> None:
    click.echo(
        f"reconciliation {run.reconciliation_id}: partner {run.partner_id}, file "
        f"{run.file_name} ({run.size_bytes:,} bytes, {run.rows:,} rows, sha256 {run.sha256})"
    )
    if run.range_from is not None:
        source = "the file's dates" if run.range_source == "file" else "given"
        click.echo(
            f"range:  purchases {run.range_from:%Y-%m-%dT%H:%M:%SZ} .. "
            f"{run.range_to:%Y-%m-%dT%H:%M:%SZ} ({source})"
        )
    click.echo(f"by:     {run.created_by} at {run.created_at:%Y-%m-%dT%H:%M:%SZ}")
    header = ("class", "rows", "file amount", "file points", "ledger amount", "ledger points")
    click.echo(f"{header[0]:<20}{header[1]:>8}" + "".join(f"{h:>15}" for h in header[2:]))
    for cls, totals in run.totals.items():
        click.echo(
            f"{cls:<20}{totals.count:>8,}"
            f"{_money(totals.file_amount_minor, run.currency):>15}{totals.file_points:>15,}"
            f"{_money(totals.ledger_amount_minor, run.currency):>15}{totals.ledger_points:>15,}"
        )
    click.echo(
        "differing in: "
        + ", ".join(f"{field} {count:,}" for field, count in run.differing_fields.items())
        + f"  (amounts in {run.currency})"
    )
    for repair in run.repairs:
        _show_repair(repair)


def _show_repair(repair) -> None:
    click.echo(
        f"repair {repair.repair_id} by {repair.created_by} at "
        f"{repair.created_at:%Y-%m-%dT%H:%M:%SZ}: {repair.posted:,} posted "
        f"({repair.points:,} points; the file said {repair.file_points:,}), "
        f"{repair.already_posted:,} already posted, {repair.refused:,} refused"
    )


def _show_outcomes(result) -> None:
    _show_repair(result)
    for outcome in result.outcomes:
        if outcome.outcome == "posted":
            what = (
                f"entry {outcome.entry_id}, {outcome.points:,} points "
                f"(file {outcome.file_points:,})"
            )
        elif outcome.outcome == "already-posted":
            what = f"entry {outcome.entry_id}"
        else:
            what = f"{outcome.code}: {outcome.detail}"
        click.echo(f"  {outcome.reference:<24}{outcome.outcome:<16}{what}")


@finance.command("reconcile")
@click.option("--partner", "partner_id", required=True, help="The partner's id.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--from",
    "start",
    default=None,
    help="Purchase times checked for rows missing "
    "at the partner: first instant (default: the file's first day).",
)
@click.option(
    "--to",
    "end",
    default=None,
    help="End of that range, excluded (default: the day after the file's last day).",
)
@click.option(
    "--repair",
    "then_repair",
    is_flag=True,
    help="Then post the rows missing in the ledger through the earn path.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run (and repair) as JSON.")
def reconcile(partner_id: str, file: Path, start, end, then_repair: bool, as_json: bool) -> None:
    """Reconcile PARTNER's transaction FILE (CSV, read with the partner's
    mapping) against the ledger and store the run: matched, differing,
    missing in the ledger, missing at the partner, unreadable, duplicate."""
    from api.cli_support import actor, input_file
    from finance.reconciliation import reconcile as run_reconcile
    from finance.reconciliation_repair import repair
    from partners.programme import Programme

    period = _period(start, end)
    who = actor()

    # Read as it goes (blocking reads in chunks: a command has nothing else to serve).
    stream = open(input_file(file), "rb")

    async def work(settings, ledger):
        run = await run_reconcile(
            ledger.engine, partner_id, stream, file.name, actor=who, period=period
        )
        fixed = None
        if then_repair:
            programme = Programme(ledger, settings.tier_period)
            fixed = await repair(programme, run.reconciliation_id, who)
        return run, fixed

    with stream:
        run, fixed = _run(work)
    if as_json:
        _json({"reconciliation": run, "repair": fixed} if then_repair else run)
        return
    _show_run(run)
    if fixed is not None:
        _show_outcomes(fixed)
    else:
        click.echo(
            f"rows: loyalty finance reconciliation {run.reconciliation_id} --class differing"
        )


@finance.command("reconcile-repair")
@click.argument("reconciliation_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def reconcile_repair(reconciliation_id: int, as_json: bool) -> None:
    """Post the rows of run RECONCILIATION_ID missing in the ledger through
    the earn path; a second repair finds them posted and posts nothing."""
    from api.cli_support import actor
    from finance.reconciliation_repair import repair
    from partners.programme import Programme

    who = actor()
    result = _run(
        lambda settings, ledger: repair(
            Programme(ledger, settings.tier_period), reconciliation_id, who
        )
    )
    if as_json:
        _json(result)
    else:
        _show_outcomes(result)


@finance.command("reconciliations")
@click.option("--partner", "partner_id", default=None, help="Only this partner's runs.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def reconciliations(partner_id: str | None, limit: int, as_json: bool) -> None:
    """The stored reconciliation runs, newest first."""
    from finance.reconciliation_runs import list_reconciliations

    runs, _ = _run(lambda settings, ledger: list_reconciliations(ledger.engine, partner_id, limit))
    if as_json:
        _json(runs)
        return
    for run in runs:
        counts = ", ".join(f"{cls} {t.count:,}" for cls, t in run.totals.items() if t.count)
        click.echo(
            f"{run.reconciliation_id:>6}  {run.created_at:%Y-%m-%d %H:%M}  {run.partner_id:<16}"
            f"{run.file_name}  {counts or 'no rows'}"
        )


@finance.command("reconciliation")
@click.argument("reconciliation_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--class", "cls", default=None, help="Only the rows of this class.")
@click.option("--json", "as_json", is_flag=True, help="The rows as JSON Lines (after the run).")
def reconciliation(reconciliation_id: int, cls: str | None, as_json: bool) -> None:
    """A stored run: its totals, then its rows (of one class with --class),
    read a page at a time."""
    from finance.reconciliation_runs import get_reconciliation, reconciliation_items

    async def work(settings, ledger):
        run = await get_reconciliation(ledger.engine, reconciliation_id)
        if as_json:
            click.echo(msgspec.json.encode(run))
        else:
            _show_run(run)
        cursor = None
        while True:
            page = await reconciliation_items(ledger.engine, reconciliation_id, cls, 1000, cursor)
            for item in page.items:
                if as_json:
                    click.echo(msgspec.json.encode(item))
                else:
                    click.echo(_item_line(item))
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    _run(work)


def _item_line(item) -> str:
    where = f"line {item.line}" if item.line is not None else "ledger"
    reference = item.reference or "-"
    parts = [f"{item.item_id:>6}", f"{item.cls:<19}", f"{where:<11}", f"{reference:<20}"]
    if item.differing:
        parts.append("differs in " + ", ".join(item.differing))
    if item.detail:
        parts.append(item.detail)
    if item.file_amount_minor is not None:
        parts.append(
            f"file: card {item.file_card} {item.file_at or item.file_date} "
            f"{item.file_amount_minor} minor {item.file_points} pts"
        )
    if item.ledger_amount_minor is not None:
        parts.append(
            f"ledger: {item.ledger_member_id} {item.ledger_occurred_at:%Y-%m-%dT%H:%M:%SZ} "
            f"{item.ledger_amount_minor} minor {item.ledger_points} pts (entry {item.entry_id})"
        )
    return "  ".join(parts).rstrip()
