"""A partner's own transaction file, read for reconciliation: the column
mapping per partner, reading the file row by row in constant memory, and the
comparison of one row with the ledger's purchase (plain functions, no I/O
beyond the stream they are given).

The file is CSV with a header row. The mapping names the header's columns
for reference, card, date, amount and points (and optionally a category),
the delimiter, the date format (`iso`: an ISO 8601 date or timestamp; or a
pattern such as `DD.MM.YYYY` or `YYYY-MM-DD hh:mm:ss`, times in UTC), the
amount format (`major`: decimal units such as 12.50 with `.` or `,` as the
decimal separator; `minor`: whole minor units such as 1250), the encoding
and which of the ledger's points the file's points are compared with
(`member`: every point the member was credited for the purchase, promotions
included; `partner`: the points the partner was charged for). Columns the
mapping does not name are ignored.

A row that cannot be read is a `FileRow` with an `error` (its line and the
reason), never an exception; only a header that lacks a mapped column (or
a file without a header) refuses the file."""

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import BinaryIO

import msgspec

from finance.errors import InvalidReconciliationMapping, ReconciliationFileInvalid
from finance.period import EARLIEST, LATEST
from partners.money import MINOR_UNIT_EXPONENTS
from partners.programme import MAX_REFERENCE

CLASSES = (
    "matched",
    "differing",
    "missing-in-ledger",
    "missing-at-partner",
    "unreadable",
    "duplicate",
)
FIELDS = ("amount", "points", "date", "card")  # what a differing row names
ENCODINGS = ("utf-8", "cp1252")
MAX_COLUMN_NAME = 100
MAX_VALUE = 255  # characters in one stored value
MAX_LINE_BYTES = 1 << 16  # a longer line is unreadable (and never held whole)
MAX_POINTS = 10**15


class Mapping(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a partner's file is read; every field has the default's value when
    left out (the default mapping: `reference,card,date,amount,points`, `,`,
    ISO dates, amounts in major units with `.`, UTF-8, the member's points)."""

    reference_column: str = "reference"
    card_column: str = "card"
    date_column: str = "date"
    amount_column: str = "amount"
    points_column: str = "points"
    category_column: str | None = None
    delimiter: str = ","
    date_format: str = "iso"
    amount_format: str = "major"
    decimal_separator: str = "."
    encoding: str = "utf-8"
    points_basis: str = "member"
    default_category: str = "general"  # the category a repaired purchase's line gets

    def columns(self) -> dict[str, str]:
        """Field -> column name, the mapped ones."""
        named = {
            "reference": self.reference_column,
            "card": self.card_column,
            "date": self.date_column,
            "amount": self.amount_column,
            "points": self.points_column,
        }
        if self.category_column is not None:
            named["category"] = self.category_column
        return named


DEFAULT_MAPPING = Mapping()

_TOKENS = {"YYYY": "%Y", "MM": "%m", "DD": "%d", "hh": "%H", "mm": "%M", "ss": "%S"}
_TOKEN = re.compile("|".join(_TOKENS))
_SEPARATORS = set(" .-/:T")


def date_pattern(fmt: str) -> str | None:
    """The strptime format of a `DD.MM.YYYY`-style pattern (None for `iso`)."""
    if fmt == "iso":
        return None
    seen = _TOKEN.findall(fmt)
    rest = _TOKEN.sub("", fmt)
    if (
        sorted(set(seen)) != sorted(seen)
        or not {"YYYY", "MM", "DD"} <= set(seen)
        or set(rest) - _SEPARATORS
        or ("ss" in seen and "mm" not in seen)
        or ("mm" in seen and "hh" not in seen)
    ):
        raise InvalidReconciliationMapping(
            "date_format",
            "iso, or a pattern of YYYY, MM, DD (and optionally hh, mm, ss) separated by "
            f"' . - / : T', each once, e.g. DD.MM.YYYY: {fmt!r}",
        )
    return _TOKEN.sub(lambda m: _TOKENS[m.group(0)], fmt)


def check_mapping(mapping: Mapping) -> Mapping:
    """Refuse a mapping that cannot be used (`InvalidReconciliationMapping`)."""
    names = mapping.columns()
    for field, name in names.items():
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_COLUMN_NAME:
            raise InvalidReconciliationMapping(
                f"{field}_column", f"a column name of 1 to {MAX_COLUMN_NAME} characters"
            )
        if not name.isprintable():
            raise InvalidReconciliationMapping(f"{field}_column", "printable characters only")
    folded = [n.strip().lower() for n in names.values()]
    if len(set(folded)) != len(folded):
        raise InvalidReconciliationMapping("columns", "each field needs a column of its own")
    if len(mapping.delimiter) != 1 or mapping.delimiter in '"\r\n' or mapping.delimiter.isalnum():
        raise InvalidReconciliationMapping(
            "delimiter", "one character that is not a letter, digit, quote or line break"
        )
    if len(mapping.date_format) > 40:
        raise InvalidReconciliationMapping("date_format", "at most 40 characters")
    date_pattern(mapping.date_format)
    if mapping.amount_format not in ("major", "minor"):
        raise InvalidReconciliationMapping("amount_format", "major or minor")
    if mapping.decimal_separator not in (".", ","):
        raise InvalidReconciliationMapping("decimal_separator", "'.' or ','")
    if mapping.amount_format == "major" and mapping.decimal_separator == mapping.delimiter:
        raise InvalidReconciliationMapping(
            "decimal_separator", "must differ from the delimiter (quote such amounts instead)"
        )
    if mapping.encoding not in ENCODINGS:
        raise InvalidReconciliationMapping("encoding", f"one of {', '.join(ENCODINGS)}")
    if mapping.points_basis not in ("member", "partner"):
        raise InvalidReconciliationMapping("points_basis", "member or partner")
    if not mapping.default_category or len(mapping.default_category) > 64:
        raise InvalidReconciliationMapping("default_category", "a category code")
    return mapping


# -- reading -------------------------------------------------------------------


@dataclass(slots=True)
class FileRow:
    """One data row of the file: read (error None) or not."""

    line: int  # the file line the row starts on (the header is line 1)
    reference: str | None = None
    card: str | None = None
    day: date | None = None
    at: datetime | None = None  # when the file gives a time of day
    amount_minor: int | None = None
    points: int | None = None
    category: str | None = None
    error: str | None = None


class _Lines:
    """The stream's lines, decoded, hashed and counted as they are read; a
    line that cannot be decoded or is too long is noted as the `flaw`."""

    def __init__(self, stream: BinaryIO, encoding: str) -> None:
        self.stream, self.encoding = stream, encoding
        self.sha, self.size, self.line = hashlib.sha256(), 0, 0
        self.flaw: str | None = None

    def _read(self, limit: int) -> bytes:
        raw = self.stream.readline(limit)
        self.sha.update(raw)
        self.size += len(raw)
        return raw

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._read(MAX_LINE_BYTES + 1)
        if not raw:
            raise StopIteration
        self.line += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := self._read(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            self.flaw = self.flaw or f"line {self.line} is longer than {MAX_LINE_BYTES} bytes"
            return "\n"
        if self.line == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte order mark
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError:
            self.flaw = self.flaw or f"line {self.line} is not {self.encoding}"
            return raw.decode(self.encoding, errors="replace")

    def finish(self) -> None:
        """Hash whatever is left unread (nothing, normally)."""
        while block := self.stream.read(1 << 20):
            self.sha.update(block)
            self.size += len(block)


class FileReader:
    """Reads the header at once (refusing a file that lacks a mapped column),
    then `rows()` yields each data row; `sha256`, `size` and the range of
    the rows' dates are known once the rows are read."""

    def __init__(self, stream: BinaryIO, mapping: Mapping, currency: str) -> None:
        self.mapping, self.currency = mapping, currency
        self.exponent = MINOR_UNIT_EXPONENTS[currency]
        self.pattern = date_pattern(mapping.date_format)
        self.lines = _Lines(stream, mapping.encoding)
        self.reader = csv.reader(self.lines, delimiter=mapping.delimiter, strict=True)
        self.first_day: date | None = None
        self.last_day: date | None = None
        self.rows_read = 0
        self.positions, self.width = self._header()

    @property
    def sha256(self) -> str:
        return self.lines.sha.hexdigest()

    @property
    def size(self) -> int:
        return self.lines.size

    def _header(self) -> tuple[dict[str, int], int]:
        while True:
            try:
                header = next(self.reader)
            except StopIteration:
                raise ReconciliationFileInvalid(
                    "the file is empty: it starts with a header row naming its columns"
                ) from None
            except csv.Error as error:
                raise ReconciliationFileInvalid(f"the header cannot be read: {error}") from None
            if self.lines.flaw is not None:
                raise ReconciliationFileInvalid(f"the header cannot be read: {self.lines.flaw}")
            if header:
                break
        names = [name.strip().lower() for name in header]
        positions, missing = {}, []
        for field, column in self.mapping.columns().items():
            wanted = column.strip().lower()
            if wanted in names:
                positions[field] = names.index(wanted)
            else:
                missing.append(column)
        if missing:
            delimiter = self.mapping.delimiter
            raise ReconciliationFileInvalid(
                f"the header lacks the mapped column(s) {', '.join(missing)} "
                f"(delimiter {delimiter!r}; the header has {len(header)} column(s)): "
                "fix the file or the partner's reconciliation mapping",
                missing=missing,
                columns=[h[:MAX_COLUMN_NAME] for h in header[:50]],
            )
        return positions, len(header)

    def rows(self) -> Iterator[FileRow]:
        lines = self.lines
        while True:
            start = lines.line + 1
            lines.flaw = None
            try:
                record = next(self.reader)
            except StopIteration:
                lines.finish()
                return
            except csv.Error as error:
                record, lines.flaw = None, f"line {start}: {error}"
            if record == [] and lines.flaw is None:
                continue  # a blank line
            self.rows_read += 1
            row = FileRow(start)
            try:
                if lines.flaw is not None:
                    raise ValueError(lines.flaw)
                if record is None or len(record) != self.width:
                    raise ValueError(
                        f"{len(record or ())} values, the header names {self.width} columns"
                    )
                self._read(row, record)
            except ValueError as error:
                row.error = str(error)[:1000]
            yield row

    def _read(self, row: FileRow, record: list[str]) -> None:
        value = {field: record[i].strip() for field, i in self.positions.items()}
        for field, text in value.items():
            if len(text) > MAX_VALUE or "\x00" in text:
                raise ValueError(f"{field} is longer than {MAX_VALUE} characters or has a NUL")
        reference = value["reference"]
        if reference:
            row.reference = reference
        if not reference or len(reference) > MAX_REFERENCE or not reference.isprintable():
            raise ValueError(f"reference is 1-{MAX_REFERENCE} printable characters")
        row.card = value["card"] or None
        if row.card is None:
            raise ValueError("card is empty")
        row.category = value.get("category") or None
        row.day, row.at = self._date(value["date"])
        row.amount_minor = self._amount(value["amount"])
        row.points = _points(value["points"])
        if self.first_day is None or row.day < self.first_day:
            self.first_day = row.day
        if self.last_day is None or row.day > self.last_day:
            self.last_day = row.day

    def _date(self, text: str) -> tuple[date, datetime | None]:
        """The row's calendar day (UTC) and, when the file gives a time of
        day, its instant; between the years finance/period.py accepts."""
        at: datetime | None
        try:
            if self.pattern is None and len(text) == 10:
                day, at = date.fromisoformat(text), None
            elif self.pattern is None:
                at = datetime.fromisoformat(text)
            else:
                at = datetime.strptime(text, self.pattern)
        except ValueError:
            expected = self.mapping.date_format
            wanted = "an ISO 8601 date or timestamp" if expected == "iso" else expected
            raise ValueError(f"date is not {wanted}: {text!r}") from None
        if at is not None and self.pattern is not None and "%H" not in self.pattern:
            day, at = at.date(), None
        elif at is not None:
            try:
                at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
                day = at.date()
            except OverflowError:  # year 1 with an offset east of UTC
                day = date.min
        if not EARLIEST.date() <= day < LATEST.date():
            raise ValueError(f"date is not between {EARLIEST:%Y} and {LATEST:%Y}: {text!r}")
        return day, at

    def _amount(self, text: str) -> int:
        if self.mapping.amount_format == "minor":
            if not text.isascii() or not text.isdigit() or len(text) > 15:
                raise ValueError(f"amount is not a whole number of minor units: {text!r}")
            return int(text)
        separator = re.escape(self.mapping.decimal_separator)
        if not re.fullmatch(rf"[0-9]+(?:{separator}[0-9]+)?", text):
            raise ValueError(
                f"amount is not a decimal amount with {self.mapping.decimal_separator!r} "
                f"as the decimal separator: {text!r}"
            )
        try:
            units = Decimal(text.replace(",", "."))
        except InvalidOperation:
            raise ValueError(f"amount cannot be read: {text!r}") from None
        minor = units.scaleb(self.exponent)
        if minor != minor.to_integral_value():
            raise ValueError(
                f"amount has more decimals than {self.currency} has ({self.exponent}): {text!r}"
            )
        if minor > 10**15:
            raise ValueError(f"amount is too large: {text!r}")
        return int(minor)


def _points(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]{1,16}", text):
        raise ValueError(f"points is not a whole number: {text!r}")
    points = int(text)
    if abs(points) > MAX_POINTS:
        raise ValueError(f"points is too large: {text!r}")
    return points


# -- comparing -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerPurchase:
    """A purchase as the ledger knows it."""

    reference: str
    member_id: str
    occurred_at: datetime
    currency: str
    amount_minor: int
    points: int  # credited to the member (available or pending) by its entry
    partner_points: int  # charged to the partner (partner:{id}:issued) by its entry
    entry_id: int | None


def differences(
    row: FileRow,
    purchase: LedgerPurchase,
    card_member: str | None,
    currency: str,
    points_basis: str = "member",
) -> tuple[str, ...]:
    """The fields in which a file row and the ledger's purchase of its
    reference differ: amount (and currency), points, date (the calendar day
    in UTC, or the instant to the second when the file gives a time of day),
    card (the file's card is another member's, or nobody's)."""
    found = []
    if purchase.currency != currency or row.amount_minor != purchase.amount_minor:
        found.append("amount")
    points = purchase.points if points_basis == "member" else purchase.partner_points
    if row.points != points:
        found.append("points")
    at = purchase.occurred_at.astimezone(UTC)
    if row.at is not None:
        if row.at.replace(microsecond=0) != at.replace(microsecond=0):
            found.append("date")
    elif row.day != at.date():
        found.append("date")
    if card_member is None or card_member != purchase.member_id:
        found.append("card")
    return tuple(found)


def classify(
    row: FileRow,
    purchase: LedgerPurchase | None,
    card_member: str | None,
    currency: str,
    points_basis: str = "member",
) -> tuple[str, tuple[str, ...]]:
    """The class of a readable, first-seen row and the fields that differ."""
    if purchase is None:
        return "missing-in-ledger", ()
    found = differences(row, purchase, card_member, currency, points_basis)
    return ("differing" if found else "matched"), found
