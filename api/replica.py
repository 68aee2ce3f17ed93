"""Reads from a streaming replica (`LOYALTY_REPLICA_DATABASE_URL`), never older
than what the primary had for the member when the read started.

The rule is the balance cache's (api/cache.py): a member's *token* (the sum of
their balance-row versions and the id of their latest tier change, see
`Programme.balance_token`) changes with everything posted to any of their
accounts, and only grows. A member-scoped read on the replica runs in one
REPEATABLE READ snapshot that also reads the token; at the same time the
primary is asked for the member's token as committed now (one indexed
statement, autocommit, the same one the cache asks on every read). The
replica's answer is used only when its token is at least the primary's in
both parts: the replica's snapshot then holds every posting to the member
that had committed when the read started (versions only grow, so an equal or
larger sum means nothing is missing). Otherwise (the replica is behind for
this member, paused, unreachable, slow, or refused the query for a recovery
conflict) the read goes to the primary. So a card holder never sees a balance
or history older than a write that committed before their read began:
their own, a partner's, a job's, from any instance.

What the replica takes off the primary: the view itself (balances, pending
releases, expiring lots, tier: four statements in a snapshot), history pages
and entries. What stays on the primary: the token statement per read (which
a cached balance read pays anyway) and every write.

An entry is immutable: one found on the replica is the entry; one not found
there (not replayed yet) is looked up on the primary.

Whole-ledger reads that are not about one member (exports, reports) can use
`caught_up()`: the primary's current WAL insert position is read first, and
the replica is used once it has replayed at least that far (one statement
each, the replica's asked again for up to a second), so such a read also shows
every write committed before it started.

A replica that cannot be reached is left alone for `retry_after_seconds`
(reads go straight to the primary meanwhile, without the token statement);
that memory is only about cost: correctness never depends on it.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger import queries
from ledger.database import is_unavailable, sqlstate
from ledger.errors import EntryNotFound, LedgerError, MemberNotFound
from ledger.service import LedgerConfig, LedgerService, utc_now
from ledger.views import EntryView, HistoryPage, MemberBalances
from partners.expiry_notice import ExpiringWindow
from partners.programme import Programme

log = logging.getLogger("loyalty.replica")

T = TypeVar("T")
Token = tuple[int, int]

PRIMARY, REPLICA = "primary", "replica"
WARN_EVERY_SECONDS = 10.0


@dataclass(frozen=True)
class Read(Generic[T]):
    """An answer and where it came from (`replica` or `primary`)."""

    value: T
    source: str


def covers(replica: Token, primary: Token) -> bool:
    """Whether a replica snapshot with token `replica` holds everything the
    primary had for the member when its token was `primary`."""
    return replica[0] >= primary[0] and replica[1] >= primary[1]


class _Unavailable(Exception):
    """The replica could not answer this read (it is not an answer)."""


class ReplicaReads:
    """Member balance, history and entry reads on a replica, with the primary
    as the fallback. `primary_token(member_id)` reads the member's token on the
    primary (the balance cache's `current_token`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        config: LedgerConfig,
        tier_period: str,
        primary_token: Callable[[str], Awaitable[Token]],
        *,
        retry_after_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        expiring: ExpiringWindow | None = None,
        ledger_clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.engine = engine  # autocommit, no ping on checkout (ledger.database.create_engine)
        self.ledger = LedgerService(engine, config, clock=ledger_clock)
        # The primary's programme settings: its views are the same.
        self.programme = Programme(self.ledger, tier_period, expiring)
        self.primary_token = primary_token
        self.retry_after = retry_after_seconds
        self.clock = clock
        self._away_until = float("-inf")
        self._warned_at = float("-inf")
        # replica / behind (the primary answered) / away (not asked) / failed
        self.counts: Counter[str] = Counter()

    # -- member-scoped reads ------------------------------------------------------

    async def balance_view(self, member_id: str, token: Token) -> tuple | None:
        """The member's balance view, token and next time-driven change
        (`Programme.balance_view`) from the replica when its snapshot covers
        `token` (read on the primary when the request started); None: build it
        on the primary."""
        if self.away():
            self.counts["away"] += 1
            return None
        try:
            built = await self._on_replica(self.programme.balance_view(member_id))
        except _Unavailable:
            return None
        if not covers(built[1], token):
            self.counts["behind"] += 1
            return None
        self.counts[REPLICA] += 1
        return built

    async def member_read(
        self,
        member_id: str,
        read: Callable[[AsyncConnection], Awaitable[T]],
        primary: Callable[[], Awaitable[T]],
    ) -> Read[T]:
        """`read(conn)` in a replica snapshot that holds everything the primary
        has for the member now, else `primary()`. The primary's token and the
        replica's read run at the same time."""
        if self.away():
            self.counts["away"] += 1
            return Read(await primary(), PRIMARY)
        replica_task = asyncio.ensure_future(self._snapshot(member_id, read))
        try:
            token = await self.primary_token(member_id)
        except BaseException:
            replica_task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await replica_task
            raise
        try:
            value, replica_token = await replica_task
        except _Unavailable:
            return Read(await primary(), PRIMARY)
        if covers(replica_token, token):
            self.counts[REPLICA] += 1
            return Read(value, REPLICA)
        self.counts["behind"] += 1
        return Read(await primary(), PRIMARY)

    async def history(self, member_id: str, primary: LedgerService, **kwargs) -> Read[HistoryPage]:
        return await self.member_read(
            member_id,
            lambda conn: queries.history(conn, member_id, **kwargs),
            lambda: primary.history(member_id, **kwargs),
        )

    async def member_balances(
        self, member_id: str, primary: LedgerService, within_days: int = 90
    ) -> Read[MemberBalances]:
        return await self.member_read(
            member_id,
            lambda conn: queries.member_balances(conn, member_id, self.ledger.clock(), within_days),
            lambda: primary.member_balances(member_id, within_days),
        )

    async def entry(self, entry_id: int, primary: LedgerService) -> Read[EntryView]:
        """An entry never changes: found on the replica, it is the answer."""
        if not self.away():
            try:
                found = await self._on_replica(self.ledger.entry(entry_id))
            except EntryNotFound:
                self.counts["behind"] += 1  # perhaps not replayed yet
            except _Unavailable:
                pass
            else:
                self.counts[REPLICA] += 1
                return Read(found, REPLICA)
        else:
            self.counts["away"] += 1
        return Read(await primary.entry(entry_id), PRIMARY)

    # -- reads of the whole ledger ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def caught_up(
        self, primary: AsyncEngine, wait_seconds: float = 1.0
    ) -> AsyncIterator[Read[AsyncConnection]]:
        """A connection in a REPEATABLE READ snapshot for a read that must show
        every write committed before it started (an export): the replica's once
        it has replayed the primary's WAL insert position of now (asked again
        every 20 ms for up to `wait_seconds`), else the primary's. The insert
        position, not the write position: with `synchronous_commit = off` a
        committed transaction's commit record may not be written out yet. The
        replica's position is checked before its snapshot is taken, so the
        snapshot holds everything up to it. A failure inside the block is the
        caller's (an export that failed halfway is not silently restarted)."""
        async with primary.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            lsn = await conn.scalar(text("SELECT pg_current_wal_insert_lsn()::text"))
        replica = None
        if self.away():
            self.counts["away"] += 1
        else:
            with contextlib.suppress(_Unavailable):
                replica = await self._replayed(lsn, wait_seconds)
        if replica is not None:
            try:
                self.counts[REPLICA] += 1
                yield Read(replica, REPLICA)
            finally:
                await replica.close()
            return
        async with primary.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            yield Read(conn, PRIMARY)

    _REPLAYED = text(
        "SELECT coalesce(pg_last_wal_replay_lsn() >= CAST(CAST(:lsn AS text) AS pg_lsn), false)"
    )

    async def _replayed(self, lsn: str, wait_seconds: float) -> AsyncConnection | None:
        """A replica connection about to take its snapshot, once the replica has
        replayed the WAL up to `lsn`; None when it has not within the wait."""
        conn = await self._on_replica(self.engine.connect().start())
        try:
            deadline = time.monotonic() + wait_seconds
            while not await self._on_replica(conn.scalar(self._REPLAYED, {"lsn": lsn})):
                if time.monotonic() >= deadline:
                    self.counts["behind"] += 1
                    await conn.close()
                    return None
                await asyncio.sleep(0.02)
            await conn.commit()  # autocommit: ends nothing on the server
            return await conn.execution_options(isolation_level="REPEATABLE READ")
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise

    # -- plumbing ------------------------------------------------------------------

    def away(self) -> bool:
        return self.clock() < self._away_until

    async def _snapshot(
        self, member_id: str, read: Callable[[AsyncConnection], Awaitable[T]]
    ) -> tuple[T, Token]:
        async def run() -> tuple[T, Token]:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
                value = await read(conn)
                return value, await self.programme.balance_token(member_id, conn)

        return await self._on_replica(run())

    async def _on_replica(self, work: Awaitable[T]) -> T:
        """`work` on the replica; a database failure is `_Unavailable` (and a
        replica that cannot be reached is left alone for a while); a domain
        error (bad cursor, unknown entry) is the caller's."""
        try:
            return await work
        except MemberNotFound as error:
            # The primary's token, read for every member read, found them
            # enrolled: the replica has not replayed the enrolment yet.
            self.counts["behind"] += 1
            raise _Unavailable from error
        except LedgerError:
            raise
        except Exception as error:  # whatever failed, the primary answers
            self._failed(error)
            raise _Unavailable from error

    def _failed(self, error: BaseException) -> None:
        self.counts["failed"] += 1
        # Down, unreachable, restarting, out of connections: not worth asking
        # for a while. A query refused for a recovery conflict or a timeout on
        # one statement says nothing about the next read.
        if _unreachable(error):
            self._away_until = self.clock() + self.retry_after
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("replica read failed (%s): reading from the primary", error)

    async def aclose(self) -> None:
        await self.engine.dispose()


def _unreachable(error: BaseException) -> bool:
    if isinstance(error, exc.DBAPIError) and not error.connection_invalidated:
        if sqlstate(error) in ("40001", "57014"):  # recovery conflict, statement timeout
            return False
    return is_unavailable(error) or isinstance(error, OSError | TimeoutError)


# -- for the routes: the replica when one is configured, else the primary -------------


async def read_history(
    replica: ReplicaReads | None, ledger: LedgerService, member_id: str, **kwargs
) -> Read[HistoryPage]:
    if replica is None:
        return Read(await ledger.history(member_id, **kwargs), PRIMARY)
    return await replica.history(member_id, ledger, **kwargs)


async def read_member_balances(
    replica: ReplicaReads | None, ledger: LedgerService, member_id: str, within_days: int
) -> Read[MemberBalances]:
    if replica is None:
        return Read(await ledger.member_balances(member_id, within_days), PRIMARY)
    return await replica.member_balances(member_id, ledger, within_days)


async def read_entry(
    replica: ReplicaReads | None, ledger: LedgerService, entry_id: int
) -> Read[EntryView]:
    if replica is None:
        return Read(await ledger.entry(entry_id), PRIMARY)
    return await replica.entry(entry_id, ledger)
