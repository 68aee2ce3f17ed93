"""The posting engine: writes one journal entry with its postings, balance
updates and lot movements inside the caller's transaction.

Lock order, the same in every transaction, keeps concurrent postings free of
deadlocks:
1. the operation's own rows (idempotency key, hold, pending points, reversal
   tracker, a partner's purchase, budgeted promotions);
2. every member the transaction touches, all in one statement, in address
   order: each member's `available` balance row is that member's mutex. No
   transaction writes a member's balances or lots, or reads what it decides
   on from them (or from the member's tier, coupons, promotion usage) before
   it holds that member's mutex, and a transaction that holds some members
   never asks for another one later (`LockOrderError`), so two transactions
   can never wait for each other on member rows;
3. hot-account slots (partner, programme) in address order, in the same
   statement as the members' balance changes, after them ("member:" sorts
   first).
   Hot accounts take the slot of the connection that posts (`Journal.hot_slot`):
   a process's connections hold consecutive slots from a random start, so its
   transactions in flight never queue on one another's hot rows, and those of
   other processes only where their slots meet.
"""

import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import PTS, member_account, member_of
from ledger.drafts import (
    EntryDraft,
    check_draft,
    reads_lots,
)
from ledger.errors import (
    DuplicatePartnerReference,
    LockOrderError,
)
from ledger.expiry import ExpiryPolicy
from ledger.lot_work import LotWork
from ledger.statements import json_rows, statement

LOCKED_MEMBERS = (
    "ledger.locked_members"  # conn.info key: members whose mutex this transaction holds
)
POSTED_KINDS = "ledger.posted_kinds"  # conn.info key: kinds of the entries it posted
HOT_SLOT_NUMBER = "ledger.hot_slot_number"  # conn.info key: the connection's number


@dataclass(frozen=True, slots=True)
class BalanceRow:
    balance: int
    version: int


@dataclass(frozen=True, slots=True)
class PostedEntry:
    entry_id: int
    member_balances: Mapping[tuple[str, str], BalanceRow]


def member_mutex_cte(name: str, members: str, when: str = "true") -> str:
    """The SQL of a CTE `name` that takes the mutex of the members whose ids
    the SQL `members` yields (a set-returning expression), as `lock_members`
    does: in address order, creating their `available` rows on first use,
    returning member_id, balance and version; for SQLAlchemy's `text()`. A
    caller whose statement reads the members first composes it in, then names
    them to `Journal.hold_members`. `when`: a condition on the rest of the
    statement (none taken unless it holds)."""
    address = "'member\\:' || t.m || '\\:available'"  # escaped for text()
    # ON CONFLICT DO UPDATE (a no-op) locks the row even when another
    # transaction created it after this statement's snapshot.
    return (
        f"{name} AS (INSERT INTO balances AS b (account, asset, slot, member_id) "
        f"SELECT {address}, 'PTS', 0, t.m FROM {members} AS t(m) WHERE {when} "
        f'ORDER BY {address} COLLATE "C" '
        "ON CONFLICT (account, asset, slot) DO UPDATE SET balance = b.balance "
        "RETURNING member_id, balance, version)"
    )


def _held_members(conn: AsyncConnection, wanted: set[str]) -> set[str]:
    """The members whose mutex this transaction holds (empty: none yet). A
    transaction that holds some may not ask for others (`LockOrderError`)."""
    held: set[str] = conn.info.setdefault(LOCKED_MEMBERS, set())
    if held and not wanted <= held:
        raise LockOrderError(
            f"members {sorted(wanted - held)} asked for after {sorted(held)} were locked"
        )
    return held


# Numbers given to this process's database connections as they first post,
# from a random start, so two processes' connections rarely share a slot.
_connection_numbers = itertools.count(random.randrange(1 << 16))


class Journal:
    """Posts entries; holds the pieces of configuration posting depends on."""

    def __init__(self, expiry_policy: ExpiryPolicy, hot_slots: int = 64) -> None:
        self.expiry_policy = expiry_policy
        self.hot_slots = hot_slots

    def hot_slot(self, conn: AsyncConnection) -> int:
        """The slot of every hot account (partner, programme) this connection
        posts to. A transaction holds its hot rows from its posting statement to
        its commit; a connection runs one transaction at a time, so transactions
        on this process's connections (consecutive numbers) never wait for one
        another there. The number lives with the pooled connection (`info`)."""
        number = conn.info.get(HOT_SLOT_NUMBER)
        if number is None:
            number = conn.info[HOT_SLOT_NUMBER] = next(_connection_numbers)
        return number % self.hot_slots

    async def lock_members(
        self, conn: AsyncConnection, member_ids: Iterable[str]
    ) -> dict[str, BalanceRow]:
        """Take the mutex of every member this transaction will touch, in one
        statement, in address order (creating their `available` rows on first
        use). Returns each member's available balance as locked.

        A transaction takes its members once: asking again for members it
        already holds is free, asking for a new one raises `LockOrderError`."""
        wanted = set(member_ids)
        held = _held_members(conn, wanted)
        if not wanted or held:
            return {}
        rows = await conn.execute(
            statement(
                "WITH "
                + member_mutex_cte("locked", "unnest(CAST(:members AS text[]))")
                + " SELECT member_id, balance, version FROM locked"
            ),
            {"members": list(wanted)},
        )
        held.update(wanted)
        return {r.member_id: BalanceRow(r.balance, r.version) for r in rows}

    def hold_members(self, conn: AsyncConnection, member_ids: Iterable[str]) -> None:
        """Note that this transaction took these members' mutexes in a
        statement of its own (`member_mutex_cte`); its first members, as with
        `lock_members`."""
        wanted = set(member_ids)
        held = _held_members(conn, wanted)
        if held:
            raise LockOrderError(f"members {sorted(wanted)} taken after {sorted(held)}")
        held.update(wanted)

    async def claim_members(
        self, conn: AsyncConnection, member_ids: Iterable[str], limit: int
    ) -> list[str]:
        """Take the mutex of at most `limit` of these members, those no other
        transaction holds, without waiting (address order, SKIP LOCKED: a job
        sharing its work with other runners). The claimed are held as
        `lock_members` holds them; a member without an `available` row has
        nothing to claim. Like `lock_members`, once per transaction."""
        wanted = set(member_ids)
        held = _held_members(conn, wanted)
        if not wanted or held:
            raise LockOrderError("members are claimed once, before any other member lock")
        rows = await conn.execute(
            statement(
                "SELECT member_id FROM balances WHERE account = ANY(CAST(:accounts AS text[])) "
                "AND asset = 'PTS' AND slot = 0 "
                'ORDER BY account COLLATE "C" LIMIT :limit FOR NO KEY UPDATE SKIP LOCKED'
            ),
            {"accounts": [member_account(m, "available") for m in wanted], "limit": limit},
        )
        claimed = [r.member_id for r in rows]
        held.update(claimed)
        return claimed

    async def post(self, conn: AsyncConnection, draft: EntryDraft, now: datetime) -> PostedEntry:
        """Post one entry (`post_many` of one); a partner reference used before
        raises `DuplicatePartnerReference`."""
        (result,) = await self.post_many(conn, [draft], now)
        if isinstance(result, DuplicatePartnerReference):
            raise result
        return result

    async def post_many(
        self, conn: AsyncConnection, drafts: Sequence[EntryDraft], now: datetime
    ) -> list[PostedEntry | DuplicatePartnerReference]:
        """Post entries with a constant number of statements, whatever their
        number: entries, postings, balances (one row change per account,
        asset and slot) and pending earnings in one; new lots with their
        creating movements in a second; movements of existing lots (debits,
        restorations) in two more when there are any. One result per draft,
        in order: the posted entry, or `DuplicatePartnerReference` for a draft whose
        partner reference was used before (also earlier in the same call);
        such a draft posts nothing and the others post as if it were absent.

        A member whose draft's lot effect reads the member's lots (a debit
        that may not overdraw, a clawback, a restoration) may have only that
        one draft in a call; credits and given debits (NewLot, CarryLots,
        ConsumeLots) may repeat, and apply in draft order."""
        if not drafts:
            return []
        for draft in drafts:
            check_draft(draft)
        members = {
            m for d in drafts for m in ({member_of(p.account) for p in d.postings} - {None})
        } | {m for d in drafts for m in d.lot_effects}
        # When the transaction holds no member yet, the balance upsert is its
        # member lock step (each member's available row, the mutex, rides
        # along with a zero change); hot slots follow the member rows in
        # address order ("member:" sorts before "partner:" and "program:").
        held = _held_members(conn, members)
        lock_rows = [] if held else sorted(members)
        entry_ids, balances = await self._post_entries(conn, drafts, lock_rows)
        held.update(members)
        live = [(d, e) for d, e in zip(drafts, entry_ids, strict=True) if e is not None]
        lots = LotWork(conn, self.expiry_policy)
        # Each member's available balance before the call, and how many of the
        # call's drafts touch its lots (one pass over the postings and effects).
        running: dict[str, int] = {}
        drafts_of: dict[str, int] = defaultdict(int)
        reads_of: set[str] = set()
        for draft, _ in live:
            for member_id, effect in draft.lot_effects.items():
                drafts_of[member_id] += 1
                if reads_lots(effect):
                    reads_of.add(member_id)
                if member_id not in running:
                    running[member_id] = balances[
                        (member_account(member_id, "available"), PTS)
                    ].balance
        for draft, _ in live:
            for p in draft.postings:
                if p.asset == PTS and p.account.endswith(":available"):
                    member_id = member_of(p.account)
                    if member_id in running:
                        running[member_id] -= p.amount
        if any(drafts_of[m] > 1 for m in reads_of):
            raise ValueError("a member whose lot effect reads its lots has one draft per call")
        for draft, entry_id in live:
            for member_id, effect in sorted(draft.lot_effects.items()):
                account = member_account(member_id, "available")
                delta = sum(
                    p.amount for p in draft.postings if p.account == account and p.asset == PTS
                )
                await lots.apply(entry_id, member_id, effect, delta, running[member_id], now)
                running[member_id] += delta
        await lots.write()
        if (kinds := conn.info.get(POSTED_KINDS)) is not None:
            kinds.extend(draft.kind for draft, _ in live)
        posted = {e: PostedEntry(e, balances) for _, e in live}
        return [
            posted[e]
            if e is not None
            else DuplicatePartnerReference.of(d.partner_id, d.partner_reference)
            for d, e in zip(drafts, entry_ids, strict=True)
        ]

    async def _post_entries(
        self, conn: AsyncConnection, drafts: Sequence[EntryDraft], lock_members: Sequence[str]
    ) -> tuple[list[int | None], dict[tuple[str, str], BalanceRow]]:
        """Entries, their postings and the balance changes in one statement.
        Returns each draft's entry id, or None where its partner reference was
        taken (that draft posts nothing), and the members' balance rows as
        changed. Ids are drawn per input row (`ledger_id`: the booking month
        in the high bits, migration 0013) and joined back by position, so the
        mapping does not depend on the order of RETURNING. A partner's
        reference is claimed in `partner_references` (unique forever, which a
        partitioned journal cannot be) and only the entries whose reference
        was claimed, or that have none, are inserted. The references are
        claimed (and one claimed by a concurrent transaction waited for) and
        the entries inserted before any balance row is locked: the balances
        aggregate every inserted entry's postings, one row change per account,
        asset and slot, in address order; a row's version grows by the number
        of entries that changed it, as if they had been posted one by one."""
        hot = self.hot_slot(conn)
        lines = []  # (entry position, account, asset, amount, member, slot)
        for n, draft in enumerate(drafts, start=1):
            for posting in draft.postings:
                member_id = member_of(posting.account)
                slot = 0 if member_id else hot
                lines.append((n, posting.account, posting.asset, posting.amount, member_id, slot))
        # Each row set goes as one JSON array of rows (`json_rows`).
        entries = [
            (
                d.kind,
                d.member_id,
                d.partner_id,
                d.partner_reference,
                d.reverses_entry_id,
                d.hold_id,
                d.effective_at,
                d.posted_by,
                d.reason,
                d.breakdown,
            )
            for d in drafts
        ]
        waiting = [
            (n, d.pending_points(), d.pending_until)
            for n, d in enumerate(drafts, start=1)
            if d.pending_until
        ]
        rows = await conn.execute(
            statement(
                # Ids first (month-encoded, migration 0013), so the claims
                # can name their entries before the entries exist.
                "WITH input AS MATERIALIZED (SELECT e->>0 AS kind, e->>1 AS member_id, "
                "e->>2 AS partner_id, e->>3 AS partner_reference, "
                "CAST(e->>4 AS bigint) AS reverses_entry_id, CAST(e->>5 AS bigint) AS hold_id, "
                "CAST(e->>6 AS timestamptz) AS effective_at, e->>7 AS posted_by, "
                "e->>8 AS reason, e->9 AS breakdown, t.n, "
                "ledger_id(nextval('journal_entries_id_seq')) AS id "
                "FROM jsonb_array_elements(CAST(:entries AS jsonb)) WITH ORDINALITY AS t(e, n)), "
                # A reference is claimed in draft order: the first draft using
                # it wins, a later one (or another transaction's, once that one
                # commits; it waits until then) gets no row back.
                "claimed AS (INSERT INTO partner_references (partner_id, partner_reference, "
                "entry_id) SELECT partner_id, partner_reference, id FROM input "
                "WHERE partner_id IS NOT NULL AND partner_reference IS NOT NULL ORDER BY n "
                "ON CONFLICT (partner_id, partner_reference) DO NOTHING RETURNING entry_id), "
                "inserted AS (INSERT INTO journal_entries (id, kind, member_id, partner_id, "
                "partner_reference, reverses_entry_id, hold_id, effective_at, posted_by, "
                "reason, breakdown) SELECT id, kind, member_id, partner_id, partner_reference, "
                "reverses_entry_id, hold_id, effective_at, posted_by, reason, "
                "CAST(breakdown AS jsonb) FROM input WHERE partner_id IS NULL "
                "OR partner_reference IS NULL OR id IN (SELECT entry_id FROM claimed) "
                "ORDER BY n RETURNING id), "
                "lines AS MATERIALIZED (SELECT input.id AS entry_id, l.account, l.asset, "
                "l.amount, l.member_id, l.slot, l.k FROM (SELECT CAST(e->>0 AS bigint) AS n, "
                "e->>1 AS account, e->>2 AS asset, CAST(e->>3 AS bigint) AS amount, "
                "e->>4 AS member_id, CAST(e->>5 AS smallint) AS slot, k "
                "FROM jsonb_array_elements(CAST(:lines AS jsonb)) WITH ORDINALITY AS j(e, k)) AS l "
                "JOIN input ON input.n = l.n JOIN inserted ON inserted.id = input.id), "
                # Posting ids follow the drafts' order (a reversal splits in it).
                "posted AS (INSERT INTO postings (entry_id, account, asset, amount, member_id) "
                "SELECT entry_id, account, asset, amount, member_id FROM lines ORDER BY k), "
                "waiting AS (INSERT INTO pending_points (earn_entry_id, member_id, amount, "
                "remaining, earned_at, release_at) SELECT inserted.id, input.member_id, w.a, "
                "w.a, input.effective_at, w.r FROM (SELECT CAST(e->>0 AS bigint) AS n, "
                "CAST(e->>1 AS bigint) AS a, CAST(e->>2 AS timestamptz) AS r "
                "FROM jsonb_array_elements(CAST(:waiting AS jsonb)) AS j(e)) AS w "
                "JOIN input ON input.n = w.n JOIN inserted ON inserted.id = input.id), "
                "per_entry AS (SELECT account, asset, slot, member_id, sum(amount) AS amount "
                "FROM lines GROUP BY account, asset, slot, member_id, entry_id "
                "UNION ALL SELECT a, 'PTS', 0, m, 0 FROM unnest(CAST(:lock_accounts AS text[]), "
                "CAST(:lock_members AS text[])) AS k(a, m)), "
                "applied AS (INSERT INTO balances AS b (account, asset, slot, balance, version, "
                "member_id, updated_at) SELECT account, asset, slot, sum(amount), "
                "count(*) FILTER (WHERE amount <> 0), member_id, now() FROM per_entry "
                'GROUP BY account, asset, slot, member_id ORDER BY account COLLATE "C", asset '
                "ON CONFLICT (account, asset, slot) DO UPDATE SET "
                "balance = b.balance + EXCLUDED.balance, version = b.version + EXCLUDED.version, "
                "updated_at = now() RETURNING account, asset, balance, version, member_id) "
                "SELECT input.n, inserted.id, NULL AS account, NULL AS asset, "
                "NULL::bigint AS balance, NULL::bigint AS version FROM input "
                "LEFT JOIN inserted USING (id) UNION ALL SELECT NULL, NULL, account, asset, "
                "balance, version FROM applied WHERE member_id IS NOT NULL"
            ),
            {
                "entries": json_rows(entries),
                "lines": json_rows(lines),
                "waiting": json_rows(waiting),
                "lock_accounts": [member_account(m, "available") for m in lock_members],
                "lock_members": list(lock_members),
            },
        )
        entry_ids: list[int | None] = [None] * len(drafts)
        balances: dict[tuple[str, str], BalanceRow] = {}
        for r in rows:
            if r.n is not None:
                entry_ids[r.n - 1] = r.id
            else:
                balances[(r.account, r.asset)] = BalanceRow(r.balance, r.version)
        return entry_ids, balances
