"""Partner transaction files: a day's purchases of one partner, as CSV or JSON
Lines (formats in partners/import_formats.py and the README's "Partner
transaction files"), earned in chunks of up to 1,000 through the batch earn
(partners/batch.py), streamed (constant memory whatever the file's size) and
resumable.

The purchases are dealt by card number to `lanes` (default 4) transactions
that run at once, so PostgreSQL works on some lanes' chunks while Python
evaluates another's, and no lane waits idle for a commit's flush. Every
card's purchases stay in one lane, earned in file order; a member holding
several cards may have them earned in another order (import with one lane
to keep the file's order across cards). A reference sent twice in a file is
decided in file order whatever the lanes: before a purchase goes to its
lane, the lane holding an earlier purchase with the same reference, not yet
committed, commits it first.

A file is known by its partner and SHA-256. Its row in `partner_imports`
holds a checkpoint per lane (data rows, file line and byte offset after the
lane's last purchase) and the counts, updated in the same transaction as each
chunk's postings and its rejects (`partner_import_rejects`): a process
killed anywhere loses nothing and repeats nothing, and the same file started
again seeks to the checkpoint furthest behind, skips what each lane has
done, and goes on. A finished file started again answers its earlier
summary. While one process imports a file, it holds a session advisory lock
on it, and a second process is refused (`request-in-flight`). Each reference
is unique per partner for ever besides, so no purchase can post twice
whatever happens.

A row that cannot be read never stops the import: it is a reject with its
line number and reason (`invalid-purchase`), like a purchase the batch
refuses (duplicate reference, unknown card, closed member, ...).
"""

import asyncio
import csv
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.errors import RequestInFlight
from ledger.lanes import in_lanes
from partners.batch import MAX_BATCH_ITEMS, BatchReceipt, earn_batch
from partners.errors import InvalidPurchase, PartnerNotFound, PartnerSuspended
from partners.import_formats import (
    FORMATS,
    MAX_FIELD,
    ImportSource,
    Parsed,
    check_header,
    digest,
    format_of,
    read_file,
)
from partners.programme import Programme

BAD = "invalid-purchase"  # the code of a row that cannot be read
IMPORT_LANES = 4  # transactions at once; a file keeps the number it started with
MAX_LANES = 16


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
    "posted, duplicates, rejected, points, started_at, finished_at, runs, lanes, lane_rows, "
    "lane_lines, lane_offsets"
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
    conn: AsyncConnection,
    partner_id: str,
    sha: str,
    size: int,
    name: str,
    fmt: str,
    actor: str,
    lanes: int,
):
    """The file's import row: new (with `lanes` lanes), or the unfinished one
    (one more run, its own lanes), or the finished one as it stands."""
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
                "started_by, lanes, lane_rows, lane_lines, lane_offsets) VALUES (:p, :s, :n, :f, "
                ":b, :a, :lanes, :zeros, :zeros, :zeros) ON CONFLICT (partner_id, sha256) "
                "DO UPDATE SET runs = partner_imports.runs + 1, updated_at = now() "
                f"WHERE partner_imports.finished_at IS NULL RETURNING {_COLUMNS}"
            ),
            {
                "p": partner_id,
                "s": sha,
                "n": name[:MAX_FIELD],
                "f": fmt,
                "b": size,
                "a": actor,
                "lanes": lanes,
                "zeros": [0] * lanes,
            },
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


async def _commit_chunk(
    conn: AsyncConnection, import_id: int, lane: int, done: int, chunk: list[Parsed], receipt
) -> None:
    """The chunk's rejects and its lane's checkpoint, in the chunk's
    transaction; `done` is the data rows the lane had committed before it."""
    rejects = _rejects_of(chunk, receipt)
    if rejects:
        await conn.execute(
            text(
                "INSERT INTO partner_import_rejects (import_id, line, reference, code, detail) "
                "SELECT :i, unnest(CAST(:l AS bigint[])), unnest(CAST(:r AS text[])), "
                "unnest(CAST(:c AS text[])), unnest(CAST(:d AS text[]))"
            ),
            {
                "i": import_id,
                "l": [r.line for r in rejects],
                "r": [r.reference for r in rejects],
                "c": [r.code for r in rejects],
                "d": [r.detail for r in rejects],
            },
        )
    unread = sum(p.item is None for p in chunk)
    rows = sum(p.rows for p in chunk)
    # The other lanes' checkpoints as they stand when this one commits (the
    # row lock orders the lanes' commits); line_done / offset_done: the lane
    # furthest behind.
    moved = (
        await conn.execute(
            text(
                "UPDATE partner_imports SET lane_rows[:lane] = lane_rows[:lane] + :rows, "
                "lane_lines[:lane] = :line, lane_offsets[:lane] = :offset, "
                "rows_done = rows_done + :rows, purchases = purchases + :n, "
                "posted = posted + :posted, duplicates = duplicates + :dup, "
                "rejected = rejected + :rej, points = points + :pts, updated_at = now(), "
                "(line_done, offset_done) = (SELECT CASE WHEN i = :lane THEN :line ELSE l END, "
                "CASE WHEN i = :lane THEN :offset ELSE o END FROM unnest(lane_lines, "
                "lane_offsets) WITH ORDINALITY AS t(l, o, i) "
                "ORDER BY 2 LIMIT 1) "
                "WHERE id = :id AND lane_rows[:lane] = :done AND finished_at IS NULL RETURNING 1"
            ),
            {
                "id": import_id,
                "lane": lane + 1,
                "done": done,
                "rows": rows,
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
    lanes: int = IMPORT_LANES,
    progress: Callable[[int, ImportSummary], None] | None = None,
) -> ImportSummary:
    """Import (or go on importing) a partner's file; see the module's docstring.
    `lanes` applies to a file started now (a resumed one keeps its own).
    `progress(bytes_done, summary)` is called after each committed chunk,
    with the offset every lane has passed."""
    if not 1 <= chunk_size <= MAX_BATCH_ITEMS:
        raise InvalidPurchase(f"a chunk has 1 to {MAX_BATCH_ITEMS} purchases")
    if not 1 <= lanes <= MAX_LANES:
        raise InvalidPurchase(f"an import has 1 to {MAX_LANES} lanes")
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
                state = await _begin(conn, partner_id, sha, size, source.name, fmt, actor, lanes)
            if state.finished_at is not None:
                return _summary(state, already_imported=True)
            if progress is not None:
                progress(state.offset_done, _summary(state))
            with source.open() as stream:
                await _Lanes(programme, partner_id, state, chunk_size, progress).run(
                    read_file(fmt, stream, state.offset_done, state.line_done)
                )
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


def card_lane(card_number: str, lanes: int) -> int:
    """The lane of a card's purchases: the same in every run and process."""
    return zlib.crc32(card_number.encode()) % lanes


def lane_of(parsed: Parsed, lanes: int) -> int:
    """The lane of a purchase: its card's; a row that could not be read, by
    its line."""
    if parsed.item is None:
        return parsed.line % lanes
    return card_lane(parsed.item.card_number, lanes)


class _Lanes:
    """Deals a file's purchases to its lanes and runs them at once: each lane
    a task taking chunks from a queue of one (the reader waits while both
    the lane's queued chunk and its running one are full: constant memory)."""

    def __init__(self, programme: Programme, partner_id: str, state, chunk_size: int, progress):
        self.programme, self.partner_id = programme, partner_id
        self.import_id, self.chunk_size, self.progress = state.id, chunk_size, progress
        count = state.lanes
        self.rows_done = list(state.lane_rows)  # per lane, as committed
        self.lines_done = list(state.lane_lines)
        self.queues: list[asyncio.Queue] = [asyncio.Queue(maxsize=1) for _ in range(count)]
        self.buffers: list[list[Parsed]] = [[] for _ in range(count)]
        self.sent = [0] * count  # chunks handed to each lane
        self.committed = [0] * count
        self.moved = asyncio.Condition()  # a lane committed a chunk
        # Each reference of a chunk not yet committed: (lane, its chunk number).
        self.uncommitted: dict[str, tuple[int, int]] = {}

    async def run(self, parsed: Iterator[Parsed]) -> None:
        """Deal and earn the whole file; a lane's failure stops the others."""
        await in_lanes(self._deal(parsed), *(self._lane(n) for n in range(len(self.queues))))

    async def _deal(self, parsed: Iterator[Parsed]) -> None:
        count = len(self.queues)
        for purchase in parsed:
            lane = lane_of(purchase, count)
            if purchase.end_line <= self.lines_done[lane]:
                continue  # committed by an earlier run
            if purchase.item is not None:
                reference = purchase.item.reference
                earlier = self.uncommitted.get(reference)
                if earlier is not None and earlier[0] != lane:
                    await self._committed(*earlier)
                self.uncommitted[reference] = (lane, self.sent[lane] + 1)
            self.buffers[lane].append(purchase)
            if len(self.buffers[lane]) == self.chunk_size:
                await self._send(lane)
        for lane in range(count):
            if self.buffers[lane]:
                await self._send(lane)
            await self.queues[lane].put(None)

    async def _send(self, lane: int) -> None:
        chunk, self.buffers[lane] = self.buffers[lane], []
        self.sent[lane] += 1
        await self.queues[lane].put(chunk)

    async def _committed(self, lane: int, number: int) -> None:
        """Wait until `lane` has committed its chunk `number` (sent now if
        it is still being filled)."""
        if number > self.sent[lane]:
            await self._send(lane)
        async with self.moved:
            await self.moved.wait_for(lambda: self.committed[lane] >= number)

    async def _lane(self, lane: int) -> None:
        while (chunk := await self.queues[lane].get()) is not None:
            await self._post(lane, chunk)
            async with self.moved:
                self.committed[lane] += 1
                for p in chunk:
                    if p.item is not None and self.uncommitted.get(p.item.reference) == (
                        lane,
                        self.committed[lane],
                    ):
                        del self.uncommitted[p.item.reference]
                self.moved.notify_all()
            if self.progress is not None:
                async with self.programme.ledger.engine.connect() as conn:
                    state = (
                        await conn.execute(
                            text(f"SELECT {_COLUMNS} FROM partner_imports WHERE id = :id"),
                            {"id": self.import_id},
                        )
                    ).one()
                self.progress(state.offset_done, _summary(state))

    async def _post(self, lane: int, chunk: list[Parsed]) -> None:
        """Earn a chunk and move its lane's checkpoint, in one transaction."""
        done = self.rows_done[lane]
        items = [p.item for p in chunk if p.item is not None]

        async def after(conn: AsyncConnection, receipt: BatchReceipt | None) -> None:
            await _commit_chunk(conn, self.import_id, lane, done, chunk, receipt)

        if items:
            await earn_batch(self.programme, self.partner_id, items, after=after)
        else:
            await self.programme.ledger.atomically(lambda conn: after(conn, None))
        self.rows_done[lane] = done + sum(p.rows for p in chunk)
        self.lines_done[lane] = chunk[-1].end_line


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
