"""The book of record's monthly partitions (migration 0013): making the months
ahead, listing them for operators, recognising a posting that found its month
missing, and bounding a window of booking time by entry id so that a period
read touches only its months.

`journal_entries` and `lots` are partitioned by id, `postings` and
`lot_movements` by their entry's id, one partition per month. An entry's or
lot's id is `(month << 40) | (sequence value & (2^40 - 1))`, month counted
from 2000-01 (month 0) in UTC, taken from the booking transaction's `now()`,
the instant its `created_at` also takes (a CHECK holds them together): the
month's partition holds the ids `[month << 40, (month + 1) << 40)`. Rows
booked before the migration kept their small ids, in the `*_legacy`
partitions below 2^40.

The months are created ahead: the migration makes the current month and the
next three, `ensure_partitions` (run from a job, or by hand) keeps it so, and
a posting that finds its month missing anyway (nobody ran it) makes the
months and runs again once (`LedgerService.atomically`).
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.database import sqlstate

MONTH_SHIFT = 40
LEGACY_END = 1 << MONTH_SHIFT  # legacy ids are below, month ids from month 1 on above
# The partitioned tables, in the order the write path takes them.
PARTITIONED = ("journal_entries", "postings", "lots", "lot_movements")
# The partition key of each (postings and movements follow their entry).
PARTITION_KEYS = {
    "journal_entries": "id",
    "postings": "entry_id",
    "lots": "id",
    "lot_movements": "entry_id",
}


def month_index(moment: datetime) -> int:
    """The month an instant falls in, in UTC: (year - 2000) * 12 + month - 1
    (SQL: `ledger_month_index`)."""
    if moment.tzinfo is None:
        raise ValueError("an instant needs a time zone")
    utc = moment.astimezone(UTC)
    return (utc.year - 2000) * 12 + utc.month - 1


def month_start(month: int) -> int:
    """The first id of a month (SQL: `ledger_month_start`)."""
    return month << MONTH_SHIFT


def month_of_id(row_id: int) -> int | None:
    """The month an entry or lot was booked in, by its id; None for a row
    from before the partitioning (a legacy id)."""
    return None if row_id < LEGACY_END else row_id >> MONTH_SHIFT


def month_label(month: int) -> str:
    """`2026_11`: how a month's partitions are named (`postings_2026_11`)."""
    return f"{2000 + month // 12}_{month % 12 + 1:02d}"


def month_begins(month: int) -> datetime:
    """The instant a month begins (UTC)."""
    return datetime(2000 + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def booked_in(column: str, start: str, end: str) -> str:
    """A SQL condition that `column`, an entry id (`journal_entries.id`, or a
    posting's or movement's `entry_id`), can belong to an entry booked in
    [start, end): `start` and `end` are SQL timestamptz expressions (e.g.
    `CAST(:start AS timestamptz)`). Added next to the `created_at` condition
    it changes no result; it lets PostgreSQL prune every partition outside the
    window's months (and the legacy partition once the window starts after
    `ledger_legacy_until()`). Give it for each partitioned table of a join:
    the planner does not carry a range from `e.id` over to `p.entry_id`."""
    return f"{column} >= ledger_ids_from({start}) AND {column} < ledger_ids_before({end})"


def booked_before(column: str, end: str) -> str:
    """`booked_in` for every entry booked before `end` (a balance as of an
    instant): prunes the months after it."""
    return f"{column} < ledger_ids_before({end})"


async def ensure_partitions(conn: AsyncConnection, months_ahead: int = 3) -> int:
    """Create the partitions of the current month (the database's clock, the
    one ids are made from) through `months_ahead` months ahead that are
    missing, for the four tables; returns how many it made. Idempotent, and
    safe to run from several processes at once: the database function takes
    a transaction-scoped advisory lock, so run it in a transaction of its
    own and commit (attaching a month briefly takes SHARE ROW EXCLUSIVE locks
    on the tables that reference entries and lots: writes wait a moment,
    reads do not)."""
    if months_ahead < 0:
        raise ValueError("months_ahead is 0 or more")
    return (
        await conn.execute(
            text(
                "SELECT ledger_ensure_partitions(ledger_month_index(now()), "
                "ledger_month_index(now()) + :ahead)"
            ),
            {"ahead": months_ahead},
        )
    ).scalar_one()


def is_missing_partition(error: BaseException) -> bool:
    """PostgreSQL refused a row because no partition of a partitioned ledger
    table takes it ("no partition of relation ... found for row", SQLSTATE
    23514): a posting in a month nobody created. Recognised by its fields,
    not its (translatable) text: a CHECK violation names its constraint, the
    ledger's trigger checks (also 23514) name no table."""
    if not isinstance(error, DBAPIError) or sqlstate(error) != "23514":
        return False
    orig = getattr(error, "orig", None)
    driver = getattr(orig, "__cause__", None) or orig
    return (
        getattr(driver, "constraint_name", None) is None
        and getattr(driver, "table_name", None) in PARTITIONED
    )


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of a ledger table, for operators."""

    table: str  # the partitioned parent
    name: str
    month: int | None  # None: the legacy partition
    first_id: int | None  # None: unbounded below (legacy)
    end_id: int  # ids (entry ids for postings and movements) below this
    rows_estimate: int | None  # PostgreSQL's estimate; None: never analysed
    bytes: int  # table, indexes and TOAST

    @property
    def label(self) -> str:
        return "legacy" if self.month is None else month_label(self.month)


_BOUND = re.compile(r"FROM \((.+?)\) TO \((.+?)\)")


def _bound(value: str) -> int | None:
    value = value.strip("'")
    return None if value == "MINVALUE" else int(value)


async def partitions(conn: AsyncConnection) -> list[Partition]:
    """Every partition of the four tables with its id bounds, row estimate
    and size, table by table (write-path order), oldest first."""
    rows = await conn.execute(
        text(
            "SELECT p.relname AS parent, c.relname AS name, "
            "pg_get_expr(c.relpartbound, c.oid) AS bound, c.reltuples::bigint AS estimate, "
            "pg_total_relation_size(c.oid) AS bytes FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.oid = ANY(CAST(:parents AS regclass[]))"
        ),
        {"parents": list(PARTITIONED)},
    )
    found = []
    for r in rows:
        match = _BOUND.search(r.bound)
        if match is None:  # a DEFAULT partition: the ledger makes none
            continue
        first, end = _bound(match.group(1)), _bound(match.group(2))
        found.append(
            Partition(
                table=r.parent,
                name=r.name,
                month=None if first is None else month_of_id(first),
                first_id=first,
                end_id=end if end is not None else LEGACY_END,
                rows_estimate=None if r.estimate < 0 else int(r.estimate),
                bytes=int(r.bytes),
            )
        )
    order = {table: n for n, table in enumerate(PARTITIONED)}
    found.sort(key=lambda p: (order[p.table], p.first_id if p.first_id is not None else -1))
    return found
