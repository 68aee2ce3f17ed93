"""What an administrator sends to define earn and burn rules, promotions,
coupons and tiers, and the bounds each field is checked against before
anything is written (`check()`: an error naming the field, nothing changed).
Checks that need the database (known categories, tiers, clubs, partners;
one exclusive promotion at a time; the tier ladder) are the rulebook's
(partners/rulebook.py)."""

import re
from datetime import UTC, datetime
from decimal import Decimal

import msgspec

from ledger.accounts import check_id
from partners.contracts import CONTRACTS_FROM
from partners.errors import InvalidRule
from partners.money import MINOR_UNIT_EXPONENTS
from partners.tiers import BASE_TIER

FUNDERS = ("partner", "program")


def require(condition: bool, field: str, detail: str) -> None:
    if not condition:
        raise InvalidRule(field, detail)


# Bounds of a rule's rates: far beyond any programme's (a few points per euro,
# bonus categories of 2-20x), near enough that no earning overflows a point.
RATE_PLACES = 6
MAX_POINTS_PER_UNIT = Decimal(10_000)
# A promotion's or coupon's fixed bonus per purchase: ten million points is
# beyond any real offer, and far from what a posting may carry.
MAX_FIXED_BONUS = 10_000_000
MAX_MULTIPLIER = Decimal(100)


def _rate(value: Decimal, field: str, low: Decimal, high: Decimal, low_included: bool) -> None:
    """A rate: finite, within its bounds, with at most RATE_PLACES decimal places."""
    within = (
        value.is_finite()
        and (low <= value if low_included else low < value)
        and value <= high
        and value.normalize().as_tuple().exponent >= -RATE_PLACES
    )
    require(
        within,
        field,
        f"must be {'from' if low_included else 'above'} {low} and at most {high}, "
        f"with at most {RATE_PLACES} decimal places",
    )


# The times a definition may name: no programme runs before 2000 (as a
# contract's versions, partners/contracts.py), and a window open "for ever" has
# no end. The driver writes the extremes of Python's calendar as PostgreSQL's
# infinities, which read back as times without a zone that no earning can be
# compared with.
TIMES_FROM = CONTRACTS_FROM
TIMES_UNTIL = datetime(2100, 1, 1, tzinfo=UTC)


def _window(start: datetime, end: datetime | None, start_field: str, end_field: str) -> None:
    span = f"from {TIMES_FROM.date()} to before {TIMES_UNTIL.date()}"
    require(start.tzinfo is not None, start_field, "needs a time zone")
    require(TIMES_FROM <= start < TIMES_UNTIL, start_field, span)
    if end is not None:
        require(end.tzinfo is not None, end_field, "needs a time zone")
        require(end > start, end_field, "must be after " + start_field)
        require(end < TIMES_UNTIL, end_field, span)


def _code(value: str, field: str = "code") -> str:
    require(
        bool(value) and len(value) <= 40 and value.replace("-", "").replace("_", "").isalnum(),
        field,
        "1-40 letters, digits, '-' or '_'",
    )
    return value


# The tier_definitions.code check (migration 0002): lower case, so a tier code
# reads the same in a token, a URL and a report.
TIER_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def _tier_code(value: str) -> str:
    require(
        TIER_CODE.fullmatch(value) is not None,
        "code",
        "1-40 lower-case letters, digits, '-' or '_', starting with a letter or digit",
    )
    return value


def _offer_value(multiplier: Decimal | None, fixed_bonus: int | None) -> None:
    require(
        (multiplier is None) != (fixed_bonus is None),
        "multiplier",
        "give either a multiplier or a fixed_bonus",
    )
    if multiplier is not None:
        _rate(multiplier, "multiplier", Decimal(1), MAX_MULTIPLIER, low_included=False)
    if fixed_bonus is not None:
        require(
            0 < fixed_bonus <= MAX_FIXED_BONUS,
            "fixed_bonus",
            f"must be from 1 to {MAX_FIXED_BONUS:,} points",
        )


class EarnRuleInput(msgspec.Struct, forbid_unknown_fields=True):
    valid_from: datetime
    currency: str
    points_per_unit: Decimal
    valid_to: datetime | None = None
    rounding: str = "floor"
    category_multipliers: dict[str, Decimal] = {}
    excluded_categories: list[str] = []
    qp_per_unit: Decimal = Decimal(0)
    category_qp: dict[str, int] = {}
    min_spend_minor: int = 0
    cap_per_transaction: int | None = None
    cap_per_period: int | None = None
    cap_period: str | None = None

    def check(self) -> None:
        """Each field within its bounds (the categories are checked against the database)."""
        _window(self.valid_from, self.valid_to, "valid_from", "valid_to")
        require(self.currency in MINOR_UNIT_EXPONENTS, "currency", "unknown currency")
        zero = Decimal(0)
        _rate(self.points_per_unit, "points_per_unit", zero, MAX_POINTS_PER_UNIT, True)
        require(self.rounding in ("floor", "half_up"), "rounding", "floor or half_up")
        _rate(self.qp_per_unit, "qp_per_unit", zero, MAX_POINTS_PER_UNIT, True)
        for category, multiplier in self.category_multipliers.items():
            field = f"category_multipliers.{category}"
            _rate(multiplier, field, zero, MAX_MULTIPLIER, True)
        for category, qp in self.category_qp.items():
            require(qp >= 0, f"category_qp.{category}", "must be zero or more")
        require(self.min_spend_minor >= 0, "min_spend_minor", "must be zero or more")
        require(
            self.cap_per_transaction is None or self.cap_per_transaction > 0,
            "cap_per_transaction",
            "must be positive",
        )
        require(
            self.cap_per_period is None or self.cap_per_period > 0,
            "cap_per_period",
            "must be positive",
        )
        require(
            (self.cap_per_period is None) == (self.cap_period is None),
            "cap_period",
            "cap_per_period and cap_period go together",
        )
        require(
            self.cap_period in (None, "day", "month", "year"), "cap_period", "day, month or year"
        )


class BurnRuleInput(msgspec.Struct, forbid_unknown_fields=True):
    valid_from: datetime
    currency: str
    points_per_unit: Decimal
    valid_to: datetime | None = None
    min_points: int = 1
    step: int = 1
    max_basket_share: Decimal = Decimal(1)

    def check(self) -> None:
        """Each field within its bounds."""
        _window(self.valid_from, self.valid_to, "valid_from", "valid_to")
        require(self.currency in MINOR_UNIT_EXPONENTS, "currency", "unknown currency")
        _rate(self.points_per_unit, "points_per_unit", Decimal(0), MAX_POINTS_PER_UNIT, False)
        require(self.min_points > 0, "min_points", "must be positive")
        require(self.step > 0, "step", "must be positive")
        require(
            self.max_basket_share.is_finite() and 0 < self.max_basket_share <= 1,
            "max_basket_share",
            "must be above 0 and at most 1",
        )


class PromotionInput(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    name: str
    starts_at: datetime
    ends_at: datetime
    funder: str = "program"
    multiplier: Decimal | None = None
    fixed_bonus: int | None = None
    partner_ids: list[str] = []
    categories: list[str] = []
    tiers: list[str] = []
    min_spend_minor: int = 0
    budget_points: int | None = None
    per_member_limit: int | None = None
    exclusive: bool = False
    # Pays for purchases in its window reported after it ended (default: not).
    accepts_late_submissions: bool = False
    # Pays only to members of one of these clubs at the purchase time.
    clubs: list[str] = []
    # A partner-funded promotion split: the co-funder (a producer) pays this
    # share of its points, rounded down; the named partner pays the rest.
    co_funder_id: str | None = None
    co_funder_share: Decimal | None = None

    def check(self) -> None:
        """Each field within its bounds (categories, tiers, clubs and the co-funder
        are checked against the database)."""
        _code(self.code)
        require(bool(self.name.strip()), "name", "is required")
        _window(self.starts_at, self.ends_at, "starts_at", "ends_at")
        _offer_value(self.multiplier, self.fixed_bonus)
        require(self.funder in FUNDERS, "funder", "partner or program")
        require(
            self.funder == "program" or len(self.partner_ids) == 1,
            "funder",
            "a partner-funded promotion names exactly one partner",
        )
        require(self.min_spend_minor >= 0, "min_spend_minor", "must be zero or more")
        require(
            self.budget_points is None or self.budget_points > 0,
            "budget_points",
            "must be positive",
        )
        require(
            self.per_member_limit is None or self.per_member_limit > 0,
            "per_member_limit",
            "must be positive",
        )
        for partner_id in self.partner_ids:
            check_id("partner", partner_id)
        require(
            (self.co_funder_id is None) == (self.co_funder_share is None),
            "co_funder_share",
            "co_funder_id and co_funder_share go together",
        )
        if self.co_funder_id is not None and self.co_funder_share is not None:
            check_id("partner", self.co_funder_id)
            require(
                self.funder == "partner" and self.co_funder_id not in self.partner_ids,
                "co_funder_id",
                "co-funds a partner-funded promotion of another partner",
            )
            require(
                self.co_funder_share.is_finite() and 0 < self.co_funder_share < 1,
                "co_funder_share",
                "must be above 0 and below 1",
            )


class CouponInput(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    name: str
    valid_from: datetime
    valid_to: datetime
    # Who pays: default the partners it names, or the programme when it names none.
    funder: str | None = None
    multiplier: Decimal | None = None
    fixed_bonus: int | None = None
    partner_ids: list[str] = []
    categories: list[str] = []
    min_basket_minor: int = 0

    def check(self) -> None:
        """Each field within its bounds, once the funder is decided (categories
        are checked against the database)."""
        _code(self.code)
        require(bool(self.name.strip()), "name", "is required")
        _window(self.valid_from, self.valid_to, "valid_from", "valid_to")
        _offer_value(self.multiplier, self.fixed_bonus)
        require(self.funder in FUNDERS, "funder", "partner or program")
        # A partner pays only for offers that name it.
        require(
            self.funder == "program" or bool(self.partner_ids),
            "partner_ids",
            "a partner-funded coupon names the partners that pay for it",
        )
        require(self.min_basket_minor >= 0, "min_basket_minor", "must be zero or more")
        for partner_id in self.partner_ids:
            check_id("partner", partner_id)


class TierInput(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    rank: int
    qp_threshold: int
    earn_multiplier: Decimal = Decimal(1)
    burn_discount: Decimal = Decimal(0)
    expiry_protected: bool = False

    def check(self, code: str) -> None:
        """The tier `code` would be: each field within its bounds (the ladder is
        checked against the tiers defined)."""
        _tier_code(code)
        require(bool(self.name.strip()), "name", "is required")
        # The built-in base tier's code names the tier at 0 QP: defined at a
        # threshold, it would stand beside the built-in one, two tiers of a code.
        require(
            code != BASE_TIER.code or self.qp_threshold == 0,
            "qp_threshold",
            f"the {BASE_TIER.code!r} tier is the one at 0 QP",
        )
        require(self.rank >= 0, "rank", "must be zero or more")
        # Rank 0 is the base tier's (built in, or defined at 0 QP): a tier at a
        # threshold ranks above it.
        require(
            self.rank > 0 or self.qp_threshold == 0,
            "rank",
            "a tier with a QP threshold ranks 1 or more (0 is the base tier's)",
        )
        require(self.qp_threshold >= 0, "qp_threshold", "must be zero or more")
        _rate(self.earn_multiplier, "earn_multiplier", Decimal(1), MAX_MULTIPLIER, True)
        require(
            self.burn_discount.is_finite() and 0 <= self.burn_discount < 1,
            "burn_discount",
            "must be at least 0 and below 1",
        )
