"""Rules, tiers and offers as the engines see them: the rows of the rulebook's
tables (partners/rulebook.py) loaded as plain engine data (`EarnRule`,
`BurnRule`, `Tier`, `Offer`), inside whatever transaction reads them (an
earning, a quote, a redemption, the per-process definitions cache)."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from partners.burning import BurnRule
from partners.earning import EarnRule, Offer
from partners.tiers import Tier


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
