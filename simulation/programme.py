"""The generated demo's programme as the registry and the rulebook take it:
the six partners of simulation/model.py with their contracts, earn and burn
rules, two tiers, two promotions (one the supermarket pays for, one the
programme pays for), two coupons (the pharmacy's, the programme's), and the
lot expiry the demo runs with.

Points are worth a cent at every till (100 points per EUR redeemed, from 200
points in steps of 10; at most half of a fuel basket; the airline from 5,000
in steps of 100). Earning: 1 point per 2 EUR at the supermarket, the
pharmacy and the electronics store, at the fuel station too with the shop x2
(at most 500 a purchase), 1 per EUR at the fashion store, 2 per EUR at the
airline; 1 QP per EUR, the airline 25 QP a flight in economy and 150 in
business. Silver from 2,000 QP in a calendar year (x1.25), gold from 6,000
(x1.5, its points do not expire). Points expire `expiry_months` (12) months
after earning, at the end of that quarter: within the demo's 18 months, so
the expiry job has work and the outlook shows the quarters' ends."""

from datetime import timedelta
from decimal import Decimal

from insights.reading import add_months
from ledger.expiry import RollingToQuarterEnd
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import (
    BurnRuleInput,
    CouponInput,
    EarnRuleInput,
    PromotionInput,
    TierInput,
)
from partners.rulebook import Rulebook
from simulation.model import PARTNERS, DemoConfig, month_bounds, offers

ACTOR = "demo:generator"
# Partners report a step's purchases at its end (simulation/loader.py): up to a month late.
LATE_DAYS = 35
CURRENCY = "EUR"
D = Decimal

# Contract terms: the return window (points wait in `pending`), what the
# partner pays per point issued, what it is reimbursed per point redeemed.
CONTRACTS = {
    "supermarket": (0, D("0.01")),
    "fuel": (0, D("0.01")),
    "pharmacy": (14, D("0.01")),
    "fashion": (30, D("0.01")),
    "electronics": (30, D("0.01")),
    "airline": (0, D("0.008")),
}
EARN_RULES = {
    "supermarket": {"points_per_unit": D("0.5"), "excluded_categories": ["deposit", "tobacco"]},
    "fuel": {
        "points_per_unit": D("0.5"),
        "category_multipliers": {"shop": D(2)},
        "excluded_categories": ["deposit", "tobacco"],
        "cap_per_transaction": 500,
    },
    "pharmacy": {"points_per_unit": D("0.5"), "excluded_categories": ["vouchers", "tobacco"]},
    "fashion": {"points_per_unit": D(1)},
    "electronics": {"points_per_unit": D("0.5"), "excluded_categories": ["vouchers"]},
    "airline": {
        "points_per_unit": D(2),
        "qp_per_unit": D(0),
        "category_qp": {"flight-economy": 25, "flight-business": 150},
    },
}
# min points, step, the most of a basket points may pay
BURN_RULES = {
    "supermarket": (200, 10, D(1)),
    "fuel": (200, 10, D("0.5")),
    "pharmacy": (200, 10, D(1)),
    "fashion": (200, 10, D(1)),
    "electronics": (200, 10, D(1)),
    "airline": (5000, 100, D(1)),
}
TIERS = {
    "silver": TierInput("Silver", 1, 2000, D("1.25"), D("0.05")),
    "gold": TierInput("Gold", 2, 6000, D("1.5"), D("0.10"), expiry_protected=True),
}


def expiry_policy(config: DemoConfig) -> RollingToQuarterEnd:
    return RollingToQuarterEnd(config.expiry_months)


def promotions(config: DemoConfig) -> list[PromotionInput]:
    offer = offers(config)
    fresh, _ = month_bounds(config, offer.fresh_triple)
    double, _ = month_bounds(config, offer.double_points)
    # Partners report weekly: a purchase in the window counts when reported after it.
    return [
        PromotionInput(
            "FRESH-TRIPLE",
            f"Triple points on groceries at FreshMart, {fresh:%B %Y} (days 1-28)",
            fresh,
            fresh + timedelta(days=28),
            funder="partner",
            multiplier=D(3),
            partner_ids=["supermarket"],
            categories=["groceries"],
            budget_points=config.members * 40,
            per_member_limit=400,
            accepts_late_submissions=True,
        ),
        PromotionInput(
            "DOUBLE-POINTS",
            f"Double points at every partner, {double:%B %Y}",
            double,
            add_months(double, 1),
            multiplier=D(2),
            budget_points=config.members * 100,
            per_member_limit=1000,
            accepts_late_submissions=True,
        ),
    ]


def coupons(config: DemoConfig) -> list[CouponInput]:
    offer = offers(config)
    pharmacy, _ = month_bounds(config, offer.pharmacy_coupon)
    bonus, _ = month_bounds(config, offer.bonus_coupon)
    return [
        CouponInput(
            "PHARMACY-10X",
            "10x points on pharmacy products",
            pharmacy,
            add_months(pharmacy, 1),
            multiplier=D(10),
            partner_ids=["pharmacy"],
            categories=["drugstore"],
        ),
        CouponInput(
            "BONUS-300",
            "300 bonus points on a purchase of 20 EUR or more",
            bonus,
            add_months(bonus, 1),
            fixed_bonus=300,
            min_basket_minor=2000,
        ),
    ]


async def define(registry: Registry, rules: Rulebook, config: DemoConfig) -> None:
    """Register the partners and put the rules, tiers and offers in place."""
    valid_from = month_bounds(config, 0)[0] - timedelta(days=1)
    for spec in PARTNERS:
        window, price = CONTRACTS[spec.id]
        await registry.create_partner(
            PartnerInput(
                spec.id,
                spec.name,
                return_window_days=window,
                price_per_point=price,
                redemption_value=D("0.01"),
                late_submission_days=LATE_DAYS,
            ),
            ACTOR,
        )
        earn = {"qp_per_unit": D(1), **EARN_RULES[spec.id]}
        await rules.create_earn_rule(spec.id, EarnRuleInput(valid_from, CURRENCY, **earn), ACTOR)
        minimum, step, share = BURN_RULES[spec.id]
        await rules.create_burn_rule(
            spec.id,
            BurnRuleInput(
                valid_from, CURRENCY, D(100), min_points=minimum, step=step, max_basket_share=share
            ),
            ACTOR,
        )
    for code, tier in TIERS.items():
        await rules.put_tier(code, tier, ACTOR)
    for promotion in promotions(config):
        await rules.create_promotion(promotion, ACTOR)
    for coupon in coupons(config):
        await rules.create_coupon(coupon, ACTOR)
