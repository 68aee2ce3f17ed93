"""The ledger's service layer: every operation is one database transaction,
opened, committed (or rolled back) here, with optional idempotency.

Isolation is READ COMMITTED; correctness under concurrency comes from row
locks taken in the order documented in ledger/journal.py.
"""

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
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
    Authorise,
    Burn,
    Capture,
    Earn,
    PostEntry,
    Reverse,
    Transfer,
    Void,
)
from ledger.database import is_retryable, refused_party, sqlstate
from ledger.errors import (
    CaptureExceedsHold,
    EntryNotFound,
    HoldExpired,
    HoldNotFound,
    HoldNotOpen,
    InvalidAccount,
    MemberAccountsNotSettled,
    NotReversible,
    ReversalExceedsOriginal,
    SameMember,
    TransferRefused,
)
from ledger.expiry import ExpiryPolicy, RollingToQuarterEnd
from ledger.idempotency import IdempotencyKey, claim, record
from ledger.journal import (
    LOCKED_MEMBERS,
    CarriedLot,
    CarryLots,
    Clawback,
    ConsumeLots,
    EntryDraft,
    Journal,
    NewLot,
    Posting,
    RestoreLots,
    Spend,
)
from ledger.lots import prorate
from ledger.views import (
    AccountBalance,
    Balances,
    EntryView,
    HistoryPage,
    HoldView,
    MemberBalances,
    Receipt,
)

R = TypeVar("R")
log = logging.getLogger("loyalty.ledger")
REVERSIBLE_KINDS = ("earn", "burn", "capture")


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


@dataclass(frozen=True)
class LedgerConfig:
    expiry_policy: ExpiryPolicy = field(default_factory=RollingToQuarterEnd)
    hot_slots: int = 8
    hold_ttl: timedelta = timedelta(minutes=15)
    transfers: TransferRules = field(default_factory=TransferRules)


@dataclass(frozen=True)
class RetryPolicy:
    """Transactions that lost a deadlock, a serialization check or a lock wait
    rolled back entirely and run again, a bounded number of times, after a
    jittered pause (so the transactions that collided do not collide again)."""

    attempts: int = 4
    base_delay: float = 0.02  # seconds; doubled per attempt, full jitter


class LedgerService:
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

    # -- plumbing ---------------------------------------------------------

    async def atomically(self, body: Callable[[AsyncConnection], Awaitable[R]]) -> R:
        """Run `body` in one database transaction and commit it.

        On a deadlock, serialization failure or lock timeout the transaction
        has rolled back whole, so `body` runs again from the start (it reads
        everything it decides on inside the transaction, which makes the
        re-run safe); after the last attempt the error goes to the caller."""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                async with self.engine.begin() as conn:
                    conn.info[LOCKED_MEMBERS] = set()
                    try:
                        return await body(conn)
                    finally:
                        conn.info.pop(LOCKED_MEMBERS, None)
            except DBAPIError as error:
                if (refusal := refused_party(error)) is not None:
                    raise refusal from None
                if not is_retryable(error) or attempt == self.retry.attempts:
                    raise
                self.retries[sqlstate(error) or "?"] += 1
                delay = random.uniform(0, self.retry.base_delay * 2 ** (attempt - 1))
                log.info("transaction retried after %s (attempt %d)", sqlstate(error), attempt)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def run(
        self,
        operation: str,
        command: object,
        idempotency: IdempotencyKey | None,
        result_type: type[R],
        body: Callable[[AsyncConnection], Awaitable[R]],
    ) -> R:
        """Run `body` in one transaction, once per idempotency key."""

        async def once(conn: AsyncConnection) -> R:
            if idempotency is not None:
                stored = await claim(conn, idempotency, operation, command)
                if stored is not None:
                    return msgspec.convert(stored, result_type)
            result = await body(conn)
            if idempotency is not None:
                await record(
                    conn,
                    idempotency,
                    msgspec.to_builtins(result),
                    getattr(result, "entry_id", None),
                )
            return result

        return await self.atomically(once)

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
        now = self.clock()
        effective_at = cmd.effective_at or now
        pending = cmd.release_at is not None and cmd.release_at > now
        member_points = member_account(cmd.member_id, "pending" if pending else "available")
        postings: list[Posting] = []
        for line in cmd.lines:
            if line.asset == QP:
                postings.append(Posting(member_account(cmd.member_id, "qp"), QP, line.amount))
                postings.append(Posting(program_account("qp_source"), QP, -line.amount))
                continue
            funder = (
                partner_account(cmd.partner_id, "issued")
                if line.funder == "partner"
                else program_account("promotions")
            )
            postings.append(Posting(member_points, PTS, line.amount))
            postings.append(Posting(funder, PTS, -line.amount))
        points = sum(line.amount for line in cmd.lines if line.asset == PTS)
        effects = {}
        if points and not pending:
            effects[cmd.member_id] = NewLot("earn", effective_at)
        posted = await self.journal.post(
            conn,
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
            ),
            now,
        )
        if points and pending:
            await conn.execute(
                text(
                    "INSERT INTO pending_points (earn_entry_id, member_id, amount, "
                    "remaining, earned_at, release_at) VALUES (:entry_id, :member_id, "
                    ":amount, :amount, :earned_at, :release_at)"
                ),
                {
                    "entry_id": posted.entry_id,
                    "member_id": cmd.member_id,
                    "amount": points,
                    "earned_at": effective_at,
                    "release_at": cmd.release_at,
                },
            )
        return await self._receipt(
            conn,
            posted.entry_id,
            "earn",
            cmd.member_id,
            points,
            release_at=cmd.release_at if pending else None,
        )

    async def release_pending(self, limit: int = 1000) -> int:
        """Move points whose return window has passed from pending to available.

        One transaction per earning (each touches one member), so the job never
        holds two members' locks; SKIP LOCKED lets several runners share the work."""
        released = 0

        async def release_one(conn: AsyncConnection) -> bool:
            now = self.clock()
            row = (
                await conn.execute(
                    text(
                        "SELECT earn_entry_id, member_id, remaining, earned_at "
                        "FROM pending_points WHERE release_entry_id IS NULL "
                        "AND remaining > 0 AND release_at <= :now "
                        "ORDER BY release_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                    ),
                    {"now": now},
                )
            ).first()
            if row is None:
                return False
            posted = await self.journal.post(
                conn,
                EntryDraft(
                    kind="release",
                    postings=[
                        Posting(member_account(row.member_id, "pending"), PTS, -row.remaining),
                        Posting(member_account(row.member_id, "available"), PTS, row.remaining),
                    ],
                    effective_at=now,
                    posted_by="job:release-pending",
                    member_id=row.member_id,
                    reason=f"return window of entry {row.earn_entry_id} passed",
                    lot_effects={row.member_id: NewLot("earn", row.earned_at, row.earn_entry_id)},
                ),
                now,
            )
            await conn.execute(
                text(
                    "UPDATE pending_points SET remaining = 0, release_entry_id = :entry "
                    "WHERE earn_entry_id = :earn"
                ),
                {"entry": posted.entry_id, "earn": row.earn_entry_id},
            )
            return True

        while released < limit and await self.atomically(release_one):
            released += 1
        return released

    # -- redemption -------------------------------------------------------

    async def _spend(
        self,
        conn: AsyncConnection,
        kind: str,
        member_id: str,
        partner_id: str,
        reference: str | None,
        amount: int,
        into: str,
        now: datetime,
    ) -> int:
        """Move points a partner redeems out of the member's available points
        (never overdrawing) into `into`; returns the entry id."""
        posted = await self.journal.post(
            conn,
            EntryDraft(
                kind=kind,
                postings=[
                    Posting(member_account(member_id, "available"), PTS, -amount),
                    Posting(into, PTS, amount),
                ],
                effective_at=now,
                posted_by=f"partner:{partner_id}",
                member_id=member_id,
                partner_id=partner_id,
                partner_reference=reference,
                lot_effects={member_id: Spend()},
            ),
            now,
        )
        return posted.entry_id

    async def burn(self, cmd: Burn, idempotency: IdempotencyKey | None = None) -> Receipt:
        async def body(conn: AsyncConnection) -> Receipt:
            entry_id = await self._spend(
                conn,
                "burn",
                cmd.member_id,
                cmd.partner_id,
                cmd.partner_reference,
                cmd.amount,
                partner_account(cmd.partner_id, "redeemed"),
                self.clock(),
            )
            return await self._receipt(conn, entry_id, "burn", cmd.member_id, cmd.amount)

        return await self.run("burn", cmd, idempotency, Receipt, body)

    async def authorise(self, cmd: Authorise, idempotency: IdempotencyKey | None = None) -> Receipt:
        async def body(conn: AsyncConnection) -> Receipt:
            now = self.clock()
            ttl = (
                timedelta(seconds=cmd.expires_in_seconds)
                if cmd.expires_in_seconds is not None
                else self.config.hold_ttl
            )
            entry_id = await self._spend(
                conn,
                "hold",
                cmd.member_id,
                cmd.partner_id,
                cmd.partner_reference,
                cmd.amount,
                member_account(cmd.member_id, "held"),
                now,
            )
            hold = (
                await conn.execute(
                    text(
                        "INSERT INTO holds (member_id, partner_id, partner_reference, amount, "
                        "created_at, expires_at, authorise_entry_id) VALUES (:member_id, "
                        ":partner_id, :reference, :amount, :now, :expires_at, :entry_id) "
                        f"RETURNING {_HOLD_COLUMNS}"
                    ),
                    {
                        "member_id": cmd.member_id,
                        "partner_id": cmd.partner_id,
                        "reference": cmd.partner_reference,
                        "amount": cmd.amount,
                        "now": now,
                        "expires_at": now + ttl,
                        "entry_id": entry_id,
                    },
                )
            ).one()
            return await self._receipt(
                conn, entry_id, "hold", cmd.member_id, cmd.amount, hold=_hold_view(hold)
            )

        return await self.run("authorise", cmd, idempotency, Receipt, body)

    async def _lock_hold(self, conn: AsyncConnection, hold_id: int, partner_id: str | None):
        hold = (
            await conn.execute(
                text(f"SELECT {_HOLD_COLUMNS} FROM holds WHERE id = :id FOR UPDATE"),
                {"id": hold_id},
            )
        ).first()
        if hold is None or (partner_id is not None and hold.partner_id != partner_id):
            raise HoldNotFound(f"no hold {hold_id}", hold_id=hold_id)
        if hold.status != "open":
            raise HoldNotOpen(f"hold {hold_id} is already {hold.status}", hold_status=hold.status)
        return hold

    async def _release_hold(
        self, conn: AsyncConnection, hold, amount: int, now: datetime, posted_by: str, reason: str
    ) -> int:
        """Return `amount` of a hold to available, refilling the lots it took."""
        posted = await self.journal.post(
            conn,
            EntryDraft(
                kind="void",
                postings=[
                    Posting(member_account(hold.member_id, "held"), PTS, -amount),
                    Posting(member_account(hold.member_id, "available"), PTS, amount),
                ],
                effective_at=now,
                posted_by=posted_by,
                member_id=hold.member_id,
                partner_id=hold.partner_id,
                reason=reason,
                hold_id=hold.id,
                lot_effects={hold.member_id: RestoreLots(hold.authorise_entry_id)},
            ),
            now,
        )
        return posted.entry_id

    async def _resolve_hold(
        self, conn: AsyncConnection, hold_id: int, status: str, captured: int, now: datetime
    ) -> HoldView:
        row = (
            await conn.execute(
                text(
                    "UPDATE holds SET status = :status, captured = :captured, resolved_at = :now "
                    f"WHERE id = :id RETURNING {_HOLD_COLUMNS}"
                ),
                {"status": status, "captured": captured, "now": now, "id": hold_id},
            )
        ).one()
        return _hold_view(row)

    async def capture(self, cmd: Capture, idempotency: IdempotencyKey | None = None) -> Receipt:
        async def body(conn: AsyncConnection) -> Receipt:
            now = self.clock()
            hold = await self._lock_hold(conn, cmd.hold_id, cmd.partner_id)
            if hold.expires_at <= now:
                raise HoldExpired(f"hold {hold.id} expired at {hold.expires_at.isoformat()}")
            amount = hold.amount if cmd.amount is None else cmd.amount
            if amount > hold.amount:
                raise CaptureExceedsHold(
                    f"hold {hold.id} is for {hold.amount} points, {amount} asked",
                    held=hold.amount,
                )
            posted = await self.journal.post(
                conn,
                EntryDraft(
                    kind="capture",
                    postings=[
                        Posting(member_account(hold.member_id, "held"), PTS, -amount),
                        Posting(partner_account(hold.partner_id, "redeemed"), PTS, amount),
                    ],
                    effective_at=now,
                    posted_by=f"partner:{cmd.partner_id}",
                    member_id=hold.member_id,
                    partner_id=hold.partner_id,
                    partner_reference=cmd.partner_reference,
                    hold_id=hold.id,
                ),
                now,
            )
            related: tuple[int, ...] = ()
            if amount < hold.amount:
                related = (
                    await self._release_hold(
                        conn,
                        hold,
                        hold.amount - amount,
                        now,
                        f"partner:{cmd.partner_id}",
                        f"remainder of hold {hold.id} after capturing {amount}",
                    ),
                )
            view = await self._resolve_hold(conn, hold.id, "captured", amount, now)
            return await self._receipt(
                conn,
                posted.entry_id,
                "capture",
                hold.member_id,
                amount,
                hold=view,
                related_entry_ids=related,
            )

        return await self.run("capture", cmd, idempotency, Receipt, body)

    async def void(self, cmd: Void, idempotency: IdempotencyKey | None = None) -> Receipt:
        async def body(conn: AsyncConnection) -> Receipt:
            now = self.clock()
            hold = await self._lock_hold(conn, cmd.hold_id, cmd.partner_id)
            entry_id = await self._release_hold(
                conn, hold, hold.amount, now, f"partner:{cmd.partner_id}", f"hold {hold.id} voided"
            )
            view = await self._resolve_hold(conn, hold.id, "voided", 0, now)
            return await self._receipt(
                conn, entry_id, "void", hold.member_id, hold.amount, hold=view
            )

        return await self.run("void", cmd, idempotency, Receipt, body)

    async def expire_holds(self, limit: int = 1000) -> int:
        """Return the points of holds past their expiry (one transaction per hold)."""
        expired = 0

        async def expire_one(conn: AsyncConnection) -> bool:
            now = self.clock()
            hold = (
                await conn.execute(
                    text(
                        f"SELECT {_HOLD_COLUMNS} FROM holds WHERE status = 'open' "
                        "AND expires_at <= :now ORDER BY expires_at LIMIT 1 "
                        "FOR UPDATE SKIP LOCKED"
                    ),
                    {"now": now},
                )
            ).first()
            if hold is None:
                return False
            await self._release_hold(
                conn, hold, hold.amount, now, "job:expire-holds", f"hold {hold.id} expired"
            )
            await self._resolve_hold(conn, hold.id, "expired", 0, now)
            return True

        while expired < limit and await self.atomically(expire_one):
            expired += 1
        return expired

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
                    effective_at=now,
                    posted_by=posted_by,
                    member_id=cmd.member_id,
                    reason=cmd.reason.strip(),
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

    # -- reversals ----------------------------------------------------------

    async def reverse(
        self, cmd: Reverse, posted_by: str, idempotency: IdempotencyKey | None = None
    ) -> Receipt:
        return await self.run(
            "reverse", cmd, idempotency, Receipt, lambda conn: self.reverse_in(conn, cmd, posted_by)
        )

    async def reverse_in(
        self, conn: AsyncConnection, cmd: Reverse, posted_by: str, member_now: str | None = None
    ) -> Receipt:
        """Reverse (part of) an entry inside the caller's transaction.

        `member_now`: the member who holds the original member's points today
        (the original was merged into it); the reversal posts to its accounts."""
        now = self.clock()
        original = await queries.entry(conn, cmd.entry_id)
        if cmd.partner_id is not None and original.partner_id != cmd.partner_id:
            raise EntryNotFound(f"no journal entry {cmd.entry_id}", entry_id=cmd.entry_id)
        if original.kind not in REVERSIBLE_KINDS:
            raise NotReversible(
                f"a {original.kind} entry cannot be reversed; "
                f"reversible kinds: {', '.join(REVERSIBLE_KINDS)}"
            )
        lines = _reversible_lines(original)
        whole = sum(p.amount for p in lines[PTS][0]) if PTS in lines else 0
        reversed_before = await self._lock_reversal(conn, original.entry_id, whole)
        left = whole - reversed_before
        amount = left if cmd.amount is None else cmd.amount
        if amount <= 0 or amount > left:
            raise ReversalExceedsOriginal(
                f"entry {original.entry_id} has {left} of {whole} points left to reverse, "
                f"{amount} asked",
                reversible=left,
            )
        postings = self._reversal_postings(lines, whole, reversed_before, amount)
        member_id = original.member_id
        if member_now is not None and member_now != member_id:
            postings = [
                Posting(
                    p.account.replace(f"member:{member_id}:", f"member:{member_now}:", 1),
                    p.asset,
                    p.amount,
                )
                for p in postings
            ]
            member_id = member_now
        effects = {}
        if original.kind == "earn":
            postings = await self._claw_back_pending(conn, original.entry_id, postings)
            if any(p.account.endswith(":available") for p in postings):
                effects[member_id] = Clawback(original.entry_id)
        else:
            # A refunded redemption gives back the lots it took, original expiry kept.
            origin = original.entry_id
            if original.kind == "capture":
                origin = await self._hold_authorisation(conn, original.hold_id)
                postings = [
                    Posting(p.account.replace(":held", ":available"), p.asset, p.amount)
                    if p.account.endswith(":held")
                    else p
                    for p in postings
                ]
            effects[member_id] = RestoreLots(origin)
        posted = await self.journal.post(
            conn,
            EntryDraft(
                kind="reverse",
                postings=postings,
                effective_at=now,
                posted_by=posted_by,
                member_id=member_id,
                partner_id=original.partner_id,
                partner_reference=cmd.partner_reference,
                reason=cmd.reason or f"reversal of {original.kind} {original.entry_id}",
                reverses_entry_id=original.entry_id,
                breakdown=[{"reversed": amount, "of": whole, "before": reversed_before}],
                lot_effects=effects,
            ),
            now,
        )
        await conn.execute(
            text("UPDATE entry_reversals SET reversed = reversed + :amount WHERE entry_id = :id"),
            {"amount": amount, "id": original.entry_id},
        )
        return await self._receipt(conn, posted.entry_id, "reverse", member_id, amount)

    async def _lock_reversal(self, conn: AsyncConnection, entry_id: int, whole: int) -> int:
        if whole <= 0:
            raise NotReversible(f"entry {entry_id} moved no points")
        await conn.execute(
            text(
                "INSERT INTO entry_reversals (entry_id, reversible) VALUES (:id, :whole) "
                "ON CONFLICT DO NOTHING"
            ),
            {"id": entry_id, "whole": whole},
        )
        return (
            await conn.execute(
                text("SELECT reversed FROM entry_reversals WHERE entry_id = :id FOR UPDATE"),
                {"id": entry_id},
            )
        ).scalar_one()

    @staticmethod
    def _reversal_postings(
        lines: dict[str, tuple[list, list]], whole: int, before: int, amount: int
    ) -> list[Posting]:
        """Negate the original's postings in proportion to the reversed points.

        Shares are computed cumulatively (what is reversed after this reversal
        minus what was reversed before), so repeated partial reversals add up
        to the original exactly and never beyond it."""
        postings: list[Posting] = []
        for asset, (credits, debits) in sorted(lines.items()):
            total = sum(p.amount for p in credits)
            after_part = total * (before + amount) // whole
            before_part = total * before // whole
            for side, sign in ((credits, -1), (debits, 1)):
                sizes = [abs(p.amount) for p in side]
                now_shares = prorate(sizes, after_part, total)
                was_shares = prorate(sizes, before_part, total)
                for posting, now_share, was_share in zip(side, now_shares, was_shares, strict=True):
                    if now_share != was_share:
                        postings.append(
                            Posting(posting.account, asset, sign * (now_share - was_share))
                        )
        return postings

    async def _claw_back_pending(
        self, conn: AsyncConnection, earn_entry_id: int, postings: list[Posting]
    ) -> list[Posting]:
        """Take returned points from pending while they are still there; what
        was already released comes from available (a clawback)."""
        row = (
            await conn.execute(
                text("SELECT remaining FROM pending_points WHERE earn_entry_id = :id FOR UPDATE"),
                {"id": earn_entry_id},
            )
        ).first()
        still_pending = row.remaining if row else 0
        result: list[Posting] = []
        for posting in postings:
            if posting.account.endswith(":pending") and posting.amount < 0:
                from_pending = min(-posting.amount, still_pending)
                from_available = -posting.amount - from_pending
                if from_pending:
                    result.append(Posting(posting.account, PTS, -from_pending))
                    still_pending -= from_pending
                    await conn.execute(
                        text(
                            "UPDATE pending_points SET remaining = remaining - :taken "
                            "WHERE earn_entry_id = :id"
                        ),
                        {"taken": from_pending, "id": earn_entry_id},
                    )
                if from_available:
                    available = posting.account.replace(":pending", ":available")
                    result.append(Posting(available, PTS, -from_available))
            else:
                result.append(posting)
        return result

    async def _hold_authorisation(self, conn: AsyncConnection, hold_id: int | None) -> int:
        return (
            await conn.execute(
                text("SELECT authorise_entry_id FROM holds WHERE id = :id"), {"id": hold_id}
            )
        ).scalar_one()

    # -- expiry -------------------------------------------------------------

    async def expire_points(self, limit: int = 10_000) -> int:
        """Move what is left of expired lots to program:expired, one member per
        transaction (resumable: a rerun finds only what is still left)."""
        members_done = 0
        while members_done < limit:
            async with self.engine.connect() as conn:
                # Members of an expiry-protected tier keep their points.
                result = await conn.execute(
                    text(
                        "SELECT DISTINCT member_id FROM lots WHERE remaining > 0 "
                        "AND expires_at <= :now AND NOT EXISTS ("
                        "  SELECT 1 FROM member_tiers mt JOIN tier_definitions t "
                        "  ON t.code = mt.tier_code WHERE mt.member_id = lots.member_id "
                        "  AND t.expiry_protected "
                        "  AND (mt.valid_until IS NULL OR mt.valid_until > :now)) "
                        "LIMIT 500"
                    ),
                    {"now": self.clock()},
                )
                due = result.scalars().all()
            if not due:
                break
            for member_id in due:
                await self._expire_member(member_id)
                members_done += 1
        return members_done

    async def _expire_member(self, member_id: str) -> None:
        async def expire(conn: AsyncConnection) -> None:
            now = self.clock()
            account = member_account(member_id, "available")
            await self.journal.lock_members(conn, [member_id])
            lots = (
                await conn.execute(
                    text(
                        "SELECT id, remaining, expires_at FROM lots WHERE member_id = :member_id "
                        "AND remaining > 0 AND expires_at <= :now ORDER BY expires_at, id"
                    ),
                    {"member_id": member_id, "now": now},
                )
            ).all()
            total = sum(lot.remaining for lot in lots)
            if not total:
                return
            await self.journal.post(
                conn,
                EntryDraft(
                    kind="expire",
                    postings=[
                        Posting(account, PTS, -total),
                        Posting(program_account("expired"), PTS, total),
                    ],
                    effective_at=now,
                    posted_by="job:expire-points",
                    member_id=member_id,
                    reason=f"{len(lots)} lot(s) reached their expiry "
                    f"({self.config.expiry_policy.describe()})",
                    breakdown=[
                        {
                            "lot_id": lot.id,
                            "points": lot.remaining,
                            "expires_at": lot.expires_at.isoformat(),
                        }
                        for lot in lots
                    ],
                    lot_effects={
                        member_id: ConsumeLots(tuple((lot.id, lot.remaining) for lot in lots))
                    },
                ),
                now,
            )

        await self.atomically(expire)

    # -- settling a member's accounts (closing, merging) --------------------

    async def _lock_for_settlement(self, conn: AsyncConnection, members: list[str]) -> None:
        """Lock order for settling: the pending earnings of the members (own
        rows), then the members, then the pending rows again (an earning that
        committed between the two statements)."""
        lock_pending = text(
            "SELECT earn_entry_id FROM pending_points WHERE member_id = ANY(:m) "
            "AND release_entry_id IS NULL AND remaining > 0 ORDER BY earn_entry_id FOR UPDATE"
        )
        await conn.execute(lock_pending, {"m": members})
        await self.journal.lock_members(conn, members)
        await conn.execute(lock_pending, {"m": members})

    @staticmethod
    def _check_settled(balances: Balances, action: str) -> None:
        if balances.held:
            raise MemberAccountsNotSettled(
                f"member {balances.member_id} has {balances.held} points held by open "
                f"authorisations; capture or void them before the {action}",
                held=balances.held,
            )
        if balances.available < 0:
            raise MemberAccountsNotSettled(
                f"member {balances.member_id} owes {-balances.available} points "
                f"(returns after spending); settle the debt before the {action}",
                available=balances.available,
            )

    async def forfeit_in(
        self, conn: AsyncConnection, member_id: str, posted_by: str, reason: str, forfeit: bool
    ) -> int | None:
        """Settle a member's points before the account closes, inside the
        caller's transaction: with `forfeit`, available and pending points go
        to program:expired in one `forfeit` entry (its id is returned; the
        pending earnings are settled by it); without, the close is refused
        while any points are left. Open holds and debts are always refused."""
        await self._lock_for_settlement(conn, [member_id])
        balances = await queries.balances(conn, member_id)
        self._check_settled(balances, "close")
        points = balances.available + balances.pending
        if not points:
            return None
        if not forfeit:
            raise MemberAccountsNotSettled(
                f"member {member_id} still has {balances.available} points available and "
                f"{balances.pending} pending; forfeit them or let the member spend them",
                available=balances.available,
                pending=balances.pending,
            )
        now = self.clock()
        postings = [Posting(program_account("expired"), PTS, points)]
        effects = {}
        if balances.available:
            lots = await self.journal.open_lots(conn, member_id)
            postings.append(
                Posting(member_account(member_id, "available"), PTS, -balances.available)
            )
            effects[member_id] = ConsumeLots(tuple((lot.lot_id, lot.remaining) for lot in lots))
        if balances.pending:
            postings.append(Posting(member_account(member_id, "pending"), PTS, -balances.pending))
        posted = await self.journal.post(
            conn,
            EntryDraft(
                kind="forfeit",
                postings=postings,
                effective_at=now,
                posted_by=posted_by,
                member_id=member_id,
                reason=reason,
                breakdown=[{"available": balances.available, "pending": balances.pending}],
                lot_effects=effects,
            ),
            now,
        )
        await conn.execute(
            text(
                "UPDATE pending_points SET remaining = 0, release_entry_id = :entry "
                "WHERE member_id = :m AND release_entry_id IS NULL AND remaining > 0"
            ),
            {"entry": posted.entry_id, "m": member_id},
        )
        return posted.entry_id

    async def merge_in(
        self, conn: AsyncConnection, source: str, target: str, posted_by: str, reason: str
    ) -> list[int]:
        """Move everything `source` holds to `target`, inside the caller's
        transaction: available points lot by lot (each lot keeps its earning
        time and expiry), pending points with their earnings (released to
        `target` when their window passes), and QP, day by day at the time it
        was earned (so tier periods count it where they did). Returns the
        `merge` entries posted. Refused while `source` has open holds or a debt."""
        if source == target:
            raise SameMember("a member cannot be merged into itself")
        await self._lock_for_settlement(conn, [source, target])
        balances = await queries.balances(conn, source)
        self._check_settled(balances, "merge")
        now = self.clock()
        entries: list[int] = []

        async def post(postings, effects, effective_at, breakdown) -> None:
            posted = await self.journal.post(
                conn,
                EntryDraft(
                    kind="merge",
                    postings=postings,
                    effective_at=effective_at,
                    posted_by=posted_by,
                    member_id=target,
                    reason=reason,
                    breakdown=breakdown,
                    lot_effects=effects,
                ),
                now,
            )
            entries.append(posted.entry_id)

        postings: list[Posting] = []
        effects = {}
        if balances.available:
            lots = (
                await conn.execute(
                    text(
                        "SELECT id, remaining, earned_at, expires_at, earn_entry_id, source "
                        "FROM lots WHERE member_id = :m AND remaining > 0 ORDER BY id"
                    ),
                    {"m": source},
                )
            ).all()
            postings += [
                Posting(member_account(source, "available"), PTS, -balances.available),
                Posting(member_account(target, "available"), PTS, balances.available),
            ]
            effects[source] = ConsumeLots(tuple((lot.id, lot.remaining) for lot in lots))
            effects[target] = CarryLots(
                tuple(
                    CarriedLot(
                        lot.remaining, lot.earned_at, lot.expires_at, lot.earn_entry_id, lot.source
                    )
                    for lot in lots
                )
            )
        if balances.pending:
            postings += [
                Posting(member_account(source, "pending"), PTS, -balances.pending),
                Posting(member_account(target, "pending"), PTS, balances.pending),
            ]
            await conn.execute(
                text(
                    "UPDATE pending_points SET member_id = :target WHERE member_id = :source "
                    "AND release_entry_id IS NULL AND remaining > 0"
                ),
                {"target": target, "source": source},
            )
        if postings:
            await post(
                postings,
                effects,
                now,
                [{"available": balances.available, "pending": balances.pending, "from": source}],
            )
        qp_days = await conn.execute(
            text(
                "SELECT max(e.effective_at) AS at, sum(p.amount)::bigint AS qp FROM postings p "
                "JOIN journal_entries e ON e.id = p.entry_id "
                "WHERE p.member_id = :m AND p.account = :account "
                "GROUP BY date_trunc('day', e.effective_at) HAVING sum(p.amount) <> 0 ORDER BY 1"
            ),
            {"m": source, "account": member_account(source, "qp")},
        )
        for day in qp_days.all():
            await post(
                [
                    Posting(member_account(source, "qp"), QP, -day.qp),
                    Posting(member_account(target, "qp"), QP, day.qp),
                ],
                {},
                day.at,
                [{"qp": day.qp, "from": source}],
            )
        return entries

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

    async def hold(self, hold_id: int) -> HoldView:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(f"SELECT {_HOLD_COLUMNS} FROM holds WHERE id = :id"), {"id": hold_id}
                )
            ).first()
        if row is None:
            raise HoldNotFound(f"no hold {hold_id}", hold_id=hold_id)
        return _hold_view(row)


_HOLD_COLUMNS = (
    "id, member_id, partner_id, amount, captured, status, expires_at, authorise_entry_id"
)


def _hold_view(row) -> HoldView:
    return HoldView(
        row.id, row.member_id, row.partner_id, row.amount, row.captured, row.status, row.expires_at
    )


def _reversible_lines(original: EntryView) -> dict[str, tuple[list, list]]:
    """The original's postings per asset, split into credits and debits."""
    lines: dict[str, tuple[list, list]] = {}
    for posting in original.postings:
        credits, debits = lines.setdefault(posting.asset, ([], []))
        (credits if posting.amount > 0 else debits).append(posting)
    return lines
