"""The earning engine: a pure function from a purchase, the member's tier, the
rule in force, the offers (promotions and activated coupons) and what the
member has already earned this period, to lines of points, each with its
amount, asset, reason and funder. Same input, same output; no I/O.

An offer applies by the purchase time; a promotion that had ended when the
purchase was reported pays only if it accepts late submissions. A
partner-funded offer applies only at the partners it names. An offer naming
clubs pays only to a member of one of them at the purchase time (the caller
says which clubs the member belonged to then). A co-funded offer's points
are split: the co-funder (a producer paying part of its dealer's promotion)
pays its share rounded down, the offer's own funder the rest.

Points never come out negative, rounding is explicit (floor by default, so a
line never gives more than its exact value), caps bound the rule's own points,
and budgets and per-member limits bound each offer.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from partners.money import round_points, units

PTS, QP = "PTS", "QP"


@dataclass(frozen=True, slots=True)
class PurchaseLine:
    amount_minor: int
    category: str
    sku: str | None = None


@dataclass(frozen=True, slots=True)
class Purchase:
    partner_id: str
    occurred_at: datetime
    currency: str
    lines: tuple[PurchaseLine, ...]
    # When the partner reported it; None: at the purchase time (never late).
    received_at: datetime | None = None

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)


@dataclass(frozen=True, slots=True)
class EarnRule:
    partner_id: str
    version: int
    valid_from: datetime
    valid_to: datetime | None
    currency: str
    points_per_unit: Decimal
    rounding: str = "floor"
    category_multipliers: Mapping[str, Decimal] = field(default_factory=dict)
    excluded_categories: frozenset[str] = frozenset()
    qp_per_unit: Decimal = Decimal(0)
    category_qp: Mapping[str, int] = field(default_factory=dict)  # fixed QP per line
    min_spend_minor: int = 0
    cap_per_transaction: int | None = None
    cap_per_period: int | None = None
    cap_period: str | None = None  # day | month | year

    def in_force(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)


@dataclass(frozen=True, slots=True)
class Offer:
    """A promotion (applies by itself) or an activated coupon of the member."""

    kind: str  # promotion | coupon
    code: str
    name: str
    starts_at: datetime
    ends_at: datetime
    funder: str = "program"
    multiplier: Decimal | None = None
    fixed_bonus: int | None = None
    partner_ids: frozenset[str] = frozenset()  # empty: every partner
    categories: frozenset[str] = frozenset()  # empty: every category
    tiers: frozenset[str] = frozenset()  # empty: every tier
    min_spend_minor: int = 0
    exclusive: bool = False
    remaining_budget: int | None = None  # None: unlimited
    member_remaining: int | None = None  # None: unlimited
    # Pays for a purchase in its window even when reported after it ended.
    accepts_late_submissions: bool = False
    clubs: frozenset[str] = frozenset()  # empty: every member
    co_funder: str | None = None  # a partner paying `co_funder_share` of the points
    co_funder_share: Decimal | None = None

    def applies(self, purchase: Purchase, tier: str, clubs: frozenset[str] = frozenset()) -> bool:
        return (
            self.starts_at <= purchase.occurred_at < self.ends_at
            and (not self.clubs or not self.clubs.isdisjoint(clubs))
            and (
                self.accepts_late_submissions
                or purchase.received_at is None
                or purchase.received_at < self.ends_at
            )
            and self.pays_at(purchase.partner_id)
            and (not self.tiers or tier in self.tiers)
            and purchase.total_minor >= self.min_spend_minor
            and (
                not self.categories or any(ln.category in self.categories for ln in purchase.lines)
            )
        )

    def pays_at(self, partner_id: str) -> bool:
        """An offer naming partners applies only at them; one naming none
        applies everywhere unless a partner funds it: a partner pays only for
        offers that name it."""
        if self.partner_ids:
            return partner_id in self.partner_ids
        return self.funder != "partner"


@dataclass(frozen=True, slots=True)
class PointsLine:
    amount: int
    asset: str
    kind: str  # base | category | tier | promotion | coupon | qualifying
    reason: str
    funder: str  # partner | program
    source: str | None = None  # promotion or coupon code


@dataclass(frozen=True, slots=True)
class Earning:
    lines: tuple[PointsLine, ...]
    rule_version: int

    @property
    def points(self) -> int:
        return sum(line.amount for line in self.lines if line.asset == PTS)

    @property
    def qualifying_points(self) -> int:
        return sum(line.amount for line in self.lines if line.asset == QP)

    def points_from(self, kind: str, source: str | None = None) -> int:
        return sum(
            line.amount
            for line in self.lines
            if line.kind == kind and (source is None or line.source == source)
        )


def _fmt(multiplier: Decimal) -> str:
    return f"x{multiplier.normalize():f}"


def evaluate(
    purchase: Purchase,
    rule: EarnRule,
    tier: str = "base",
    tier_multiplier: Decimal = Decimal(1),
    offers: Sequence[Offer] = (),
    period_points_so_far: int = 0,
    clubs: frozenset[str] = frozenset(),
) -> Earning:
    lines: list[PointsLine] = []
    # Excluded categories and a multiplier of zero earn nothing, QP included.
    eligible = [
        ln
        for ln in purchase.lines
        if ln.category not in rule.excluded_categories
        and rule.category_multipliers.get(ln.category, Decimal(1)) > 0
    ]
    spent_enough = purchase.total_minor >= rule.min_spend_minor

    def value(line: PurchaseLine) -> Decimal:
        return units(line.amount_minor, purchase.currency) * rule.points_per_unit

    # The rule's own points: base (a category multiplier below 1 lowers it) and
    # category bonuses, each line rounded on its own.
    rule_lines: list[PointsLine] = []
    if spent_enough and eligible:
        base_exact = sum(
            (
                value(ln) * min(rule.category_multipliers.get(ln.category, Decimal(1)), Decimal(1))
                for ln in eligible
            ),
            Decimal(0),
        )
        rule_lines.append(
            PointsLine(
                round_points(base_exact, rule.rounding),
                PTS,
                "base",
                f"base {rule.points_per_unit.normalize():f} per {purchase.currency}",
                "partner",
            )
        )
        for category in sorted({ln.category for ln in eligible}):
            multiplier = rule.category_multipliers.get(category, Decimal(1))
            if multiplier > 1:
                extra = sum((value(ln) for ln in eligible if ln.category == category), Decimal(0))
                rule_lines.append(
                    PointsLine(
                        round_points(extra * (multiplier - 1), rule.rounding),
                        PTS,
                        "category",
                        f"category {category} {_fmt(multiplier)}",
                        "partner",
                        category,
                    )
                )
    rule_lines = _cap(rule_lines, rule, period_points_so_far)
    lines += rule_lines
    rule_points = sum(ln.amount for ln in rule_lines)

    if tier_multiplier > 1 and rule_points:
        lines.append(
            PointsLine(
                round_points(rule_points * (tier_multiplier - 1)),
                PTS,
                "tier",
                f"tier {tier} {_fmt(tier_multiplier)}",
                "program",
                tier,
            )
        )

    applicable = [o for o in offers if o.applies(purchase, tier, clubs)]
    promotions = [o for o in applicable if o.kind == "promotion"]
    coupons = [o for o in applicable if o.kind == "coupon"]
    lines += _stack(promotions, purchase, eligible, value)
    lines += [ln for o in coupons for ln in _offer_lines(o, purchase, eligible, value)]

    if spent_enough and eligible:
        qp_exact = sum(
            (units(ln.amount_minor, purchase.currency) * rule.qp_per_unit for ln in eligible),
            Decimal(0),
        )
        qp = round_points(qp_exact) + sum(rule.category_qp.get(ln.category, 0) for ln in eligible)
        if qp > 0:
            lines.append(PointsLine(qp, QP, "qualifying", "qualifying points", "program"))
    return Earning(tuple(ln for ln in lines if ln.amount > 0), rule.version)


def _cap(lines: list[PointsLine], rule: EarnRule, period_so_far: int) -> list[PointsLine]:
    """Trim the rule's points to its caps, category bonuses first, then base."""
    limits = []
    if rule.cap_per_transaction is not None:
        limits.append(rule.cap_per_transaction)
    if rule.cap_per_period is not None:
        limits.append(max(rule.cap_per_period - period_so_far, 0))
    if not limits:
        return lines
    excess = sum(ln.amount for ln in lines) - min(limits)
    if excess <= 0:
        return lines
    capped = list(lines)
    for i in reversed(range(len(capped))):
        cut = min(excess, capped[i].amount)
        if cut:
            line = capped[i]
            capped[i] = PointsLine(
                line.amount - cut,
                line.asset,
                line.kind,
                f"{line.reason} (capped)",
                line.funder,
                line.source,
            )
            excess -= cut
    return capped


def _offer_lines(offer: Offer, purchase: Purchase, eligible, value) -> list[PointsLine]:
    """The offer's points: one line, or two when a co-funder pays a share."""
    lines = [ln for ln in eligible if not offer.categories or ln.category in offer.categories]
    if not lines:
        return []
    if offer.multiplier is not None:
        exact = sum((value(ln) for ln in lines), Decimal(0)) * (offer.multiplier - 1)
        points, how = round_points(exact), _fmt(offer.multiplier)
    else:
        points, how = offer.fixed_bonus or 0, f"+{offer.fixed_bonus}"
    for limit in (offer.remaining_budget, offer.member_remaining):
        if limit is not None:
            points = min(points, max(limit, 0))
    if points <= 0:
        return []
    reason = f"{offer.kind} {offer.code} {how}"
    if offer.co_funder is None or offer.co_funder_share is None:
        return [PointsLine(points, PTS, offer.kind, reason, offer.funder, offer.code)]
    shared = split_share(points, offer.co_funder_share)
    share = f"{(offer.co_funder_share * 100).normalize():f} %"
    return [
        line
        for line in (
            PointsLine(points - shared, PTS, offer.kind, reason, offer.funder, offer.code),
            PointsLine(
                shared,
                PTS,
                offer.kind,
                f"{reason} ({share} paid by {offer.co_funder})",
                f"partner:{offer.co_funder}",
                offer.code,
            ),
        )
        if line.amount > 0
    ]


def split_share(points: int, share: Decimal) -> int:
    """The co-funder's part of `points`: rounded down, so the remainder (at
    most one point per line) stays with the offer's own funder."""
    return round_points(points * share, "floor")


def _stack(promotions: Sequence[Offer], purchase, eligible, value) -> list[PointsLine]:
    """Combinable promotions add up; an exclusive one stands alone, and is
    chosen only when it gives more than all combinable ones together."""

    def lines_of(offers):
        return [ln for o in offers for ln in _offer_lines(o, purchase, eligible, value)]

    combinable = lines_of([o for o in promotions if not o.exclusive])
    best = max(
        (lines_of([o]) for o in sorted(promotions, key=lambda o: o.code) if o.exclusive),
        key=lambda ls: sum(ln.amount for ln in ls),
        default=[],
    )
    if sum(ln.amount for ln in best) > sum(ln.amount for ln in combinable):
        return best
    return combinable
