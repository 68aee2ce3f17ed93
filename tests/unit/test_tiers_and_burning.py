"""Tier evaluation and redemption arithmetic (pure)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from partners.burning import BurnRule, points_for_value, quote_redemption, value_of_points
from partners.errors import InvalidPurchase
from partners.tiers import Tier, after_earning, progress, requalify, status_valid_until, tier_for

SILVER = Tier("silver", "Silver", 1, 1000, Decimal("1.25"), Decimal("0.05"))
GOLD = Tier("gold", "Gold", 2, 3000, Decimal("1.5"), Decimal("0.10"), expiry_protected=True)
TIERS = [GOLD, SILVER]
AT = datetime(2026, 6, 1, tzinfo=UTC)


def test_tier_for_qp():
    assert tier_for(0, TIERS).code == "base"
    assert tier_for(999, TIERS).code == "base"
    assert tier_for(1000, TIERS) == SILVER
    assert tier_for(3500, TIERS) == GOLD


def test_status_lasts_until_end_of_february_of_the_year_after_next():
    assert status_valid_until(AT) == datetime(2028, 3, 1, tzinfo=UTC)


def test_upgrade_as_soon_as_the_threshold_is_crossed():
    base = tier_for(0, TIERS)
    assert after_earning(base, None, 999, TIERS, AT) is None
    assert after_earning(base, None, 1000, TIERS, AT) == (SILVER, datetime(2028, 3, 1, tzinfo=UTC))
    # Reaching silver again next year renews it; a lower tier never downgrades here.
    later = datetime(2027, 5, 1, tzinfo=UTC)
    assert after_earning(SILVER, datetime(2028, 3, 1, tzinfo=UTC), 1200, TIERS, later) == (
        SILVER,
        datetime(2029, 3, 1, tzinfo=UTC),
    )
    assert after_earning(GOLD, datetime(2028, 3, 1, tzinfo=UTC), 1200, TIERS, AT) is None


def test_requalification_keeps_lowers_or_raises():
    at = datetime(2028, 3, 1, tzinfo=UTC)
    assert requalify(3100, TIERS, at) == (GOLD, datetime(2029, 3, 1, tzinfo=UTC))
    assert requalify(1500, TIERS, at)[0] == SILVER
    assert requalify(10, TIERS, at) == (tier_for(0, TIERS), None)


def test_progress_to_the_next_tier():
    state = progress(SILVER, None, 1800, TIERS, AT)
    assert (state.next_tier, state.qp_needed) == (GOLD, 1200)
    assert state.period_end == datetime(2027, 1, 1, tzinfo=UTC)
    assert progress(GOLD, None, 5000, TIERS, AT).qp_needed == 0


RULE = BurnRule(
    "shop",
    1,
    datetime(2024, 1, 1, tzinfo=UTC),
    None,
    "EUR",
    Decimal(100),
    min_points=100,
    step=10,
    max_basket_share=Decimal("0.5"),
)


def test_points_are_worth_one_cent_and_a_tier_discount_makes_them_worth_more():
    assert value_of_points(RULE, 500) == 500  # 500 points: 5.00 EUR
    assert value_of_points(RULE, 500, Decimal("0.10")) == 555  # floor(500 / 0.9)
    assert points_for_value(RULE, 1234) == 1240  # up to the step
    assert points_for_value(RULE, 1234, Decimal("0.10")) == 1120  # ceil(1110.6) -> step


def test_redemption_checks_minimum_step_and_basket_share():
    quote = quote_redemption(RULE, 4000, 2000)
    assert (quote.points, quote.value_minor, quote.max_points) == (2000, 2000, 2000)
    for points in (90, 205, 2010):
        with pytest.raises(InvalidPurchase):
            quote_redemption(RULE, 4000, points)


def test_rolling_period_counts_the_last_365_days_up_to_now():
    from datetime import timedelta

    from partners.tiers import period_bounds

    leap = datetime(2028, 2, 29, 12, tzinfo=UTC)
    start, end = period_bounds(leap, "rolling")
    assert start == leap - timedelta(days=365) and start <= leap < end
