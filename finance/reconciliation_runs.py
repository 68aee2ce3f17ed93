"""Stored reconciliation runs read back (finance/reconciliation.py writes
them): a run's summary with its totals per class, the fields its differing
rows differ in and its repairs; the runs listed, newest first; a run's rows
in order, a page at a time (a cursor per list)."""

from datetime import date, datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from finance.errors import InvalidReconciliationQuery, ReconciliationNotFound
from finance.reconciliation_files import CLASSES, Mapping
from finance.reconciliation_mappings import partner_currency
from ledger.errors import InvalidCursor

MAX_PAGE = 1000


# -- answers -------------------------------------------------------------------


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
            await partner_currency(conn, partner_id)
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
