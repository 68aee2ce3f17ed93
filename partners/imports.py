"""Partner transaction files: a day's purchases of one partner, as CSV or JSON
Lines (formats in partners/import_formats.py and the README's "Partner
transaction files"), earned in chunks of up to 1,000 through the batch earn
(partners/batch.py), streamed (constant memory whatever the file's size) and
resumable.

A file is known by its partner and SHA-256. Its row in `partner_imports`
holds the checkpoint (data rows, file line and byte offset done) and the
counts, updated in the same transaction as each chunk's postings and its
rejects (`partner_import_rejects`): a process killed anywhere loses nothing
and repeats nothing, and the same file started again seeks to the checkpoint
and goes on. A finished file started again answers its earlier summary. While
one process imports a file, it holds a session advisory lock on it, and a
second process is refused (`request-in-flight`). Each reference is unique per
partner for ever besides, so no purchase can post twice whatever happens.

A row that cannot be read never stops the import: it is a reject with its
line number and reason (`invalid-purchase`), like a purchase the batch
refuses (duplicate reference, unknown card, closed member, ...).
"""

import asyncio
import csv
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.errors import RequestInFlight
from partners.batch import MAX_BATCH_ITEMS, BatchReceipt, earn_batch
from partners.errors import InvalidPurchase, PartnerNotFound, PartnerSuspended
from partners.import_formats import (
    FORMATS,
    MAX_FIELD,
    ImportSource,
    Parsed,
    check_header,
    chunks,
    digest,
    format_of,
    read_file,
)
from partners.programme import Programme

BAD = "invalid-purchase"  # the code of a row that cannot be read


class ImportSummary(msgspec.Struct, frozen=True):
    import_id: int
    partner_id: str
    file_name: str
    sha256: str
    format: str
    rows: int  # data rows read (CSV records, JSON lines; blank lines not counted)
    purchases: int  # rows grouped by reference: posted + duplicates + rejected
    posted: int
    duplicates: int  # references the partner had used before
    rejected: int  # every other refusal, in the rejects with its reason
    points: int  # PTS earned by the posted purchases
    started_at: datetime
    finished_at: datetime | None
    runs: int  # how many times the file was started (a resumed import: > 1)
    already_imported: bool = False  # finished before: nothing was done this time


class Reject(msgspec.Struct, frozen=True):
    line: int  # the file line the purchase starts on (a CSV header is line 1)
    reference: str | None
    code: str  # a problem type, as the API names it (/problems/{code})
    detail: str


# -- importing -----------------------------------------------------------------

_COLUMNS = (
    "id, partner_id, file_name, sha256, format, rows_done, line_done, offset_done, purchases, "
    "posted, duplicates, rejected, points, started_at, finished_at, runs"
)


def _summary(row, already_imported: bool = False) -> ImportSummary:
    return ImportSummary(
        import_id=row.id,
        partner_id=row.partner_id,
        file_name=row.file_name,
        sha256=row.sha256,
        format=row.format,
        rows=row.rows_done,
        purchases=row.purchases,
        posted=row.posted,
        duplicates=row.duplicates,
        rejected=row.rejected,
        points=row.points,
        started_at=row.started_at,
        finished_at=row.finished_at,
        runs=row.runs,
        already_imported=already_imported,
    )


async def _begin(
    conn: AsyncConnection, partner_id: str, sha: str, size: int, name: str, fmt: str, actor: str
):
    """The file's import row: new, or the unfinished one (one more run), or
    the finished one as it stands."""
    status = (
        await conn.execute(text("SELECT status FROM partners WHERE id = :p"), {"p": partner_id})
    ).scalar()
    if status is None:
        raise PartnerNotFound(f"no partner {partner_id!r}", partner_id=partner_id)
    if status != "active":
        raise PartnerSuspended(f"partner {partner_id} is suspended")
    row = (
        await conn.execute(
            text(
                "INSERT INTO partner_imports (partner_id, sha256, file_name, format, size_bytes, "
                "started_by) VALUES (:p, :s, :n, :f, :b, :a) ON CONFLICT (partner_id, sha256) "
                "DO UPDATE SET runs = partner_imports.runs + 1, updated_at = now() "
                f"WHERE partner_imports.finished_at IS NULL RETURNING {_COLUMNS}"
            ),
            {"p": partner_id, "s": sha, "n": name[:MAX_FIELD], "f": fmt, "b": size, "a": actor},
        )
    ).first()
    if row is None:
        row = (
            await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM partner_imports WHERE partner_id = :p AND sha256 = :s"
                ),
                {"p": partner_id, "s": sha},
            )
        ).one()
    if row.format != fmt:
        raise InvalidPurchase(
            f"this file was started as {row.format}: import it as {row.format} to go on",
            format=row.format,
        )
    return row


def _safe(value: str | None, limit: int = MAX_FIELD) -> str | None:
    """A value a text column can hold (no NUL, no lone surrogate), cut to `limit`."""
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd")[:limit]
    return value.encode(errors="replace").decode()


def _rejects_of(chunk: list[Parsed], receipt: BatchReceipt | None) -> list[Reject]:
    outcomes = iter(receipt.outcomes if receipt is not None else ())
    rejects = []
    for parsed in chunk:
        if parsed.item is None:
            code, detail, reference = BAD, parsed.error or "unreadable", parsed.reference
        else:
            outcome = next(outcomes)
            if outcome.error is None:
                continue
            code, detail, reference = outcome.error.code, outcome.error.detail, outcome.reference
        rejects.append(Reject(parsed.line, _safe(reference), code, _safe(detail, 1000) or ""))
    return rejects


async def _commit_chunk(conn: AsyncConnection, state, chunk: list[Parsed], receipt) -> None:
    """The chunk's rejects and the checkpoint, in the chunk's transaction."""
    rejects = _rejects_of(chunk, receipt)
    if rejects:
        await conn.execute(
            text(
                "INSERT INTO partner_import_rejects (import_id, line, reference, code, detail) "
                "SELECT :i, unnest(CAST(:l AS bigint[])), unnest(CAST(:r AS text[])), "
                "unnest(CAST(:c AS text[])), unnest(CAST(:d AS text[]))"
            ),
            {
                "i": state.id,
                "l": [r.line for r in rejects],
                "r": [r.reference for r in rejects],
                "c": [r.code for r in rejects],
                "d": [r.detail for r in rejects],
            },
        )
    unread = sum(p.item is None for p in chunk)
    moved = (
        await conn.execute(
            text(
                "UPDATE partner_imports SET rows_done = rows_done + :rows, line_done = :line, "
                "offset_done = :offset, purchases = purchases + :n, posted = posted + :posted, "
                "duplicates = duplicates + :dup, rejected = rejected + :rej, "
                "points = points + :pts, updated_at = now() "
                "WHERE id = :id AND rows_done = :done AND finished_at IS NULL RETURNING 1"
            ),
            {
                "id": state.id,
                "done": state.rows_done,
                "rows": sum(p.rows for p in chunk),
                "line": chunk[-1].end_line,
                "offset": chunk[-1].end_offset,
                "n": len(chunk),
                "posted": receipt.posted if receipt else 0,
                "dup": receipt.duplicates if receipt else 0,
                "rej": (receipt.rejected if receipt else 0) + unread,
                "pts": receipt.points if receipt else 0,
            },
        )
    ).first()
    if moved is None:  # rolls the chunk back
        raise RequestInFlight(
            "another process is importing this file (its checkpoint moved)", retry_after=5
        )


async def import_file(
    programme: Programme,
    partner_id: str,
    source: ImportSource,
    fmt: str | None = None,
    *,
    actor: str,
    chunk_size: int = MAX_BATCH_ITEMS,
    progress: Callable[[int, ImportSummary], None] | None = None,
) -> ImportSummary:
    """Import (or go on importing) a partner's file; see the module's docstring.
    `progress(bytes_done, summary)` is called after each committed chunk."""
    if not 1 <= chunk_size <= MAX_BATCH_ITEMS:
        raise InvalidPurchase(f"a chunk has 1 to {MAX_BATCH_ITEMS} purchases")
    fmt = fmt or format_of(source.name)
    if fmt not in FORMATS:
        raise InvalidPurchase(f"unknown file format {fmt!r}: one of {', '.join(FORMATS)}")
    sha, size = digest(source)
    with source.open() as stream:
        check_header(fmt, stream)  # a wrong header refuses the file before anything
    engine: AsyncEngine = programme.ledger.engine
    async with engine.connect() as holder:
        try:
            # Autocommit: the lock is the session's, held while no transaction is open.
            await holder.execution_options(isolation_level="AUTOCOMMIT")
            got = (
                await holder.execute(
                    text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"),
                    {"k": f"partner-import\n{partner_id}\n{sha}"},
                )
            ).scalar()
            if not got:
                raise RequestInFlight(
                    f"this file ({sha[:12]}) is being imported for {partner_id} by another process",
                    retry_after=5,
                )
            async with engine.begin() as conn:
                state = await _begin(conn, partner_id, sha, size, source.name, fmt, actor)
            if state.finished_at is not None:
                return _summary(state, already_imported=True)
            if progress is not None:
                progress(state.offset_done, _summary(state))
            with source.open() as stream:
                parsed = read_file(fmt, stream, state.offset_done, state.line_done)
                for chunk in chunks(parsed, chunk_size):
                    state = await _import_chunk(programme, partner_id, state, chunk)
                    if progress is not None:
                        progress(state.offset_done, _summary(state))
            async with engine.begin() as conn:
                state = (
                    await conn.execute(
                        text(
                            "UPDATE partner_imports SET finished_at = now(), updated_at = now() "
                            f"WHERE id = :id RETURNING {_COLUMNS}"
                        ),
                        {"id": state.id},
                    )
                ).one()
            return _summary(state)
        finally:
            # Closing the session frees the lock, whatever state it is in.
            await holder.invalidate()


async def _import_chunk(programme: Programme, partner_id: str, state, chunk: list[Parsed]):
    items = [p.item for p in chunk if p.item is not None]

    async def after(conn: AsyncConnection, receipt: BatchReceipt | None) -> None:
        await _commit_chunk(conn, state, chunk, receipt)

    if items:
        await earn_batch(programme, partner_id, items, after=after)
    else:
        await programme.ledger.atomically(lambda conn: after(conn, None))
    async with programme.ledger.engine.connect() as conn:
        return (
            await conn.execute(
                text(f"SELECT {_COLUMNS} FROM partner_imports WHERE id = :id"), {"id": state.id}
            )
        ).one()


async def stream_rejects(engine: AsyncEngine, import_id: int) -> AsyncIterator[Reject]:
    """An import's rejects in line order, read in pages (constant memory)."""
    after = 0
    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT line, reference, code, detail FROM partner_import_rejects "
                        "WHERE import_id = :i AND line > :after ORDER BY line LIMIT 5000"
                    ),
                    {"i": import_id, "after": after},
                )
            ).all()
        for row in rows:
            yield Reject(row.line, row.reference, row.code, row.detail)
        if len(rows) < 5000:
            return
        after = rows[-1].line


async def write_rejects(engine: AsyncEngine, import_id: int, path: str | Path) -> int:
    """The rejects as CSV (line, reference, code, detail); returns how many."""
    count = 0
    out = await asyncio.to_thread(open, path, "w", newline="", encoding="utf-8")
    with out:
        writer = csv.writer(out)
        writer.writerow(("line", "reference", "code", "detail"))
        async for reject in stream_rejects(engine, import_id):
            writer.writerow((reject.line, reject.reference or "", reject.code, reject.detail))
            count += 1
    return count
