"""What the database and the posting engine refuse, whatever the caller does:
member accounts hold only their asset, held and pending never go negative,
a member's lots always add up to their available points, a transaction takes
its members' locks once; and the transaction retry that turns a deadlock into
a second attempt instead of an error."""

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from ledger.commands import Earn, PostEntry, PostingInput
from ledger.database import sqlstate
from ledger.drafts import EntryDraft, NewLot, Posting
from ledger.errors import InvalidAccount, InvalidAmount, LockOrderError
from ledger.verify import verify


async def test_posting_points_to_a_members_qp_account_is_refused(ledger, new_member):
    member = await new_member()
    with pytest.raises(InvalidAccount, match="holds QP only"):
        await ledger.post_entry(
            PostEntry(
                (
                    PostingInput(f"member:{member}:qp", "PTS", 10),
                    PostingInput("program:adjustments", "PTS", -10),
                ),
                reason="points on the qualifying account",
            ),
            "staff:tests",
        )
    assert (await ledger.balances(member)).qp == 0


async def test_the_database_refuses_a_member_account_with_the_other_asset(engine, new_member):
    member = await new_member()
    async with engine.connect() as conn:
        with pytest.raises(IntegrityError, match="balances_member_asset"):
            await conn.execute(
                text(
                    "INSERT INTO balances (account, asset, slot, balance, member_id) "
                    "VALUES (:a, 'QP', 0, 5, :m)"
                ),
                {"a": f"member:{member}:available", "m": member},
            )


async def test_held_and_pending_never_go_below_zero_in_the_database(
    ledger, engine, new_member, new_partner
):
    member, partner = await new_member(), await new_partner()
    await ledger.earn(Earn.simple(member, partner, "r1", 50))
    for account in ("held", "pending"):
        async with engine.connect() as conn:
            with pytest.raises(IntegrityError, match="would go below zero"):
                await conn.execute(
                    text(
                        "INSERT INTO balances (account, asset, slot, balance, member_id) "
                        "VALUES (:a, 'PTS', 0, -1, :m) ON CONFLICT (account, asset, slot) "
                        "DO UPDATE SET balance = balances.balance - 1"
                    ),
                    {"a": f"member:{member}:{account}", "m": member},
                )


async def test_a_posting_on_available_without_its_lots_is_refused(ledger, engine, new_member):
    member = await new_member()
    draft = EntryDraft(
        kind="adjust",
        postings=[
            Posting(f"member:{member}:available", "PTS", 10),
            Posting("program:adjustments", "PTS", -10),
        ],
        effective_at=datetime.now(UTC),
        posted_by="staff:tests",
        member_id=member,
        reason="no lot",
    )
    with pytest.raises(InvalidAmount, match="needs a lot effect"):
        await ledger.atomically(lambda conn: ledger.journal.post(conn, draft, datetime.now(UTC)))
    assert (await ledger.balances(member)).available == 0


async def test_the_database_refuses_available_points_that_are_not_in_lots(
    engine, new_member, new_partner, ledger
):
    member, partner = await new_member(), await new_partner()
    await ledger.earn(Earn.simple(member, partner, "r1", 40))
    async with engine.connect() as conn:
        with pytest.raises(IntegrityError, match="available points but 40 in lots"):
            async with conn.begin():
                await conn.execute(
                    text("UPDATE balances SET balance = balance + 1 WHERE account = :a"),
                    {"a": f"member:{member}:available"},
                )
    assert (await ledger.balances(member)).available == 40


async def test_a_transaction_takes_its_members_once(ledger, new_member, new_partner):
    first, second, partner = await new_member(), await new_member(), await new_partner()

    async def two_steps(conn):
        await ledger.journal.lock_members(conn, [first])
        await ledger.journal.lock_members(conn, [first])  # held already: free
        await ledger.journal.lock_members(conn, [second])

    with pytest.raises(LockOrderError):
        await ledger.atomically(two_steps)

    async def post_for_another(conn):
        await ledger.journal.lock_members(conn, [first])
        now = datetime.now(UTC)
        await ledger.journal.post(
            conn,
            EntryDraft(
                kind="earn",
                postings=[
                    Posting(f"member:{second}:available", "PTS", 5),
                    Posting(f"partner:{partner}:issued", "PTS", -5),
                ],
                effective_at=now,
                posted_by=f"partner:{partner}",
                member_id=second,
                lot_effects={second: NewLot("earn", now)},
            ),
            now,
        )

    with pytest.raises(LockOrderError):
        await ledger.atomically(post_for_another)
    assert (await ledger.balances(second)).available == 0


async def test_a_deadlocked_transaction_runs_again_instead_of_failing(
    ledger, engine, new_member, new_partner
):
    """Two transactions that lock two members' rows in opposite orders (what
    the lock order forbids, forced here with raw SQL): PostgreSQL breaks the
    deadlock by failing one; the service runs that one again and both commit."""
    a, b, partner = await new_member(), await new_member(), await new_partner()
    await ledger.earn(Earn.simple(a, partner, "ra", 10))
    await ledger.earn(Earn.simple(b, partner, "rb", 10))
    both_hold_one = asyncio.Barrier(2)
    attempts = {"ab": 0, "ba": 0}

    def body(name: str, first: str, then: str):
        async def run(conn):
            attempts[name] += 1
            lock = "SELECT 1 FROM balances WHERE account = :a FOR UPDATE"
            await conn.execute(text(lock), {"a": f"member:{first}:available"})
            if attempts[name] == 1:
                await both_hold_one.wait()
            await conn.execute(text(lock), {"a": f"member:{then}:available"})
            return attempts[name]

        return run

    before = ledger.retries["40P01"]
    results = await asyncio.gather(
        ledger.atomically(body("ab", a, b)), ledger.atomically(body("ba", b, a))
    )
    assert sorted(results) == [1, 2]  # one ran once, the deadlock victim twice
    assert ledger.retries["40P01"] == before + 1


async def test_contention_that_outlives_the_retries_reaches_the_caller(
    ledger, engine, new_member, new_partner
):
    """A row held longer than lock_timeout through every attempt: the caller
    gets the lock-timeout error (the API answers it with a 503)."""
    member, partner = await new_member(), await new_partner()
    await ledger.earn(Earn.simple(member, partner, "r1", 10))
    async with engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM balances WHERE account = :a FOR UPDATE"),
            {"a": f"member:{member}:available"},
        )

        async def wait_for_it(conn):
            await conn.execute(text("SET LOCAL lock_timeout = '50ms'"))
            await conn.execute(
                text("SELECT 1 FROM balances WHERE account = :a FOR UPDATE"),
                {"a": f"member:{member}:available"},
            )

        before = ledger.retries["55P03"]
        with pytest.raises(DBAPIError) as raised:
            await ledger.atomically(wait_for_it)
        await holder.rollback()
    assert sqlstate(raised.value) == "55P03"
    assert isinstance(raised.value.orig.__cause__, asyncpg.exceptions.LockNotAvailableError)
    assert ledger.retries["55P03"] == before + ledger.retry.attempts - 1


async def test_rows_naming_a_missing_entry_are_refused_per_statement(
    ledger, engine, new_member, new_partner
):
    """Postings, partner reference claims, pending earnings and purchase records
    name their entry through a check per statement (migration 0014), not a
    foreign key: a row naming no entry is refused all the same, and the entry
    a row names never changes."""
    member, partner = await new_member(), await new_partner()
    async with engine.connect() as conn:  # an id of this month's partition, never drawn
        missing = (await conn.execute(text("SELECT ledger_id(549755813887)"))).scalar_one()
    refused = (
        # Balanced, so that only the entry is missing.
        "INSERT INTO postings (entry_id, account, asset, amount, member_id) VALUES "
        f"({missing}, 'member:{member}:qp', 'QP', 1, '{member}'), "
        f"({missing}, 'program:qp_source', 'QP', -1, NULL)",
        "INSERT INTO pending_points (earn_entry_id, member_id, amount, remaining, earned_at, "
        f"release_at) VALUES ({missing}, '{member}', 1, 1, now(), now())",
        "INSERT INTO partner_references (partner_id, partner_reference, entry_id) VALUES "
        f"('{partner}', 'NO-ENTRY', {missing})",
    )
    for statement in refused:
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        assert sqlstate(raised.value) == "23503", statement
    later = datetime(2100, 1, 1, tzinfo=UTC)
    earned = await ledger.earn(Earn.simple(member, partner, "R-FIXED", 10, release_at=later))
    for table, column in (("pending_points", "earn_entry_id"), ("partner_references", "entry_id")):
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as conn:
                await conn.execute(
                    text(f"UPDATE {table} SET {column} = {column} + 1 WHERE {column} = :e"),
                    {"e": earned.entry_id},
                )
        assert sqlstate(raised.value) == "42501", table
    # A lot movement names its entry and its lot (migrations 0023, 0028).
    for entry, named in ((missing, f"journal_entries {missing}"), (earned.entry_id, "lots -1")):
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO lot_movements (entry_id, lot_id, amount) "
                        f"VALUES ({entry}, -1, 1)"
                    )
                )
        assert sqlstate(raised.value) == "23503" and f"names {named}," in str(raised.value)
    # A lot names the entries that made and earned it; a key's stored result
    # its entry (migration 0029).
    for statements in (
        [
            "INSERT INTO lots (member_id, source_entry_id, earn_entry_id, amount, remaining, "
            f"earned_at, source) VALUES ('{member}', {missing}, NULL, 1, 1, now(), 'earn')"
        ],
        [
            "INSERT INTO lots (member_id, source_entry_id, earn_entry_id, amount, remaining, "
            f"earned_at, source) VALUES ('{member}', {earned.entry_id}, {missing}, 1, 1, now(), "
            "'earn')"
        ],
        [
            "INSERT INTO idempotency_keys (caller, key, operation, fingerprint) "
            "VALUES ('tests', 'no-entry', 'earn', 'f')",
            f"UPDATE idempotency_keys SET entry_id = {missing} WHERE key = 'no-entry'",
        ],
    ):
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        assert sqlstate(raised.value) == "23503" and f"journal entry {missing}," in str(
            raised.value
        ), statements


async def test_a_statement_written_against_a_partition_passes_the_same_checks(
    ledger, engine, new_member, new_partner
):
    """PostgreSQL fires a statement trigger only on the table a statement
    names: each partition of the ledger's tables carries its parent's
    statement checks (migration 0031; which ones, on every month, made then
    or later: tests/integration/test_partitions.py), so a posting written
    straight into its month is checked as through the parent."""
    member, partner = await new_member(), await new_partner()
    earned = await ledger.earn(Earn.simple(member, partner, "R-PART", 10))
    async with engine.connect() as conn:
        month = (
            await conn.execute(
                text("SELECT tableoid::regclass::text FROM postings WHERE entry_id = :e LIMIT 1"),
                {"e": earned.entry_id},
            )
        ).scalar_one()
    for statement, state, message in (
        # One more posting on a posted entry: it no longer balances.
        (
            f"INSERT INTO {month} (id, entry_id, account, asset, amount, member_id) VALUES "
            f"(nextval('postings_id_seq'), {earned.entry_id}, 'program:promotions', 'PTS', 5, "
            "NULL)",
            "23514",
            f"journal entry {earned.entry_id} does not balance",
        ),
        # Balanced, but for an entry that does not exist.
        (
            f"INSERT INTO {month} (id, entry_id, account, asset, amount, member_id) "
            f"SELECT nextval('postings_id_seq'), {earned.entry_id} + 100000, a, 'PTS', x, NULL "
            "FROM (VALUES ('program:promotions', 5), ('program:breakage', -5)) AS v(a, x)",
            "23503",
            "which does not exist",
        ),
    ):
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        assert sqlstate(raised.value) == state and message in str(raised.value), statement
    report = await verify(engine)
    assert report.clean, report.render()
