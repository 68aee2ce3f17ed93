"""Journal export: every entry booked in a period with its postings, as CSV or
JSON Lines, streamed in constant memory, with control totals an auditor can
check the file against.

Period time: an entry belongs to [from, to) by its booking time `created_at`
(ledger/history.py); `effective_at` is a column like any other.

Formats (UTF-8, `\\n` line ends, entries in id order, postings in the order
they were written; timestamps UTC as `2026-04-01T09:00:00.000000Z`):
- `csv`: a header, then one row per posting with its entry's columns
  repeated (`COLUMNS`); RFC 4180 quoting; an absent value is an empty field;
  `breakdown` is the entry's rule breakdown as JSON text. Amounts are signed
  integers: a credit (positive) increases the account's balance, a debit
  (negative) decreases it. Text fields are neutralised against formula
  injection (`csv_text`): one starting with `=`, `+`, `-`, `@`, a tab or a
  carriage return gets a leading `'`, so a spreadsheet shows it as text
  instead of evaluating it; numbers (ids, amounts) are written as they are.
- `jsonl`: one JSON object per entry, its postings in a `postings` list
  (`posting_id`, `account`, `asset`, `amount`), absent values `null`; every
  value exactly as the ledger holds it (no neutralisation).

Control totals (`ControlTotals`, written by the CLI to `FILE.totals.json`):
entries, postings, first and last entry id, and per asset the postings, the
sum of the debits and the sum of the credits, which are equal and opposite;
with the file's size and SHA-256 (also in `FILE.sha256`, `sha256sum -c`
format). The rows are counted as they are written and compared with the
totals the database computes in the same snapshot: a difference refuses the
export (`ExportIncomplete`) instead of handing out an incomplete file.
"""

import csv
import hashlib
import io
import os
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finance.errors import ExportIncomplete, InvalidExportFormat
from finance.period import Period, stamp
from ledger.history import (
    WINDOW_COLUMNS,
    AssetTotals,
    WindowTotals,
    snapshot,
    window_rows,
    window_totals,
)

FORMATS = ("csv", "jsonl")
# Without a charset parameter: Litestar appends `; charset=utf-8` to text/*
# media types itself (a charset here would be sent twice).
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
COLUMNS = WINDOW_COLUMNS
BATCH_ROWS = 5_000
PERIOD_TIME = "created_at"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidExportFormat(f"format is one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


class ControlTotals(msgspec.Struct, kw_only=True):
    """What an exported file must add up to (the sidecar `FILE.totals.json`)."""

    format: str
    period_from: str
    period_to: str
    period_time: str = PERIOD_TIME
    entries: int
    postings: int
    first_entry_id: int | None
    last_entry_id: int | None
    assets: dict[str, AssetTotals]
    columns: list[str]
    generated_at: str
    file: str | None = None
    bytes: int | None = None
    sha256: str | None = None


def control_totals(period: Period, fmt: str, totals: WindowTotals, at: datetime) -> ControlTotals:
    return ControlTotals(
        format=fmt,
        period_from=stamp(period.start),
        period_to=stamp(period.end),
        entries=totals.entries,
        postings=totals.postings,
        first_entry_id=totals.first_entry_id,
        last_entry_id=totals.last_entry_id,
        assets=totals.assets,
        columns=list(COLUMNS),
        generated_at=stamp(at),
    )


class _Stamps:
    """Timestamps of one column as text, the last one remembered: the rows of
    one entry (and the entries of one transaction) share theirs."""

    __slots__ = ("_last", "_text")

    def __init__(self) -> None:
        self._last: datetime | None = None
        self._text = ""

    def __call__(self, moment: datetime) -> str:
        if moment != self._last:
            self._last, self._text = moment, stamp(moment)
        return self._text


class _Tally:
    """Counts entries and postings and sums amounts as rows are written."""

    def __init__(self) -> None:
        self.totals = WindowTotals()
        self._last_entry: int | None = None

    def row(self, entry_id: int, asset: str, amount: int) -> None:
        totals = self.totals
        if entry_id != self._last_entry:
            totals.entries += 1
            if totals.first_entry_id is None:
                totals.first_entry_id = entry_id
            totals.last_entry_id = entry_id
            self._last_entry = entry_id
        totals.postings += 1
        per_asset = totals.assets.get(asset)
        if per_asset is None:
            per_asset = totals.assets[asset] = AssetTotals()
        per_asset.add(amount)


# What makes csv's minimal quoting quote a field.
_SPECIAL = frozenset(',"\r\n')


def _csv_field(value: str) -> str:
    """A field quoted as `csv.writer` (QUOTE_MINIMAL) quotes it."""
    if _SPECIAL.isdisjoint(value):
        return value
    return '"' + value.replace('"', '""') + '"'


# What a spreadsheet reads as the start of a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value):
    """A CSV text field as written: one a spreadsheet would evaluate as a
    formula (`=1+2`, `=HYPERLINK(...)`, `@SUM(...)`, ...) gets a leading
    single quote, shown as text. Anything else, and every non-text value
    (ids, amounts, absent values), is unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class _CsvFormat:
    """The entry's twelve columns are quoted once per entry (the breakdown is
    the long field); each posting's four are appended to them. The bytes are
    those of `csv.writer` writing the sixteen columns of each row, their text
    fields passed through `csv_text`."""

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\n")
        self.created, self.effective = _Stamps(), _Stamps()
        self.entry: int | None = None
        self.prefix = ""

    def _take(self) -> str:
        text = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return text

    def header(self) -> bytes:
        self.writer.writerow(COLUMNS)
        return self._take().encode()

    def rows(self, rows: Sequence) -> bytes:
        created, effective, tally = self.created, self.effective, self.tally.row
        entry, prefix = self.entry, self.prefix
        lines = []
        for r in rows:
            # (entry_id, created_at, effective_at, kind, member_id, partner_id,
            #  partner_reference, reverses_entry_id, hold_id, posted_by, reason,
            #  breakdown, posting_id, account, asset, amount)
            tally(r[0], r[14], r[15])
            if r[0] != entry:
                entry = r[0]
                self.writer.writerow(
                    (entry, created(r[1]), effective(r[2]), *map(csv_text, r[3:12]))
                )
                prefix = self._take()[:-1] + ","
            account, asset = _csv_field(csv_text(r[13])), _csv_field(csv_text(r[14]))
            lines.append(f"{prefix}{r[12]},{account},{asset},{r[15]}\n")
        self.entry, self.prefix = entry, prefix
        return "".join(lines).encode()

    def end(self) -> bytes:
        return b""


class _Posting(msgspec.Struct):
    posting_id: int
    account: str
    asset: str
    amount: int


class _Entry(msgspec.Struct):
    entry_id: int
    created_at: str
    effective_at: str
    kind: str
    member_id: str | None
    partner_id: str | None
    partner_reference: str | None
    reverses_entry_id: int | None
    hold_id: int | None
    posted_by: str
    reason: str | None
    breakdown: msgspec.Raw
    postings: list[_Posting]


class _JsonlFormat:
    """One line per entry; an entry whose postings continue in the next batch
    waits for them."""

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally
        self.encoder = msgspec.json.Encoder()
        self.created, self.effective = _Stamps(), _Stamps()
        self.current: _Entry | None = None

    def header(self) -> bytes:
        return b""

    def rows(self, rows: Sequence) -> bytes:
        out = bytearray()
        created, effective = self.created, self.effective
        tally, encode = self.tally.row, self.encoder.encode_into
        current = self.current
        for r in rows:
            tally(r[0], r[14], r[15])
            if current is None or current.entry_id != r[0]:
                if current is not None:
                    encode(current, out, -1)
                    out += b"\n"
                current = _Entry(
                    r[0],
                    created(r[1]),
                    effective(r[2]),
                    r[3],
                    r[4],
                    r[5],
                    r[6],
                    r[7],
                    r[8],
                    r[9],
                    r[10],
                    msgspec.Raw(r[11].encode()),
                    [],
                )
            current.postings.append(_Posting(r[12], r[13], r[14], r[15]))
        self.current = current
        return bytes(out)

    def end(self) -> bytes:
        if self.current is None:
            return b""
        line = self.encoder.encode(self.current) + b"\n"
        self.current = None
        return line


class JournalStream:
    """The bytes of one export, produced from a connection inside a snapshot
    (`ledger.history.snapshot(engine, long=True)`): `await open()` reads the
    database's control totals, then `chunks()` yields the file. Afterwards
    `sha256` and `size` describe what was yielded."""

    def __init__(
        self, conn: AsyncConnection, period: Period, fmt: str, batch: int = BATCH_ROWS
    ) -> None:
        self.conn, self.period, self.fmt, self.batch = conn, period, check_format(fmt), batch
        self.expected: WindowTotals | None = None
        self.tally = _Tally()
        self.digest = hashlib.sha256()
        self.size = 0

    async def open(self) -> WindowTotals:
        self.expected = await window_totals(self.conn, self.period.start, self.period.end)
        return self.expected

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    def _out(self, chunk: bytes) -> bytes:
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk

    async def chunks(self, progress: Callable[[int], None] | None = None) -> AsyncIterator[bytes]:
        """The file, a batch of rows per chunk; `progress(rows)` after each.
        The last chunk is held back until the rows are known to match the
        database's totals, so a failed check never ends in a complete-looking
        file."""
        expected = self.expected or await self.open()
        form = _CsvFormat(self.tally) if self.fmt == "csv" else _JsonlFormat(self.tally)
        if head := form.header():
            yield self._out(head)
        async for rows in window_rows(self.conn, self.period.start, self.period.end, self.batch):
            if chunk := form.rows(rows):
                yield self._out(chunk)
            if progress is not None:
                progress(len(rows))
        tail = form.end()
        if msgspec.to_builtins(self.tally.totals) != msgspec.to_builtins(expected):
            raise ExportIncomplete(
                f"the rows written ({self.tally.totals.entries} entries, "
                f"{self.tally.totals.postings} postings) do not match the database's control "
                f"totals ({expected.entries} entries, {expected.postings} postings)"
            )
        if not self.tally.totals.balanced:
            raise ExportIncomplete("debits and credits of the exported postings do not cancel")
        if tail:
            yield self._out(tail)


def sidecar_paths(path: Path) -> tuple[Path, Path]:
    """FILE.sha256 and FILE.totals.json."""
    return path.with_name(path.name + ".sha256"), path.with_name(path.name + ".totals.json")


def partial_path(path: Path) -> Path:
    """FILE.partial: the file while it is written, renamed when complete."""
    return path.with_name(path.name + ".partial")


def written_paths(path: Path) -> tuple[Path, ...]:
    """Every path an export to `path` writes."""
    path = Path(path)
    return (path, partial_path(path), *sidecar_paths(path))


async def export_journal(
    engine: AsyncEngine,
    period: Period,
    fmt: str,
    path: Path,
    *,
    started: Callable[[WindowTotals], None] | None = None,
    progress: Callable[[int], None] | None = None,
    batch: int = BATCH_ROWS,
) -> ControlTotals:
    """Write the period's journal to `path` (through `path.partial`, renamed
    when complete), then `path.sha256` and `path.totals.json`. `started(totals)`
    is told the database's totals before the first row (a progress bar's
    length), `progress(rows)` after each batch."""
    check_format(fmt)
    path = Path(path)
    partial = partial_path(path)
    async with snapshot(engine, long=True) as conn:
        export = JournalStream(conn, period, fmt, batch)
        expected = await export.open()
        if started is not None:
            started(expected)
        generated_at = datetime.now(UTC)
        try:
            with partial.open("wb") as out:
                async for chunk in export.chunks(progress):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(path)
    totals = control_totals(period, fmt, export.tally.totals, generated_at)
    totals.file, totals.bytes, totals.sha256 = path.name, export.size, export.sha256
    checksum, totals_path = sidecar_paths(path)
    checksum.write_text(f"{export.sha256}  {path.name}\n")
    totals_path.write_bytes(msgspec.json.format(msgspec.json.encode(totals)) + b"\n")
    return totals


async def journal_totals(engine: AsyncEngine, period: Period, fmt: str = "csv") -> ControlTotals:
    """The control totals of the period's journal, computed by the database
    (without the file's size and SHA-256, which only writing it gives)."""
    async with snapshot(engine, long=True) as conn:
        totals = await window_totals(conn, period.start, period.end)
    return control_totals(period, check_format(fmt), totals, datetime.now(UTC))
