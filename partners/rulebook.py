"""The rulebook: earn and burn rules, promotions, coupons and tiers as
versioned, audited data. Every change records who, when, and the before and
after; invalid input raises an error naming the field, and changes nothing."""

import re
from datetime import datetime
from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import check_id
from ledger.database import begin
from ledger.service import LedgerService
from partners.audit import record_change
from partners.burning import BurnRule
from partners.earning import EarnRule, Offer
from partners.errors import (
    InvalidRule,
    OverlappingExclusivePromotion,
    RuleNotFound,
    UnknownCategory,
)
from partners.money import MINOR_UNIT_EXPONENTS
from partners.tiers import BASE_TIER, Tier, ladder

FUNDERS = ("partner", "program")


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


class BurnRuleInput(msgspec.Struct, forbid_unknown_fields=True):
    valid_from: datetime
    currency: str
    points_per_unit: Decimal
    valid_to: datetime | None = None
    min_points: int = 1
    step: int = 1
    max_basket_share: Decimal = Decimal(1)


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


class TierInput(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    rank: int
    qp_threshold: int
    earn_multiplier: Decimal = Decimal(1)
    burn_discount: Decimal = Decimal(0)
    expiry_protected: bool = False


def _require(condition: bool, field: str, detail: str) -> None:
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
    _require(
        within,
        field,
        f"must be {'from' if low_included else 'above'} {low} and at most {high}, "
        f"with at most {RATE_PLACES} decimal places",
    )


def _window(start: datetime, end: datetime | None, start_field: str, end_field: str) -> None:
    _require(start.tzinfo is not None, start_field, "needs a time zone")
    if end is not None:
        _require(end.tzinfo is not None, end_field, "needs a time zone")
        _require(end > start, end_field, "must be after " + start_field)


def _code(value: str, field: str = "code") -> str:
    _require(
        bool(value) and len(value) <= 40 and value.replace("-", "").replace("_", "").isalnum(),
        field,
        "1-40 letters, digits, '-' or '_'",
    )
    return value


# The tier_definitions.code check (migration 0002): lower case, so a tier code
# reads the same in a token, a URL and a report.
TIER_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def _tier_code(value: str) -> str:
    _require(
        TIER_CODE.fullmatch(value) is not None,
        "code",
        "1-40 lower-case letters, digits, '-' or '_', starting with a letter or digit",
    )
    return value


def _offer_value(multiplier: Decimal | None, fixed_bonus: int | None) -> None:
    _require(
        (multiplier is None) != (fixed_bonus is None),
        "multiplier",
        "give either a multiplier or a fixed_bonus",
    )
    if multiplier is not None:
        _rate(multiplier, "multiplier", Decimal(1), MAX_MULTIPLIER, low_included=False)
    if fixed_bonus is not None:
        _require(
            0 < fixed_bonus <= MAX_FIXED_BONUS,
            "fixed_bonus",
            f"must be from 1 to {MAX_FIXED_BONUS:,} points",
        )


class Rulebook:
    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger
        self.engine = ledger.engine

    # -- shared -------------------------------------------------------------

    async def _check_categories(self, conn, field: str, codes) -> None:
        codes = sorted(set(codes))
        if not codes:
            return
        known = set(
            (
                await conn.execute(
                    text("SELECT code FROM categories WHERE code = ANY(CAST(:codes AS text[]))"),
                    {"codes": codes},
                )
            ).scalars()
        )
        unknown = [c for c in codes if c not in known]
        if unknown:
            raise UnknownCategory(field, f"unknown categories {unknown}")

    async def categories(self) -> list[dict[str, str]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(text("SELECT code, name FROM categories ORDER BY code"))
            return [{"code": r.code, "name": r.name} for r in rows]

    async def audit(
        self, entity: str | None = None, entity_id: str | None = None, limit: int = 100
    ) -> list[dict]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, entity, entity_id, action, actor, at, before, after "
                    "FROM rule_audit WHERE (CAST(:entity AS text) IS NULL OR entity = :entity) "
                    "AND (CAST(:entity_id AS text) IS NULL OR entity_id = :entity_id) "
                    "ORDER BY id DESC LIMIT :limit"
                ),
                {"entity": entity, "entity_id": entity_id, "limit": limit},
            )
            return [dict(r._mapping) for r in rows]

    # -- earn and burn rules ------------------------------------------------

    async def create_earn_rule(self, partner_id: str, rule: EarnRuleInput, actor: str) -> dict:
        check_id("partner", partner_id)
        _window(rule.valid_from, rule.valid_to, "valid_from", "valid_to")
        _require(rule.currency in MINOR_UNIT_EXPONENTS, "currency", "unknown currency")
        zero = Decimal(0)
        _rate(rule.points_per_unit, "points_per_unit", zero, MAX_POINTS_PER_UNIT, True)
        _require(rule.rounding in ("floor", "half_up"), "rounding", "floor or half_up")
        _rate(rule.qp_per_unit, "qp_per_unit", zero, MAX_POINTS_PER_UNIT, True)
        for category, multiplier in rule.category_multipliers.items():
            field = f"category_multipliers.{category}"
            _rate(multiplier, field, zero, MAX_MULTIPLIER, True)
        for category, qp in rule.category_qp.items():
            _require(qp >= 0, f"category_qp.{category}", "must be zero or more")
        _require(rule.min_spend_minor >= 0, "min_spend_minor", "must be zero or more")
        _require(
            rule.cap_per_transaction is None or rule.cap_per_transaction > 0,
            "cap_per_transaction",
            "must be positive",
        )
        _require(
            rule.cap_per_period is None or rule.cap_per_period > 0,
            "cap_per_period",
            "must be positive",
        )
        _require(
            (rule.cap_per_period is None) == (rule.cap_period is None),
            "cap_period",
            "cap_per_period and cap_period go together",
        )
        _require(
            rule.cap_period in (None, "day", "month", "year"), "cap_period", "day, month or year"
        )
        async with begin(self.engine) as conn:
            await self._check_categories(conn, "category_multipliers", rule.category_multipliers)
            await self._check_categories(conn, "excluded_categories", rule.excluded_categories)
            await self._check_categories(conn, "category_qp", rule.category_qp)
            version = await self._next_version(conn, "earn_rules", partner_id)
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO earn_rules (partner_id, version, valid_from, valid_to, "
                        "currency, points_per_unit, rounding, category_multipliers, "
                        "excluded_categories, qp_per_unit, category_qp, min_spend_minor, "
                        "cap_per_transaction, cap_per_period, cap_period, created_by) VALUES "
                        "(:partner_id, :version, :valid_from, :valid_to, :currency, "
                        ":points_per_unit, :rounding, CAST(:category_multipliers AS jsonb), "
                        ":excluded_categories, :qp_per_unit, CAST(:category_qp AS jsonb), "
                        ":min_spend_minor, :cap_per_transaction, :cap_per_period, :cap_period, "
                        ":actor) RETURNING *"
                    ),
                    {
                        **msgspec.structs.asdict(rule),
                        "partner_id": partner_id,
                        "version": version,
                        "category_multipliers": _json(rule.category_multipliers),
                        "category_qp": _json(rule.category_qp),
                        "actor": actor,
                    },
                )
            ).one()
            view = _row(row)
            await record_change(
                conn, "earn_rule", f"{partner_id}/{version}", "create", actor, None, view
            )
            return view

    async def create_burn_rule(self, partner_id: str, rule: BurnRuleInput, actor: str) -> dict:
        check_id("partner", partner_id)
        _window(rule.valid_from, rule.valid_to, "valid_from", "valid_to")
        _require(rule.currency in MINOR_UNIT_EXPONENTS, "currency", "unknown currency")
        _rate(rule.points_per_unit, "points_per_unit", Decimal(0), MAX_POINTS_PER_UNIT, False)
        _require(rule.min_points > 0, "min_points", "must be positive")
        _require(rule.step > 0, "step", "must be positive")
        _require(
            rule.max_basket_share.is_finite() and 0 < rule.max_basket_share <= 1,
            "max_basket_share",
            "must be above 0 and at most 1",
        )
        async with begin(self.engine) as conn:
            version = await self._next_version(conn, "burn_rules", partner_id)
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO burn_rules (partner_id, version, valid_from, valid_to, "
                        "currency, points_per_unit, min_points, step, max_basket_share, "
                        "created_by) VALUES (:partner_id, :version, :valid_from, :valid_to, "
                        ":currency, :points_per_unit, :min_points, :step, :max_basket_share, "
                        ":actor) RETURNING *"
                    ),
                    {
                        **msgspec.structs.asdict(rule),
                        "partner_id": partner_id,
                        "version": version,
                        "actor": actor,
                    },
                )
            ).one()
            view = _row(row)
            await record_change(
                conn, "burn_rule", f"{partner_id}/{version}", "create", actor, None, view
            )
            return view

    async def _next_version(self, conn, table: str, partner_id: str) -> int:
        # Serialises versioning per partner (two admins creating at once).
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"{table}:{partner_id}"}
        )
        return (
            await conn.execute(
                text(f"SELECT coalesce(max(version), 0) + 1 FROM {table} WHERE partner_id = :p"),
                {"p": partner_id},
            )
        ).scalar_one()

    async def list_rules(self, table: str, partner_id: str) -> list[dict]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(f"SELECT * FROM {table} WHERE partner_id = :p ORDER BY version"),
                {"p": partner_id},
            )
            return [_row(r) for r in rows]

    async def retire_rule(self, table: str, partner_id: str, version: int, actor: str) -> dict:
        entity = table.removesuffix("s")
        async with begin(self.engine) as conn:
            before = (
                await conn.execute(
                    text(
                        f"SELECT * FROM {table} WHERE partner_id = :p AND version = :v FOR UPDATE"
                    ),
                    {"p": partner_id, "v": version},
                )
            ).first()
            if before is None:
                raise RuleNotFound(f"no {entity.replace('_', ' ')} {partner_id}/{version}")
            after = (
                await conn.execute(
                    text(
                        f"UPDATE {table} SET retired_at = coalesce(retired_at, now()) "
                        "WHERE id = :id RETURNING *"
                    ),
                    {"id": before.id},
                )
            ).one()
            await record_change(
                conn, entity, f"{partner_id}/{version}", "retire", actor, _row(before), _row(after)
            )
            return _row(after)

    # -- promotions and coupons --------------------------------------------

    async def create_promotion(self, promotion: PromotionInput, actor: str) -> dict:
        _code(promotion.code)
        _require(bool(promotion.name.strip()), "name", "is required")
        _window(promotion.starts_at, promotion.ends_at, "starts_at", "ends_at")
        _offer_value(promotion.multiplier, promotion.fixed_bonus)
        _require(promotion.funder in FUNDERS, "funder", "partner or program")
        _require(
            promotion.funder == "program" or len(promotion.partner_ids) == 1,
            "funder",
            "a partner-funded promotion names exactly one partner",
        )
        _require(promotion.min_spend_minor >= 0, "min_spend_minor", "must be zero or more")
        _require(
            promotion.budget_points is None or promotion.budget_points > 0,
            "budget_points",
            "must be positive",
        )
        _require(
            promotion.per_member_limit is None or promotion.per_member_limit > 0,
            "per_member_limit",
            "must be positive",
        )
        for partner_id in promotion.partner_ids:
            check_id("partner", partner_id)
        _require(
            (promotion.co_funder_id is None) == (promotion.co_funder_share is None),
            "co_funder_share",
            "co_funder_id and co_funder_share go together",
        )
        if promotion.co_funder_id is not None and promotion.co_funder_share is not None:
            check_id("partner", promotion.co_funder_id)
            _require(
                promotion.funder == "partner"
                and promotion.co_funder_id not in promotion.partner_ids,
                "co_funder_id",
                "co-funds a partner-funded promotion of another partner",
            )
            _require(
                promotion.co_funder_share.is_finite() and 0 < promotion.co_funder_share < 1,
                "co_funder_share",
                "must be above 0 and below 1",
            )
        async with begin(self.engine) as conn:
            await self._check_categories(conn, "categories", promotion.categories)
            await self._check_tiers(conn, promotion.tiers)
            await self._check_known(conn, "clubs", "clubs", "code", promotion.clubs)
            if promotion.co_funder_id is not None:
                await self._check_known(
                    conn, "co_funder_id", "partners", "id", [promotion.co_funder_id]
                )
            if promotion.exclusive:
                # One exclusive promotion at a time per partner: serialise the check.
                await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('exclusive'))"))
                clash = (
                    await conn.execute(
                        text(
                            "SELECT code FROM promotions WHERE exclusive AND retired_at IS NULL "
                            "AND starts_at < :ends_at AND ends_at > :starts_at AND "
                            "(cardinality(partner_ids) = 0 "
                            "OR cardinality(CAST(:partners AS text[])) = 0 "
                            "OR partner_ids && CAST(:partners AS text[])) LIMIT 1"
                        ),
                        {
                            "starts_at": promotion.starts_at,
                            "ends_at": promotion.ends_at,
                            "partners": promotion.partner_ids,
                        },
                    )
                ).scalar()
                if clash:
                    raise OverlappingExclusivePromotion(
                        "exclusive", f"overlaps exclusive promotion {clash!r}"
                    )
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO promotions (code, name, starts_at, ends_at, partner_ids, "
                        "categories, tiers, multiplier, fixed_bonus, min_spend_minor, "
                        "budget_points, per_member_limit, funder, exclusive, "
                        "accepts_late_submissions, clubs, co_funder_id, co_funder_share, "
                        "created_by) VALUES "
                        "(:code, :name, :starts_at, :ends_at, :partner_ids, :categories, :tiers, "
                        ":multiplier, :fixed_bonus, :min_spend_minor, :budget_points, "
                        ":per_member_limit, :funder, :exclusive, :accepts_late_submissions, "
                        ":clubs, :co_funder_id, :co_funder_share, :actor) "
                        "ON CONFLICT (code) DO NOTHING RETURNING *"
                    ),
                    {**msgspec.structs.asdict(promotion), "actor": actor},
                )
            ).first()
            if row is None:
                raise InvalidRule("code", f"promotion {promotion.code!r} exists already")
            view = _row(row)
            await record_change(conn, "promotion", promotion.code, "create", actor, None, view)
            return view

    async def _check_known(self, conn, field: str, table: str, column: str, values) -> None:
        """Every value names a row of `table` (a club, a partner)."""
        values = sorted(set(values))
        if not values:
            return
        known = set(
            (
                await conn.execute(
                    text(
                        f"SELECT {column} FROM {table} "
                        f"WHERE {column} = ANY(CAST(:values AS text[]))"
                    ),
                    {"values": values},
                )
            ).scalars()
        )
        unknown = [v for v in values if v not in known]
        _require(not unknown, field, f"unknown {table} {unknown}")

    async def _check_tiers(self, conn, codes) -> None:
        if not codes:
            return
        known = set((await conn.execute(text("SELECT code FROM tier_definitions"))).scalars())
        unknown = sorted(set(codes) - known - {"base"})
        if unknown:
            raise InvalidRule("tiers", f"unknown tiers {unknown}")

    async def create_coupon(self, coupon: CouponInput, actor: str) -> dict:
        _code(coupon.code)
        _require(bool(coupon.name.strip()), "name", "is required")
        _window(coupon.valid_from, coupon.valid_to, "valid_from", "valid_to")
        _offer_value(coupon.multiplier, coupon.fixed_bonus)
        if coupon.funder is None:
            coupon = msgspec.structs.replace(
                coupon, funder="partner" if coupon.partner_ids else "program"
            )
        _require(coupon.funder in FUNDERS, "funder", "partner or program")
        # A partner pays only for offers that name it.
        _require(
            coupon.funder == "program" or bool(coupon.partner_ids),
            "partner_ids",
            "a partner-funded coupon names the partners that pay for it",
        )
        _require(coupon.min_basket_minor >= 0, "min_basket_minor", "must be zero or more")
        for partner_id in coupon.partner_ids:
            check_id("partner", partner_id)
        async with begin(self.engine) as conn:
            await self._check_categories(conn, "categories", coupon.categories)
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO coupons (code, name, valid_from, valid_to, partner_ids, "
                        "categories, multiplier, fixed_bonus, min_basket_minor, funder, "
                        "created_by) VALUES (:code, :name, :valid_from, :valid_to, :partner_ids, "
                        ":categories, :multiplier, :fixed_bonus, :min_basket_minor, :funder, "
                        ":actor) ON CONFLICT (code) DO NOTHING RETURNING *"
                    ),
                    {**msgspec.structs.asdict(coupon), "actor": actor},
                )
            ).first()
            if row is None:
                raise InvalidRule("code", f"coupon {coupon.code!r} exists already")
            view = _row(row)
            await record_change(conn, "coupon", coupon.code, "create", actor, None, view)
            return view

    async def issue_coupon(self, code: str, member_ids: list[str], actor: str) -> int:
        for member_id in member_ids:
            check_id("member", member_id)
        async with begin(self.engine) as conn:
            coupon_id = (
                await conn.execute(
                    text("SELECT id FROM coupons WHERE code = :code AND retired_at IS NULL"),
                    {"code": code},
                )
            ).scalar()
            if coupon_id is None:
                raise RuleNotFound(f"no coupon {code!r}")
            issued = (
                await conn.execute(
                    text(
                        "INSERT INTO member_coupons (coupon_id, member_id) SELECT :id, m FROM "
                        "unnest(CAST(:members AS text[])) AS m ON CONFLICT DO NOTHING RETURNING 1"
                    ),
                    {"id": coupon_id, "members": sorted(set(member_ids))},
                )
            ).all()
            await record_change(
                conn,
                "coupon",
                code,
                "issue",
                actor,
                None,
                {"members": sorted(set(member_ids)), "issued": len(issued)},
            )
            return len(issued)

    async def retire_offer(self, table: str, code: str, actor: str) -> dict:
        entity = table.removesuffix("s")
        async with begin(self.engine) as conn:
            before = (
                await conn.execute(
                    text(f"SELECT * FROM {table} WHERE code = :code FOR UPDATE"), {"code": code}
                )
            ).first()
            if before is None:
                raise RuleNotFound(f"no {entity} {code!r}")
            after = (
                await conn.execute(
                    text(
                        f"UPDATE {table} SET retired_at = coalesce(retired_at, now()) "
                        "WHERE code = :code RETURNING *"
                    ),
                    {"code": code},
                )
            ).one()
            await record_change(conn, entity, code, "retire", actor, _row(before), _row(after))
            return _row(after)

    async def list_offers(self, table: str) -> list[dict]:
        async with self.engine.connect() as conn:
            return [_row(r) for r in await conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]

    # -- tiers ----------------------------------------------------------------

    async def put_tier(self, code: str, tier: TierInput, actor: str) -> dict:
        _tier_code(code)
        _require(bool(tier.name.strip()), "name", "is required")
        # The built-in base tier's code names the tier at 0 QP: defined at a
        # threshold, it would stand beside the built-in one, two tiers of a code.
        _require(
            code != BASE_TIER.code or tier.qp_threshold == 0,
            "qp_threshold",
            f"the {BASE_TIER.code!r} tier is the one at 0 QP",
        )
        _require(tier.rank >= 0, "rank", "must be zero or more")
        # Rank 0 is the base tier's (built in, or defined at 0 QP): a tier at a
        # threshold ranks above it.
        _require(
            tier.rank > 0 or tier.qp_threshold == 0,
            "rank",
            "a tier with a QP threshold ranks 1 or more (0 is the base tier's)",
        )
        _require(tier.qp_threshold >= 0, "qp_threshold", "must be zero or more")
        _rate(tier.earn_multiplier, "earn_multiplier", Decimal(1), MAX_MULTIPLIER, True)
        _require(
            tier.burn_discount.is_finite() and 0 <= tier.burn_discount < 1,
            "burn_discount",
            "must be at least 0 and below 1",
        )
        async with begin(self.engine) as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('tiers'))"))
            before = (
                await conn.execute(
                    text("SELECT * FROM tier_definitions WHERE code = :code"), {"code": code}
                )
            ).first()
            others = (
                await conn.execute(
                    text(
                        "SELECT code, rank, qp_threshold FROM tier_definitions "
                        "WHERE retired_at IS NULL AND code <> :code"
                    ),
                    {"code": code},
                )
            ).all()
            for other in others:
                _require(other.rank != tier.rank, "rank", f"tier {other.code!r} has that rank")
                _require(
                    (other.rank < tier.rank) == (other.qp_threshold < tier.qp_threshold),
                    "qp_threshold",
                    f"must keep the order of ranks (tier {other.code!r})",
                )
            after = (
                await conn.execute(
                    text(
                        "INSERT INTO tier_definitions (code, name, rank, qp_threshold, "
                        "earn_multiplier, burn_discount, expiry_protected, created_by) VALUES "
                        "(:code, :name, :rank, :qp_threshold, :earn_multiplier, :burn_discount, "
                        ":expiry_protected, :actor) ON CONFLICT (code) DO UPDATE SET "
                        "name = EXCLUDED.name, rank = EXCLUDED.rank, "
                        "qp_threshold = EXCLUDED.qp_threshold, "
                        "earn_multiplier = EXCLUDED.earn_multiplier, "
                        "burn_discount = EXCLUDED.burn_discount, "
                        "expiry_protected = EXCLUDED.expiry_protected, updated_at = now(), "
                        "retired_at = NULL RETURNING *"
                    ),
                    {**msgspec.structs.asdict(tier), "code": code, "actor": actor},
                )
            ).one()
            await record_change(
                conn,
                "tier",
                code,
                "update" if before else "create",
                actor,
                _row(before) if before else None,
                _row(after),
            )
            return _row(after)

    async def list_tiers(self) -> list[dict]:
        """The tier definitions by rank (retired ones too), led by the base
        tier when it is not defined: the status of members whose QP reach no
        tier, which `ladder` adds the same way (no active tier at 0 QP).
        `built_in` tells it apart: it has no row to change or retire."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(text("SELECT * FROM tier_definitions ORDER BY rank"))
            listed = [{**_row(r), "built_in": False} for r in rows]
        active = [
            Tier(t["code"], t["name"], t["rank"], t["qp_threshold"])
            for t in listed
            if t["retired_at"] is None
        ]
        if ladder(active)[0] is BASE_TIER:
            listed.insert(0, _built_in_row(BASE_TIER))
        return listed


# -- loading rules as engine data (used inside other transactions) ----------


async def _row_in_force(conn: AsyncConnection, table: str, partner_id: str, at: datetime):
    """The highest version of a partner's rule whose window holds `at`, not retired."""
    return (
        await conn.execute(
            text(
                f"SELECT * FROM {table} WHERE partner_id = :p AND retired_at IS NULL "
                "AND valid_from <= :at AND (valid_to IS NULL OR :at < valid_to) "
                "ORDER BY version DESC LIMIT 1"
            ),
            {"p": partner_id, "at": at},
        )
    ).first()


def earn_rule_from_row(row) -> EarnRule:
    return EarnRule(
        partner_id=row.partner_id,
        version=row.version,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        currency=row.currency,
        points_per_unit=row.points_per_unit,
        rounding=row.rounding,
        category_multipliers={k: Decimal(v) for k, v in row.category_multipliers.items()},
        excluded_categories=frozenset(row.excluded_categories),
        qp_per_unit=row.qp_per_unit,
        category_qp=dict(row.category_qp),
        min_spend_minor=row.min_spend_minor,
        cap_per_transaction=row.cap_per_transaction,
        cap_per_period=row.cap_per_period,
        cap_period=row.cap_period,
    )


async def burn_rule_in_force(
    conn: AsyncConnection, partner_id: str, at: datetime
) -> BurnRule | None:
    row = await _row_in_force(conn, "burn_rules", partner_id, at)
    if row is None:
        return None
    return BurnRule(
        row.partner_id,
        row.version,
        row.valid_from,
        row.valid_to,
        row.currency,
        row.points_per_unit,
        row.min_points,
        row.step,
        row.max_basket_share,
    )


async def tiers(conn: AsyncConnection) -> list[Tier]:
    rows = await conn.execute(
        text("SELECT * FROM tier_definitions WHERE retired_at IS NULL ORDER BY rank")
    )
    return [
        Tier(
            r.code,
            r.name,
            r.rank,
            r.qp_threshold,
            r.earn_multiplier,
            r.burn_discount,
            r.expiry_protected,
        )
        for r in rows
    ]


def offer_from_promotion(row, member_used: int, budget_used: int | None = None) -> Offer:
    """The promotion as the engine sees it, given what the member has had of
    it and (when not the row's) what its budget has paid so far."""
    budget_used = row.budget_used if budget_used is None else budget_used
    return Offer(
        kind="promotion",
        code=row.code,
        name=row.name,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        funder=row.funder,
        multiplier=row.multiplier,
        fixed_bonus=row.fixed_bonus,
        partner_ids=frozenset(row.partner_ids),
        categories=frozenset(row.categories),
        tiers=frozenset(row.tiers),
        min_spend_minor=row.min_spend_minor,
        exclusive=row.exclusive,
        remaining_budget=None if row.budget_points is None else row.budget_points - budget_used,
        member_remaining=None
        if row.per_member_limit is None
        else row.per_member_limit - member_used,
        accepts_late_submissions=row.accepts_late_submissions,
        clubs=frozenset(row.clubs),
        co_funder=row.co_funder_id,
        co_funder_share=row.co_funder_share,
    )


def offer_from_coupon(row) -> Offer:
    return Offer(
        kind="coupon",
        code=row.code,
        name=row.name,
        starts_at=row.valid_from,
        ends_at=row.valid_to,
        funder=row.funder,
        multiplier=row.multiplier,
        fixed_bonus=row.fixed_bonus,
        partner_ids=frozenset(row.partner_ids),
        categories=frozenset(row.categories),
        min_spend_minor=row.min_basket_minor,
        # A coupon is judged at the purchase time: the member activated it and
        # used it then, however late the partner reports the purchase.
        accepts_late_submissions=True,
    )


def _row(row) -> dict:
    return {k: v for k, v in row._mapping.items()}


def _built_in_row(tier: Tier) -> dict:
    """A tier no row defines, shaped like a tier_definitions row."""
    return {
        "code": tier.code,
        "name": tier.name,
        "rank": tier.rank,
        "qp_threshold": tier.qp_threshold,
        "earn_multiplier": tier.earn_multiplier,
        "burn_discount": tier.burn_discount,
        "expiry_protected": tier.expiry_protected,
        "created_by": None,
        "updated_at": None,
        "retired_at": None,
        "built_in": True,
    }


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()
