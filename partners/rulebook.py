"""The rulebook: earn and burn rules, promotions, coupons and tiers as
versioned, audited data. Every change records who, when, and the before and
after; invalid input raises an error naming the field, and changes nothing
(the inputs and their bounds: partners/rule_inputs.py; the rules as the
engines read them: partners/rule_reads.py)."""

import msgspec
from sqlalchemy import text

from ledger.accounts import check_id
from ledger.database import begin
from ledger.service import LedgerService
from partners.audit import record_change
from partners.errors import (
    InvalidRule,
    OverlappingExclusivePromotion,
    RuleNotFound,
    UnknownCategory,
)
from partners.rule_inputs import (
    BurnRuleInput,
    CouponInput,
    EarnRuleInput,
    PromotionInput,
    TierInput,
    require,
)
from partners.tiers import BASE_TIER, Tier, ladder


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
        rule.check()
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
        rule.check()
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
        promotion.check()
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
        require(not unknown, field, f"unknown {table} {unknown}")

    async def _check_tiers(self, conn, codes) -> None:
        if not codes:
            return
        known = set((await conn.execute(text("SELECT code FROM tier_definitions"))).scalars())
        unknown = sorted(set(codes) - known - {"base"})
        if unknown:
            raise InvalidRule("tiers", f"unknown tiers {unknown}")

    async def create_coupon(self, coupon: CouponInput, actor: str) -> dict:
        if coupon.funder is None:
            coupon = msgspec.structs.replace(
                coupon, funder="partner" if coupon.partner_ids else "program"
            )
        coupon.check()
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
        tier.check(code)
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
                require(other.rank != tier.rank, "rank", f"tier {other.code!r} has that rank")
                require(
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
