"""What a card holder's app reads and does with the programme: the balance
view (balances, pending releases, expiring points and tier from one
snapshot) and its token, the member's coupons and their activation, and the
quote of a redemption with the member's tier discount. Part of `Programme`.
"""

from datetime import datetime
from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import queries
from ledger.accounts import check_id
from ledger.errors import MemberNotFound
from ledger.views import ExpiringPoints
from partners import rule_reads
from partners.burning import RedemptionQuote, quote_redemption
from partners.errors import CouponNotFound, CurrencyMismatch, NoRuleInForce
from partners.expiry_notice import QuarterExpiring
from partners.money import check_currency


class PendingRelease(msgspec.Struct, frozen=True):
    points: int
    release_at: datetime


class TierStatus(msgspec.Struct, frozen=True):
    code: str
    name: str
    valid_until: datetime | None


class BalanceView(msgspec.Struct, frozen=True):
    """What a card holder's app shows: balances, when pending points are
    released, what expires soon, and the tier. `version` orders the views."""

    member_id: str
    available: int
    pending: int
    held: int
    qp: int
    version: int
    pending_releases: tuple[PendingRelease, ...]
    expiring: tuple[ExpiringPoints, ...]
    expiring_within_days: int
    tier: TierStatus
    # With LOYALTY_EXPIRING_VIEW=quarters:N: this quarter and the next N-1,
    # each with what expires in it (partners/expiry_notice.py).
    expiring_by_quarter: tuple[QuarterExpiring, ...] = ()


class CouponView(msgspec.Struct, frozen=True):
    code: str
    name: str
    status: str  # issued | activated | used | expired
    valid_from: datetime
    valid_to: datetime
    activated_at: datetime | None
    used_at: datetime | None


class MemberViews:
    """The card holder's view, coupons and redemption quotes (mixed into
    `Programme`)."""

    # -- the card holder's view ----------------------------------------------------

    async def balance_view(
        self, member_id: str
    ) -> tuple[BalanceView, tuple[int, int], datetime | None]:
        """Balances, pending releases, expiring points (as far ahead as the
        programme's `expiring_window`) and tier from one snapshot, with the
        view's token (`balance_token`) read in that same snapshot, and the time
        the view next changes by time alone (None: not before the token
        changes)."""
        check_id("member", member_id)
        now = self.ledger.clock()
        window = self.expiring_window
        within_days = window.within_days(now)
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            summary = await queries.member_balances(conn, member_id, now, within_days)
            releases = await conn.execute(
                text(
                    "SELECT remaining, release_at FROM pending_points WHERE member_id = :m "
                    "AND release_entry_id IS NULL AND remaining > 0 ORDER BY release_at"
                ),
                {"m": member_id},
            )
            pending = tuple(PendingRelease(r.remaining, r.release_at) for r in releases)
            tier, valid_until, _ = await self._tier(conn, member_id)
            token = await self.balance_token(member_id, conn)
        b = summary.balances
        # Whole days may reach past a window of quarters: cut at its end.
        end = window.end(now)
        expiring = tuple(e for e in summary.expiring if e.expires_at <= end)
        changes_at = summary.expiring_changes_at
        if (moves := window.next_change(now)) is not None:
            changes_at = moves if changes_at is None else min(changes_at, moves)
        view = BalanceView(
            member_id,
            b.available,
            b.pending,
            b.held,
            b.qp,
            b.version,
            pending,
            expiring,
            within_days,
            TierStatus(tier.code, tier.name, valid_until),
            window.by_quarter(expiring, now),
        )
        return view, token, changes_at

    # Everything in a balance view changes with one of these: every posting to a
    # member account bumps that balance row's version (lots, pending releases and
    # holds move with the balances), and every tier change (with the fresh lot
    # validity a lost protection brings) adds a `tier_changes` row.
    _BALANCE_TOKEN = text(
        "SELECT EXISTS (SELECT FROM members WHERE id = :m) AS enrolled, "
        "(SELECT coalesce(sum(version), 0) FROM balances "
        "WHERE member_id = :m AND slot = 0)::bigint AS versions, "
        "(SELECT coalesce(max(id), 0) FROM tier_changes WHERE member_id = :m)::bigint AS tier"
    )

    async def balance_token(
        self, member_id: str, conn: AsyncConnection | None = None
    ) -> tuple[int, int]:
        """(sum of the member's balance-row versions, id of their latest tier
        change or 0): equal tokens mean equal balance views (up to the passing
        of time). One statement, on `conn` (a view's snapshot, or the cache's
        autocommit connection) or else on an autocommit connection of its own.
        An id no member was enrolled under (a token's subject) has no view:
        `MemberNotFound`, and nothing is cached for it."""
        check_id("member", member_id)
        if conn is None:
            async with self.engine.connect() as own:
                own = await own.execution_options(isolation_level="AUTOCOMMIT")
                return await self.balance_token(member_id, own)
        row = (await conn.execute(self._BALANCE_TOKEN, {"m": member_id})).one()
        if not row.enrolled:
            raise MemberNotFound(f"no enrolled member {member_id!r}", member_id=member_id)
        return int(row.versions), int(row.tier)

    # -- coupons --------------------------------------------------------------------

    async def coupons(self, member_id: str) -> list[CouponView]:
        check_id("member", member_id)
        now = self.ledger.clock()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.code, c.name, c.valid_from, c.valid_to, c.retired_at, "
                    "mc.activated_at, mc.used_at FROM member_coupons mc JOIN coupons c "
                    "ON c.id = mc.coupon_id WHERE mc.member_id = :m ORDER BY c.valid_to, c.id"
                ),
                {"m": member_id},
            )
            return [_coupon_view(r, now) for r in rows]

    async def activate_coupon(self, member_id: str, code: str) -> CouponView:
        """Activate a coupon issued to the member (idempotent: activating twice is fine)."""
        check_id("member", member_id)
        now = self.ledger.clock()
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE member_coupons mc "
                        "SET activated_at = coalesce(mc.activated_at, :now) "
                        "FROM coupons c WHERE c.id = mc.coupon_id AND mc.member_id = :m "
                        "AND c.code = :code AND c.retired_at IS NULL AND c.valid_to > :now "
                        "RETURNING c.code, c.name, c.valid_from, c.valid_to, c.retired_at, "
                        "mc.activated_at, mc.used_at"
                    ),
                    {"now": now, "m": member_id, "code": code},
                )
            ).first()
            if row is None:
                raise CouponNotFound(f"member has no active coupon {code!r}", coupon=code)
            return _coupon_view(row, now)

    # -- redemption ---------------------------------------------------------------------

    async def redemption_quote(
        self, member_id: str, partner_id: str, currency: str, basket_minor: int, points: int
    ) -> RedemptionQuote:
        """What `points` pay at the partner for this basket, with the member's
        tier discount; checks the burn rule's minimum, step and basket share."""
        check_id("member", member_id)
        check_currency(currency)
        now = self.ledger.clock()
        async with self.engine.connect() as conn:
            rule = await rule_reads.burn_rule_in_force(conn, partner_id, now)
            if rule is None:
                raise NoRuleInForce(f"partner {partner_id} has no burn rule in force")
            if rule.currency != currency:
                raise CurrencyMismatch(f"partner {partner_id} redeems in {rule.currency}")
            tier, _, _ = await self._tier(conn, member_id)
        return quote_redemption(rule, basket_minor, points, Decimal(tier.burn_discount))


def _coupon_view(row, now: datetime) -> CouponView:
    status = (
        "used"
        if row.used_at
        else "expired"
        if row.retired_at or row.valid_to <= now
        else "activated"
        if row.activated_at
        else "issued"
    )
    return CouponView(
        row.code, row.name, status, row.valid_from, row.valid_to, row.activated_at, row.used_at
    )
