"""The concurrent variant of the state machine: several workers (asyncio tasks,
each operation on its own pooled connection) drive random operations at once
on a small set of shared members, with the production defaults and a 1 %
transfer fee: earnings (pending and available) and the programme's earn path,
returns, burns, holds captured (full and partial) or voided while the
hold-expiry job runs and the clock moves, transfers both ways between the same
members, reversals, adjustments, the release job, and the same idempotency
key sent twice at once.

Every outcome is recorded (a receipt, or a domain error: `LedgerError`, which
the programme's errors extend). Anything else (a deadlock, a lock or statement
timeout, a lock-order error, any 500-class failure) fails the test, with the
operations that were in flight at the time.

After each round the clock passes every hold's expiry and every pending
release and the jobs run once more, so no points are pending or held; then the
books must match what the successful operations imply. Those sums do not
depend on the order the transactions committed in (partial reversals are
cumulative, so their shares telescope), so they are exact: each member's
points and QP, the partner's issued and redeemed accounts, the programme
accounts our entries touch, the promotion budget, every hold resolved exactly
once, no reversal or return beyond its original, no transfer day over the
limit, tiers within what the QP allow; and `verify` is clean.

`LOYALTY_CONCURRENCY_SEED` replays a run's random choices (the interleaving
itself is up to the database)."""

import asyncio
import os
import random
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import settings
from sqlalchemy import text

from api.settings import Settings
from ledger.commands import Adjust, Authorise, Burn, Capture, Earn, Reverse, Transfer, Void
from ledger.database import create_engine
from ledger.errors import LedgerError
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from ledger.verify import verify
from members.registry import MemberInput, Members
from partners.earning import Purchase, PurchaseLine, evaluate
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY, Clock
from tests.property.model import prorate
from tests.property.shop import ADMIN, create_shop

WORKERS = 5
MEMBERS = 4
OPENING = 30_000
BUDGET = 2_000
MEMBER_LIMIT = 800

START = datetime(2027, 5, 10, 9, 0, tzinfo=UTC)  # mid-year: every QP counts in one period


@dataclass
class Op:
    worker: int
    name: str
    args: dict
    started: float
    ended: float = 0.0
    outcome: str = ""  # "ok", a domain error code, or "FAILED <exception>"
    result: object = None
    trace: str = ""


@dataclass
class EarnInfo:
    member: str
    points: int
    qp: int
    debits: list[tuple[str, int]]  # PTS funder postings in order
    reversed: int = 0
    promoted: list[bool] = field(default_factory=list)  # per debit: the promotion's line


@dataclass
class World:
    """What the successful operations imply, built from their receipts."""

    members: list[str]
    partner: str
    fee_rate: Decimal
    total: Counter = field(default_factory=Counter)  # member -> available + pending + held
    qp_earned: Counter = field(default_factory=Counter)
    accounts: Counter = field(default_factory=Counter)  # non-member account -> balance
    earnings: dict[int, EarnInfo] = field(default_factory=dict)
    redemptions: dict[int, list] = field(default_factory=dict)  # entry -> [member, points, rev]
    holds: dict[int, dict] = field(default_factory=dict)  # hold id -> facts and outcomes
    purchases: dict[str, dict] = field(default_factory=dict)
    promotion_paid: Counter = field(default_factory=Counter)  # member -> promotion points
    sent: Counter = field(default_factory=Counter)  # (member, day) -> points sent with fees
    seen_entries: set[int] = field(default_factory=set)

    def credit_earning(self, entry_id, member, lines, promotion=None) -> None:
        """`lines` are (asset, amount, funder[, source]); `promotion` marks
        the lines the budgeted promotion paid."""
        if entry_id is None or entry_id in self.seen_entries:
            return
        self.seen_entries.add(entry_id)
        debits, promoted = [], []
        for asset, amount, funder, *source in lines:
            if asset == "QP":
                self.qp_earned[member] += amount
                self.accounts[("program:qp_source", "QP")] -= amount
                continue
            account = (
                f"partner:{self.partner}:issued" if funder == "partner" else "program:promotions"
            )
            self.accounts[(account, "PTS")] -= amount
            self.total[member] += amount
            debits.append((account, amount))
            promoted.append(promotion is not None and source == [promotion])
        points = sum(a for _, a in debits)
        qp = sum(ln[1] for ln in lines if ln[0] == "QP")
        self.earnings[entry_id] = EarnInfo(member, points, qp, debits, promoted=promoted)

    def promotion_back(self, entry_id: int, before: int, reversed_: int) -> int:
        """The promotion's share of a reversal of `reversed_` points of the
        earning after `before` were reversed: the ledger's cumulative
        largest-remainder split over the earning's lines."""
        earning = self.earnings[entry_id]
        sizes = [a for _, a in earning.debits]
        after = prorate(sizes, before + reversed_, earning.points)
        was = prorate(sizes, before, earning.points)
        return sum(a - w for a, w, p in zip(after, was, earning.promoted, strict=True) if p)

    def expected(self) -> tuple[Counter, Counter, Counter, Counter]:
        """Member points, member QP, QP ever earned and the non-member
        accounts, with the earnings' reversals: partial reversals are
        cumulative, so R of `whole` reversed in any order takes the
        largest-remainder shares of R from the lines (the shares telescope)."""
        total, qp, accounts = Counter(self.total), Counter(self.qp_earned), Counter(self.accounts)
        qp_ever = Counter()
        for earning in self.earnings.values():
            qp_ever[earning.member] += earning.qp
            if not earning.reversed:
                continue
            assert earning.reversed <= earning.points
            sizes = [a for _, a in earning.debits]
            for (account, _), share in zip(
                earning.debits, prorate(sizes, earning.reversed, earning.points), strict=True
            ):
                accounts[(account, "PTS")] += share
            qp_back = earning.qp * earning.reversed // earning.points
            accounts[("program:qp_source", "QP")] += qp_back
            qp[earning.member] -= qp_back
            total[earning.member] -= earning.reversed
        return total, qp, qp_ever, accounts


class Driver:
    def __init__(self, database_url: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.engine = create_engine(database_url, pool_size=WORKERS + 3)
        self.clock = Clock()
        self.clock.now = START
        settings_ = Settings(transfer_fee_rate="0.01")
        settings_.validate()
        self.config = settings_.ledger_config()
        self.ledger = LedgerService(self.engine, self.config, clock=self.clock)
        self.programme = Programme(self.ledger, settings_.tier_period)
        run = uuid.uuid4().hex[:8]
        self.run = run
        self.partner = f"cp-{run}"
        self.promotion = f"CP-{run}".upper()
        self.members = [f"cm-{run}-{i}" for i in range(MEMBERS)]
        self.world = World(self.members, self.partner, self.config.transfers.fee_rate)
        self.ops: list[Op] = []
        self.notes: Counter = Counter()  # what happened inside composite operations
        self.seq = 0
        self.tiers: dict[str, tuple[int, int, Decimal]] = {}  # code -> rank, threshold, mult

    def ref(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.run}-{self.seq}"

    def key(self, caller: str) -> IdempotencyKey:
        return IdempotencyKey(caller, self.ref("key"))

    # -- set-up -----------------------------------------------------------------

    async def set_up(self) -> None:
        # The partner registered (default contract) and the members enrolled.
        await Registry(self.engine, SecretBox(TEST_SECRET_KEY)).create_partner(
            PartnerInput(id=self.partner, name=self.partner), ADMIN
        )
        members = Members(self.ledger, self.programme)
        for member in self.members:
            await members.enrol(MemberInput(id=member), ADMIN)
        rules = Rulebook(self.ledger)
        valid_from = START - timedelta(days=1)
        self.rule, self.offer = await create_shop(
            rules,
            self.partner,
            self.promotion,
            valid_from,
            START + timedelta(days=60),
            BUDGET,
            MEMBER_LIMIT,
        )
        for t in await rules.list_tiers():
            if t["retired_at"] is None:
                self.tiers[t["code"]] = (
                    t["rank"],
                    t["qp_threshold"],
                    Decimal(t["earn_multiplier"]),
                )
        self.tiers.setdefault("base", (0, 0, Decimal(1)))
        for member in self.members:
            receipt = await self.ledger.earn(
                Earn.simple(member, self.partner, self.ref("opening"), OPENING)
            )
            self.world.credit_earning(receipt.entry_id, member, [("PTS", OPENING, "partner")])

    # -- operations ------------------------------------------------------------------

    def member(self) -> str:
        return self.rng.choice(self.members)

    def pick(self, mapping: dict):
        return self.rng.choice(sorted(mapping)) if mapping else None

    def pick_hold(self):
        """Mostly a hold that may still be open (it may be resolving right now)."""
        hopeful = {
            hold_id: hold
            for hold_id, hold in self.world.holds.items()
            if not hold["outcomes"] and hold["expires_at"] > self.clock.now - timedelta(minutes=2)
        }
        return self.pick(hopeful if hopeful and self.rng.random() < 0.8 else self.world.holds)

    async def op_earn(self, op: Op):
        member, points = self.member(), self.rng.randint(1, 2_000)
        pending = self.rng.random() < 0.5
        op.args = dict(member=member, points=points, pending=pending)
        release_at = (
            self.clock.now + timedelta(minutes=self.rng.randint(1, 30)) if pending else None
        )
        reference = self.ref("earn")
        receipt = await self.ledger.earn(
            Earn.simple(member, self.partner, reference, points, release_at=release_at),
            self.key(f"partner:{self.partner}"),
        )
        self.world.credit_earning(receipt.entry_id, member, [("PTS", points, "partner")])
        return receipt

    async def op_buy(self, op: Op):
        member = self.member()
        lines = tuple(
            PurchaseLine(
                self.rng.choice([self.rng.randint(1, 5_000), self.rng.randint(5_000, 60_000)]),
                self.rng.choice(["groceries", "electronics", "vouchers"]),
            )
            for _ in range(self.rng.randint(1, 3))
        )
        purchase = Purchase(self.partner, self.clock.now, "EUR", lines)
        reference = self.ref("purchase")
        op.args = dict(member=member, reference=reference, minor=purchase.total_minor)
        pending = self.rng.random() < 0.4
        release_at = (
            self.clock.now + timedelta(minutes=self.rng.randint(1, 30)) if pending else None
        )
        receipt = await self.programme.earn_purchase(
            member,
            purchase,
            reference,
            release_at=release_at,
            idempotency=self.key(f"partner:{self.partner}"),
        )
        self.check_breakdown(purchase, receipt.earning)
        lines_ = [(ln.asset, ln.amount, ln.funder, ln.source) for ln in receipt.earning.lines]
        self.world.credit_earning(receipt.entry_id, member, lines_, self.promotion)
        promoted = sum(ln.amount for ln in receipt.earning.lines if ln.source == self.promotion)
        self.world.promotion_paid[member] += promoted
        self.world.purchases[reference] = dict(
            member=member,
            entry_id=receipt.entry_id,
            total=purchase.total_minor,
            points=receipt.earning.points,
            returned=0,
            points_returned=0,
        )
        return receipt

    def check_breakdown(self, purchase, earning) -> None:
        """The lines a purchase got: the rule's own lines and QP exactly as the
        engine computes them, the tier bonus of the tier it was evaluated with,
        and no more promotion than the unbudgeted promotion would give."""
        _, _, multiplier = self.tiers[earning.tier]
        free = evaluate(purchase, self.rule, earning.tier, multiplier, [self.offer], 0)

        def lines(source, kinds):
            return [(ln.kind, ln.asset, ln.amount) for ln in source.lines if ln.kind in kinds]

        exact = ("base", "category", "tier", "qualifying")
        assert lines(earning, exact) == lines(free, exact), (earning, free)
        got = sum(ln.amount for ln in earning.lines if ln.kind == "promotion")
        assert 0 <= got <= free.points_from("promotion")

    async def op_return(self, op: Op):
        reference = self.pick(self.world.purchases)
        if reference is None:
            return "skip"
        purchase = self.world.purchases[reference]
        amount = max(1, purchase["total"] * self.rng.randint(1, 110) // 100)
        op.args = dict(member=purchase["member"], reference=reference, minor=amount)
        receipt = await self.programme.return_purchase(
            self.partner,
            reference,
            self.ref("return"),
            amount,
            idempotency=self.key(f"partner:{self.partner}"),
        )
        purchase["returned"] += amount
        purchase["points_returned"] += receipt.points_reversed
        if receipt.points_reversed:
            self.world.earnings[purchase["entry_id"]].reversed += receipt.points_reversed
            # The promotion gets back its share of the points this return
            # reversed; where the share starts (`before`) depends on the
            # reversals committed before it, which its entry records.
            (step,) = (await self.ledger.entry(receipt.entry_id)).breakdown
            assert step["reversed"] == receipt.points_reversed, step
            back = self.world.promotion_back(purchase["entry_id"], step["before"], step["reversed"])
            self.world.promotion_paid[purchase["member"]] -= back
            if back:
                self.notes["promotion given back by a return"] += 1
        return receipt

    async def op_burn(self, op: Op):
        member, amount = self.member(), self.rng.randint(1, 4_000)
        op.args = dict(member=member, amount=amount)
        receipt = await self.ledger.burn(
            Burn(member, self.partner, self.ref("burn"), amount),
            self.key(f"partner:{self.partner}"),
        )
        self.record_burn(receipt, member, amount)
        return receipt

    def record_burn(self, receipt, member, amount) -> None:
        if receipt.entry_id in self.world.seen_entries:
            return
        self.world.seen_entries.add(receipt.entry_id)
        self.world.total[member] -= amount
        self.world.accounts[(f"partner:{self.partner}:redeemed", "PTS")] += amount
        self.world.redemptions[receipt.entry_id] = [member, amount, 0]

    async def op_authorise(self, op: Op):
        member, amount = self.member(), self.rng.randint(1, 3_000)
        ttl = self.rng.randint(60, 1_200)
        op.args = dict(member=member, amount=amount, ttl=ttl)
        receipt = await self.ledger.authorise(
            Authorise(member, self.partner, amount, self.ref("hold"), ttl)
        )
        self.world.holds[receipt.hold.hold_id] = dict(
            member=member, amount=amount, expires_at=receipt.hold.expires_at, outcomes=[]
        )
        return receipt

    async def op_capture(self, op: Op):
        hold_id = self.pick_hold()
        if hold_id is None:
            return "skip"
        hold = self.world.holds[hold_id]
        amount = None if self.rng.random() < 0.5 else self.rng.randint(1, hold["amount"])
        op.args = dict(member=hold["member"], hold=hold_id, amount=amount)
        receipt = await self.ledger.capture(Capture(hold_id, self.partner, amount))
        captured = receipt.amount
        hold["outcomes"].append("captured")
        member = hold["member"]
        self.world.total[member] -= captured
        self.world.accounts[(f"partner:{self.partner}:redeemed", "PTS")] += captured
        self.world.redemptions[receipt.entry_id] = [member, captured, 0]
        return receipt

    async def op_void(self, op: Op):
        hold_id = self.pick_hold()
        if hold_id is None:
            return "skip"
        op.args = dict(member=self.world.holds[hold_id]["member"], hold=hold_id)
        receipt = await self.ledger.void(Void(hold_id, self.partner))
        self.world.holds[hold_id]["outcomes"].append("voided")
        return receipt

    async def op_transfer(self, op: Op):
        sender, receiver = self.member(), self.member()
        amount = self.rng.choice([self.rng.randint(50, 400), self.rng.randint(400, 9_000)])
        op.args = dict(member=sender, to=receiver, amount=amount)
        receipt = await self.ledger.transfer(
            Transfer(sender, receiver, amount), self.key(f"member:{sender}")
        )
        self.record_transfer(receipt, sender, receiver, amount)
        return receipt

    def record_transfer(self, receipt, sender, receiver, amount) -> None:
        if receipt.entry_id in self.world.seen_entries:
            return
        self.world.seen_entries.add(receipt.entry_id)
        fee = self.config.transfers.fee(amount)
        self.world.total[sender] -= amount + fee
        self.world.total[receiver] += amount
        self.world.accounts[("program:adjustments", "PTS")] += fee

    async def op_reverse(self, op: Op):
        pool = {
            **{e: "earn" for e in self.world.earnings},
            **{e: "redemption" for e in self.world.redemptions},
        }
        entry_id = self.pick(pool)
        if entry_id is None:
            return "skip"
        amount = None if self.rng.random() < 0.3 else self.rng.randint(1, 1_500)
        owner = (
            self.world.earnings[entry_id].member
            if pool[entry_id] == "earn"
            else self.world.redemptions[entry_id][0]
        )
        op.args = dict(member=owner, entry=entry_id, kind=pool[entry_id], amount=amount)
        receipt = await self.ledger.reverse(
            Reverse(entry_id, amount, partner_id=self.partner), f"partner:{self.partner}"
        )
        if pool[entry_id] == "earn":
            self.world.earnings[entry_id].reversed += receipt.amount
        else:
            redemption = self.world.redemptions[entry_id]
            redemption[2] += receipt.amount
            self.world.total[redemption[0]] += receipt.amount
            self.world.accounts[(f"partner:{self.partner}:redeemed", "PTS")] -= receipt.amount
        return receipt

    async def op_adjust(self, op: Op):
        member, amount = self.member(), self.rng.choice([-1, 1]) * self.rng.randint(1, 500)
        op.args = dict(member=member, amount=amount)
        receipt = await self.ledger.adjust(Adjust(member, amount, "concurrency test"), ADMIN)
        self.world.total[member] += amount
        self.world.accounts[("program:adjustments", "PTS")] -= amount
        return receipt

    async def op_same_key_twice(self, op: Op):
        """One request sent twice at once with the same key: posted once; the
        second gets the same receipt, or is told the first is in flight."""
        member, amount = self.member(), self.rng.randint(1, 1_000)
        key = self.key(f"partner:{self.partner}")
        op.args = dict(member=member, amount=amount)
        command = Burn(member, self.partner, self.ref("twice"), amount)
        results = await asyncio.gather(
            self.ledger.burn(command, key), self.ledger.burn(command, key), return_exceptions=True
        )
        receipts = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, LedgerError):
                raise error
            self.notes[f"same key twice: {error.code}"] += 1
        if len(receipts) == 2:
            assert receipts[0] == receipts[1], receipts
        for receipt in receipts:
            self.record_burn(receipt, member, amount)
        if not receipts:
            raise errors[0]
        return receipts[0]

    async def op_tick(self, op: Op):
        self.clock.advance(minutes=self.rng.randint(1, 8))
        return "tick"

    async def op_job(self, op: Op):
        job = self.rng.choice(["release", "expire-holds", "expire-points", "requalify"])
        op.args = dict(job=job)
        if job == "release":
            return await self.ledger.release_pending()
        if job == "expire-holds":
            return await self.ledger.expire_holds()
        if job == "expire-points":
            return await self.ledger.expire_points()
        return await self.programme.requalify_tiers()

    OPERATIONS = {
        "earn": 3,
        "buy": 3,
        "return": 2,
        "burn": 3,
        "authorise": 3,
        "capture": 3,
        "void": 1,
        "transfer": 4,
        "reverse": 2,
        "adjust": 1,
        "same_key_twice": 1,
        "tick": 1,
        "job": 2,
    }

    # -- running ------------------------------------------------------------------------

    async def worker(self, number: int, count: int) -> None:
        names = list(self.OPERATIONS)
        weights = [self.OPERATIONS[n] for n in names]
        for _ in range(count):
            name = self.rng.choices(names, weights)[0]
            op = Op(number, name, {}, time.monotonic())
            self.ops.append(op)
            try:
                op.result = await getattr(self, f"op_{name}")(op)
                op.outcome = "skip" if op.result == "skip" else "ok"
            except LedgerError as error:
                op.outcome = error.code
            except Exception as error:  # not a domain error: the test fails
                op.outcome = "FAILED " + describe(error)
                op.trace = "".join(traceback.format_exception(error))[-1500:]
            op.ended = time.monotonic()

    async def round(self, ops_per_worker: int) -> None:
        await asyncio.gather(*(self.worker(n, ops_per_worker) for n in range(WORKERS)))
        # Quiescent: every hold's expiry and every pending release has passed.
        self.clock.advance(days=1)
        await self.ledger.expire_holds()
        await self.ledger.release_pending()

    async def check(self) -> None:
        world = self.world
        total, qp, qp_ever, expected_accounts = world.expected()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT member_id, account, balance FROM balances "
                    "WHERE member_id = ANY(CAST(:m AS text[])) AND slot = 0"
                ),
                {"m": self.members},
            )
            balances = defaultdict(dict)
            for r in rows:
                balances[r.member_id][r.account.rsplit(":", 1)[1]] = r.balance
            accounts = {
                (r.account, r.asset): r.total
                for r in await conn.execute(
                    text(
                        "SELECT account, asset, sum(amount)::bigint AS total FROM postings "
                        "WHERE member_id IS NULL AND entry_id IN (SELECT entry_id FROM postings "
                        "WHERE member_id = ANY(CAST(:m AS text[]))) GROUP BY 1, 2"
                    ),
                    {"m": self.members},
                )
                if r.total
            }
            holds = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT id, status FROM holds WHERE member_id = ANY(CAST(:m AS text[]))"
                        ),
                        {"m": self.members},
                    )
                ).all()
            )
            budget = (
                await conn.execute(
                    text("SELECT budget_used FROM promotions WHERE code = :c"),
                    {"c": self.promotion},
                )
            ).scalar_one()
            usage = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT u.member_id, u.points FROM promotion_usage u JOIN promotions p "
                            "ON p.id = u.promotion_id WHERE p.code = :c"
                        ),
                        {"c": self.promotion},
                    )
                ).all()
            )
            tiers = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT member_id, tier_code FROM member_tiers "
                            "WHERE member_id = ANY(CAST(:m AS text[]))"
                        ),
                        {"m": self.members},
                    )
                ).all()
            )
            sent = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT e.member_id || ' ' || "
                            "(e.effective_at AT TIME ZONE 'UTC')::date, -sum(p.amount) "
                            "FROM journal_entries e JOIN postings p ON p.entry_id = e.id "
                            "AND p.member_id = e.member_id AND p.account LIKE '%available' "
                            "WHERE e.kind = 'transfer' AND e.member_id = ANY(CAST(:m AS text[])) "
                            "GROUP BY 1"
                        ),
                        {"m": self.members},
                    )
                ).all()
            )
        report = await verify(self.engine)
        assert report.clean, report.render()
        for member in self.members:
            b = balances[member]
            assert b.get("pending", 0) == 0 and b.get("held", 0) == 0, (member, b)
            assert b.get("available", 0) == total[member], (member, b, total[member])
            assert b.get("qp", 0) == qp[member], (member, b, qp[member])
        expected = {k: v for k, v in expected_accounts.items() if v}
        assert accounts == expected, (accounts, expected)
        # Every hold resolved exactly once, as its successful operation says.
        for hold_id, hold in world.holds.items():
            assert len(hold["outcomes"]) <= 1, (hold_id, hold)
            assert holds[hold_id] == (hold["outcomes"] or ["expired"])[0], (hold_id, hold)
        # The promotion: budget and per-member limit, paid exactly as booked,
        # net of the shares returns gave back.
        assert budget == sum(world.promotion_paid.values()) <= BUDGET
        for member, paid in world.promotion_paid.items():
            assert usage.get(member, 0) == paid <= MEMBER_LIMIT
        # Returns: cumulative points, never beyond the purchase.
        for reference, purchase in world.purchases.items():
            assert purchase["returned"] <= purchase["total"], reference
            assert purchase["points_returned"] == (
                purchase["points"] * purchase["returned"] // purchase["total"]
            ), (reference, purchase)
        for _member, points, refunded in world.redemptions.values():
            assert refunded <= points
        # Transfers: no sender over the daily limit.
        limit = self.config.transfers.daily_limit
        assert all(total <= limit for total in sent.values()), sent
        # Tiers: at least what the QP that stayed reach, at most what all earned QP reach.
        for member in self.members:
            rank = self.tiers[tiers.get(member, "base")][0]
            qp_now = balances[member].get("qp", 0)
            assert rank >= self.rank_for(qp_now), (member, tiers.get(member), qp_now)
            assert rank <= self.rank_for(qp_ever[member]), (member, tiers.get(member))

    def rank_for(self, qp: int) -> int:
        return max(rank for rank, threshold, _ in self.tiers.values() if threshold <= qp)


async def drive(database_url: str, seed: int, rounds: int, ops_per_worker: int) -> Driver:
    driver = Driver(database_url, seed)
    try:
        await driver.set_up()
        for _ in range(rounds):
            await driver.round(ops_per_worker)
            await driver.check()
    finally:
        driver.retries = getattr(driver.ledger, "retries", None)
        await driver.engine.dispose()
    return driver


def sqlstate(error: BaseException) -> str | None:
    orig = getattr(error, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), error.__cause__, error):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def describe(error: BaseException) -> str:
    """The exception, with the database's SQLSTATE and detail when there is one."""
    name = f"{type(error).__module__}.{type(error).__name__}"
    cause = getattr(getattr(error, "orig", None), "__cause__", None) or error.__cause__
    state = sqlstate(error)
    if state is None:
        return f"{name}: {str(error)[:200]}"
    detail = getattr(cause, "detail", None) or ""
    return (
        f"{name} / {type(cause).__name__} SQLSTATE {state}: "
        f"{str(getattr(cause, 'args', [''])[0])[:120]} {detail[:300]}".strip()
    )


def summarise(driver: Driver) -> tuple[str, list[Op]]:
    outcomes = Counter()
    for op in driver.ops:
        if op.outcome == "ok":
            outcomes[f"ok {op.name}"] += 1
        elif op.outcome != "skip":
            outcomes[op.outcome] += 1
    failures = [op for op in driver.ops if op.outcome.startswith("FAILED")]
    ran = sum(1 for op in driver.ops if op.outcome != "skip")
    domain = {k: v for k, v in outcomes.items() if not k.startswith(("ok ", "FAILED"))}
    lines = [
        f"seed {driver.seed}: {ran} operations by {WORKERS} workers on {MEMBERS} members, "
        f"{sum(v for k, v in outcomes.items() if k.startswith('ok '))} succeeded, "
        f"{sum(domain.values())} domain errors, {len(failures)} other failures, "
        f"transaction retries {driver.retries}",
        "  succeeded: "
        + ", ".join(f"{k[3:]} {v}" for k, v in sorted(outcomes.items()) if k.startswith("ok ")),
        "  domain errors: " + (", ".join(f"{k} {v}" for k, v in sorted(domain.items())) or "none"),
        "  notes: " + (", ".join(f"{k} {v}" for k, v in sorted(driver.notes.items())) or "none"),
    ]
    for op in failures[:8]:
        members = {op.args.get("member"), op.args.get("to")} - {None}
        crossing = [
            f"w{o.worker} {o.name} {o.args} -> {o.outcome}"
            for o in driver.ops
            if o is not op
            and o.started < op.ended
            and o.ended > op.started
            and (
                not members or {o.args.get("member"), o.args.get("to")} & members or "job" in o.args
            )
        ]
        lines.append(f"  FAILURE w{op.worker} {op.name} {op.args}: {op.outcome}")
        lines.extend(f"    crossed: {c}" for c in crossing)
    if failures:
        lines.append("  first failure's traceback (end):")
        lines.append("    " + failures[0].trace.strip().replace("\n", "\n    "))
    return "\n".join(lines), failures


def test_concurrent_operations_keep_the_books(database_url, programme_tiers):
    deep = settings.default.max_examples > 25
    rounds, per_worker = (4, 100) if deep else (2, 50)
    seed = int(os.environ.get("LOYALTY_CONCURRENCY_SEED") or random.randrange(2**32))
    try:
        driver = asyncio.run(drive(database_url, seed, rounds, per_worker))
    except AssertionError as failure:  # the books did not match: say how to replay it
        raise AssertionError(f"LOYALTY_CONCURRENCY_SEED={seed}\n{failure}") from failure
    report, failures = summarise(driver)
    print("\n" + report)
    assert not failures, report
