"""The programme against the real PostgreSQL: rules from the rulebook applied
to earnings, versions by purchase time, quotes, coupons, caps (net of
returns), budgets under concurrency (given back by returns racing earnings),
tier upgrades and requalification, and a registered partner's contract
bounding earnings made through the service."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import event, text

from ledger.commands import Earn
from ledger.errors import DuplicatePartnerReference
from ledger.expiry import RollingToQuarterEnd
from ledger.service import LedgerConfig, LedgerService
from partners.earning import Purchase, PurchaseLine
from partners.errors import (
    CouponNotFound,
    CouponNotUsable,
    CurrencyMismatch,
    NoRuleInForce,
    PurchaseTimeOutsideWindow,
    UnknownCategory,
)
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import CouponInput, EarnRuleInput, PromotionInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox

FROM = datetime(2024, 1, 1, tzinfo=UTC)
ADMIN = "staff:tests"


@pytest.fixture
def rules(ledger) -> Rulebook:
    return Rulebook(ledger)


@pytest.fixture
def programme(ledger, programme_tiers) -> Programme:
    return Programme(ledger)


def buy(partner, *lines, at=None, currency="EUR") -> Purchase:
    return Purchase(
        partner, at or datetime.now(UTC), currency, tuple(PurchaseLine(a, c) for a, c in lines)
    )


async def retailer(rules, new_partner, **overrides) -> str:
    partner = await new_partner("shop")
    await retail_rule(rules, partner, **overrides)
    return partner


async def retail_rule(rules, partner, **overrides) -> None:
    rule = dict(
        category_multipliers={"electronics": Decimal(2)},
        excluded_categories=["vouchers"],
        qp_per_unit=Decimal("0.1"),
    )
    rule.update(overrides)
    await rules.create_earn_rule(partner, EarnRuleInput(FROM, "EUR", Decimal("0.5"), **rule), ADMIN)


async def test_an_earning_posts_every_line_to_its_funder(
    rules, programme, ledger, new_member, new_partner, new_id, assert_clean
):
    partner, member = await retailer(rules, new_partner), await new_member()
    code = new_id("PROMO").upper()
    now = datetime.now(UTC)
    await rules.create_promotion(
        PromotionInput(
            code,
            "double groceries",
            now - timedelta(days=1),
            now + timedelta(days=1),
            multiplier=Decimal(2),
            partner_ids=[partner],
            categories=["groceries"],
        ),
        ADMIN,
    )
    receipt = await programme.earn_purchase(
        member, buy(partner, (4599, "groceries"), (10000, "electronics"), (2000, "vouchers")), "R-1"
    )
    assert [(ln.kind, ln.amount) for ln in receipt.earning.lines] == [
        ("base", 72),
        ("category", 50),
        ("promotion", 22),
        ("qualifying", 14),
    ]
    assert receipt.balances.available == 144 and receipt.balances.qp == 14
    entry = await ledger.entry(receipt.entry_id)

    def paid_by(account: str) -> int:
        return sum(p.amount for p in entry.postings if p.account == account)

    assert paid_by(f"partner:{partner}:issued") == -72 - 50
    assert paid_by("program:promotions") == -22
    assert [line["kind"] for line in entry.breakdown] == [
        "base",
        "category",
        "promotion",
        "qualifying",
    ]
    await assert_clean()


async def test_the_rule_in_force_at_the_purchase_time_applies(
    rules, timed_ledger, clock, programme_tiers, new_member, new_partner
):
    # A registered partner's contract takes purchases reported at most 30 days
    # late: the ledger's clock receives each one shortly after it was made.
    programme = Programme(timed_ledger)
    partner, member = await new_partner("shop"), await new_member()
    switch = datetime(2026, 7, 1, tzinfo=UTC)
    await rules.create_earn_rule(
        partner, EarnRuleInput(FROM, "EUR", Decimal(1), valid_to=switch), ADMIN
    )
    await rules.create_earn_rule(partner, EarnRuleInput(switch, "EUR", Decimal(3)), ADMIN)
    clock.now = switch
    before = await programme.earn_purchase(
        member, buy(partner, (1000, "groceries"), at=switch - timedelta(seconds=1)), "R-1"
    )
    after = await programme.earn_purchase(
        member, buy(partner, (1000, "groceries"), at=switch), "R-2"
    )
    assert (before.earning.points, before.earning.rule_version) == (10, 1)
    assert (after.earning.points, after.earning.rule_version) == (30, 2)
    clock.now = FROM
    with pytest.raises(NoRuleInForce):
        await programme.quote(member, buy(partner, (1000, "groceries"), at=FROM - timedelta(1)))
    await rules.retire_rule("earn_rules", partner, 2, ADMIN)
    clock.now = switch
    with pytest.raises(NoRuleInForce):
        await programme.quote(member, buy(partner, (1000, "groceries"), at=switch))


async def test_bad_purchases_are_refused(rules, programme, new_member, new_partner):
    partner, member = await retailer(rules, new_partner), await new_member()
    with pytest.raises(CurrencyMismatch):
        await programme.quote(member, buy(partner, (1000, "groceries"), currency="USD"))
    with pytest.raises(UnknownCategory):
        await programme.quote(member, buy(partner, (1000, "spaceships")))


async def test_a_quote_matches_the_earning_and_uses_no_budget(
    rules, programme, engine, new_member, new_partner, new_id
):
    partner, member = await retailer(rules, new_partner), await new_member()
    code, now = new_id("Q").upper(), datetime.now(UTC)
    await rules.create_promotion(
        PromotionInput(
            code,
            "bonus",
            now - timedelta(days=1),
            now + timedelta(days=1),
            fixed_bonus=25,
            partner_ids=[partner],
            budget_points=1000,
        ),
        ADMIN,
    )
    purchase = buy(partner, (2000, "groceries"))
    quoted = await programme.quote(member, purchase)
    await programme.quote(member, purchase)
    async with engine.connect() as conn:
        used = (
            await conn.execute(
                text("SELECT budget_used FROM promotions WHERE code = :c"), {"c": code}
            )
        ).scalar_one()
    assert used == 0
    earned = await programme.earn_purchase(member, purchase, "R-1")
    assert earned.earning == quoted
    async with engine.connect() as conn:
        used = (
            await conn.execute(
                text("SELECT budget_used FROM promotions WHERE code = :c"), {"c": code}
            )
        ).scalar_one()
    assert used == 25


async def test_coupons_are_activated_before_use_and_used_once(
    rules, programme, new_member, new_partner, new_id
):
    partner, member = await retailer(rules, new_partner), await new_member()
    code, now = new_id("C").upper(), datetime.now(UTC)
    await rules.create_coupon(
        CouponInput(
            code,
            "10x",
            now - timedelta(days=1),
            now + timedelta(days=30),
            multiplier=Decimal(10),
            partner_ids=[partner],
        ),
        ADMIN,
    )
    await rules.issue_coupon(code, [member], ADMIN)
    purchase = buy(partner, (1000, "groceries"))
    with pytest.raises(CouponNotUsable, match="not activated"):
        await programme.earn_purchase(member, purchase, "R-1", (code,))
    await programme.activate_coupon(member, code)
    assert (await programme.activate_coupon(member, code)).status == "activated"  # idempotent
    receipt = await programme.earn_purchase(member, purchase, "R-2", (code,))
    assert receipt.earning.points == 5 + 45  # base 5, coupon 10x: 45 more
    with pytest.raises(CouponNotUsable, match="already used"):
        await programme.earn_purchase(member, purchase, "R-3", (code,))
    with pytest.raises(CouponNotFound):
        await programme.activate_coupon(await new_member(), code)
    assert [c.status for c in await programme.coupons(member)] == ["used"]


async def test_cap_per_member_and_period(rules, programme, new_member, new_partner):
    partner = await retailer(rules, new_partner, cap_per_period=100, cap_period="month")
    member = await new_member()
    first = await programme.earn_purchase(member, buy(partner, (16000, "groceries")), "R-1")
    second = await programme.earn_purchase(member, buy(partner, (16000, "groceries")), "R-2")
    assert first.earning.points == 80
    assert second.earning.points == 20  # only 20 left of the month's 100


async def test_the_period_cap_counts_net_of_returns(rules, programme, new_member, new_partner):
    partner = await retailer(rules, new_partner, cap_per_period=100, cap_period="month")
    member = await new_member()
    first = await programme.earn_purchase(member, buy(partner, (16000, "groceries")), "R-1")
    assert first.earning.points == 80
    await programme.return_purchase(partner, "R-1", "R-1-back", 16000)
    # The returned purchase no longer counts: the whole cap is there again.
    second = await programme.earn_purchase(member, buy(partner, (16000, "groceries")), "R-2")
    assert second.earning.points == 80
    returned = await programme.return_purchase(partner, "R-2", "R-2-half", 8000)
    assert returned.points_reversed == 40
    third = await programme.earn_purchase(member, buy(partner, (16000, "groceries")), "R-3")
    assert third.earning.points == 60  # 100 less the 40 R-2 kept


async def test_a_return_reference_is_used_once_even_when_it_takes_back_no_points(
    rules, programme, new_member, new_partner
):
    """0.5 points per EUR: 1.50 EUR back is worth no whole point (no entry is
    posted), yet the return's reference is the partner's for good."""
    partner = await retailer(rules, new_partner)
    member = await new_member()
    await programme.earn_purchase(member, buy(partner, (10000, "groceries")), "R")
    await programme.earn_purchase(member, buy(partner, (100, "groceries")), "SMALL")  # 0 points
    first = await programme.return_purchase(partner, "R", "RR", 150)
    assert (first.entry_id, first.points_reversed, first.returned_minor) == (None, 0, 150)
    with pytest.raises(DuplicatePartnerReference):  # the same return sent again
        await programme.return_purchase(partner, "R", "RR", 150)
    for used in ("R", "SMALL"):  # a purchase's reference is not a return's
        with pytest.raises(DuplicatePartnerReference):
            await programme.return_purchase(partner, "R", used, 100)
    with pytest.raises(DuplicatePartnerReference):  # nor a return's a purchase's
        await programme.earn_purchase(member, buy(partner, (2000, "groceries")), "RR")
    taking = await programme.return_purchase(partner, "R", "RR-2", 2000)
    assert (taking.points_reversed, taking.returned_minor) == (10, 2150)
    with pytest.raises(DuplicatePartnerReference):
        await programme.return_purchase(partner, "R", "RR-2", 2000)
    left = await programme.return_purchase(partner, "R", "RR-3", 7850)
    assert left.returned_minor == 10000  # each return counted once


async def test_a_registered_partners_contract_bounds_earnings(
    rules, programme, engine, new_id, new_member
):
    partner = new_id("shop")
    await Registry(engine, SecretBox(Fernet.generate_key())).create_partner(
        PartnerInput(partner, "Late shop", return_window_days=7, late_submission_days=1),
        ADMIN,
    )
    await retail_rule(rules, partner)
    member, now = await new_member(), datetime.now(UTC)
    old = buy(partner, (1000, "groceries"), at=now - timedelta(days=2))
    with pytest.raises(PurchaseTimeOutsideWindow):
        await programme.quote(member, old)
    with pytest.raises(PurchaseTimeOutsideWindow):
        await programme.earn_purchase(member, old, "R-1")
    # A caller's own release time never cuts the contract's return window short...
    early = await programme.earn_purchase(
        member, buy(partner, (1000, "groceries")), "R-1", release_at=now + timedelta(days=1)
    )
    assert timedelta(days=7) <= early.release_at - now <= timedelta(days=7, seconds=5)
    # ...but may make the points wait longer.
    late = await programme.earn_purchase(
        member, buy(partner, (1000, "groceries")), "R-2", release_at=now + timedelta(days=20)
    )
    assert late.release_at == now + timedelta(days=20)


async def test_two_purchases_racing_for_the_last_budget_never_pay_twice(
    rules, programme, engine, new_member, new_partner, new_id, assert_clean
):
    partner, now = await retailer(rules, new_partner), datetime.now(UTC)
    code = new_id("B").upper()
    await rules.create_promotion(
        PromotionInput(
            code,
            "last 100",
            now - timedelta(days=1),
            now + timedelta(days=1),
            fixed_bonus=100,
            partner_ids=[partner],
            budget_points=100,
        ),
        ADMIN,
    )
    buyers = [await new_member() for _ in range(6)]
    receipts = await asyncio.gather(
        *(
            programme.earn_purchase(buyer, buy(partner, (1000, "groceries")), f"R-{i}")
            for i, buyer in enumerate(buyers)
        )
    )
    paid = sum(ln.amount for r in receipts for ln in r.earning.lines if ln.source == code)
    assert paid == 100
    async with engine.connect() as conn:
        used = (
            await conn.execute(
                text("SELECT budget_used FROM promotions WHERE code = :c"), {"c": code}
            )
        ).scalar_one()
    assert used == 100
    await assert_clean()


async def test_crossing_a_threshold_upgrades_at_once_and_is_recorded(
    rules, programme, new_member, new_partner
):
    partner = await retailer(rules, new_partner, qp_per_unit=Decimal(1))
    member = await new_member()
    first = await programme.earn_purchase(member, buy(partner, (100000, "groceries")), "R-1")
    assert first.new_tier == "silver" and first.earning.tier == "base"
    second = await programme.earn_purchase(member, buy(partner, (10000, "groceries")), "R-2")
    assert second.earning.tier == "silver"
    assert ("tier", 12) in [(ln.kind, ln.amount) for ln in second.earning.lines]  # 50 * 0.25
    state = await programme.tier_progress(member)
    assert (state.tier.code, state.qp_this_period, state.next_tier.code, state.qp_needed) == (
        "silver",
        1100,
        "gold",
        1900,
    )
    history = await programme.tier_history(member)
    assert [(h["from_tier"], h["to_tier"]) for h in history] == [("base", "silver")]


async def test_requalification_lowers_a_status_that_was_not_earned_again(
    timed_ledger, clock, programme_tiers, new_member, new_partner, engine
):
    rules, programme = Rulebook(timed_ledger), Programme(timed_ledger)
    partner = await retailer(rules, new_partner, qp_per_unit=Decimal(1))
    member = await new_member()
    await programme.earn_purchase(member, buy(partner, (100000, "groceries"), at=clock.now), "R-1")
    assert (await programme.tier_progress(member)).tier.code == "silver"
    clock.now = datetime(clock.now.year + 2, 3, 1, 1, tzinfo=UTC)
    assert await programme.requalify_tiers() >= 1
    assert (await programme.tier_progress(member)).tier.code == "base"
    history = await programme.tier_history(member)
    assert history[-1]["to_tier"] == "base" and "requalification" in history[-1]["reason"]


async def test_expiry_protected_members_keep_their_points(
    engine, clock, programme_tiers, new_member, new_partner
):
    # 12-month expiry, so points expire while the gold status (to end of
    # February of the year after next) still holds.
    timed_ledger = LedgerService(engine, LedgerConfig(RollingToQuarterEnd(12)), clock=clock)
    rules, programme = Rulebook(timed_ledger), Programme(timed_ledger)
    partner = await retailer(rules, new_partner, qp_per_unit=Decimal(1))
    gold, plain = await new_member(), await new_member()
    clock.now = datetime(2026, 5, 10, tzinfo=UTC)  # lots expire 1 July 2027, gold lasts to 2028
    await programme.earn_purchase(gold, buy(partner, (300000, "groceries"), at=clock.now), "R-1")
    await timed_ledger.earn(Earn.simple(plain, partner, "R-2", 100))
    assert (await programme.tier_progress(gold)).tier.code == "gold"
    clock.now = datetime(2027, 9, 1, tzinfo=UTC)
    await timed_ledger.expire_points()
    assert (await timed_ledger.balances(gold)).available == 1500
    assert (await timed_ledger.balances(plain)).available == 0


async def test_concurrent_returns_and_earns_keep_the_budget_equal_to_the_promotion_standing(
    rules, programme, engine, new_member, new_partner, new_id, assert_clean
):
    """Purchases and (partial) returns racing under a budgeted promotion: the
    budget used and every member's usage are what the promotion's lines still
    stand at, after the reversals (program:promotions pays only this promotion
    here, so its postings are the promotion's standing)."""
    partner, now = await retailer(rules, new_partner), datetime.now(UTC)
    code = new_id("RACE").upper()
    await rules.create_promotion(
        PromotionInput(
            code,
            "double groceries, budgeted",
            now - timedelta(days=1),
            now + timedelta(days=1),
            multiplier=Decimal(2),
            partner_ids=[partner],
            categories=["groceries"],
            budget_points=400,
            per_member_limit=150,
        ),
        ADMIN,
    )
    members = [await new_member() for _ in range(3)]
    for i in range(6):  # the purchases the returns come back from
        await programme.earn_purchase(
            members[i % 3], buy(partner, (7_777, "groceries"), (1_001, "electronics")), f"P-{i}"
        )

    async def give_back(i: int) -> None:
        for part, amount in enumerate((3_001, 2_999, 2_778)):
            await programme.return_purchase(partner, f"P-{i}", f"P-{i}-R{part}", amount)

    async def earn_more(i: int) -> None:
        for n in range(3):
            await programme.earn_purchase(
                members[i % 3], buy(partner, (5_555, "groceries")), f"N-{i}-{n}"
            )

    retries = dict(programme.ledger.retries)
    await asyncio.gather(*(give_back(i) for i in range(4)), *(earn_more(i) for i in range(4)))
    # One lock order (purchase, budgeted promotions, member): no deadlock, no
    # serialization failure to retry.
    for state in ("40P01", "40001"):
        assert programme.ledger.retries[state] == retries.get(state, 0), programme.ledger.retries
    async with engine.connect() as conn:
        used = (
            await conn.execute(
                text("SELECT budget_used FROM promotions WHERE code = :c"), {"c": code}
            )
        ).scalar_one()
        usage = dict(
            (
                await conn.execute(
                    text(
                        "SELECT u.member_id, u.points FROM promotion_usage u JOIN promotions p "
                        "ON p.id = u.promotion_id WHERE p.code = :c"
                    ),
                    {"c": code},
                )
            ).all()
        )
        standing = dict(
            (
                await conn.execute(
                    text(
                        "SELECT e.member_id, -sum(p.amount)::bigint FROM postings p "
                        "JOIN journal_entries e ON e.id = p.entry_id "
                        "WHERE e.member_id = ANY(CAST(:m AS text[])) "
                        "AND p.account = 'program:promotions' GROUP BY 1"
                    ),
                    {"m": members},
                )
            ).all()
        )
    assert used == sum(standing.values()) <= 400
    assert usage == standing and all(v <= 150 for v in usage.values())
    # The four purchases returned whole gave back everything they got.
    assert sum(standing.values()) > 0
    await assert_clean()


async def test_a_basket_a_budgeted_promotion_cannot_pay_for_never_waits_on_it(
    rules, programme, engine, new_member, new_partner, new_id
):
    partner, member, now = await retailer(rules, new_partner), await new_member(), datetime.now(UTC)
    code = new_id("DRUG").upper()
    await rules.create_promotion(
        PromotionInput(
            code,
            "double drugstore products",
            now - timedelta(days=1),
            now + timedelta(days=1),
            multiplier=Decimal(2),
            partner_ids=[partner],
            categories=["drugstore"],
            budget_points=10_000,
        ),
        ADMIN,
    )
    async with engine.begin() as holder:
        # Another earning holds the promotion's budget row...
        await holder.execute(
            text("SELECT 1 FROM promotions WHERE code = :c FOR UPDATE"), {"c": code}
        )
        # ...and a groceries-only basket at the same partner goes through meanwhile.
        receipt = await asyncio.wait_for(
            programme.earn_purchase(member, buy(partner, (2000, "groceries")), new_id("R")),
            timeout=2,
        )
        assert receipt.earning.points == 10
    promoted = await programme.earn_purchase(member, buy(partner, (2000, "drugstore")), new_id("R"))
    assert promoted.earning.points == 20


async def test_a_warm_definition_cache_sees_every_admin_change_at_once(
    rules, programme, ledger, engine, new_member, new_partner, new_id
):
    """The programme caches contracts, rules, categories, tiers and promotions
    per process; an admin's change (here through another Rulebook, as another
    worker would) bumps the definitions' version, so the next earning uses it."""
    partner, member = await retailer(rules, new_partner), await new_member()
    first = await programme.earn_purchase(member, buy(partner, (2000, "groceries")), "R-1")
    assert (first.earning.rule_version, first.earning.points) == (1, 10)
    other_worker = Rulebook(LedgerService(engine))
    await other_worker.create_earn_rule(
        partner, EarnRuleInput(datetime.now(UTC), "EUR", Decimal(3)), ADMIN
    )
    second = await programme.earn_purchase(member, buy(partner, (2000, "groceries")), "R-2")
    assert (second.earning.rule_version, second.earning.points) == (2, 60)
    code = new_id("FLASH").upper()
    now = datetime.now(UTC)
    await other_worker.create_promotion(
        PromotionInput(
            code, "flash", now - timedelta(minutes=1), now + timedelta(hours=1),
            fixed_bonus=7, partner_ids=[partner],
        ),
        ADMIN,
    )  # fmt: skip
    third = await programme.earn_purchase(member, buy(partner, (2000, "groceries")), "R-3")
    assert ("promotion", 7) in [(ln.kind, ln.amount) for ln in third.earning.lines]
    await other_worker.retire_offer("promotions", code, ADMIN)
    fourth = await programme.earn_purchase(member, buy(partner, (2000, "groceries")), "R-4")
    assert fourth.earning.points == 60


async def test_a_budgeted_promotion_another_worker_adds_is_locked_before_the_member(
    rules, programme, engine, new_member, new_partner, new_id
):
    """The process knew no budgeted promotion at the partner, so its earnings
    take the member's lock in their opening statement. Another worker adds one:
    the next earning reads the new definitions, runs again in the full lock
    order (the budget's row, then the member) and pays the promotion from its
    budget. While it waits for the budget's row it holds no member."""
    partner, member = await retailer(rules, new_partner), await new_member()
    await programme.earn_purchase(member, buy(partner, (2000, "groceries")), new_id("R"))
    code, now = new_id("BUDGET").upper(), datetime.now(UTC)
    await Rulebook(LedgerService(engine)).create_promotion(
        PromotionInput(
            code,
            "bonus while the budget lasts",
            now - timedelta(days=1),
            now + timedelta(days=1),
            fixed_bonus=50,
            partner_ids=[partner],
            budget_points=1_000,
        ),
        ADMIN,
    )
    async with engine.begin() as holder:
        await holder.execute(
            text("SELECT 1 FROM promotions WHERE code = :c FOR UPDATE"), {"c": code}
        )
        earning = asyncio.create_task(
            programme.earn_purchase(member, buy(partner, (2000, "groceries")), new_id("R"))
        )
        await asyncio.sleep(0.5)
        assert not earning.done()  # waiting for the budget's row...
        async with engine.begin() as other:  # ...holding no member
            await other.execute(
                text(
                    "SELECT 1 FROM balances WHERE account = :a AND asset = 'PTS' FOR UPDATE NOWAIT"
                ),
                {"a": f"member:{member}:available"},
            )
    receipt = await asyncio.wait_for(earning, timeout=10)
    assert ("promotion", 50) in [(ln.kind, ln.amount) for ln in receipt.earning.lines]
    async with engine.connect() as conn:
        used = (
            await conn.execute(
                text("SELECT budget_used FROM promotions WHERE code = :c"), {"c": code}
            )
        ).scalar_one()
    assert used == 50


async def test_requalification_is_set_based_lowering_keeping_and_unprotecting(
    engine, clock, programme_tiers, new_member, new_partner
):
    """Every member whose status ran out is requalified on the last complete
    period in one transaction of a constant number of statements: gold earned
    only silver's QP and drops to silver (its points lose the protection and
    get a fresh validity from today), silver that earned nothing drops to base."""
    timed_ledger = LedgerService(engine, LedgerConfig(RollingToQuarterEnd(12)), clock=clock)
    rules, programme = Rulebook(timed_ledger), Programme(timed_ledger)
    partner = await retailer(rules, new_partner, qp_per_unit=Decimal(1))
    gold, silver = await new_member(), await new_member()
    clock.now = datetime(2026, 5, 10, tzinfo=UTC)
    await programme.earn_purchase(gold, buy(partner, (300000, "groceries"), at=clock.now), "G-1")
    await programme.earn_purchase(silver, buy(partner, (100000, "groceries"), at=clock.now), "S-1")
    clock.now = datetime(2027, 6, 1, tzinfo=UTC)
    await programme.earn_purchase(gold, buy(partner, (150000, "groceries"), at=clock.now), "G-2")
    assert (await programme.tier_progress(gold)).tier.code == "gold"
    clock.now = datetime(2028, 3, 1, 1, tzinfo=UTC)
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        assert await programme.requalify_tiers() >= 2
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert len(statements) <= 8, statements
    assert (await programme.tier_progress(gold)).tier.code == "silver"
    assert (await programme.tier_progress(silver)).tier.code == "base"
    history = await programme.tier_history(gold)
    assert history[-1]["from_tier"] == "gold" and history[-1]["to_tier"] == "silver"
    assert history[-1]["reason"] == "requalification: 1500 QP in the last period"
    async with engine.connect() as conn:
        earliest = (
            await conn.execute(
                text("SELECT min(expires_at) FROM lots WHERE member_id = :m AND remaining > 0"),
                {"m": gold},
            )
        ).scalar_one()
    assert earliest >= RollingToQuarterEnd(12).expires_at(clock.now)
    assert await programme.requalify_tiers() == 0  # nothing due any more
