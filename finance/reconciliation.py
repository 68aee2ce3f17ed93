"""Partner file reconciliation: a partner's own transaction file compared
with the purchases the ledger knows for that partner, stored as a run with
its rows; and the repair that posts the rows missing in the ledger through
the normal earn path (partners/batch.py), once.

The ledger's side of a purchase: `partner_purchases` (reference, member,
currency, total, purchase time, entry) and the points of its entry (the
member's PTS postings on available and pending; the partner's charge on
`partner:{id}:issued`). Rows are matched by the partner's reference:

- matched: amount, points, date and card agree;
- differing: the reference is known and some of them do not (`differing`
  names which: amount, points, date, card);
- missing-in-ledger: the ledger knows no purchase with that reference;
- missing-at-partner: a purchase of the partner in the run's range (the
  file's first to last day, or the range given) that the file does not list;
- unreadable: a row that cannot be read (line and reason);
- duplicate: a reference the file listed before (the first row counts).

A run reads the file in chunks of `CHUNK_ROWS` (constant memory), matches
each chunk with one set-based statement, writes its rows, then finds the
purchases missing at the partner with one anti-join against the rows it
wrote, and writes its header with the totals last: all in one REPEATABLE
READ transaction, so every chunk sees the same ledger and a run is stored
whole or not at all. Runs, rows, repairs and their outcomes are append-only.
Imports neither litestar, redis nor jwt."""

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import BinaryIO

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finance.errors import (
    InvalidPeriod,
    InvalidReconciliationMapping,
    InvalidReconciliationQuery,
    ReconciliationNotFound,
)
from finance.period import MAX_PERIOD, Period
from finance.reconciliation_files import (
    CLASSES,
    DEFAULT_MAPPING,
    FIELDS,
    FileReader,
    FileRow,
    LedgerPurchase,
    Mapping,
    check_mapping,
    classify,
)
from ledger.errors import DuplicatePartnerReference, InvalidCursor, PartnerNotFound
from partners.batch import MAX_BATCH_ITEMS, BatchReceipt, EarnItem, earn_batch
from partners.programme import Programme, PurchaseInput, PurchaseLineInput

CHUNK_ROWS = 1000
MAX_PAGE = 1000
MAX_FILE_NAME = 255


# -- answers -------------------------------------------------------------------


class MappingView(msgspec.Struct, frozen=True):
    partner_id: str
    mapping: Mapping
    stored: bool  # False: none stored, the default applies
    updated_by: str | None = None
    updated_at: datetime | None = None


class ClassTotals(msgspec.Struct, frozen=True):
    count: int = 0
    file_amount_minor: int = 0
    file_points: int = 0
    ledger_amount_minor: int = 0
    ledger_points: int = 0  # credited to members
    ledger_partner_points: int = 0  # charged to the partner


class RepairSummary(msgspec.Struct, frozen=True):
    repair_id: int
    reconciliation_id: int
    created_by: str
    created_at: datetime
    posted: int
    already_posted: int
    refused: int
    points: int  # what the earn path credited for the rows it posted
    file_points: int  # what the file said for those rows


class ReconciliationSummary(msgspec.Struct, frozen=True):
    reconciliation_id: int
    partner_id: str
    file_name: str
    sha256: str
    size_bytes: int
    currency: str  # of the file's amounts (the partner's)
    mapping: Mapping
    range_from: datetime | None  # purchase times [from, to) checked for missing-at-partner
    range_to: datetime | None
    range_source: str  # file (its first to last day), given, none (no readable row)
    rows: int  # data rows read
    totals: dict[str, ClassTotals]  # every class, in CLASSES order
    differing_fields: dict[str, int]  # how many differing rows differ in each field
    created_by: str
    created_at: datetime
    repairs: list[RepairSummary] = []


class ReconciliationItem(msgspec.Struct, frozen=True):
    item_id: int
    cls: str = msgspec.field(name="class")
    line: int | None = None
    reference: str | None = None
    differing: list[str] = []
    detail: str | None = None
    file_card: str | None = None
    file_date: date | None = None
    file_at: datetime | None = None
    file_amount_minor: int | None = None
    file_points: int | None = None
    file_category: str | None = None
    file_member_id: str | None = None  # the holder of the file's card
    ledger_member_id: str | None = None
    ledger_occurred_at: datetime | None = None
    ledger_currency: str | None = None
    ledger_amount_minor: int | None = None
    ledger_points: int | None = None
    ledger_partner_points: int | None = None
    entry_id: int | None = None


class ItemsPage(msgspec.Struct, frozen=True):
    items: list[ReconciliationItem]
    next_cursor: str | None  # pass as `cursor` for the next page; None: the last page


class RepairOutcome(msgspec.Struct, frozen=True):
    item_id: int
    reference: str
    outcome: str  # posted | already-posted | refused
    entry_id: int | None = None
    points: int | None = None  # credited by the earn path (posted)
    file_points: int | None = None
    code: str | None = None  # the problem type of a refusal
    detail: str | None = None


class RepairResult(RepairSummary, frozen=True, kw_only=True):
    outcomes: list[RepairOutcome]  # one per missing-in-ledger row, in item order


# -- mappings ------------------------------------------------------------------

_MAPPING_FIELDS = Mapping.__struct_fields__


async def _partner_currency(conn: AsyncConnection, partner_id: str) -> str:
    currency = (
        await conn.execute(text("SELECT currency FROM partners WHERE id = :p"), {"p": partner_id})
    ).scalar()
    if currency is None:
        raise PartnerNotFound(f"no partner {partner_id!r}", partner_id=partner_id)
    return currency


async def _mapping_view(conn: AsyncConnection, partner_id: str) -> MappingView:
    await _partner_currency(conn, partner_id)
    row = (
        await conn.execute(
            text("SELECT * FROM reconciliation_mappings WHERE partner_id = :p"), {"p": partner_id}
        )
    ).first()
    if row is None:
        return MappingView(partner_id, DEFAULT_MAPPING, stored=False)
    mapping = Mapping(**{f: getattr(row, f) for f in _MAPPING_FIELDS})
    return MappingView(partner_id, mapping, True, row.updated_by, row.updated_at)


async def get_mapping(engine: AsyncEngine, partner_id: str) -> MappingView:
    """The partner's mapping, or the default when none is stored."""
    async with engine.connect() as conn:
        return await _mapping_view(conn, partner_id)


async def set_mapping(
    engine: AsyncEngine, partner_id: str, mapping: Mapping, actor: str
) -> MappingView:
    """Store the partner's mapping (replacing the one before)."""
    check_mapping(mapping)
    async with engine.begin() as conn:
        await _partner_currency(conn, partner_id)
        known = (
            await conn.execute(
                text("SELECT 1 FROM categories WHERE code = :c"), {"c": mapping.default_category}
            )
        ).first()
        if known is None:
            raise InvalidReconciliationMapping(
                "default_category", f"unknown category {mapping.default_category!r}"
            )
        values = {f: getattr(mapping, f) for f in _MAPPING_FIELDS}
        names = ", ".join(_MAPPING_FIELDS)
        await conn.execute(
            text(
                f"INSERT INTO reconciliation_mappings (partner_id, {names}, updated_by) "
                f"VALUES (:partner_id, {', '.join(':' + f for f in _MAPPING_FIELDS)}, :actor) "
                "ON CONFLICT (partner_id) DO UPDATE SET "
                + ", ".join(f"{f} = EXCLUDED.{f}" for f in _MAPPING_FIELDS)
                + ", updated_by = EXCLUDED.updated_by, updated_at = now()"
            ),
            {**values, "partner_id": partner_id, "actor": actor},
        )
        return await _mapping_view(conn, partner_id)


# -- a run -----------------------------------------------------------------------

# The ledger's purchases of the partner for a chunk's references, with their
# entry's points and the holder of each row's card: one statement per chunk.
_MATCH = text(
    "SELECT u.ord, pp.partner_reference, pp.member_id, pp.occurred_at, pp.currency, "
    "pp.total_minor, pp.entry_id, coalesce(pts.member_points, 0) AS member_points, "
    "coalesce(pts.partner_points, 0) AS partner_points, c.member_id AS card_member "
    "FROM unnest(CAST(:refs AS text[]), CAST(:cards AS text[])) "
    "WITH ORDINALITY AS u(ref, card, ord) "
    "LEFT JOIN partner_purchases pp ON pp.partner_id = :p AND pp.partner_reference = u.ref "
    "LEFT JOIN cards c ON c.card_number = u.card "
    "LEFT JOIN LATERAL (SELECT "
    "sum(p.amount) FILTER (WHERE split_part(p.account, ':', 1) = 'member' "
    "AND split_part(p.account, ':', 3) IN ('available', 'pending'))::bigint AS member_points, "
    "(-sum(p.amount) FILTER (WHERE p.account = :issued))::bigint AS partner_points "
    "FROM postings p WHERE p.entry_id = pp.entry_id AND p.asset = 'PTS') AS pts ON true "
    "ORDER BY u.ord"
)

# References of a chunk that earlier rows of the run already listed.
_SEEN = text(
    "SELECT reference, min(line) AS line FROM reconciliation_items "
    "WHERE reconciliation_id = :id AND reference = ANY(CAST(:refs AS text[])) "
    "AND class IN ('matched', 'differing', 'missing-in-ledger') GROUP BY reference"
)

_ITEM_COLUMNS = (
    ("id", "bigint"),
    ("class", "text"),
    ("line", "bigint"),
    ("reference", "text"),
    ("differing", "text"),  # comma-joined here, an array in the table
    ("detail", "text"),
    ("file_card", "text"),
    ("file_date", "date"),
    ("file_at", "timestamptz"),
    ("file_amount_minor", "bigint"),
    ("file_points", "bigint"),
    ("file_category", "text"),
    ("file_member_id", "text"),
    ("ledger_member_id", "text"),
    ("ledger_occurred_at", "timestamptz"),
    ("ledger_currency", "text"),
    ("ledger_amount_minor", "bigint"),
    ("ledger_points", "bigint"),
    ("ledger_partner_points", "bigint"),
    ("entry_id", "bigint"),
)
_INSERT_ITEMS = text(
    "INSERT INTO reconciliation_items (reconciliation_id, "
    + ", ".join(name for name, _ in _ITEM_COLUMNS)
    + ") SELECT :run, "
    + ", ".join(
        "string_to_array(differing, ',')" if name == "differing" else name
        for name, _ in _ITEM_COLUMNS
    )
    + " FROM unnest("
    + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _ITEM_COLUMNS)
    + ") AS u("
    + ", ".join(name for name, _ in _ITEM_COLUMNS)
    + ")"
)

# The partner's purchases in the range that no row of the run names.
_MISSING_AT_PARTNER = text(
    "INSERT INTO reconciliation_items (reconciliation_id, id, class, reference, "
    "ledger_member_id, ledger_occurred_at, ledger_currency, ledger_amount_minor, "
    "ledger_points, ledger_partner_points, entry_id) "
    "SELECT :id, :base + row_number() OVER (ORDER BY pp.occurred_at, pp.partner_reference), "
    "'missing-at-partner', pp.partner_reference, pp.member_id, pp.occurred_at, pp.currency, "
    "pp.total_minor, coalesce(pts.member_points, 0), coalesce(pts.partner_points, 0), "
    "pp.entry_id FROM partner_purchases pp "
    "LEFT JOIN LATERAL (SELECT "
    "sum(p.amount) FILTER (WHERE split_part(p.account, ':', 1) = 'member' "
    "AND split_part(p.account, ':', 3) IN ('available', 'pending'))::bigint AS member_points, "
    "(-sum(p.amount) FILTER (WHERE p.account = :issued))::bigint AS partner_points "
    "FROM postings p WHERE p.entry_id = pp.entry_id AND p.asset = 'PTS') AS pts ON true "
    "WHERE pp.partner_id = :p AND pp.occurred_at >= :from AND pp.occurred_at < :to "
    "AND NOT EXISTS (SELECT 1 FROM reconciliation_items i WHERE i.reconciliation_id = :id "
    "AND i.reference = pp.partner_reference)"
)


def _item(item_id: int, cls: str, row: FileRow, **ledger) -> dict:
    if cls == "unreadable":  # what was read before the flaw is no value of the file's
        row = FileRow(row.line, row.reference)
    return {
        "id": item_id,
        "class": cls,
        "line": row.line,
        "reference": row.reference,
        "differing": ",".join(ledger.pop("differing", ())),
        "detail": ledger.pop("detail", None),
        "file_card": row.card,
        "file_date": row.day,
        "file_at": row.at,
        "file_amount_minor": row.amount_minor,
        "file_points": row.points,
        "file_category": row.category,
        "file_member_id": ledger.pop("file_member_id", None),
        "ledger_member_id": None,
        "ledger_occurred_at": None,
        "ledger_currency": None,
        "ledger_amount_minor": None,
        "ledger_points": None,
        "ledger_partner_points": None,
        "entry_id": None,
        **ledger,
    }


async def _write_chunk(
    conn: AsyncConnection,
    run_id: int,
    partner_id: str,
    currency: str,
    mapping: Mapping,
    chunk: list[FileRow],
    first_id: int,
) -> None:
    readable = [r for r in chunk if r.error is None]
    refs = [r.reference for r in readable]
    seen = {
        row.reference: row.line
        for row in await conn.execute(_SEEN, {"id": run_id, "refs": sorted(set(refs))})
    }
    found = (
        (
            await conn.execute(
                _MATCH,
                {
                    "p": partner_id,
                    "issued": f"partner:{partner_id}:issued",
                    "refs": refs,
                    "cards": [r.card for r in readable],
                },
            )
        ).all()
        if readable
        else []
    )
    matches = iter(found)
    items = []
    for offset, row in enumerate(chunk):
        item_id = first_id + offset
        if row.error is not None:
            items.append(_item(item_id, "unreadable", row, detail=row.error))
            continue
        match = next(matches)
        if row.reference in seen:
            detail = f"reference {row.reference!r} is also on line {seen[row.reference]}"
            items.append(
                _item(item_id, "duplicate", row, detail=detail, file_member_id=match.card_member)
            )
            continue
        seen[row.reference] = row.line
        purchase = None
        if match.partner_reference is not None:
            purchase = LedgerPurchase(
                match.partner_reference,
                match.member_id,
                match.occurred_at,
                match.currency,
                match.total_minor,
                match.member_points,
                match.partner_points,
                match.entry_id,
            )
        cls, differing = classify(row, purchase, match.card_member, currency, mapping.points_basis)
        ledger = {}
        if purchase is not None:
            ledger = {
                "ledger_member_id": purchase.member_id,
                "ledger_occurred_at": purchase.occurred_at,
                "ledger_currency": purchase.currency,
                "ledger_amount_minor": purchase.amount_minor,
                "ledger_points": purchase.points,
                "ledger_partner_points": purchase.partner_points,
                "entry_id": purchase.entry_id,
            }
        items.append(
            _item(
                item_id,
                cls,
                row,
                differing=differing,
                file_member_id=match.card_member,
                **ledger,
            )
        )
    await conn.execute(
        _INSERT_ITEMS,
        {"run": run_id, **{name: [i[name] for i in items] for name, _ in _ITEM_COLUMNS}},
    )


def _chunks(rows, size: int):
    chunk: list[FileRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def reconcile(
    engine: AsyncEngine,
    partner_id: str,
    stream: BinaryIO,
    file_name: str,
    *,
    actor: str,
    period: Period | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ReconciliationSummary:
    """Reconcile the partner's file (a binary stream, read once) against the
    ledger and store the run; see the module's docstring. `period`: the
    purchase times checked for missing-at-partner (default: the file's first
    to last day, whole UTC days)."""
    async with engine.connect() as conn:
        view = await _mapping_view(conn, partner_id)
        currency = await _partner_currency(conn, partner_id)
    mapping = view.mapping
    reader = FileReader(stream, mapping, currency)  # a header that does not fit: refused here
    async with engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        run_id = (
            await conn.execute(
                text("SELECT nextval(pg_get_serial_sequence('reconciliations', 'id'))")
            )
        ).scalar_one()
        next_id = 1
        for chunk in _chunks(reader.rows(), chunk_rows):
            await _write_chunk(conn, run_id, partner_id, currency, mapping, chunk, next_id)
            next_id += len(chunk)
        if period is not None:
            start, end, source = period.start, period.end, "given"
        elif reader.first_day is not None:
            start = _day_start(reader.first_day)
            end = _day_start(reader.last_day) + timedelta(days=1)
            source = "file"
            # One mistyped year would make every purchase of the partner in
            # decades missing-at-partner: the range is bounded as a given one
            # is (refused, nothing stored: the transaction is not committed).
            if end - start > MAX_PERIOD:
                raise InvalidPeriod(
                    "to",
                    f"the file's dates run from {reader.first_day} to {reader.last_day}, more "
                    f"than {MAX_PERIOD.days} days: give from and to for the purchases to check",
                )
        else:
            start = end = None
            source = "none"
        if start is not None:
            await conn.execute(
                _MISSING_AT_PARTNER,
                {
                    "id": run_id,
                    "base": next_id - 1,
                    "p": partner_id,
                    "issued": f"partner:{partner_id}:issued",
                    "from": start,
                    "to": end,
                },
            )
        totals, fields = await _totals(conn, run_id)
        await conn.execute(
            text(
                "INSERT INTO reconciliations (id, partner_id, file_name, sha256, size_bytes, "
                "currency, mapping, range_from, range_to, range_source, rows_read, totals, "
                "created_by) VALUES (:id, :p, :name, :sha, :size, :currency, "
                "CAST(:mapping AS jsonb), :from, :to, :source, :rows, CAST(:totals AS jsonb), "
                ":actor)"
            ),
            {
                "id": run_id,
                "p": partner_id,
                "name": (file_name or "upload")[:MAX_FILE_NAME],
                "sha": reader.sha256,
                "size": reader.size,
                "currency": currency,
                "mapping": msgspec.json.encode(mapping).decode(),
                "from": start,
                "to": end,
                "source": source,
                "rows": reader.rows_read,
                "totals": msgspec.json.encode({"classes": totals, "fields": fields}).decode(),
                "actor": actor,
            },
        )
        await conn.commit()
    return await get_reconciliation(engine, run_id)


async def _totals(
    conn: AsyncConnection, run_id: int
) -> tuple[dict[str, ClassTotals], dict[str, int]]:
    rows = await conn.execute(
        text(
            "SELECT class, count(*) AS n, coalesce(sum(file_amount_minor), 0) AS fa, "
            "coalesce(sum(file_points), 0) AS fp, coalesce(sum(ledger_amount_minor), 0) AS la, "
            "coalesce(sum(ledger_points), 0) AS lp, "
            "coalesce(sum(ledger_partner_points), 0) AS lpp "
            "FROM reconciliation_items WHERE reconciliation_id = :id GROUP BY class"
        ),
        {"id": run_id},
    )
    found = {r.class_: r for r in (_Row(r) for r in rows)}
    totals = {
        cls: ClassTotals(
            found[cls].n, found[cls].fa, found[cls].fp, found[cls].la, found[cls].lp, found[cls].lpp
        )
        if cls in found
        else ClassTotals()
        for cls in CLASSES
    }
    counted = dict(
        (
            await conn.execute(
                text(
                    "SELECT f, count(*) FROM reconciliation_items, unnest(differing) AS f "
                    "WHERE reconciliation_id = :id GROUP BY f"
                ),
                {"id": run_id},
            )
        ).all()
    )
    return totals, {field: int(counted.get(field, 0)) for field in FIELDS}


class _Row:
    """A totals row (`class` is a keyword in Python)."""

    def __init__(self, row) -> None:
        self.class_ = row[0]
        self.n, self.fa, self.fp, self.la, self.lp, self.lpp = (int(v) for v in row[1:])


# -- reading runs back -------------------------------------------------------------


def _json(value):
    """A jsonb value as read (text through asyncpg without a codec)."""
    return msgspec.json.decode(value) if isinstance(value, str | bytes) else value


def _summary(row, repairs: list[RepairSummary]) -> ReconciliationSummary:
    stored = _json(row.totals)
    return ReconciliationSummary(
        reconciliation_id=row.id,
        partner_id=row.partner_id,
        file_name=row.file_name,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        currency=row.currency,
        mapping=msgspec.convert(_json(row.mapping), Mapping),
        range_from=row.range_from,
        range_to=row.range_to,
        range_source=row.range_source,
        rows=row.rows_read,
        totals={c: msgspec.convert(v, ClassTotals) for c, v in stored["classes"].items()},
        differing_fields={f: int(n) for f, n in stored["fields"].items()},
        created_by=row.created_by,
        created_at=row.created_at,
        repairs=repairs,
    )


_REPAIRS = text(
    "SELECT r.id, r.reconciliation_id, r.created_by, r.created_at, "
    "count(*) FILTER (WHERE i.outcome = 'posted') AS posted, "
    "count(*) FILTER (WHERE i.outcome = 'already-posted') AS already_posted, "
    "count(*) FILTER (WHERE i.outcome = 'refused') AS refused, "
    "coalesce(sum(i.points) FILTER (WHERE i.outcome = 'posted'), 0) AS points, "
    "coalesce(sum(i.file_points) FILTER (WHERE i.outcome = 'posted'), 0) AS file_points "
    "FROM reconciliation_repairs r LEFT JOIN reconciliation_repair_items i ON i.repair_id = r.id "
    "WHERE r.reconciliation_id = :id AND (CAST(:repair AS bigint) IS NULL OR r.id = :repair) "
    "GROUP BY r.id ORDER BY r.id"
)


def _repair_summary(row) -> RepairSummary:
    return RepairSummary(
        row.id,
        row.reconciliation_id,
        row.created_by,
        row.created_at,
        row.posted,
        row.already_posted,
        row.refused,
        int(row.points),
        int(row.file_points),
    )


async def get_reconciliation(engine: AsyncEngine, reconciliation_id: int) -> ReconciliationSummary:
    """A stored run with its totals and its repairs."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT * FROM reconciliations WHERE id = :id"), {"id": reconciliation_id}
            )
        ).first()
        if row is None:
            raise ReconciliationNotFound(
                f"no reconciliation {reconciliation_id}", reconciliation_id=reconciliation_id
            )
        repairs = await conn.execute(_REPAIRS, {"id": reconciliation_id, "repair": None})
        return _summary(row, [_repair_summary(r) for r in repairs])


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise InvalidCursor(f"not a cursor of this list: {cursor!r}")
    return int(cursor)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidReconciliationQuery(f"limit: 1 to {MAX_PAGE}", parameter="limit")
    return limit


async def list_reconciliations(
    engine: AsyncEngine, partner_id: str | None = None, limit: int = 50, cursor: str | None = None
) -> tuple[list[ReconciliationSummary], str | None]:
    """Runs, newest first (of one partner, or all), and the next page's cursor."""
    before = _cursor(cursor)
    async with engine.connect() as conn:
        if partner_id is not None:
            await _partner_currency(conn, partner_id)
        rows = (
            await conn.execute(
                text(
                    "SELECT * FROM reconciliations WHERE (CAST(:p AS text) IS NULL "
                    "OR partner_id = :p) AND (CAST(:before AS bigint) IS NULL OR id < :before) "
                    "ORDER BY id DESC LIMIT :limit"
                ),
                {"p": partner_id, "before": before, "limit": _limit(limit)},
            )
        ).all()
    runs = [_summary(r, []) for r in rows]
    return runs, (str(rows[-1].id) if len(rows) == limit else None)


async def reconciliation_items(
    engine: AsyncEngine,
    reconciliation_id: int,
    cls: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> ItemsPage:
    """A run's rows in order (file rows by line, then missing-at-partner), of
    one class or all, a page at a time."""
    if cls is not None and cls not in CLASSES:
        raise InvalidReconciliationQuery(
            f"class: one of {', '.join(CLASSES)}", parameter="class", allowed=list(CLASSES)
        )
    after = _cursor(cursor) or 0
    async with engine.connect() as conn:
        known = (
            await conn.execute(
                text("SELECT 1 FROM reconciliations WHERE id = :id"), {"id": reconciliation_id}
            )
        ).first()
        if known is None:
            raise ReconciliationNotFound(
                f"no reconciliation {reconciliation_id}", reconciliation_id=reconciliation_id
            )
        rows = (
            await conn.execute(
                text(
                    "SELECT * FROM reconciliation_items WHERE reconciliation_id = :id "
                    "AND (CAST(:cls AS text) IS NULL OR class = :cls) AND id > :after "
                    "ORDER BY id LIMIT :limit"
                ),
                {"id": reconciliation_id, "cls": cls, "after": after, "limit": _limit(limit)},
            )
        ).all()
    items = [_item_view(r) for r in rows]
    return ItemsPage(items, str(rows[-1].id) if len(rows) == limit else None)


def _item_view(row) -> ReconciliationItem:
    data = dict(row._mapping)
    data.pop("reconciliation_id")
    item_id, cls = data.pop("id"), data.pop("class")
    data["differing"] = list(data["differing"] or ())
    return ReconciliationItem(item_id, cls, **data)


# -- repair --------------------------------------------------------------------------


async def repair(programme: Programme, reconciliation_id: int, actor: str) -> RepairResult:
    """Post the run's missing-in-ledger rows through the normal earn path
    (partners/batch.py, in batches of up to 1,000): each row is a purchase
    with its reference, the member of its card, its time (a date alone: its
    00:00 UTC), one line of its amount in its category (the mapped column, or
    the mapping's `default_category`) in the partner's currency. Rules, caps,
    promotions and the contract's windows apply as for any earning. A
    reference the ledger knows by now is `already-posted` (nothing is posted
    twice, whoever runs the repair and how often); a row the earn path
    refuses is `refused` with its problem. Every outcome is stored."""
    engine = programme.ledger.engine
    run = await get_reconciliation(engine, reconciliation_id)
    async with engine.begin() as conn:
        header = (
            await conn.execute(
                text(
                    "INSERT INTO reconciliation_repairs (reconciliation_id, created_by) "
                    "VALUES (:id, :actor) RETURNING id, created_at"
                ),
                {"id": reconciliation_id, "actor": actor},
            )
        ).one()
    outcomes: list[RepairOutcome] = []
    after = 0
    while True:
        page = await reconciliation_items(
            engine, reconciliation_id, "missing-in-ledger", MAX_BATCH_ITEMS, str(after)
        )
        if not page.items:
            break
        outcomes += await _repair_batch(programme, run, header.id, page.items)
        after = page.items[-1].item_id
        if page.next_cursor is None:
            break
    return RepairResult(
        repair_id=header.id,
        reconciliation_id=reconciliation_id,
        created_by=actor,
        created_at=header.created_at,
        posted=sum(o.outcome == "posted" for o in outcomes),
        already_posted=sum(o.outcome == "already-posted" for o in outcomes),
        refused=sum(o.outcome == "refused" for o in outcomes),
        points=sum(o.points or 0 for o in outcomes if o.outcome == "posted"),
        file_points=sum(o.file_points or 0 for o in outcomes if o.outcome == "posted"),
        outcomes=outcomes,
    )


def _earn_item(run: ReconciliationSummary, item: ReconciliationItem) -> EarnItem:
    at = item.file_at or _day_start(item.file_date)
    category = item.file_category or run.mapping.default_category
    purchase = PurchaseInput(
        run.currency, [PurchaseLineInput(item.file_amount_minor, category)], at
    )
    return EarnItem(item.file_card, item.reference, purchase)


async def _repair_batch(
    programme: Programme,
    run: ReconciliationSummary,
    repair_id: int,
    items: Sequence[ReconciliationItem],
) -> list[RepairOutcome]:
    outcomes: list[RepairOutcome] = []

    async def record(conn: AsyncConnection, receipt: BatchReceipt) -> None:
        outcomes.clear()  # a transaction run again records afresh
        taken = [
            o.reference
            for o in receipt.outcomes
            if o.error is not None and o.error.code == DuplicatePartnerReference.code
        ]
        entries = {}
        if taken:
            entries = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT r, coalesce((SELECT entry_id FROM partner_purchases "
                            "WHERE partner_id = :p AND partner_reference = r), "
                            "(SELECT entry_id FROM partner_references WHERE partner_id = :p "
                            "AND partner_reference = r)) "
                            "FROM unnest(CAST(:refs AS text[])) AS r"
                        ),
                        {"p": run.partner_id, "refs": taken},
                    )
                ).all()
            )
        for item, result in zip(items, receipt.outcomes, strict=True):
            if result.receipt is not None:
                outcome = RepairOutcome(
                    item.item_id,
                    item.reference,
                    "posted",
                    result.receipt.entry_id,
                    result.receipt.earning.points,
                    item.file_points,
                )
            elif result.error.code == DuplicatePartnerReference.code:
                outcome = RepairOutcome(
                    item.item_id,
                    item.reference,
                    "already-posted",
                    entries.get(item.reference),
                    file_points=item.file_points,
                    code=result.error.code,
                    detail=result.error.detail,
                )
            else:
                outcome = RepairOutcome(
                    item.item_id,
                    item.reference,
                    "refused",
                    file_points=item.file_points,
                    code=result.error.code,
                    detail=result.error.detail[:1000],
                )
            outcomes.append(outcome)
        await conn.execute(
            text(
                "INSERT INTO reconciliation_repair_items (repair_id, item_id, reference, "
                "outcome, entry_id, points, file_points, code, detail) SELECT :r, * FROM unnest("
                "CAST(:ids AS bigint[]), CAST(:refs AS text[]), CAST(:outcomes AS text[]), "
                "CAST(:entries AS bigint[]), CAST(:points AS bigint[]), "
                "CAST(:file_points AS bigint[]), CAST(:codes AS text[]), "
                "CAST(:details AS text[]))"
            ),
            {
                "r": repair_id,
                "ids": [o.item_id for o in outcomes],
                "refs": [o.reference for o in outcomes],
                "outcomes": [o.outcome for o in outcomes],
                "entries": [o.entry_id for o in outcomes],
                "points": [o.points for o in outcomes],
                "file_points": [o.file_points for o in outcomes],
                "codes": [o.code for o in outcomes],
                "details": [o.detail for o in outcomes],
            },
        )

    await earn_batch(programme, run.partner_id, [_earn_item(run, i) for i in items], after=record)
    return outcomes
