"""Point-in-time reads of the book of record: balances as of any instant and
the entries booked in a window, for finance (finance/) and audits.

Time: "as of T" and a window [start, end) use each entry's booking time,
`journal_entries.created_at`, which the server sets (`now()`, the start of
the posting transaction) and a caller cannot choose; `effective_at` (the
purchase or business time, chosen by the caller, possibly in the past) is
exported but never selects. As of T means every entry booked strictly before
T, so the closing balance of [start, end) is the balance as of `end` and the
opening balance of the next window. Because entries are append-only and a
booking time is never in the past, the figures for a T a little in the past
never change; the one caveat is a transaction still open at T (booked at
its start, visible once it commits): its figures settle once every
transaction that began before T has ended, which the connection time limits
(statement and idle-in-transaction timeouts) bound to about a minute.

Reads here are generic over account addresses (ledger/accounts.py) and know
no programme concept. A caller that needs several figures to agree opens
one snapshot with `snapshot` (REPEATABLE READ, read only).

Scale: the journal is partitioned by booking month (ledger/partitions.py,
migration 0013); each read here also bounds the entry ids by its window or
instant, so it reads only the months concerned (and, within them, scans the
journal: there is no index on `created_at`).
"""

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.accounts import ASSETS, Address
from ledger.partitions import booked_before, booked_in

# Long reads (a year's journal) run for minutes: no statement limit, and a
# client reading a streamed export slowly may leave the transaction idle
# between fetches for this long.
LONG_READ_IDLE_TIMEOUT = "15min"

# The entries' id bounds of a window or an instant (ledger/partitions.py), given
# for both tables of a join: PostgreSQL then reads only the months concerned
# (the planner does not carry a range from e.id over to p.entry_id). Each
# changes no result next to its created_at condition.
BEFORE_E = booked_before("e.id", "CAST(:as_of AS timestamptz)")
BEFORE_P = booked_before("p.entry_id", "CAST(:as_of AS timestamptz)")
IN_E = booked_in("e.id", "CAST(:start AS timestamptz)", "CAST(:end AS timestamptz)")
IN_P = booked_in("p.entry_id", "CAST(:start AS timestamptz)", "CAST(:end AS timestamptz)")


@contextlib.asynccontextmanager
async def snapshot(engine: AsyncEngine, *, long: bool = False) -> AsyncIterator[AsyncConnection]:
    """One REPEATABLE READ, read-only transaction: every read in it sees the
    same committed state, so figures taken from several statements agree.
    `long`: lift the statement time limit (whole-journal reads)."""
    async with engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        if long:
            await conn.execute(text("SET LOCAL statement_timeout = 0"))
            await conn.execute(
                text(f"SET LOCAL idle_in_transaction_session_timeout = '{LONG_READ_IDLE_TIMEOUT}'")
            )
        try:
            yield conn
        finally:
            await conn.rollback()


async def server_time(conn: AsyncConnection) -> datetime:
    """The database server's clock now (the clock booking times come from)."""
    return (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()


def utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("an instant needs a time zone")
    return moment.astimezone(UTC)


# -- balances as of an instant ---------------------------------------------------


class AccountBalanceAsOf(msgspec.Struct, frozen=True):
    account: str
    as_of: datetime
    balances: dict[str, int]  # asset -> balance, every asset (0 when none)


async def account_balance_as_of(
    conn: AsyncConnection, address: str, as_of: datetime
) -> AccountBalanceAsOf:
    """One account's balance per asset from the postings of the entries booked
    before `as_of` (the postings index by account, then each entry by key)."""
    account = str(Address.parse(address))
    rows = await conn.execute(
        text(
            "SELECT p.asset, sum(p.amount)::bigint AS balance FROM postings p "
            "JOIN journal_entries e ON e.id = p.entry_id "
            f"WHERE p.account = :account AND e.created_at < :as_of AND {BEFORE_E} AND "
            f"{BEFORE_P} GROUP BY p.asset"
        ),
        {"account": account, "as_of": utc(as_of)},
    )
    found = {r.asset: int(r.balance) for r in rows}
    return AccountBalanceAsOf(account, utc(as_of), {a: found.get(a, 0) for a in ASSETS})


async def balances_as_of(
    conn: AsyncConnection, as_of: datetime, batch: int = 10_000
) -> AsyncIterator[tuple[str, str, int]]:
    """Every account's balance per asset as of `as_of`, as (account, asset,
    balance), accounts in address order, streamed from a server-side cursor
    (millions of member accounts never sit in memory at once). Accounts whose
    postings sum to zero are included: they exist."""
    async with conn.stream(
        text(
            "SELECT p.account, p.asset, sum(p.amount)::bigint AS balance FROM postings p "
            "JOIN journal_entries e ON e.id = p.entry_id WHERE e.created_at < :as_of "
            f"AND {BEFORE_E} AND {BEFORE_P} "
            'GROUP BY p.account, p.asset ORDER BY p.account COLLATE "C", p.asset'
        ),
        {"as_of": utc(as_of)},
        execution_options={"yield_per": batch},
    ) as result:
        async for rows in result.partitions(batch):  # sized: see window_rows
            for r in rows:
                yield r.account, r.asset, int(r.balance)


class AccountTypeBalance(msgspec.Struct, frozen=True):
    """The balance of a kind of account: member accounts summed per name
    (`member:*:available`), partner and programme accounts one by one."""

    account: str  # an address, or member:*:{name} for all members' accounts of a name
    owner: str  # member | partner | program
    name: str  # available, pending, held, qp, issued, redeemed, promotions, ...
    partner_id: str | None
    asset: str
    accounts: int  # accounts with postings before the instant
    balance: int


async def balances_by_account_type_as_of(
    conn: AsyncConnection, as_of: datetime
) -> list[AccountTypeBalance]:
    """Balances as of `as_of`, member accounts summed per account name, partner
    and programme accounts each on their own, one row per asset held."""
    rows = await conn.execute(
        text(
            "WITH per_account AS (SELECT p.account, p.asset, sum(p.amount) AS balance "
            "FROM postings p JOIN journal_entries e ON e.id = p.entry_id "
            f"WHERE e.created_at < :as_of AND {BEFORE_E} AND {BEFORE_P} "
            "GROUP BY p.account, p.asset) "
            "SELECT CASE WHEN account LIKE 'member:%' "
            "THEN 'member:*:' || split_part(account, ':', 3) ELSE account END AS line, "
            "asset, count(*) AS accounts, sum(balance)::bigint AS balance "
            "FROM per_account GROUP BY 1, 2"
        ),
        {"as_of": utc(as_of)},
    )
    found = []
    for r in rows:
        parts = r.line.split(":")
        owner, name = parts[0], parts[-1]
        partner_id = parts[1] if owner == "partner" else None
        found.append(
            AccountTypeBalance(
                r.line, owner, name, partner_id, r.asset, int(r.accounts), int(r.balance)
            )
        )
    return found


async def member_accounts_as_of(
    conn: AsyncConnection, as_of: datetime, names: Sequence[str], asset: str
) -> dict[str, int]:
    """Per account name (e.g. available, pending, held), the sum over every
    member of their account of that name in `asset`, as of `as_of`."""
    rows = await conn.execute(
        text(
            "SELECT split_part(p.account, ':', 3) AS name, sum(p.amount)::bigint AS total "
            "FROM postings p JOIN journal_entries e ON e.id = p.entry_id "
            f"WHERE e.created_at < :as_of AND {BEFORE_E} AND {BEFORE_P} "
            "AND p.member_id IS NOT NULL AND p.asset = :asset "
            "AND split_part(p.account, ':', 3) = ANY(CAST(:names AS text[])) GROUP BY 1"
        ),
        {"as_of": utc(as_of), "asset": asset, "names": list(names)},
    )
    found = {r.name: int(r.total) for r in rows}
    return {name: found.get(name, 0) for name in names}


async def member_accounts_now(
    conn: AsyncConnection, names: Sequence[str], asset: str
) -> dict[str, int]:
    """`member_accounts_as_of` for the snapshot's own instant, read from the
    `balances` table (equal to the postings' sums, `verify` checks it)
    instead of adding up every posting ever made."""
    rows = await conn.execute(
        text(
            "SELECT split_part(account, ':', 3) AS name, sum(balance)::bigint AS total "
            "FROM balances WHERE member_id IS NOT NULL AND asset = :asset "
            "AND split_part(account, ':', 3) = ANY(CAST(:names AS text[])) GROUP BY 1"
        ),
        {"asset": asset, "names": list(names)},
    )
    found = {r.name: int(r.total) for r in rows}
    return {name: found.get(name, 0) for name in names}


async def live_balances(conn: AsyncConnection) -> dict[tuple[str, str], int]:
    """The `balances` table summed per account and asset (slots added up): what
    the ledger holds now, to compare with a point-in-time read of now."""
    rows = await conn.execute(
        text("SELECT account, asset, sum(balance)::bigint AS b FROM balances GROUP BY 1, 2")
    )
    return {(r.account, r.asset): int(r.b) for r in rows}


# -- the entries of a window -----------------------------------------------------


class AssetTotals(msgspec.Struct):
    """Control totals of one asset: postings, the sum of the debits (negative
    amounts) and of the credits (positive amounts); debits + credits = 0."""

    postings: int = 0
    debits: int = 0
    credits: int = 0

    def add(self, amount: int) -> None:
        self.postings += 1
        if amount < 0:
            self.debits += amount
        else:
            self.credits += amount


class WindowTotals(msgspec.Struct):
    """Control totals of the entries booked in [start, end)."""

    entries: int = 0
    postings: int = 0
    first_entry_id: int | None = None
    last_entry_id: int | None = None
    assets: dict[str, AssetTotals] = msgspec.field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return all(t.debits + t.credits == 0 for t in self.assets.values())


async def window_totals(conn: AsyncConnection, start: datetime, end: datetime) -> WindowTotals:
    """Counts and sums of the entries booked in [start, end), computed by the
    database (what a streamed export of the window must add up to)."""
    window = {"start": utc(start), "end": utc(end)}
    head = (
        await conn.execute(
            text(
                "SELECT count(*) AS entries, min(id) AS first, max(id) AS last "
                "FROM journal_entries WHERE created_at >= :start AND created_at < :end "
                f"AND {booked_in('id', 'CAST(:start AS timestamptz)', 'CAST(:end AS timestamptz)')}"
            ),
            window,
        )
    ).one()
    rows = await conn.execute(
        text(
            "SELECT p.asset, count(*) AS n, "
            "coalesce(sum(p.amount) FILTER (WHERE p.amount < 0), 0)::bigint AS debits, "
            "coalesce(sum(p.amount) FILTER (WHERE p.amount > 0), 0)::bigint AS credits "
            "FROM postings p JOIN journal_entries e ON e.id = p.entry_id "
            f"WHERE e.created_at >= :start AND e.created_at < :end AND {IN_E} AND {IN_P} "
            "GROUP BY p.asset"
        ),
        window,
    )
    assets = {r.asset: AssetTotals(int(r.n), int(r.debits), int(r.credits)) for r in rows}
    return WindowTotals(
        entries=int(head.entries),
        postings=sum(t.postings for t in assets.values()),
        first_entry_id=head.first,
        last_entry_id=head.last,
        assets={a: assets[a] for a in sorted(assets)},
    )


# One row per posting, the entry's columns repeated; entries in id order, each
# entry's postings in the order they were written.
WINDOW_ROWS = (
    "SELECT e.id AS entry_id, e.created_at, e.effective_at, e.kind, e.member_id, "
    "e.partner_id, e.partner_reference, e.reverses_entry_id, e.hold_id, e.posted_by, "
    "e.reason, e.breakdown::text AS breakdown, p.id AS posting_id, p.account, p.asset, "
    "p.amount FROM journal_entries e JOIN postings p ON p.entry_id = e.id "
    f"WHERE e.created_at >= :start AND e.created_at < :end AND {IN_E} AND {IN_P} "
    "ORDER BY e.id, p.id"
)

# The columns of a WINDOW_ROWS row, in order.
WINDOW_COLUMNS = (
    "entry_id",
    "created_at",
    "effective_at",
    "kind",
    "member_id",
    "partner_id",
    "partner_reference",
    "reverses_entry_id",
    "hold_id",
    "posted_by",
    "reason",
    "breakdown",
    "posting_id",
    "account",
    "asset",
    "amount",
)


async def window_rows(
    conn: AsyncConnection, start: datetime, end: datetime, batch: int = 5_000
) -> AsyncIterator[Sequence]:
    """The postings of the entries booked in [start, end) with their entries'
    columns (`WINDOW_COLUMNS`; breakdown as JSON text), in batches of `batch`
    rows from a server-side cursor: constant memory whatever the window's
    size. Run it inside `snapshot(..., long=True)` (a cursor lives in a
    transaction; the snapshot makes it agree with `window_totals`)."""
    async with conn.stream(
        text(WINDOW_ROWS),
        {"start": utc(start), "end": utc(end)},
        execution_options={"yield_per": batch},
    ) as result:
        # The size given here, not only as `yield_per`: without it this
        # SQLAlchemy fetches the whole result into one partition.
        async for rows in result.partitions(batch):
            yield rows
