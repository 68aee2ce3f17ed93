"""Every pair of member-touching operations, run crosswise on the same members
many times at once, under the production defaults (transfer daily limit, hold
TTL, calendar tier period, expiry policy): no deadlock, serialization failure
or lock timeout ever reaches a caller, points are conserved, the ledger
verifies clean, and no transaction is retried after a deadlock or
serialization failure (the lock order, not a retry, keeps them apart).

Each test prints its figures (operations, domain errors, 5xx-class errors,
retries); `pytest -s` shows them, and the module prints a table at the end.
"""

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from api.settings import Settings
from ledger.commands import Adjust, Authorise, Burn, Capture, Earn, Reverse, Transfer, Void
from ledger.database import sqlstate
from ledger.errors import LedgerError
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from tests.conftest import Clock

pytestmark = pytest.mark.long  # tens of seconds: handed out first (tests/conftest.py)

ROUNDS = 3  # batches per pair
FUNDS = 10_000  # each member's points before the race
STAFF = "staff:tests"
FIGURES: dict[str, str] = {}
DATABASE_FAILURES = {
    "40P01": "deadlock",
    "40001": "serialization failure",
    "55P03": "lock timeout",
    "57014": "statement timeout",
}


def production_ledger(engine, clock: Clock | None = None) -> LedgerService:
    """The ledger as `loyalty serve` configures it by default."""
    config = Settings().ledger_config()
    if clock is None:
        return LedgerService(engine, config)
    return LedgerService(engine, config, clock=clock)


def key(caller: str) -> IdempotencyKey:
    """A fresh idempotency key: every partner and member call carries one."""
    return IdempotencyKey(caller, uuid.uuid4().hex)


def retries_taken(services: Iterable[LedgerService]) -> Counter[str]:
    """Transactions the ledger ran again, by SQLSTATE: 40P01 deadlock, 40001
    serialization failure, 55P03 lock timeout (`LedgerService.retries`)."""
    return sum((service.retries for service in services), Counter())


def describe(error: BaseException) -> str:
    state = sqlstate(error)
    label = DATABASE_FAILURES.get(state or "", type(error).__name__)
    first_line = (str(error).splitlines() or [""])[0][:160]
    return f"{label} (SQLSTATE {state}): {first_line}"


class Race:
    """Runs batches of operations at once and sorts what came back: results,
    domain errors (refusals a caller gets as a 4xx problem) and everything
    else (a 5xx: deadlock, serialization failure, lock timeout, a bug)."""

    def __init__(self, name: str, *services: LedgerService) -> None:
        self.name = name
        self.services = services
        self.operations = 0
        self.domain: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.retries_before = retries_taken(services)

    async def run(self, ops: list[tuple[str, Awaitable]]) -> list[tuple[str, object]]:
        results = await asyncio.gather(*(op for _, op in ops), return_exceptions=True)
        outcomes = []
        for (kind, _), result in zip(ops, results, strict=True):
            self.operations += 1
            if isinstance(result, LedgerError):
                self.domain[f"{kind}: {result.code}"] += 1
            elif isinstance(result, BaseException):
                self.failures[f"{kind}: {describe(result)}"] += 1
            outcomes.append((kind, result))
        return outcomes

    def finish(self) -> None:
        """Print the figures; fail on any 5xx-class error and on any deadlock
        or serialization failure, even one a retry absorbed. (A lock wait that
        outlived lock_timeout on a loaded machine is contention, not a crossing
        lock order: it is retried, and counted in the figures.)"""
        retries = retries_taken(self.services) - self.retries_before
        crossings = retries["40P01"] + retries["40001"]
        failed = sum(self.failures.values())
        deadlocks = sum(n for what, n in self.failures.items() if "(SQLSTATE 40P01)" in what)
        figures = (
            f"{self.operations} operations, {sum(self.domain.values())} domain errors, "
            f"{failed} 5xx-class errors ({deadlocks} deadlocks), "
            f"retries {dict(retries) or 0}"
        )
        FIGURES[self.name] = figures
        print(f"\n{self.name}: {figures}")
        for what, count in sorted(self.domain.items()):
            print(f"  domain  {count:4} x {what}")
        for what, count in sorted(self.failures.items()):
            print(f"  5xx     {count:4} x {what}")
        assert not self.failures, f"{self.name}: {failed} operations failed with " + "; ".join(
            f"{n} x {what}" for what, n in self.failures.most_common()
        )
        assert not crossings, f"{self.name}: transactions retried after {dict(retries)}"


def succeeded(outcomes: list[tuple[str, object]], kind: str) -> list:
    return [r for k, r in outcomes if k == kind and not isinstance(r, BaseException)]


@pytest.fixture(scope="module", autouse=True)
def figures_table():
    yield
    if FIGURES:
        width = max(map(len, FIGURES))
        print("\n\nlock-order figures")
        for name, figures in FIGURES.items():
            print(f"  {name:<{width}}  {figures}")


async def fund(ledger: LedgerService, new_member, count: int, partner: str) -> list[str]:
    members = [await new_member() for _ in range(count)]
    for member in members:
        await ledger.earn(Earn.simple(member, partner, f"fund-{member}", FUNDS))
    return members


async def points(ledger: LedgerService, member: str) -> int:
    """Everything the member owns: available, pending and held."""
    b = await ledger.balances(member)
    return b.available + b.pending + b.held


async def redeemed(ledger: LedgerService, partner: str) -> int:
    return (await ledger.account_balance(f"partner:{partner}:redeemed")).balances[0].balance


async def shop(ledger: LedgerService, new_partner, qp_per_unit: Decimal = Decimal(0)) -> str:
    """A partner earning 1 point (and `qp_per_unit` QP) per EUR."""
    partner = await new_partner("shop")
    await Rulebook(ledger).create_earn_rule(
        partner,
        EarnRuleInput(datetime(2024, 1, 1, tzinfo=UTC), "EUR", Decimal(1), qp_per_unit=qp_per_unit),
        STAFF,
    )
    return partner


def purchase(partner: str, euros: int) -> Purchase:
    return Purchase(partner, datetime.now(UTC), "EUR", (PurchaseLine(euros * 100, "groceries"),))


def transfers(ledger: LedgerService, a: str, b: str, each_way: int) -> list[tuple[str, Awaitable]]:
    ops = []
    for i in range(2 * each_way):
        sender, receiver = (a, b) if i % 2 else (b, a)
        ops.append(
            ("transfer", ledger.transfer(Transfer(sender, receiver, 100), key(f"member:{sender}")))
        )
    return ops


def burns(ledger: LedgerService, member: str, partner: str, count: int, amount: int = 100):
    return [
        (
            "burn",
            ledger.burn(
                Burn(member, partner, f"burn-{uuid.uuid4().hex[:12]}", amount),
                key(f"partner:{partner}"),
            ),
        )
        for _ in range(count)
    ]


async def test_transfers_crossing_between_two_members(
    engine, new_member, new_partner, assert_clean
):
    ledger = production_ledger(engine)
    a, b = await fund(ledger, new_member, 2, await new_partner())
    race = Race("transfer A->B vs B->A", ledger)
    for _ in range(ROUNDS):
        await race.run(transfers(ledger, a, b, 16))
    assert await points(ledger, a) + await points(ledger, b) == 2 * FUNDS
    assert not race.domain  # no transfer was refused: well under the minimum and daily limit
    await assert_clean()
    race.finish()


async def test_burns_crossing_transfers(engine, new_member, new_partner, assert_clean):
    ledger = production_ledger(engine)
    partner = await new_partner()
    a, b = await fund(ledger, new_member, 2, partner)
    race = Race("burn vs transfer", ledger)
    burned = 0
    for _ in range(ROUNDS):
        outcomes = await race.run(
            transfers(ledger, a, b, 8) + burns(ledger, a, partner, 8) + burns(ledger, b, partner, 8)
        )
        burned += sum(r.amount for r in succeeded(outcomes, "burn"))
    assert not race.domain
    assert await points(ledger, a) + await points(ledger, b) == 2 * FUNDS - burned
    assert await redeemed(ledger, partner) == burned
    await assert_clean()
    race.finish()


async def hold_resolutions(engine, hold_ids: list[int]) -> dict[int, int]:
    """Per hold, the points its entries took out of `held` (a hold resolves once)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT e.hold_id, -sum(p.amount) AS released FROM journal_entries e "
                "JOIN postings p ON p.entry_id = e.id WHERE e.hold_id = ANY(:ids) "
                "AND p.account LIKE :held GROUP BY e.hold_id"
            ),
            {"ids": hold_ids, "held": "member:%:held"},
        )
        return {r.hold_id: int(r.released) for r in rows}


async def test_authorise_void_and_capture_on_one_members_holds(
    engine, new_member, new_partner, assert_clean
):
    ledger = production_ledger(engine)
    partner = await new_partner()
    (member,) = await fund(ledger, new_member, 1, partner)
    race = Race("authorise vs void vs capture (full, partial)", ledger)
    captured, resolved = 0, []

    def authorise():
        return ledger.authorise(Authorise(member, partner, 100), key(f"partner:{partner}"))

    def void(hold_id: int):
        return ("void", ledger.void(Void(hold_id, partner), key(f"partner:{partner}")))

    def capture(hold_id: int, amount: int | None = None):
        cmd = Capture(hold_id, partner, amount)
        return ("capture", ledger.capture(cmd, key(f"partner:{partner}")))

    for _ in range(ROUNDS):
        holds = [(await authorise()).hold.hold_id for _ in range(18)]
        outcomes = await race.run(
            [("authorise", authorise()) for _ in range(6)]
            + [void(h) for h in holds[0:6]]
            + [capture(h) for h in holds[0:3]]  # racing the voids: one of each pair wins
            + [capture(h) for h in holds[6:12]]
            + [void(h) for h in holds[6:9]]  # racing the captures
            + [capture(h, 60) for h in holds[12:18]]
        )
        captured += sum(r.amount for r in succeeded(outcomes, "capture"))
        resolved += holds
    balances = await ledger.balances(member)
    assert balances.available + balances.held == FUNDS - captured
    assert await redeemed(ledger, partner) == captured
    await assert_clean()
    race.finish()  # the checks below need every operation to have run
    assert set(race.domain) <= {"capture: hold-not-open", "void: hold-not-open"}
    assert await hold_resolutions(engine, resolved) == {h: 100 for h in resolved}
    assert balances.held == 100 * 6 * ROUNDS  # the holds authorised during the race


async def test_captures_crossing_the_hold_expiry_job(engine, new_member, new_partner, assert_clean):
    clock = Clock()
    ledger = production_ledger(engine, clock)
    partner = await new_partner()
    (member,) = await fund(ledger, new_member, 1, partner)
    race = Race("capture vs expire_holds", ledger)
    captured, short, long = 0, [], []
    for _ in range(ROUNDS):
        round_holds = []
        for i in range(28):
            receipt = await ledger.authorise(
                Authorise(member, partner, 100, expires_in_seconds=60 if i % 2 else 3600),
                key(f"partner:{partner}"),
            )
            round_holds.append(receipt.hold.hold_id)
            (short if i % 2 else long).append(receipt.hold.hold_id)
        clock.advance(seconds=120)  # past the short holds' expiry
        outcomes = await race.run(
            [
                (
                    "capture",
                    ledger.capture(
                        Capture(h, partner, None if i % 4 < 2 else 40), key(f"partner:{partner}")
                    ),
                )
                for i, h in enumerate(round_holds)
            ]
            + [("expire_holds", ledger.expire_holds()) for _ in range(4)]
        )
        captured += sum(r.amount for r in succeeded(outcomes, "capture"))
    # A run skips holds a capture has locked (SKIP LOCKED); the next run takes them.
    await race.run([("expire_holds (rerun)", ledger.expire_holds())])
    balances = await ledger.balances(member)
    assert balances.available + balances.held == FUNDS - captured
    await assert_clean()
    race.finish()  # the checks below need every operation to have run
    assert set(race.domain) <= {"capture: hold-expired", "capture: hold-not-open"}
    assert {(await ledger.hold(h)).status for h in short} == {"expired"}
    assert {(await ledger.hold(h)).status for h in long} == {"captured"}
    assert await hold_resolutions(engine, short + long) == {h: 100 for h in short + long}
    assert balances.held == 0


async def test_purchase_returns_crossing_burns(
    engine, new_member, new_partner, programme_tiers, assert_clean
):
    ledger = production_ledger(engine)
    programme = Programme(ledger, Settings().tier_period)
    partner = await shop(ledger, new_partner)
    (member,) = await fund(ledger, new_member, 1, partner)
    race = Race("return_purchase vs burn", ledger)
    earned = burned = returned = 0
    for _ in range(ROUNDS):
        references = [f"R-{uuid.uuid4().hex[:10]}" for _ in range(10)]
        for reference in references:
            earned += (
                await programme.earn_purchase(member, purchase(partner, 100), reference)
            ).earning.points

        def give_back(reference: str, minor: int):
            return (
                "return",
                programme.return_purchase(
                    partner,
                    reference,
                    f"RET-{uuid.uuid4().hex[:10]}",
                    minor,
                    key(f"partner:{partner}"),
                ),
            )

        outcomes = await race.run(
            [give_back(r, 10_000) for r in references]
            + [give_back(r, 5_000) for r in references[:5]]  # racing the full returns
            + burns(ledger, member, partner, 15)
        )
        returned += sum(r.points_reversed for r in succeeded(outcomes, "return"))
        burned += sum(r.amount for r in succeeded(outcomes, "burn"))
    assert set(race.domain) <= {"return: return-exceeds-purchase"}
    assert await points(ledger, member) == FUNDS + earned - burned - returned
    await assert_clean()
    race.finish()


async def test_pending_release_job_crossing_burns(engine, new_member, new_partner, assert_clean):
    clock = Clock()
    ledger = production_ledger(engine, clock)
    partner = await new_partner()
    (member,) = await fund(ledger, new_member, 1, partner)
    race = Race("release_pending vs burn", ledger)
    pending = burned = 0
    for _ in range(ROUNDS):
        for _ in range(16):
            earning = Earn.simple(
                member,
                partner,
                f"P-{uuid.uuid4().hex[:10]}",
                50,
                release_at=clock.now + timedelta(hours=1),
            )
            pending += (await ledger.earn(earning, key(f"partner:{partner}"))).amount
        clock.advance(hours=2)  # the return window has passed
        outcomes = await race.run(
            [("release_pending", ledger.release_pending()) for _ in range(4)]
            + burns(ledger, member, partner, 24)
        )
        burned += sum(r.amount for r in succeeded(outcomes, "burn"))
    # A rerun finds only what is left.
    await race.run([("release_pending (rerun)", ledger.release_pending())])
    assert not race.domain
    balances = await ledger.balances(member)
    assert balances.available + balances.pending == FUNDS + pending - burned
    await assert_clean()
    race.finish()  # the check below needs every operation to have run
    assert balances.pending == 0


async def test_reversals_crossing_burns(engine, new_member, new_partner, assert_clean):
    ledger = production_ledger(engine)
    partner = await new_partner()
    (member,) = await fund(ledger, new_member, 1, partner)
    race = Race("reverse vs burn", ledger)
    expected = FUNDS
    for _ in range(ROUNDS):
        earns, spent = [], []
        for _ in range(8):
            ref = uuid.uuid4().hex[:10]
            earns.append(
                (await ledger.earn(Earn.simple(member, partner, f"E-{ref}", 200))).entry_id
            )
            spent.append((await ledger.burn(Burn(member, partner, f"B-{ref}", 100))).entry_id)
        expected += 8 * 200 - 8 * 100

        def reverse(entry_id: int, kind: str, amount: int | None = None):
            cmd = Reverse(entry_id, amount, reason="lock-order test")
            return (kind, ledger.reverse(cmd, STAFF, key(STAFF)))

        outcomes = await race.run(
            [reverse(e, "reverse earn") for e in earns]
            + [reverse(e, "reverse earn", 50) for e in earns[:4]]  # racing the full reversals
            + [reverse(e, "reverse burn") for e in spent]
            + burns(ledger, member, partner, 12)
        )
        expected += sum(r.amount for r in succeeded(outcomes, "reverse burn"))
        expected -= sum(r.amount for r in succeeded(outcomes, "reverse earn"))
        expected -= sum(r.amount for r in succeeded(outcomes, "burn"))
    assert set(race.domain) <= {"reverse earn: reversal-exceeds-original"}
    assert await points(ledger, member) == expected
    await assert_clean()
    race.finish()


async def test_adjustments_crossing_transfers(engine, new_member, new_partner, assert_clean):
    ledger = production_ledger(engine)
    a, b = await fund(ledger, new_member, 2, await new_partner())
    race = Race("adjust vs transfer", ledger)
    adjusted = 0
    for _ in range(ROUNDS):
        adjustments = [
            ("adjust", ledger.adjust(Adjust(m, amount, "lock-order test"), STAFF, key(STAFF)))
            for m in (a, b)
            for amount in (50, -50, 50, -50, 50, -50, 50, -50)
        ]
        outcomes = await race.run(transfers(ledger, a, b, 8) + adjustments)
        adjusted += sum(r.amount for r in succeeded(outcomes, "adjust"))
    assert not race.domain
    assert await points(ledger, a) + await points(ledger, b) == 2 * FUNDS + adjusted
    await assert_clean()
    race.finish()


async def test_the_expiry_job_crossing_earns_and_burns(
    engine, new_member, new_partner, assert_clean
):
    ledger = production_ledger(engine)
    partner = await new_partner()
    members = await fund(ledger, new_member, 4, partner)
    long_ago = datetime.now(UTC) - timedelta(days=4 * 365)  # its lots expired a year ago
    race = Race("expire_points vs earn/burn", ledger)
    credited = dict.fromkeys(members, FUNDS)
    for _ in range(ROUNDS):
        for m in members:
            old = Earn.simple(
                m, partner, f"OLD-{uuid.uuid4().hex[:10]}", 500, effective_at=long_ago
            )
            credited[m] += (await ledger.earn(old)).amount
        ops = [("expire_points", ledger.expire_points()) for _ in range(2)]
        for m in members:
            ops += [
                (
                    "earn",
                    ledger.earn(
                        Earn.simple(m, partner, f"E-{uuid.uuid4().hex[:10]}", 100),
                        key(f"partner:{partner}"),
                    ),
                )
                for _ in range(4)
            ]
            ops += burns(ledger, m, partner, 3)
        outcomes = await race.run(ops)
        for receipt in succeeded(outcomes, "earn"):
            credited[receipt.member_id] += receipt.amount
        for receipt in succeeded(outcomes, "burn"):
            credited[receipt.member_id] -= receipt.amount
    await race.run([("expire_points (rerun)", ledger.expire_points())])  # finds what is left
    assert not race.domain
    async with engine.connect() as conn:
        still_open = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM lots WHERE member_id = ANY(:m) AND remaining > 0 "
                    "AND expires_at <= now()"
                ),
                {"m": members},
            )
        ).scalar_one()
        expired = dict(
            (
                await conn.execute(
                    text(
                        "SELECT e.member_id, sum(p.amount) FROM journal_entries e "
                        "JOIN postings p ON p.entry_id = e.id WHERE e.kind = 'expire' "
                        "AND e.member_id = ANY(:m) AND p.account = 'program:expired' "
                        "GROUP BY e.member_id"
                    ),
                    {"m": members},
                )
            ).all()
        )
    for m in members:
        assert 0 <= expired.get(m, 0) <= 500 * ROUNDS  # never more than the expired lots held
        assert await points(ledger, m) == credited[m] - expired.get(m, 0)
    await assert_clean()
    race.finish()  # the check below needs every operation to have run
    assert still_open == 0  # no expired points left behind


async def test_programme_earnings_crossing_transfers(
    engine, new_member, new_partner, programme_tiers, assert_clean
):
    ledger = production_ledger(engine)
    programme = Programme(ledger, Settings().tier_period)
    partner = await shop(ledger, new_partner)
    a, b = await fund(ledger, new_member, 2, partner)
    race = Race("earn_purchase vs transfer", ledger)
    earned = 0
    for _ in range(ROUNDS):
        earnings = [
            (
                "earn_purchase",
                programme.earn_purchase(
                    m,
                    purchase(partner, 100),
                    f"R-{uuid.uuid4().hex[:10]}",
                    idempotency=key(f"partner:{partner}"),
                ),
            )
            for m in (a, b)
            for _ in range(8)
        ]
        outcomes = await race.run(transfers(ledger, a, b, 8) + earnings)
        earned += sum(r.earning.points for r in succeeded(outcomes, "earn_purchase"))
    assert not race.domain
    assert await points(ledger, a) + await points(ledger, b) == 2 * FUNDS + earned
    await assert_clean()
    race.finish()


async def test_concurrent_earnings_cross_the_silver_threshold_once(
    engine, new_member, new_partner, programme_tiers, assert_clean
):
    """Silver at 1,000 QP (x1.25): eight 200-EUR purchases of one member at
    once, 200 QP each. The fifth to book crosses the threshold; the three after
    it earn the silver bonus; the history shows one upgrade."""
    ledger = production_ledger(engine)
    programme = Programme(ledger, Settings().tier_period)
    partner = await shop(ledger, new_partner, qp_per_unit=Decimal(1))
    race = Race("tier crossing (8 programme earns per member)", ledger)
    rounds = []
    for _ in range(ROUNDS):
        members = [await new_member() for _ in range(4)]
        rounds.append(
            (
                members,
                await race.run(
                    [
                        (
                            m,
                            programme.earn_purchase(
                                m,
                                purchase(partner, 200),
                                f"T-{uuid.uuid4().hex[:10]}",
                                idempotency=key(f"partner:{partner}"),
                            ),
                        )
                        for m in members
                        for _ in range(8)
                    ]
                ),
            )
        )
    race.finish()  # every earning booked: the checks below need all eight
    assert not race.domain
    for members, outcomes in rounds:
        for m in members:
            # In booking order: the QP each receipt saw, under the member's lock.
            booked = sorted(succeeded(outcomes, m), key=lambda r: r.balances.qp)
            assert [r.balances.qp for r in booked] == [200 * (i + 1) for i in range(8)]
            seen = [
                (
                    r.earning.tier,
                    r.new_tier,
                    r.earning.points,
                    "tier" in {ln.kind for ln in r.earning.lines},
                )
                for r in booked
            ]
            assert (
                seen
                == [("base", None, 200, False)] * 4
                + [("base", "silver", 200, False)]
                + [("silver", None, 250, True)] * 3
            ), f"member {m}: (tier, new tier, points, tier bonus) in booking order"
            history = await programme.tier_history(m)
            assert [(h["from_tier"], h["to_tier"]) for h in history] == [("base", "silver")]
            assert (await ledger.balances(m)).available == 4 * 200 + 200 + 3 * 250
    await assert_clean()
