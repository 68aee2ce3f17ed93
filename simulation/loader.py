"""Posts the generated demo (simulation/model.py's plan) through the
programme's real paths, month by month, on a clock the services read (the
ledger's), so that effective times, return windows, lot expiry and the jobs
line up with the simulated time.

Each month [start, end):
1. at its start, the members enrolling in it (`Members.enrol` and
   `Registry.issue_card`, one transaction each, two at a time; their
   enrolment time is then set to the simulated one in one statement, as
   `enrol` stamps the database's clock); a coupon of the month issued to its
   holders (`Rulebook.issue_coupon`); the coupon activations, each at its
   instant;
2. at its end, the partners report the month's purchases through the batch
   accrual path (`partners.batch.earn_batch`, up to 1,000 a call, in two
   lanes of disjoint members side by side): rules, offers, tiers, return
   windows (counted from the report), budgets and coupons as for any
   partner's batch; then the returns due by then
   (`Programme.return_purchase`), the redemptions (`burn` of the planned
   share of the points available, in the partner's steps, when that reaches
   its minimum) and the transfers (`transfer`, within the transfer rules);
3. the scheduled jobs as of the end (operations/jobs.py): release-pending,
   expire-holds, expire-points, requalify-tiers.

Partners report monthly, so their contracts accept purchases up to
`LATE_DAYS` old (simulation/programme.py).

A database that already holds a generated demo (or any of its partners) is
refused before anything is written (`DemoExists`, exit code 3 on the
command line): generate into a fresh database. A run that stopped half-way
is refused the same way."""

import asyncio
import heapq
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from insights import pareto
from insights.reading import DEFAULT_WINDOW
from ledger.accounts import PTS, member_account
from ledger.commands import Burn, Transfer
from ledger.errors import LedgerError
from ledger.jobs import Batch
from ledger.service import LedgerConfig, LedgerService
from members.registry import MemberInput, Members
from operations.jobs import standard_jobs
from partners.batch import MAX_BATCH_ITEMS, EarnItem, earn_batch
from partners.programme import Programme, PurchaseInput, PurchaseLineInput
from partners.registry import Registry
from partners.rulebook import Rulebook
from simulation import model, programme
from simulation.model import DemoConfig

T = TypeVar("T")
CONCURRENCY = 2  # single transactions in flight (enrolments, returns, burns): the CLI pool
JOBS = ("release-pending", "expire-holds", "expire-points", "requalify-tiers")


class DemoExists(LedgerError):
    code = "demo-exists"


class Progress(Protocol):
    """api/progress.py's bar or lines, or anything with the same calls."""

    def start(self, label: str, unit: str, total: int) -> None: ...
    def advance(self, items: int, points: int = 0) -> None: ...
    def finish(self) -> None: ...


class SimulatedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Summary:
    """What a generation posted."""

    members: int = 0
    purchases: int = 0
    returns: int = 0
    redemptions: int = 0
    transfers: int = 0
    coupons_activated: int = 0
    points_issued: int = 0  # PTS the purchases earned (both funders), before returns
    points_returned: int = 0  # taken back by returns
    points_redeemed: int = 0
    points_expired: int = 0
    churners: int = 0  # planted
    top20_range: tuple[Decimal, Decimal] = model.TOP20_RANGE
    top20_share: Decimal | None = None  # of spend in the 365 days to the end
    seconds: float = 0.0
    spend: dict[str, int] = field(default_factory=dict, repr=False)

    def lines(self) -> list[tuple[str, str]]:
        low, high = self.top20_range
        return [
            ("members", f"{self.members:,}"),
            ("purchases", f"{self.purchases:,} ({self.returns:,} returned)"),
            ("redemptions", f"{self.redemptions:,}"),
            ("transfers", f"{self.transfers:,}"),
            ("coupons activated", f"{self.coupons_activated:,}"),
            ("points issued", f"{self.points_issued:,}"),
            ("points taken back by returns", f"{self.points_returned:,}"),
            ("points redeemed", f"{self.points_redeemed:,}"),
            ("points expired", f"{self.points_expired:,}"),
            ("planted churners", f"{self.churners:,}"),
            (
                "top 20 % share of spend",
                f"{self.top20_share} (last 365 days; configured {low}-{high})",
            ),
            ("elapsed", f"{self.seconds:.0f} s"),
        ]


async def generate(
    engine: AsyncEngine,
    registry: Registry,
    config: DemoConfig,
    ledger_config: LedgerConfig | None = None,
    tier_period: str = "calendar",
    progress: Progress | None = None,
) -> Summary:
    """Generate the demo into the database; see the module's docstring."""
    started = time.perf_counter()
    await _refuse_if_generated(engine)
    clock = SimulatedClock(model.month_bounds(config, 0)[0])
    ledger = LedgerService(
        engine,
        replace(ledger_config or LedgerConfig(), expiry_policy=programme.expiry_policy(config)),
        clock=clock,
    )
    run = _Run(config, ledger, registry, tier_period, clock)
    await programme.define(registry, Rulebook(ledger), config)
    if progress is not None:
        days = sum(_days(*model.month_bounds(config, k)) for k in range(config.months))
        progress.start("demo", "days", days)
    try:
        for month in model.months(config, run.members):
            issued = run.summary.points_issued
            await run.month(month)
            if progress is not None:
                progress.advance(_days(month.start, month.end), run.summary.points_issued - issued)
    finally:
        if progress is not None:
            progress.finish()
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE"))  # the statistics of the whole load, for its readers
    summary = run.summary
    summary.churners = len(model.churners(run.members))
    top = pareto.distribution(
        pareto.summarise(summary.spend.values(), (20,), pareto.DEFAULT_POINTS),
        "spend",
        percents=(20,),
    )
    summary.top20_share = top.top[0].share
    summary.seconds = time.perf_counter() - started
    return summary


def _days(start: datetime, end: datetime) -> int:
    """Whole simulated days, for the progress."""
    return round((end - start) / timedelta(days=1))


async def _refuse_if_generated(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM members WHERE enrolled_by = :actor) AS members, "
                    "(SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM partners "
                    "WHERE id = ANY(CAST(:partners AS text[]))) AS partners"
                ),
                {"actor": programme.ACTOR, "partners": [p.id for p in model.PARTNERS]},
            )
        ).one()
    if row.members:
        raise DemoExists(
            f"this database holds a generated demo already ({row.members:,} members): "
            "generate into a fresh database",
            members=row.members,
        )
    if row.partners:
        raise DemoExists(
            f"partners {', '.join(row.partners)} exist already: generate into a fresh database",
            partners=list(row.partners),
        )


async def _each(items: Iterable[T], work: Callable[[T], Awaitable[object]]) -> None:
    """`work` for every item, `CONCURRENCY` at a time."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(item: T) -> None:
        async with gate:
            await work(item)

    await asyncio.gather(*(one(item) for item in items))


class _Run:
    def __init__(
        self,
        config: DemoConfig,
        ledger: LedgerService,
        registry: Registry,
        tier_period: str,
        clock: SimulatedClock,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.registry = registry
        self.clock = clock
        self.programme = Programme(ledger, tier_period)
        self.enrolment = Members(ledger, self.programme)
        self.rules = Rulebook(ledger)
        self.jobs = standard_jobs(ledger, tier_period)
        self.members = model.members(config)
        self.holders = model.coupon_holders(config, self.members)
        self.offers = model.offers(config)
        self.returns: list[tuple[datetime, str, model.Return]] = []  # a heap, by time
        self.summary = Summary()
        self.window = (config.end - DEFAULT_WINDOW, config.end)
        self.owners: dict[tuple[str, str], str] = {}  # the window's sales: (partner, ref) -> member
        self.burns = 0

    async def month(self, month: model.Month) -> None:
        """The month's steps, in the order of the module's docstring."""
        self.clock.now = month.start
        await self._enrol(month.enrolments)
        for code, index in (
            ("PHARMACY-10X", self.offers.pharmacy_coupon),
            ("BONUS-300", self.offers.bonus_coupon),
        ):
            if index == month.index and self.holders[code]:
                await self.rules.issue_coupon(code, sorted(self.holders[code]), programme.ACTOR)
        for activation in month.activations:
            self.clock.now = activation.at
            await self.programme.activate_coupon(activation.member_id, activation.code)
            self.summary.coupons_activated += 1
        for back in month.returns:
            heapq.heappush(self.returns, (back.at, back.reference, back))
        self.clock.now = month.end
        await self._sales(month.sales)
        await self._returns(month.end)
        await self._redeem(month.redemptions)
        await self._transfer(month.transfers)
        await self._jobs()
        await self._analyze()

    async def _analyze(self) -> None:
        """What autovacuum would do, but it lags a bulk load (or is off): the
        statistics of every table that has doubled since its last ANALYZE are
        made again, so that the planner keeps choosing index scans (without
        them, the per-statement balance check of a single posting scans every
        posting: 0.25 s at 20,000 members)."""
        async with self.ledger.engine.begin() as conn:
            grown = (
                await conn.execute(
                    text(
                        "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables "
                        "WHERE n_mod_since_analyze "
                        "> greatest(1000, n_live_tup - n_mod_since_analyze)"
                    )
                )
            ).scalars()
            tables = ", ".join(grown)
            if tables:
                await conn.execute(text(f"ANALYZE {tables}"))

    async def _enrol(self, members: list[model.Member]) -> None:
        if not members:
            return

        async def enrol(member: model.Member) -> None:
            await self.enrolment.enrol(MemberInput(member.id), programme.ACTOR)
            await self.registry.issue_card(member.id, member.card, programme.ACTOR)

        await _each(members, enrol)
        async with self.ledger.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE members m SET enrolled_at = t.at FROM unnest("
                    "CAST(:ids AS text[]), CAST(:ats AS timestamptz[])) AS t(id, at) "
                    "WHERE m.id = t.id"
                ),
                {"ids": [m.id for m in members], "ats": [m.enrolled_at for m in members]},
            )
        self.summary.members += len(members)

    async def _sales(self, sales: list[model.Sale]) -> None:
        by_partner: dict[str, list[model.Sale]] = defaultdict(list)
        for sale in sales:
            by_partner[sale.partner_id].append(sale)
            if self.window[0] <= sale.at < self.window[1]:
                self.owners[(sale.partner_id, sale.reference)] = sale.member_id
                spend = self.summary.spend
                spend[sale.member_id] = spend.get(sale.member_id, 0) + sale.total_minor
        # Lanes of disjoint members, side by side: their batches lock no
        # member in common, and each member's purchases go in the same order.
        lanes: list[list[tuple[str, list[model.Sale]]]] = [[] for _ in range(CONCURRENCY)]
        for partner_id in sorted(by_partner):
            todo = by_partner[partner_id]
            for lane, batches in enumerate(lanes):
                mine = [s for s in todo if int(s.member_id[1:]) % CONCURRENCY == lane]
                for first in range(0, len(mine), MAX_BATCH_ITEMS):
                    batches.append((partner_id, mine[first : first + MAX_BATCH_ITEMS]))
        await asyncio.gather(*(self._lane(batches) for batches in lanes))

    async def _lane(self, batches: list[tuple[str, list[model.Sale]]]) -> None:
        for partner_id, sales in batches:
            await self._batch(partner_id, sales)

    async def _batch(self, partner_id: str, sales: list[model.Sale]) -> None:
        items = [
            EarnItem(
                sale.card,
                sale.reference,
                PurchaseInput(
                    programme.CURRENCY,
                    [PurchaseLineInput(amount, category) for amount, category in sale.lines],
                    sale.at,
                ),
                list(sale.coupons),
            )
            for sale in sales
        ]
        receipt = await earn_batch(self.programme, partner_id, items)
        refused = [o for o in receipt.outcomes if o.error is not None]
        if refused:  # the plan only holds purchases the programme accepts
            error = refused[0].error
            raise RuntimeError(
                f"{partner_id} refused {len(refused)} demo purchases, e.g. "
                f"{refused[0].reference}: {error.code}: {error.detail}"
            )
        self.summary.purchases += receipt.posted
        self.summary.points_issued += receipt.points

    async def _returns(self, until: datetime) -> None:
        due = []
        while self.returns and self.returns[0][0] < until:
            due.append(heapq.heappop(self.returns)[2])

        async def give_back(back: model.Return) -> None:
            receipt = await self.programme.return_purchase(
                back.partner_id, back.reference, back.return_reference, back.amount_minor
            )
            self.summary.points_returned += receipt.points_reversed
            member_id = self.owners.get((back.partner_id, back.reference))
            if member_id is not None:
                self.summary.spend[member_id] -= back.amount_minor

        await _each(due, give_back)
        self.summary.returns += len(due)

    async def _available(self, member_ids: list[str]) -> dict[str, int]:
        accounts = {member_account(m, "available"): m for m in member_ids}
        async with self.ledger.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT account, balance FROM balances WHERE asset = :pts AND slot = 0 "
                    "AND account = ANY(CAST(:accounts AS text[]))"
                ),
                {"pts": PTS, "accounts": list(accounts)},
            )
            return {accounts[r.account]: int(r.balance) for r in rows}

    async def _redeem(self, redemptions: list[model.Redemption]) -> None:
        if not redemptions:
            return
        available = await self._available([r.member_id for r in redemptions])
        burns = []
        for planned in redemptions:
            minimum, step, _ = programme.BURN_RULES[planned.partner_id]
            points = available.get(planned.member_id, 0) * planned.percent // 100
            points -= points % step
            if points >= minimum:
                self.burns += 1
                reference = f"DEMO-BURN-{self.burns:07d}"
                burns.append(Burn(planned.member_id, planned.partner_id, reference, points))

        async def burn(command: Burn) -> None:
            await self.ledger.burn(command)
            self.summary.points_redeemed += command.amount

        await _each(burns, burn)
        self.summary.redemptions += len(burns)

    async def _transfer(self, transfers: list[model.Transfer]) -> None:
        if not transfers:
            return
        rules = self.ledger.config.transfers
        available = await self._available([t.sender for t in transfers])
        for planned in transfers:  # one after the other: a member may send and receive
            share = available.get(planned.sender, 0) * planned.percent // 100
            if rules.daily_limit is not None:
                share = min(share, rules.daily_limit)
            amount = int(Decimal(share) / (1 + rules.fee_rate))
            while amount > 0 and amount + rules.fee(amount) > share:
                amount -= 1
            if amount < max(rules.min_points, 1):
                continue
            await self.ledger.transfer(Transfer(planned.sender, planned.receiver, amount))
            available[planned.sender] -= amount + rules.fee(amount)
            if planned.receiver in available:
                available[planned.receiver] += amount
            self.summary.transfers += 1

    async def _jobs(self) -> None:
        for name in JOBS:
            moved: list[Batch] = []
            await self.jobs[name].run(None, moved.append)
            if name == "expire-points":
                self.summary.points_expired += sum(b.points for b in moved)
