"""The programme the property tests run: one partner earning 1 point and 1 QP
per EUR (electronics x2, vouchers excluded) and a programme-funded x2
promotion on groceries with a budget and a per-member limit. Created through
the rulebook, and returned as the earning engine sees it, so the model can
compute what a purchase earns with `partners.earning.evaluate`."""

from datetime import datetime
from decimal import Decimal

from partners.earning import EarnRule, Offer
from partners.rule_inputs import EarnRuleInput, PromotionInput
from partners.rulebook import Rulebook

ADMIN = "staff:property-tests"
MULTIPLIERS = {"electronics": Decimal(2)}


async def create_shop(
    rulebook: Rulebook,
    partner: str,
    promotion: str,
    valid_from: datetime,
    promotion_ends_at: datetime,
    budget: int,
    member_limit: int,
) -> tuple[EarnRule, Offer]:
    await rulebook.create_earn_rule(
        partner,
        EarnRuleInput(
            valid_from,
            "EUR",
            Decimal(1),
            category_multipliers=MULTIPLIERS,
            excluded_categories=["vouchers"],
            qp_per_unit=Decimal(1),
        ),
        ADMIN,
    )
    await rulebook.create_promotion(
        PromotionInput(
            promotion,
            "double groceries",
            valid_from,
            promotion_ends_at,
            multiplier=Decimal(2),
            partner_ids=[partner],
            categories=["groceries"],
            budget_points=budget,
            per_member_limit=member_limit,
        ),
        ADMIN,
    )
    rule = EarnRule(
        partner,
        1,
        valid_from,
        None,
        "EUR",
        Decimal(1),
        category_multipliers=MULTIPLIERS,
        excluded_categories=frozenset({"vouchers"}),
        qp_per_unit=Decimal(1),
    )
    offer = Offer(
        "promotion",
        promotion,
        "double groceries",
        valid_from,
        promotion_ends_at,
        "program",
        multiplier=Decimal(2),
        partner_ids=frozenset({partner}),
        categories=frozenset({"groceries"}),
    )
    return rule, offer
