"""`loyalty partner import FILE --partner ID`: a partner's transaction file
(CSV or JSON Lines) earned in chunks, resumable, with a rejects file and a
summary; see partners/imports.py and the README's "Partner transaction files".

Registered on the `partner` group at the bottom of api/cli.py; the helpers
of api/cli.py are imported when the command runs (api/cli.py imports this
module while it loads). Its failures end it as every command's do
(api/cli_failures.py): an unknown partner 4, a suspended one, a wrong header
or the same file being imported by another process 3, a file whose format
its name does not tell 2 (usage)."""

import contextlib
import os
import sys

import click
import msgspec

from partners.import_formats import FORMATS


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--partner", "partner_id", required=True, help="The partner whose file it is.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="csv or jsonl (default: from the file name: .csv, .jsonl or .ndjson).",
)
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Where the rejected rows go, as CSV (default: FILE.rejects.csv).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 1000),
    default=1000,
    show_default=True,
    help="Purchases per transaction (and per checkpoint).",
)
@click.option(
    "--lanes",
    type=click.IntRange(1, 16),
    help="Transactions at once, each for its own cards; default 4 (1: the file's order "
    "throughout). A resumed file keeps the lanes it was started with.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def import_file_command(file, partner_id, fmt, rejects_path, chunk_size, lanes, as_json) -> None:
    """Earn a partner's transaction FILE (CSV or JSON Lines).

    Started again after an interruption, the same file goes on from its last
    checkpoint and posts nothing twice; a file imported before answers its
    earlier summary. Rejected rows (with line number and reason) go to the
    rejects file; the summary counts rows, posted, duplicates, rejected and
    points. A progress bar shows on a terminal."""
    from api.cli_support import actor as _actor
    from api.cli_support import input_file, output_file
    from api.cli_support import run as _run
    from api.process_heap import batch_collector
    from partners.errors import InvalidPurchase
    from partners.import_formats import format_of
    from partners.imports import IMPORT_LANES, ImportSource, import_file, write_rejects
    from partners.programme import Programme

    source = ImportSource.from_path(input_file(file))
    if fmt is None:
        # Told before any server starts, as a usage error: the option fixes it.
        try:
            fmt = format_of(source.name)
        except InvalidPurchase:
            raise click.BadParameter(
                f"cannot tell the format of {source.name!r} from its name: "
                "name it .csv, .jsonl or .ndjson, or give --format",
                param_hint="FILE",
            ) from None
    rejects = output_file(rejects_path or f"{file}.rejects.csv", "--rejects")
    if rejects.exists() and os.path.samefile(rejects, file):
        raise click.BadParameter("is the file being imported", param_hint="--rejects")
    rejects_path = str(rejects)
    with contextlib.ExitStack() as stack:
        progress = None
        if sys.stderr.isatty():
            bar = stack.enter_context(
                click.progressbar(
                    length=os.path.getsize(file),
                    label=f"importing {source.name}",
                    file=sys.stderr,
                    item_show_func=lambda s: (
                        f"{s.posted:,} posted, {s.duplicates + s.rejected:,} rejected"
                        if s is not None
                        else None
                    ),
                )
            )

            def progress(done: int, summary) -> None:
                bar.update(max(0, done - bar.pos), summary)

        async def work(settings, ledger):
            with batch_collector():  # a long run: its collections walk only its rows
                summary = await import_file(
                    Programme(ledger, settings.tier_period),
                    partner_id,
                    source,
                    fmt,
                    actor=_actor(),
                    chunk_size=chunk_size,
                    lanes=lanes or IMPORT_LANES,
                    progress=progress,
                )
            return summary, await write_rejects(ledger.engine, summary.import_id, rejects_path)

        summary, rejects = _run(work)
    if summary.already_imported:
        click.echo(
            f"{source.name} was imported before (finished {summary.finished_at:%Y-%m-%d %H:%M:%S} "
            "UTC): its summary, nothing posted now",
            err=True,
        )
    if as_json:
        click.echo(
            msgspec.json.encode({**msgspec.to_builtins(summary), "rejects_file": rejects_path})
        )
        return
    click.echo(f"file:        {source.name} (sha256 {summary.sha256[:16]}..., {summary.format})")
    click.echo(f"import:      {summary.import_id} (run {summary.runs})")
    click.echo(f"rows:        {summary.rows:,}")
    click.echo(f"purchases:   {summary.purchases:,}")
    click.echo(f"posted:      {summary.posted:,}")
    click.echo(f"duplicates:  {summary.duplicates:,}")
    click.echo(f"rejected:    {summary.rejected:,}")
    click.echo(f"points:      {summary.points:,}")
    click.echo(f"rejects:     {rejects:,} in {rejects_path}")
