"""The read side: balances, points expiring soon, entries and member history."""

import base64
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import MEMBER_ACCOUNTS, PTS, QP, Address, check_id, member_account
from ledger.errors import EntryNotFound, InvalidCursor
from ledger.views import (
    AccountBalance,
    AssetBalance,
    Balances,
    EntryView,
    ExpiringPoints,
    HistoryPage,
    MemberBalances,
    PostingView,
)


async def balances(conn: AsyncConnection, member_id: str) -> Balances:
    accounts = [member_account(member_id, name) for name in MEMBER_ACCOUNTS]
    rows = await conn.execute(
        text(
            "SELECT account, balance, version FROM balances "
            "WHERE account = ANY(CAST(:accounts AS text[])) AND slot = 0 "
            "AND asset = CASE WHEN account = :qp_account THEN 'QP' ELSE 'PTS' END"
        ),
        {"accounts": accounts, "qp_account": member_account(member_id, "qp")},
    )
    found = {r.account.rsplit(":", 1)[1]: (r.balance, r.version) for r in rows}
    return Balances(
        member_id=member_id,
        available=found.get("available", (0, 0))[0],
        pending=found.get("pending", (0, 0))[0],
        held=found.get("held", (0, 0))[0],
        qp=found.get("qp", (0, 0))[0],
        version=sum(version for _, version in found.values()),
    )


def qp_in_period(member: str, start: str, end: str) -> str:
    """SQL for the QP a member's entries effective in [start, end) moved, as a
    scalar subquery over three SQL expressions (parameters or outer columns):
    an index-only range read of `member_qp_movements`, whatever the member's
    history before the period."""
    return (
        "(SELECT coalesce(sum(qpm.amount), 0)::bigint FROM member_qp_movements qpm "
        f"WHERE qpm.member_id = {member} AND qpm.effective_at >= {start} "
        f"AND qpm.effective_at < {end})"
    )


async def points_sent_since(conn: AsyncConnection, member_id: str, since: datetime) -> int:
    """Points a member has sent by transfer since `since`, fees included."""
    return (
        await conn.execute(
            text(
                "SELECT coalesce(-sum(p.amount), 0)::bigint FROM postings p "
                "JOIN journal_entries e ON e.id = p.entry_id WHERE e.kind = 'transfer' "
                "AND e.member_id = :m AND e.effective_at >= :since AND p.account = :account"
            ),
            {"m": member_id, "since": since, "account": member_account(member_id, "available")},
        )
    ).scalar_one()


async def member_balances(
    conn: AsyncConnection, member_id: str, now: datetime, within_days: int
) -> MemberBalances:
    check_id("member", member_id)
    window = timedelta(days=within_days)
    # Open lots by expiry date: few rows (expiry dates fall on period ends).
    rows = await conn.execute(
        text(
            "SELECT expires_at, sum(remaining) AS points FROM lots "
            "WHERE member_id = :member_id AND remaining > 0 AND expires_at IS NOT NULL "
            "GROUP BY expires_at ORDER BY expires_at"
        ),
        {"member_id": member_id},
    )
    expiring, changes_at = [], None
    for r in rows:
        if r.expires_at <= now + window:
            expiring.append(ExpiringPoints(r.expires_at, int(r.points)))
        else:
            changes_at = r.expires_at - window
            break
    return MemberBalances(await balances(conn, member_id), tuple(expiring), within_days, changes_at)


async def account_balance(conn: AsyncConnection, address: str) -> AccountBalance:
    account = str(Address.parse(address))
    rows = await conn.execute(
        text(
            "SELECT asset, sum(balance) AS balance, sum(version) AS version FROM balances "
            "WHERE account = :account GROUP BY asset ORDER BY asset"
        ),
        {"account": account},
    )
    found = {r.asset: AssetBalance(r.asset, int(r.balance), int(r.version)) for r in rows}
    return AccountBalance(
        account, tuple(found.get(asset, AssetBalance(asset, 0, 0)) for asset in (PTS, QP))
    )


_ENTRY_COLUMNS = (
    "id, kind, member_id, partner_id, partner_reference, reverses_entry_id, hold_id, "
    "effective_at, created_at, posted_by, reason, breakdown"
)


def _entry_view(row, postings: list[PostingView]) -> EntryView:
    return EntryView(
        entry_id=row.id,
        kind=row.kind,
        member_id=row.member_id,
        partner_id=row.partner_id,
        partner_reference=row.partner_reference,
        reverses_entry_id=row.reverses_entry_id,
        hold_id=row.hold_id,
        effective_at=row.effective_at,
        created_at=row.created_at,
        posted_by=row.posted_by,
        reason=row.reason,
        breakdown=row.breakdown,
        postings=tuple(postings),
    )


async def entry(conn: AsyncConnection, entry_id: int) -> EntryView:
    row = (
        await conn.execute(
            text(f"SELECT {_ENTRY_COLUMNS} FROM journal_entries WHERE id = :id"), {"id": entry_id}
        )
    ).first()
    if row is None:
        raise EntryNotFound(f"no journal entry {entry_id}", entry_id=entry_id)
    postings = await conn.execute(
        text("SELECT account, asset, amount FROM postings WHERE entry_id = :id ORDER BY id"),
        {"id": entry_id},
    )
    return _entry_view(row, [PostingView(p.account, p.asset, p.amount) for p in postings])


def encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"e{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        entry_id = int(raw[1:])
        if raw[0] != "e" or not 0 < entry_id < 2**63:
            raise ValueError
        return entry_id
    except (ValueError, IndexError, UnicodeDecodeError):
        raise InvalidCursor(f"not a cursor of this history: {cursor!r}") from None


async def history(
    conn: AsyncConnection,
    member_id: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
    kinds: tuple[str, ...] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> HistoryPage:
    """A member's entries, newest first; the cursor is the last entry seen, so
    pages stay stable while new entries arrive."""
    check_id("member", member_id)
    before = decode_cursor(cursor) if cursor else None
    # A plain bound on the partition key, only when there is a cursor (not
    # `:before IS NULL OR ...`): PostgreSQL then skips every month of
    # postings after the cursor's, also in a generic plan.
    below_cursor = "  AND entry_id < :before " if before is not None else ""
    parameters = {"before": before} if before is not None else {}
    rows = (
        await conn.execute(
            text(
                # Walk the member's postings newest first and fetch each entry
                # by key; OFFSET 0 keeps the planner from turning this back
                # into a backwards walk of every entry of every member.
                "SELECT e.* FROM (SELECT DISTINCT entry_id FROM postings "
                "  WHERE member_id = :member_id "
                f"{below_cursor}"
                "  ORDER BY entry_id DESC) AS p "
                f"CROSS JOIN LATERAL (SELECT {_ENTRY_COLUMNS} FROM journal_entries "
                "  WHERE id = p.entry_id "
                "  AND (cardinality(CAST(:kinds AS text[])) = 0 "
                "       OR kind = ANY(CAST(:kinds AS text[]))) "
                "  AND (CAST(:since AS timestamptz) IS NULL OR effective_at >= :since) "
                "  AND (CAST(:until AS timestamptz) IS NULL OR effective_at < :until) "
                "  OFFSET 0) AS e "
                "ORDER BY p.entry_id DESC LIMIT :fetch"
            ),
            {
                "member_id": member_id,
                "fetch": limit + 1,
                "kinds": list(kinds),
                "since": since,
                "until": until,
                **parameters,
            },
        )
    ).all()
    page, more = rows[:limit], len(rows) > limit
    postings: dict[int, list[PostingView]] = defaultdict(list)
    if page:
        result = await conn.execute(
            text(
                "SELECT entry_id, account, asset, amount FROM postings "
                "WHERE entry_id = ANY(CAST(:ids AS bigint[])) AND member_id = :member_id "
                "ORDER BY id"
            ),
            {"ids": [r.id for r in page], "member_id": member_id},
        )
        for p in result:
            postings[p.entry_id].append(PostingView(p.account, p.asset, p.amount))
    return HistoryPage(
        member_id=member_id,
        entries=tuple(_entry_view(r, postings[r.id]) for r in page),
        next_cursor=encode_cursor(page[-1].id) if more and page else None,
    )
