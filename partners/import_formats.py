"""Reading partner transaction files, row by row in constant memory, with
the file line and byte offset after each purchase (an import's checkpoint).

- CSV (UTF-8, a header row, then one purchase line per row): columns
  card_number, reference, occurred_at (ISO 8601 with a UTC offset),
  currency, amount_minor, category; optional sku and coupons (codes separated
  by spaces). Consecutive rows with the same reference are one purchase of
  several lines; they agree on card, time, currency and coupons.
- JSON Lines: one object per line, shaped like an item of the batch endpoint
  (`{"card_number", "reference", "purchase": {"currency", "occurred_at",
  "lines": [...]}, "coupons"}`).
In both, occurred_at is required: a file records purchases that happened.

A row that cannot be read is a `Parsed` with an `error` (its line and the
reason), never an exception: one bad row never stops a file. Every value is
checked against what a text column can hold (no NUL, valid Unicode, at most
255 characters) before it can reach PostgreSQL.
"""

import csv
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import msgspec

from partners.batch import EarnItem
from partners.errors import InvalidPurchase
from partners.programme import MAX_LINES, PurchaseInput, PurchaseLineInput

FORMATS = ("csv", "jsonl")
CSV_REQUIRED = ("card_number", "reference", "occurred_at", "currency", "amount_minor", "category")
CSV_OPTIONAL = ("sku", "coupons")
MAX_FIELD = 255  # characters in one value
MAX_COUPONS = 20
MAX_LINE_BYTES = 1 << 20  # a longer line is a reject (and is never held in memory)


@dataclass(slots=True)
class Parsed:
    """One purchase of the file, read (item) or not (error)."""

    line: int
    reference: str | None
    rows: int = 1
    end_line: int = 0
    end_offset: int = 0
    item: EarnItem | None = None
    error: str | None = None


@dataclass(frozen=True)
class ImportSource:
    """A file to import: its name and a way to open it (again) for reading."""

    name: str
    open: Callable[[], BinaryIO]

    @classmethod
    def from_path(cls, path: str | Path) -> "ImportSource":
        path = Path(path)
        return cls(path.name, lambda: open(path, "rb"))

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> "ImportSource":
        return cls(name, lambda: io.BytesIO(data))


def format_of(name: str) -> str:
    """The format a file name says (.csv; .jsonl, .ndjson)."""
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise InvalidPurchase(f"cannot tell the format of {name!r}: name it .csv or .jsonl")


def digest(source: ImportSource) -> tuple[str, int]:
    """SHA-256 (hex) and size of the file, read in blocks."""
    sha, size = hashlib.sha256(), 0
    with source.open() as stream:
        while block := stream.read(1 << 20):
            sha.update(block)
            size += len(block)
    return sha.hexdigest(), size


class _Lines:
    """A binary stream's lines, decoded, counting lines and bytes consumed; a
    line that is not UTF-8 or too long is noted as the current `flaw`."""

    def __init__(self, stream: BinaryIO, offset: int = 0, line: int = 0) -> None:
        self.stream, self.offset, self.line = stream, offset, line
        self.flaw: tuple[int, str] | None = None

    def raw(self) -> bytes:
        raw = self.stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            raise StopIteration
        self.offset += len(raw)
        self.line += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := self.stream.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                self.offset += len(rest)
            self.offset += len(rest)
            self._flaw(f"line {self.line} is longer than {MAX_LINE_BYTES} bytes")
            return b"\n"
        return raw

    def _flaw(self, detail: str) -> None:
        if self.flaw is None:
            self.flaw = (self.line, detail)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self.raw()
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            self._flaw(f"line {self.line} is not UTF-8")
            value = raw.decode(errors="replace")
        if self.line == 1:
            value = value.removeprefix("\ufeff")  # a byte order mark
        return value


def _text(value: str, name: str, line: int) -> str:
    if len(value) > MAX_FIELD:
        raise ValueError(f"line {line}: {name} is longer than {MAX_FIELD} characters")
    if "\x00" in value:
        raise ValueError(f"line {line}: {name} contains a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"line {line}: {name} is not valid Unicode") from None
    return value


def _time(value: str, line: int) -> datetime:
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"line {line}: occurred_at is not an ISO 8601 time: {value!r}") from None
    if at.tzinfo is None:
        raise ValueError(f"line {line}: occurred_at needs a UTC offset (e.g. Z or +01:00)")
    return at


def _amount(value: str, line: int) -> int:
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"line {line}: amount_minor is not a whole number of minor units")
    return int(value)


def csv_header(lines: _Lines) -> dict[str, int]:
    """The column positions named by the CSV header (the first non-blank line)."""
    reader = csv.reader(lines)
    while True:
        try:
            header = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise InvalidPurchase(f"the CSV header cannot be read: {error}") from None
        if lines.flaw is not None:
            raise InvalidPurchase(f"the CSV header cannot be read: {lines.flaw[1]}")
        if not header:
            continue
        names = [name.strip().lower() for name in header]
        unknown = sorted(set(names) - set(CSV_REQUIRED) - set(CSV_OPTIONAL))
        missing = [name for name in CSV_REQUIRED if name not in names]
        if unknown or missing or len(set(names)) != len(names):
            raise InvalidPurchase(
                "the CSV header names the columns "
                f"{', '.join(CSV_REQUIRED)} (and optionally {', '.join(CSV_OPTIONAL)}), "
                "each once"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
                missing=missing,
                unknown=unknown,
            )
        return {name: names.index(name) for name in names}
    raise InvalidPurchase("the file is empty: a CSV file starts with its header")


@dataclass(slots=True)
class _Group:
    """The rows of one CSV purchase (consecutive rows with its reference)."""

    parsed: Parsed
    card: str = ""
    at: datetime | None = None
    currency: str = ""
    coupons: list[str] = field(default_factory=list)
    lines: list[PurchaseLineInput] = field(default_factory=list)

    def add(self, values: dict[str, str], line: int, first: bool) -> None:
        for name, value in values.items():
            _text(value, name, line)
        card, currency = values["card_number"].strip(), values["currency"].strip()
        at = _time(values["occurred_at"], line)
        coupons = values.get("coupons", "").split()
        if first:
            self.card, self.at, self.currency, self.coupons = card, at, currency, coupons
        elif (card, at, currency, coupons) != (self.card, self.at, self.currency, self.coupons):
            raise ValueError(
                f"line {line}: the rows of purchase {self.parsed.reference!r} differ in "
                "card_number, occurred_at, currency or coupons"
            )
        if len(coupons) > MAX_COUPONS:
            raise ValueError(f"line {line}: at most {MAX_COUPONS} coupons per purchase")
        category = values["category"].strip()
        if not category:
            raise ValueError(f"line {line}: category is empty")
        sku = values.get("sku", "").strip() or None
        self.lines.append(PurchaseLineInput(_amount(values["amount_minor"], line), category, sku))

    def done(self) -> Parsed:
        parsed = self.parsed
        if parsed.error is None and parsed.rows > MAX_LINES:
            parsed.error = f"a purchase has at most {MAX_LINES} lines ({parsed.rows} rows)"
        if parsed.error is None:
            purchase = PurchaseInput(self.currency, self.lines, self.at)
            parsed.item = EarnItem(self.card, parsed.reference or "", purchase, self.coupons)
        self.lines = []
        return parsed


def read_csv(stream: BinaryIO, offset: int = 0, line: int = 0) -> Iterator[Parsed]:
    """The purchases of a CSV file from byte `offset` (at file line `line`);
    the header is read first, wherever the reading starts."""
    lines = _Lines(stream)
    columns = csv_header(lines)
    if offset:
        stream.seek(offset)
        lines.offset, lines.line = offset, line
    width = len(columns)
    group: _Group | None = None
    reader = csv.reader(lines)
    while True:
        start = lines.line + 1
        lines.flaw = None
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            record, lines.flaw = None, (start, f"line {start}: {error}")
        if record == [] and lines.flaw is None:
            continue  # a blank line
        # A row of the wrong width names no reference it could be trusted with.
        reference = record[columns["reference"]].strip() if record and len(record) == width else ""
        joins = group is not None and reference and reference == group.parsed.reference
        if group is not None and not joins:
            yield group.done()
            group = None
        if group is None:
            group = _Group(Parsed(start, reference[:MAX_FIELD] or None, rows=0))
        parsed = group.parsed
        parsed.rows += 1
        parsed.end_line, parsed.end_offset = lines.line, lines.offset
        if parsed.error is not None or parsed.rows > MAX_LINES:
            continue
        try:
            if lines.flaw is not None:
                raise ValueError(lines.flaw[1])
            if record is None or len(record) != width:
                raise ValueError(
                    f"line {start}: {len(record or ())} values, the header names {width} columns"
                )
            group.add({name: record[i] for name, i in columns.items()}, start, parsed.rows == 1)
        except ValueError as error:
            parsed.error = str(error)
            group.lines = []
    if group is not None:
        yield group.done()


_ITEM = msgspec.json.Decoder(EarnItem, strict=True)
_ANY = msgspec.json.Decoder()


def _item_problem(item: EarnItem, line: int) -> None:
    texts = [("card_number", item.card_number), ("reference", item.reference)]
    texts.append(("currency", item.purchase.currency))
    for ln in item.purchase.lines:
        texts += [("category", ln.category), ("sku", ln.sku or "")]
    texts += [("coupons", code) for code in item.coupons]
    for name, value in texts:
        _text(value, name, line)
    if item.purchase.occurred_at is None:
        raise ValueError(f"line {line}: purchase.occurred_at is required in a file")
    if len(item.coupons) > MAX_COUPONS:
        raise ValueError(f"line {line}: at most {MAX_COUPONS} coupons per purchase")


def read_jsonl(stream: BinaryIO, offset: int = 0, line: int = 0) -> Iterator[Parsed]:
    """The purchases of a JSON Lines file from byte `offset` (at file line `line`)."""
    stream.seek(offset)
    lines = _Lines(stream, offset, line)
    while True:
        lines.flaw = None
        try:
            raw = lines.raw()
        except StopIteration:
            return
        raw = (raw.removeprefix(b"\xef\xbb\xbf") if lines.line == 1 else raw).strip()
        if not raw and lines.flaw is None:
            continue
        parsed = Parsed(lines.line, None, end_line=lines.line, end_offset=lines.offset)
        try:
            if lines.flaw is not None:
                raise ValueError(lines.flaw[1])
            try:
                item = _ITEM.decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as error:
                try:
                    loose = _ANY.decode(raw)
                    reference = loose.get("reference") if isinstance(loose, dict) else None
                    if isinstance(reference, str):
                        parsed.reference = _text(reference, "reference", lines.line)
                except (msgspec.DecodeError, ValueError, RecursionError):
                    pass
                if isinstance(error, RecursionError):  # msgspec's depth limit
                    raise ValueError(f"line {lines.line}: JSON nested too deeply") from None
                raise ValueError(f"line {lines.line}: {error}") from None
            parsed.reference = _text(item.reference, "reference", lines.line)
            _item_problem(item, lines.line)
            parsed.item = item
        except ValueError as error:
            parsed.error = str(error)
        yield parsed


def read_file(fmt: str, stream: BinaryIO, offset: int = 0, line: int = 0) -> Iterator[Parsed]:
    if fmt == "csv":
        return read_csv(stream, offset, line)
    if fmt == "jsonl":
        return read_jsonl(stream, offset, line)
    raise InvalidPurchase(f"unknown file format {fmt!r}: one of {', '.join(FORMATS)}")


def check_header(fmt: str, stream: BinaryIO) -> None:
    """Refuse a file of unknown format, or a CSV file whose header is wrong."""
    if fmt not in FORMATS:
        raise InvalidPurchase(f"unknown file format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "csv":
        csv_header(_Lines(stream))
