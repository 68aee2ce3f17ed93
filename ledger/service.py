"""The ledger's service layer: every operation is one database transaction,
opened, committed (or rolled back) here, with optional idempotency.

Isolation is READ COMMITTED; correctness under concurrency comes from row
locks taken in the order documented in ledger/journal.py.

`LedgerService` is one interface assembled by concept: earning, transfers,
adjustments, generic entries and reads here; redemption.py (burn, holds),
reversal.py, settlement.py (closing and merging a member's accounts) and
jobs.py (release, hold and point expiry) add theirs.
"""

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import TypeVar

import msgspec
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger import queries
from ledger.accounts import PTS, QP, Address, member_account, partner_account, program_account
from ledger.commands import (
    Adjust,
    Earn,
    PostEntry,
    Transfer,
)
from ledger.database import is_connection_lost, is_retryable, refused_party, sqlstate
from ledger.drafts import EntryDraft, NewLot, Posting, Spend
from ledger.errors import (
    DuplicatePartnerReference,
    EntryNotFound,
    InvalidAccount,
    InvalidEffectiveTime,
    PeriodClosed,
    SameMember,
    TransferRefused,
)
from ledger.expiry import ExpiryPolicy, RollingToQuarterEnd
from ledger.idempotency import AlreadyStored, Claim, IdempotencyKey, Stored, claim, record
from ledger.jobs import ScheduledJobs
from ledger.journal import LOCKED_MEMBERS, POSTED_KINDS, Journal
from ledger.partitions import ensure_partitions, is_missing_partition
from ledger.redemption import Redemptions
from ledger.reversal import Reversals
from ledger.settlement import Settlements
from ledger.views import (
    AccountBalance,
    Balances,
    EntryView,
    HistoryPage,
    MemberBalances,
    PostedEarning,
    Receipt,
)

R = TypeVar("R")
log = logging.getLogger("loyalty.ledger")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TransferRules:
    """Member-to-member transfers: a minimum, a fee in points (rounded up) to
    `fee_account`, and a daily limit of points sent (fee included)."""

    min_points: int = 1
    fee_rate: Decimal = Decimal(0)
    fee_account: str = "program:adjustments"
    daily_limit: int | None = None

    def fee(self, amount: int) -> int:
        return int((amount * self.fee_rate).to_integral_value(ROUND_CEILING))


# How far back staff may date an adjustment (a closed month refuses it anyway):
# a year and a day, the longest period finance reports on.
MAX_ADJUSTMENT_BACKDATE = timedelta(days=367)


@dataclass(frozen=True)
class LedgerConfig:
    expiry_policy: ExpiryPolicy = field(default_factory=RollingToQuarterEnd)
    hot_slots: int = 64
    hold_ttl: timedelta = timedelta(minutes=15)
    transfers: TransferRules = field(default_factory=TransferRules)


@dataclass(frozen=True)
class RetryPolicy:
    """Transactions that lost a deadlock, a serialization check or a lock wait
    rolled back entirely and run again, a bounded number of times, after a
    jittered pause (so the transactions that collided do not collide again)."""

    attempts: int = 4
    base_delay: float = 0.02  # seconds; doubled per attempt, full jitter


class LedgerService(Redemptions, Reversals, Settlements, ScheduledJobs):
    """The ledger's operations on one engine; the only way anything is posted."""

    def __init__(
        self,
        engine: AsyncEngine,
        config: LedgerConfig | None = None,
        clock: Callable[[], datetime] = utc_now,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.config = config or LedgerConfig()
        self.clock = clock
        self.retry = retry or RetryPolicy()
        # Transactions run again, by the SQLSTATE that failed them (40P01
        # deadlock, 40001 serialization failure, 55P03 lock timeout).
        self.retries: Counter[str] = Counter()
        self.journal = Journal(self.config.expiry_policy, self.config.hot_slots)
        # The end of the latest closed month as this process last learnt it
        # (from a `PeriodClosed` refusal, migration 0015): a late partner
        # purchase dated before it is booked at it (partners/accrual.py).
        self.closed_through: datetime | None = None

    def learn_closed_through(self, refusal: PeriodClosed, used: datetime | None) -> bool:
        """Remember the boundary a refusal carries (when later than the one
        known); True when it is later than `used`, the boundary the refused
        call ran with, which may then run again. Several calls refused at
        once each run again, whichever of them taught the process first."""
        raw = str(refusal.extensions.get("closed_through", ""))
        try:
            boundary = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return False
        if self.closed_through is None or boundary > self.closed_through:
            self.closed_through = boundary
        return used is None or boundary > used

    # -- plumbing ---------------------------------------------------------

    def committed(self, kinds: Sequence[str]) -> None:
        """Called once a transaction of `atomically` has committed, with the
        kinds of the entries it posted, in order (none for a replayed answer,
        nothing for a transaction rolled back). A subclass observes them (the
        API counts them, api/metrics.py)."""

    async def atomically(self, body: Callable[[AsyncConnection], Awaitable[R]]) -> R:
        """Run `body` in one database transaction and commit it.

        On a deadlock, serialization failure or lock timeout the transaction
        has rolled back whole, so `body` runs again from the start (it reads
        everything it decides on inside the transaction, which makes the
        re-run safe); after the last attempt the error goes to the caller.

        The pool does not ping a connection before handing it out (a round
        trip on every checkout): a connection found dead before the commit
        (the server restarted or ended the session, see `is_connection_lost`)
        took its transaction with it, so `body` runs once more on a fresh
        connection. A connection lost during the COMMIT itself is never run
        again: whether the server committed is unknown, so the error goes to
        the caller (a 503), and a retry with the same idempotency key finds
        out (the stored result, or a first run).

        A row that found no partition of its month (nobody ran
        `ensure_partitions` in time: ledger/partitions.py) rolled the
        transaction back before anything committed: the months are made in a
        short transaction of their own and `body` runs once more."""
        attempt, reconnected, partitioned = 1, False, False
        while True:
            committing = False
            try:
                async with self.engine.begin() as conn:
                    # Held by reference: a connection that died can no longer
                    # hand out its `info` (SQLAlchemy would try to reconnect it).
                    info = conn.info
                    info[LOCKED_MEMBERS], info[POSTED_KINDS] = set(), []
                    try:
                        result = await body(conn)
                    finally:
                        info.pop(LOCKED_MEMBERS, None)
                        posted = info.pop(POSTED_KINDS, [])
                    committing = True  # the block's exit sends COMMIT
                self.committed(posted)
                return result
            except DBAPIError as error:
                if (refusal := refused_party(error)) is not None:
                    raise refusal from None
                if not committing and not reconnected and is_connection_lost(error):
                    reconnected = True
                    log.info("transaction run again on a new connection: %s", type(error).__name__)
                    continue
                if not committing and not partitioned and is_missing_partition(error):
                    partitioned = True
                    async with self.engine.begin() as conn:
                        made = await ensure_partitions(conn)
                    log.warning("a month had no partition: %d made, transaction run again", made)
                    continue
                if not is_retryable(error) or attempt >= self.retry.attempts:
                    raise
                self.retries[sqlstate(error) or "?"] += 1
                delay = random.uniform(0, self.retry.base_delay * 2 ** (attempt - 1))
                log.info("transaction retried after %s (attempt %d)", sqlstate(error), attempt)
                attempt += 1
                await asyncio.sleep(delay)

    async def run(
        self,
        operation: str,
        command: object,
        idempotency: IdempotencyKey | None,
        result_type: type[R],
        body: Callable[..., Awaitable[R | Stored[R]]],
        claims_itself: bool = False,
    ) -> R:
        """Run `body(conn)` in one transaction, once per idempotency key; its
        result is stored with the key, unless the body stored it in its own
        last statement and says so by returning it as `Stored`. With
        `claims_itself`, the body is `body(conn, claim)` with the key's
        `Claim` (None without a key): it claims the key in its own first
        statement and settles it before anything else (a stored result ends
        it: `AlreadyStored`), one round trip less. Once it committed, the
        key's `outcome` names the operation whose result is stored with the
        key, and whether this call got an earlier call's."""
        replayed = False

        async def once(conn: AsyncConnection) -> R:
            nonlocal replayed
            replayed = False
            if claims_itself:
                taking = None if idempotency is None else Claim(idempotency, operation, command)
                try:
                    result = await body(conn, taking)
                except AlreadyStored as earlier:
                    replayed = True
                    return msgspec.convert(earlier.stored, result_type)
            else:
                if idempotency is not None:
                    stored = await claim(conn, idempotency, operation, command)
                    if stored is not None:
                        replayed = True
                        return msgspec.convert(stored, result_type)
                result = await body(conn)
            if isinstance(result, Stored):
                return result.result
            if idempotency is not None:
                await record(conn, idempotency, result)
            return result

        result = await self.atomically(once)
        if idempotency is not None:
            idempotency.outcome.settle(operation, replayed)
        return result

    async def _receipt(
        self,
        conn: AsyncConnection,
        entry_id: int,
        kind: str,
        member_id: str | None,
        amount: int,
        **extra,
    ) -> Receipt:
        balances = await queries.balances(conn, member_id) if member_id else None
        return Receipt(entry_id, kind, member_id, amount, balances, **extra)

    # -- earning ----------------------------------------------------------

    async def earn(self, cmd: Earn, idempotency: IdempotencyKey | None = None) -> Receipt:
        return await self.run(
            "earn", cmd, idempotency, Receipt, lambda conn: self.earn_in(conn, cmd)
        )

    async def earn_in(self, conn: AsyncConnection, cmd: Earn) -> Receipt:
        """Post an earning inside the caller's transaction."""
        (posted,) = await self.earn_many_in(conn, [cmd])
        if isinstance(posted, DuplicatePartnerReference):
            raise posted
        return await self._receipt(
            conn,
            posted.entry_id,
            "earn",
            cmd.member_id,
            posted.points,
            release_at=posted.release_at,
        )

    async def earn_many_in(
        self, conn: AsyncConnection, cmds: Sequence[Earn]
    ) -> list[PostedEarning | DuplicatePartnerReference]:
        """Post earnings inside the caller's transaction with a constant number
        of statements (one `post_many`: a pending earning is written with its
        entry): to `available` as a new lot, or to `pending` until `release_at`. One
        result per command, in order; a command whose partner reference was
        used before (or earlier in `cmds`) posts nothing. Several earnings of
        one member apply in order, as if posted one by one."""
        now = self.clock()
        drafts = []
        for cmd in cmds:
            effective_at = cmd.effective_at or now
            pending = cmd.release_at is not None and cmd.release_at > now
            member_points = member_account(cmd.member_id, "pending" if pending else "available")
            postings: list[Posting] = []
            for line in cmd.lines:
                if line.asset == QP:
                    postings.append(Posting(member_account(cmd.member_id, "qp"), QP, line.amount))
                    postings.append(Posting(program_account("qp_source"), QP, -line.amount))
                    continue
                if line.funder == "program":
                    funder = program_account("promotions")
                else:
                    # "partner": the earning's partner; "partner:{id}": another one.
                    payer = line.funder.partition(":")[2] or cmd.partner_id
                    funder = partner_account(payer, "issued")
                postings.append(Posting(member_points, PTS, line.amount))
                postings.append(Posting(funder, PTS, -line.amount))
            points = sum(line.amount for line in cmd.lines if line.asset == PTS)
            effects = {}
            if points and not pending:
                effects[cmd.member_id] = NewLot("earn", effective_at)
            drafts.append(
                EntryDraft(
                    kind="earn",
                    postings=postings,
                    effective_at=effective_at,
                    posted_by=f"partner:{cmd.partner_id}",
                    member_id=cmd.member_id,
                    partner_id=cmd.partner_id,
                    partner_reference=cmd.partner_reference,
                    breakdown=[msgspec.to_builtins(line) for line in cmd.lines],
                    lot_effects=effects,
                    pending_until=cmd.release_at if points and pending else None,
                )
            )
        results: list[PostedEarning | DuplicatePartnerReference] = []
        for cmd, draft, posted in zip(
            cmds, drafts, await self.journal.post_many(conn, drafts, now), strict=True
        ):
            if isinstance(posted, DuplicatePartnerReference):
                results.append(posted)
                continue
            points = sum(line.amount for line in cmd.lines if line.asset == PTS)
            results.append(PostedEarning(posted.entry_id, points, draft.pending_until))
        return results

    # -- transfers, adjustments, generic entries --------------------------

    async def transfer(self, cmd: Transfer, idempotency: IdempotencyKey | None = None) -> Receipt:
        """Send points to another member (lots consumed earliest-expiry first; the
        receiver's points start a fresh validity), with the transfer rules."""
        if cmd.from_member_id == cmd.to_member_id:
            raise SameMember("a member cannot transfer points to themselves")
        rules = self.config.transfers
        if cmd.amount < rules.min_points:
            raise TransferRefused(
                f"transfers start at {rules.min_points} points", min_points=rules.min_points
            )
        fee = rules.fee(cmd.amount)

        async def body(conn: AsyncConnection) -> Receipt:
            now = self.clock()
            sender = member_account(cmd.from_member_id, "available")
            # Both members at once, before counting what the sender sent today,
            # so two transfers of one sender count one after the other.
            await self.journal.lock_members(conn, (cmd.from_member_id, cmd.to_member_id))
            if rules.daily_limit is not None:
                sent = await queries.points_sent_since(
                    conn, cmd.from_member_id, now.replace(hour=0, minute=0, second=0, microsecond=0)
                )
                if sent + cmd.amount + fee > rules.daily_limit:
                    raise TransferRefused(
                        f"daily transfer limit {rules.daily_limit}: {sent} sent today",
                        daily_limit=rules.daily_limit,
                        sent_today=sent,
                    )
            postings = [
                Posting(sender, PTS, -(cmd.amount + fee)),
                Posting(member_account(cmd.to_member_id, "available"), PTS, cmd.amount),
            ]
            if fee:
                postings.append(Posting(rules.fee_account, PTS, fee))
            posted = await self.journal.post(
                conn,
                EntryDraft(
                    kind="transfer",
                    postings=postings,
                    effective_at=now,
                    posted_by=f"member:{cmd.from_member_id}",
                    member_id=cmd.from_member_id,
                    reason=f"transfer to {cmd.to_member_id}",
                    breakdown=[{"amount": cmd.amount, "fee": fee, "to": cmd.to_member_id}],
                    # The receiver's points start a fresh validity.
                    lot_effects={
                        cmd.from_member_id: Spend(),
                        cmd.to_member_id: NewLot("transfer", now),
                    },
                ),
                now,
            )
            return await self._receipt(
                conn, posted.entry_id, "transfer", cmd.from_member_id, cmd.amount
            )

        return await self.run("transfer", cmd, idempotency, Receipt, body)

    async def adjust(
        self, cmd: Adjust, posted_by: str, idempotency: IdempotencyKey | None = None
    ) -> Receipt:
        async def body(conn: AsyncConnection) -> Receipt:
            now = self.clock()
            effective_at = cmd.effective_at or now
            if effective_at > now:
                raise InvalidEffectiveTime(
                    f"effective_at {effective_at.isoformat()} is in the future",
                    effective_at=effective_at.isoformat(),
                )
            if effective_at < now - MAX_ADJUSTMENT_BACKDATE:
                raise InvalidEffectiveTime(
                    f"effective_at {effective_at.isoformat()} is more than "
                    f"{MAX_ADJUSTMENT_BACKDATE.days} days back",
                    effective_at=effective_at.isoformat(),
                )
            breakdown = []
            if cmd.corrects_entry_id is not None:
                found = await conn.execute(
                    text("SELECT 1 FROM journal_entries WHERE id = :id"),
                    {"id": cmd.corrects_entry_id},
                )
                if found.first() is None:
                    raise EntryNotFound(
                        f"no journal entry {cmd.corrects_entry_id}",
                        entry_id=cmd.corrects_entry_id,
                    )
                breakdown.append({"corrects_entry_id": cmd.corrects_entry_id})
            account = member_account(cmd.member_id, "available" if cmd.asset == PTS else "qp")
            effects = {}
            if cmd.asset == PTS:
                effects[cmd.member_id] = NewLot("adjust", now) if cmd.amount > 0 else Spend()
            posted = await self.journal.post(
                conn,
                EntryDraft(
                    kind="adjust",
                    postings=[
                        Posting(account, cmd.asset, cmd.amount),
                        Posting(program_account("adjustments"), cmd.asset, -cmd.amount),
                    ],
                    effective_at=effective_at,
                    posted_by=posted_by,
                    member_id=cmd.member_id,
                    reason=cmd.reason.strip(),
                    breakdown=breakdown,
                    lot_effects=effects,
                ),
                now,
            )
            return await self._receipt(conn, posted.entry_id, "adjust", cmd.member_id, cmd.amount)

        return await self.run("adjust", cmd, idempotency, Receipt, body)

    async def post_entry(
        self, cmd: PostEntry, posted_by: str, idempotency: IdempotencyKey | None = None
    ) -> Receipt:
        for posting in cmd.postings:
            address = Address.parse(posting.account)
            if address.owner == "member" and address.name != "qp":
                raise InvalidAccount(
                    f"{posting.account} carries lots, holds or pending points: "
                    "use earn, burn, transfer, reverse or adjust"
                )

        async def body(conn: AsyncConnection) -> Receipt:
            now = self.clock()
            posted = await self.journal.post(
                conn,
                EntryDraft(
                    kind="adjust",
                    postings=[Posting(p.account, p.asset, p.amount) for p in cmd.postings],
                    effective_at=now,
                    posted_by=posted_by,
                    partner_id=cmd.partner_id,
                    partner_reference=cmd.partner_reference,
                    reason=cmd.reason.strip(),
                ),
                now,
            )
            moved = sum(p.amount for p in cmd.postings if p.amount > 0)
            return Receipt(posted.entry_id, "adjust", None, moved)

        return await self.run("post_entry", cmd, idempotency, Receipt, body)

    # -- reads --------------------------------------------------------------

    async def balances_in(self, conn: AsyncConnection, member_id: str) -> Balances:
        return await queries.balances(conn, member_id)

    async def balances(self, member_id: str) -> Balances:
        async with self.engine.connect() as conn:
            return await queries.balances(conn, member_id)

    async def member_balances(self, member_id: str, within_days: int = 90) -> MemberBalances:
        async with self.engine.connect() as conn:
            return await queries.member_balances(conn, member_id, self.clock(), within_days)

    async def account_balance(self, address: str) -> AccountBalance:
        async with self.engine.connect() as conn:
            return await queries.account_balance(conn, address)

    async def entry(self, entry_id: int) -> EntryView:
        async with self.engine.connect() as conn:
            return await queries.entry(conn, entry_id)

    async def history(self, member_id: str, **kwargs) -> HistoryPage:
        async with self.engine.connect() as conn:
            return await queries.history(conn, member_id, **kwargs)
