"""The earning engine: worked examples and properties (pure, no database)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from partners.earning import EarnRule, Offer, Purchase, PurchaseLine, evaluate
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
