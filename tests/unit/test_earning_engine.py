"""The earning engine, and the arithmetic of a partner's contract that bounds
an earning (submission window, release time, credit): worked examples and
properties (pure, no database)."""

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from partners.contracts import (
    Contract,
    check_credit,
    check_purchase_time,
    credit_standing,
    liability_minor,
    release_time,
)
from partners.earning import EarnRule, Offer, Purchase, PurchaseLine, evaluate
from partners.errors import CreditLimitExceeded, PurchaseTimeOutsideWindow
from partners.money import units

T0 = datetime(2026, 6, 15, 12, tzinfo=UTC)
RETAIL = EarnRule(
    "shop",
    1,
    datetime(2024, 1, 1, tzinfo=UTC),
    None,
    "EUR",
    Decimal("0.5"),
    category_multipliers={"electronics": Decimal(2), "books": Decimal(0)},
    excluded_categories=frozenset({"vouchers", "tobacco"}),
    qp_per_unit=Decimal("0.1"),
)
CATEGORIES = ["groceries", "electronics", "vouchers", "tobacco", "books", "fashion"]


def purchase(*lines, at=T0, partner="shop") -> Purchase:
    return Purchase(partner, at, "EUR", tuple(PurchaseLine(a, c) for a, c in lines))


def offer(code="PROMO", **kwargs) -> Offer:
    defaults = dict(
        kind="promotion",
        code=code,
        name=code,
        starts_at=T0 - timedelta(days=1),
        ends_at=T0 + timedelta(days=1),
        multiplier=Decimal(2),
    )
    defaults.update(kwargs)
    return Offer(**defaults)


def test_worked_example_lines_and_reasons():
    earning = evaluate(
        purchase((4599, "groceries"), (10000, "electronics"), (2000, "vouchers")),
        RETAIL,
        "silver",
        Decimal("1.25"),
        [offer("DOUBLE", categories=frozenset({"groceries"}))],
    )
    assert [(ln.kind, ln.amount, ln.funder) for ln in earning.lines] == [
        ("base", 72, "partner"),  # floor((45.99 + 100.00) * 0.5)
        ("category", 50, "partner"),  # electronics x2: 100.00 * 0.5 more
        ("tier", 30, "program"),  # floor(122 * 0.25)
        ("promotion", 22, "program"),  # floor(45.99 * 0.5 * (2 - 1))
        ("qualifying", 14, "program"),  # floor(145.99 * 0.1)
    ]
    assert earning.points == 174 and earning.qualifying_points == 14


def test_excluded_and_zero_multiplier_categories_earn_nothing():
    earning = evaluate(purchase((5000, "vouchers"), (3000, "tobacco"), (2000, "books")), RETAIL)
    assert earning.points == 0 and earning.lines == ()


def test_minimum_spend():
    strict = EarnRule("shop", 1, RETAIL.valid_from, None, "EUR", Decimal(1), min_spend_minor=1000)
    assert evaluate(purchase((999, "groceries")), strict).points == 0
    assert evaluate(purchase((1000, "groceries")), strict).points == 10


def test_exclusive_promotion_stands_alone_only_when_better():
    lines = ((10000, "groceries"),)
    small_exclusive = offer("EXCL", multiplier=Decimal("1.5"), exclusive=True)
    combinable = [offer("A"), offer("B", fixed_bonus=10, multiplier=None)]
    earning = evaluate(purchase(*lines), RETAIL, offers=[small_exclusive, *combinable])
    assert {ln.source for ln in earning.lines if ln.kind == "promotion"} == {"A", "B"}
    big_exclusive = offer("BIG", multiplier=Decimal(10), exclusive=True)
    earning = evaluate(purchase(*lines), RETAIL, offers=[big_exclusive, *combinable])
    assert {ln.source for ln in earning.lines if ln.kind == "promotion"} == {"BIG"}


def test_offers_respect_partner_tier_and_minimum_spend():
    lines = ((10000, "groceries"),)
    assert (
        evaluate(purchase(*lines), RETAIL, offers=[offer(partner_ids=frozenset({"x"}))]).points
        == 50
    )
    assert (
        evaluate(purchase(*lines), RETAIL, "base", offers=[offer(tiers=frozenset({"gold"}))]).points
        == 50
    )
    assert evaluate(purchase(*lines), RETAIL, offers=[offer(min_spend_minor=10001)]).points == 50
    assert evaluate(purchase(*lines), RETAIL, offers=[offer()]).points == 100


def test_validity_windows_at_their_edges():
    rule = EarnRule("shop", 2, T0, T0 + timedelta(days=1), "EUR", Decimal(1))
    assert rule.in_force(T0)
    assert not rule.in_force(T0 - timedelta(microseconds=1))
    assert not rule.in_force(T0 + timedelta(days=1))  # the end is exclusive
    promo = offer(starts_at=T0, ends_at=T0 + timedelta(hours=1))
    assert promo.applies(purchase((100, "groceries"), at=T0), "base")
    assert not promo.applies(purchase((100, "groceries"), at=T0 + timedelta(hours=1)), "base")


amounts = st.integers(0, 500_000)
lines_strategy = st.lists(st.tuples(amounts, st.sampled_from(CATEGORIES)), min_size=1, max_size=8)
rules = st.builds(
    lambda ppu, cap_tx, cap_period, mult: EarnRule(
        "shop",
        1,
        datetime(2024, 1, 1, tzinfo=UTC),
        None,
        "EUR",
        ppu,
        category_multipliers={"electronics": mult, "books": Decimal(0)},
        excluded_categories=frozenset({"vouchers", "tobacco"}),
        qp_per_unit=ppu / 10,
        cap_per_transaction=cap_tx,
        cap_per_period=cap_period,
        cap_period="month" if cap_period else None,
    ),
    st.decimals(0, 10, places=2),
    st.one_of(st.none(), st.integers(1, 5000)),
    st.one_of(st.none(), st.integers(1, 20000)),
    st.decimals(0, 5, places=2),
)
offers_strategy = st.lists(
    st.builds(
        lambda i, mult, budget, limit, excl: offer(
            f"P{i}",
            multiplier=mult,
            remaining_budget=budget,
            member_remaining=limit,
            exclusive=excl,
        ),
        st.integers(0, 9),
        st.decimals("1.01", 20, places=2),
        st.one_of(st.none(), st.integers(0, 1000)),
        st.one_of(st.none(), st.integers(0, 500)),
        st.booleans(),
    ),
    max_size=3,
    unique_by=lambda o: o.code,
)


@given(lines=lines_strategy, rule=rules, offers=offers_strategy, so_far=st.integers(0, 30000))
def test_points_are_never_negative_and_caps_and_budgets_hold(lines, rule, offers, so_far):
    earning = evaluate(purchase(*lines), rule, "silver", Decimal("1.5"), offers, so_far)
    assert all(ln.amount > 0 for ln in earning.lines)
    own = earning.points_from("base") + earning.points_from("category")
    if rule.cap_per_transaction is not None:
        assert own <= rule.cap_per_transaction
    if rule.cap_per_period is not None:
        assert own <= max(rule.cap_per_period - so_far, 0)
    for o in offers:
        given_points = earning.points_from("promotion", o.code)
        if o.remaining_budget is not None:
            assert given_points <= o.remaining_budget
        if o.member_remaining is not None:
            assert given_points <= o.member_remaining


@given(lines=lines_strategy, rule=rules)
def test_excluded_lines_change_nothing(lines, rule):
    with_excluded = [*lines, (12345, "vouchers"), (999, "tobacco")]
    assert evaluate(purchase(*with_excluded), rule).lines == evaluate(purchase(*lines), rule).lines


@given(lines=lines_strategy, rule=rules)
def test_floor_rounding_never_gives_more_than_the_exact_value(lines, rule):
    earning = evaluate(purchase(*lines), rule)
    eligible = [(a, c) for a, c in lines if c not in rule.excluded_categories]
    exact = sum(
        (
            units(a, "EUR")
            * rule.points_per_unit
            * max(rule.category_multipliers.get(c, Decimal(1)), Decimal(0))
            for a, c in eligible
        ),
        Decimal(0),
    )
    assert earning.points_from("base") + earning.points_from("category") <= exact


@given(lines=lines_strategy, rule=rules, cut=st.integers(0, 8))
def test_splitting_a_basket_never_earns_more_than_the_caps_allow(lines, rule, cut):
    whole = evaluate(purchase(*lines), rule)
    first = evaluate(purchase(*lines[:cut]), rule) if lines[:cut] else None
    so_far = (first.points_from("base") + first.points_from("category")) if first else 0
    second = (
        evaluate(purchase(*lines[cut:]), rule, period_points_so_far=so_far) if lines[cut:] else None
    )
    split_own = so_far + (
        second.points_from("base") + second.points_from("category") if second else 0
    )
    if rule.cap_per_period is not None:
        assert split_own <= rule.cap_per_period  # the period cap binds the two together
    if rule.cap_per_transaction is None and rule.cap_per_period is None:
        # Without caps, rounding each part separately can only lose points.
        assert split_own <= whole.points_from("base") + whole.points_from("category")


def test_same_input_same_output():
    p = purchase((4599, "groceries"), (10000, "electronics"))
    assert evaluate(p, RETAIL, offers=[offer()]) == evaluate(p, RETAIL, offers=[offer()])


# -- late submissions and who pays ------------------------------------------------------------


def test_a_promotion_that_ended_before_the_purchase_was_reported_pays_only_if_it_accepts_late():
    promo = offer(starts_at=T0 - timedelta(days=7), ends_at=T0 + timedelta(hours=1))
    bought = purchase((10000, "groceries"))
    reported = {
        "never said": None,
        "while it ran": T0 + timedelta(minutes=59),
        "as it ended": T0 + timedelta(hours=1),
        "a week later": T0 + timedelta(days=7),
    }
    applies = {
        name: promo.applies(dataclasses.replace(bought, received_at=at), "base")
        for name, at in reported.items()
    }
    assert applies == {
        "never said": True,
        "while it ran": True,
        "as it ended": False,
        "a week later": False,
    }
    late = dataclasses.replace(promo, accepts_late_submissions=True)
    assert late.applies(dataclasses.replace(bought, received_at=T0 + timedelta(days=7)), "base")
    # The purchase time still has to lie in the window.
    after = purchase((10000, "groceries"), at=T0 + timedelta(hours=1))
    assert not late.applies(dataclasses.replace(after, received_at=after.occurred_at), "base")
    earning = evaluate(
        dataclasses.replace(bought, received_at=T0 + timedelta(days=7)), RETAIL, offers=[promo]
    )
    assert earning.points_from("promotion") == 0


def test_a_partner_pays_only_for_offers_that_name_it():
    bought = purchase((10000, "groceries"), partner="shop")
    assert offer(funder="program").applies(bought, "base")  # programme-wide
    assert not offer(funder="partner").applies(bought, "base")  # nobody named: nobody pays
    assert offer(funder="partner", partner_ids=frozenset({"shop"})).applies(bought, "base")
    assert not offer(funder="partner", partner_ids=frozenset({"other"})).applies(bought, "base")
    earning = evaluate(bought, RETAIL, offers=[offer("ANY", funder="partner")])
    assert earning.points_from("promotion") == 0


# -- the contract's arithmetic --------------------------------------------------------------

amend = msgspec.structs.replace  # a contract is a frozen msgspec struct

CONTRACT = Contract(
    partner_id="shop",
    version=1,
    effective_from=T0 - timedelta(days=365),
    currency="EUR",
    return_window_days=14,
    price_per_point=Decimal("0.008"),
    redemption_value=Decimal("0.01"),
    credit_limit_minor=1000,
    deposit_minor=0,
    late_submission_days=30,
    future_tolerance_seconds=300,
    requests_per_second=None,
    created_by="staff:tests",
    created_at=T0 - timedelta(days=365),
)


def test_the_submission_window_includes_its_edges():
    for at in (T0 - timedelta(days=30), T0, T0 + timedelta(seconds=300)):
        check_purchase_time(CONTRACT, at, T0)
    for at in (
        T0 - timedelta(days=30, microseconds=1),
        T0 + timedelta(seconds=300, microseconds=1),
    ):
        with pytest.raises(PurchaseTimeOutsideWindow) as refused:
            check_purchase_time(CONTRACT, at, T0)
        assert refused.value.extensions["earliest"] == (T0 - timedelta(days=30)).isoformat()
    strict = amend(CONTRACT, late_submission_days=0, future_tolerance_seconds=0)
    check_purchase_time(strict, T0, T0)
    with pytest.raises(PurchaseTimeOutsideWindow):
        check_purchase_time(strict, T0 - timedelta(seconds=1), T0)


def test_the_return_window_counts_from_the_purchase_but_never_before_its_receipt():
    assert release_time(CONTRACT, T0, T0) == T0 + timedelta(days=14)
    # Back-dated ten days: still 14 days from the receipt, not 4.
    assert release_time(CONTRACT, T0 - timedelta(days=10), T0) == T0 + timedelta(days=14)
    # A till a minute ahead of the server: from the purchase time.
    ahead = T0 + timedelta(minutes=1)
    assert release_time(CONTRACT, ahead, T0) == ahead + timedelta(days=14)
    assert release_time(amend(CONTRACT, return_window_days=0), T0, T0) is None


def test_liability_is_rounded_up_and_nets_redemptions():
    assert liability_minor(1, Decimal("0.008"), "EUR") == 1  # 0.8 cent owed: a cent
    assert liability_minor(1000, Decimal("0.008"), "EUR") == 800
    assert liability_minor(-1000, Decimal("0.008"), "EUR") == -800
    assert liability_minor(1, Decimal("0.008"), "JPY") == 1
    standing = credit_standing(CONTRACT, issued_balance=-1000, redeemed_balance=250)
    assert (standing.outstanding_points, standing.liability_minor, standing.headroom_minor) == (
        750,
        600,
        400,
    )
    unlimited = credit_standing(amend(CONTRACT, credit_limit_minor=None), -(10**9), 0)
    assert unlimited.headroom_minor is None
    check_credit(unlimited, 10**9)  # no limit, nothing refused


def test_an_earning_may_reach_the_limit_but_not_pass_it():
    standing = credit_standing(CONTRACT, issued_balance=-1000, redeemed_balance=0)  # 800 owed
    check_credit(standing, 250)  # 1,250 points: 1,000 owed, the limit
    with pytest.raises(CreditLimitExceeded) as refused:
        check_credit(standing, 251)  # 1,251 points: 1,000.8, rounded up to 1,001
    assert refused.value.extensions["credit_limit_minor"] == 1000
    assert refused.value.extensions["headroom_minor"] == 200
    check_credit(standing, 0)


def test_a_prepaid_partner_has_its_deposit_to_spend():
    prepaid = amend(CONTRACT, credit_limit_minor=0, deposit_minor=400)
    fresh = credit_standing(prepaid, 0, 0)
    assert fresh.headroom_minor == 400
    check_credit(fresh, 500)  # 500 points at 0.008: 4 EUR
    with pytest.raises(CreditLimitExceeded):
        check_credit(fresh, 501)


@given(
    issued=st.integers(0, 10**7),
    redeemed=st.integers(0, 10**7),
    points=st.integers(1, 10**6),
    limit=st.integers(0, 10**6),
    deposit=st.integers(0, 10**5),
    price=st.decimals("0.001", "0.05", places=3),
)
def test_an_accepted_earning_never_leaves_the_liability_beyond_limit_and_deposit(
    issued, redeemed, points, limit, deposit, price
):
    contract = amend(
        CONTRACT, credit_limit_minor=limit, deposit_minor=deposit, price_per_point=price
    )
    before = credit_standing(contract, -issued, redeemed)
    try:
        check_credit(before, points)
    except CreditLimitExceeded:
        assert liability_minor(before.outstanding_points + points, price, "EUR") > limit + deposit
        return
    after = credit_standing(contract, -issued - points, redeemed)
    assert after.liability_minor <= limit + deposit and after.headroom_minor >= 0
