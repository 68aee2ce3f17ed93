"""Partner file reconciliation, the run: a partner's own transaction file
compared with the purchases the ledger knows for that partner, stored as a
run with its rows. The file is read with the partner's mapping
(reconciliation_files.py, reconciliation_mappings.py); a stored run is read
back by reconciliation_runs.py, and reconciliation_repair.py posts the rows
missing in the ledger through the normal earn path (partners/batch.py), once.

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

from datetime import UTC, date, datetime, timedelta
from typing import BinaryIO

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finance.errors import InvalidPeriod
from finance.period import MAX_PERIOD, Period
from finance.reconciliation_files import (
    CLASSES,
    FIELDS,
    FileReader,
    FileRow,
    LedgerPurchase,
    Mapping,
    classify,
)
from finance.reconciliation_mappings import mapping_view, partner_currency
from finance.reconciliation_runs import ClassTotals, ReconciliationSummary, get_reconciliation

CHUNK_ROWS = 1000
MAX_FILE_NAME = 255


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


def day_start(day: date) -> datetime:
    """A date alone as an instant: its 00:00 UTC."""
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
        view = await mapping_view(conn, partner_id)
        currency = await partner_currency(conn, partner_id)
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
            start = day_start(reader.first_day)
            end = day_start(reader.last_day) + timedelta(days=1)
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
