"""Redemption arithmetic: what points are worth at a partner, and how many
points a basket may use. Pure functions; points are rounded up when the member
pays (never less than the value) and value is rounded down (never more)."""

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal

from partners.errors import InvalidPurchase
from partners.money import to_minor, units


@dataclass(frozen=True, slots=True)
class BurnRule:
    partner_id: str
    version: int
    valid_from: datetime
    valid_to: datetime | None
    currency: str
    points_per_unit: Decimal  # points for one currency unit of value (100: 1 point = 1 ct)
    min_points: int = 1
    step: int = 1
    max_basket_share: Decimal = Decimal(1)

    def in_force(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)


@dataclass(frozen=True, slots=True)
class RedemptionQuote:
    points: int
    value_minor: int
    max_points: int  # the most points this basket may use
    discount: Decimal


def _rate(rule: BurnRule, discount: Decimal) -> Decimal:
    return rule.points_per_unit * (1 - discount)


def value_of_points(rule: BurnRule, points: int, discount: Decimal = Decimal(0)) -> int:
    """Minor units that `points` pay for (rounded down)."""
    return to_minor(Decimal(points) / _rate(rule, discount), rule.currency, "floor")


def max_points_for_basket(rule: BurnRule, basket_minor: int, discount: Decimal = Decimal(0)) -> int:
    limit_units = units(basket_minor, rule.currency) * rule.max_basket_share
    points = int((limit_units * _rate(rule, discount)).to_integral_value(rounding="ROUND_FLOOR"))
    return points - points % rule.step


def quote_redemption(
    rule: BurnRule, basket_minor: int, points: int, discount: Decimal = Decimal(0)
) -> RedemptionQuote:
    """Check `points` against the rule and the basket; the value they pay."""
    if basket_minor <= 0:
        raise InvalidPurchase("the basket must be worth more than zero")
    ceiling = max_points_for_basket(rule, basket_minor, discount)
    if points < rule.min_points:
        raise InvalidPurchase(
            f"at least {rule.min_points} points per redemption", min_points=rule.min_points
        )
    if points % rule.step:
        raise InvalidPurchase(f"points are redeemed in steps of {rule.step}", step=rule.step)
    if points > ceiling:
        raise InvalidPurchase(f"this basket may use at most {ceiling} points", max_points=ceiling)
    return RedemptionQuote(points, value_of_points(rule, points, discount), ceiling, discount)


def points_for_value(rule: BurnRule, value_minor: int, discount: Decimal = Decimal(0)) -> int:
    """Points needed to pay `value_minor` (rounded up, then up to the step)."""
    exact = units(value_minor, rule.currency) * _rate(rule, discount)
    points = int(exact.to_integral_value(ROUND_CEILING))
    points += -points % rule.step
    return max(points, rule.min_points)
