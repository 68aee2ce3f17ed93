"""The programme service: applies the rulebook to the ledger. An earning
(rules, tier bonus, promotions with budgets, coupons, QP and tier upgrade) is
one transaction; a quote is the same computation with nothing posted or used.

The partner's contract (partners/registry.py) bounds an earning: the purchase
time must lie in the contract's submission window, the points wait for the
return window counted from the purchase but never from before it was
reported, and the points the partner pays for may not take its liability
beyond its credit limit. The liability is read from the partner's ledger
accounts (slot sums, no lock), so accruals at one partner still never queue
on one row; the price is that earnings running at the same moment are each
checked against what was committed when they started.

Lock order (after the idempotency key): promotion rows with a budget, then
the member (the ledger's member lock, see ledger/journal.py), under which the
member's promotion usage, coupons and tier are read and written, then the
ledger's hot slots. Promotions without a budget lock nothing global,
so accruals at a partner do not queue behind a running promotion; contracts
and the partner's balances are read without a lock. A return locks the
purchase row, then the budgeted promotions its earning was paid by (id
order), then the ledger's reversal takes its own rows and the member, under
whose lock the promotion usage, a coupon and the tier come back.
"""

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import queries
from ledger.accounts import PTS, check_id, member_account, partner_account
from ledger.commands import Earn, EarnLine, Reverse
from ledger.errors import DuplicatePartnerReference
from ledger.idempotency import IdempotencyKey
from ledger.lots import prorate
from ledger.service import LedgerService
from ledger.tiers import (
    BASE_TIER,
    Tier,
    TierChange,
    TierProgress,
    after_earning,
    after_return,
    ladder,
    last_complete_period,
    period_bounds,
    progress,
    requalify,
)
from ledger.views import Balances, ExpiringPoints
from partners import rulebook
from partners.burning import RedemptionQuote, quote_redemption
from partners.definitions import DefinitionCache, Definitions
from partners.earning import Earning, Offer, Purchase, PurchaseLine, evaluate
from partners.errors import (
    CouponNotFound,
    CouponNotUsable,
    CurrencyMismatch,
    InvalidPurchase,
    NoRuleInForce,
    PartnerNotFound,
    PurchaseNotFound,
    ReturnExceedsPurchase,
    UnknownCategory,
)
from partners.money import check_currency
from partners.registry import (
    Contract,
    CreditStanding,
    check_credit,
    check_purchase_time,
    contract_in_force,
    credit_standing,
    release_time,
)

MAX_LINES = 200
MAX_LINE_MINOR = 10**10


class LineView(msgspec.Struct, frozen=True):
    amount: int
    asset: str
    kind: str
    reason: str
    funder: str
    source: str | None = None


class EarningView(msgspec.Struct, frozen=True):
    """The breakdown of an earning: what a quote returns, and what was posted."""

    member_id: str
    partner_id: str
    points: int
    qualifying_points: int
    rule_version: int
    tier: str
    lines: tuple[LineView, ...]


class PurchaseReceipt(msgspec.Struct, frozen=True):
    earning: EarningView
    entry_id: int | None  # None when the purchase earned nothing
    balances: Balances
    release_at: datetime | None = None
    new_tier: str | None = None


class ReturnReceipt(msgspec.Struct, frozen=True):
    entry_id: int | None  # None when the returned share was worth no whole point
    points_reversed: int
    returned_minor: int
    total_minor: int
    balances: Balances
    coupons_restored: tuple[str, ...] = ()  # usable again: the whole purchase came back


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


class CouponView(msgspec.Struct, frozen=True):
    code: str
    name: str
    status: str  # issued | activated | used | expired
    valid_from: datetime
    valid_to: datetime
    activated_at: datetime | None
    used_at: datetime | None


@dataclass(frozen=True)
class _Context:
    offers: list[Offer]
    budgeted: dict[str, int]  # promotion code -> id (budget or member limit to book)
    coupons: dict[str, int]  # coupon code -> coupon id


def _view(member_id: str, purchase: Purchase, tier: Tier, earning: Earning) -> EarningView:
    return EarningView(
        member_id,
        purchase.partner_id,
        earning.points,
        earning.qualifying_points,
        earning.rule_version,
        tier.code,
        tuple(
            LineView(ln.amount, ln.asset, ln.kind, ln.reason, ln.funder, ln.source)
            for ln in earning.lines
        ),
    )


MAX_REFERENCE = 64


def check_reference(value: str, field: str = "reference") -> str:
    """A partner's reference: 1 to 64 printable characters."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_REFERENCE
        or not (value.isprintable())
    ):
        raise InvalidPurchase(f"{field} is 1-{MAX_REFERENCE} printable characters", field=field)
    return value


def check_purchase(purchase: Purchase) -> None:
    check_id("partner", purchase.partner_id)
    check_currency(purchase.currency)
    if not purchase.lines:
        raise InvalidPurchase("a purchase needs at least one line")
    if len(purchase.lines) > MAX_LINES:
        raise InvalidPurchase(f"at most {MAX_LINES} lines per purchase", max_lines=MAX_LINES)
    for line in purchase.lines:
        if type(line.amount_minor) is not int or not 0 <= line.amount_minor <= MAX_LINE_MINOR:
            raise InvalidPurchase(
                f"line amounts are integers of minor units between 0 and {MAX_LINE_MINOR}"
            )
    if purchase.occurred_at.tzinfo is None:
        raise InvalidPurchase("occurred_at needs a time zone")


class Programme:
    def __init__(self, ledger: LedgerService, tier_period: str = "calendar") -> None:
        self.ledger = ledger
        self.engine = ledger.engine
        self.tier_period = tier_period
        self.definitions = DefinitionCache()

    # -- reading --------------------------------------------------------------

    @staticmethod
    def _rule(defs: Definitions, purchase: Purchase):
        rule = defs.earn_rule_in_force(purchase.partner_id, purchase.occurred_at)
        if rule is None:
            raise NoRuleInForce(
                f"partner {purchase.partner_id} has no earn rule in force at "
                f"{purchase.occurred_at.isoformat()}"
            )
        if rule.currency != purchase.currency:
            raise CurrencyMismatch(
                f"partner {purchase.partner_id} earns on {rule.currency}, not {purchase.currency}"
            )
        categories = sorted({line.category for line in purchase.lines})
        if unknown := [c for c in categories if c not in defs.categories]:
            raise UnknownCategory("lines.category", f"unknown categories {unknown}")
        return rule

    async def _tier(self, conn: AsyncConnection, member_id: str, lock: bool = False, tiers=None):
        if tiers is None:
            tiers = await rulebook.tiers(conn)
        row = (
            await conn.execute(
                text(
                    "SELECT tier_code, valid_until FROM member_tiers WHERE member_id = :m"
                    + (" FOR UPDATE" if lock else "")
                ),
                {"m": member_id},
            )
        ).first()
        by_code = {t.code: t for t in tiers}
        if row is None or row.tier_code not in by_code:
            return ladder(tiers)[0], None, tiers
        return by_code[row.tier_code], row.valid_until, tiers

    async def _period_qp(
        self, conn: AsyncConnection, member_id: str, period: tuple[datetime, datetime]
    ) -> int:
        start, end = period
        return (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(p.amount), 0)::bigint FROM postings p "
                    "JOIN journal_entries e ON e.id = p.entry_id WHERE p.member_id = :m "
                    "AND p.account = :account AND e.effective_at >= :start "
                    "AND e.effective_at < :end"
                ),
                {
                    "m": member_id,
                    "account": member_account(member_id, "qp"),
                    "start": start,
                    "end": end,
                },
            )
        ).scalar_one()

    async def _period_rule_points(self, conn, member_id: str, rule, at: datetime) -> int:
        if rule.cap_per_period is None:
            return 0
        at = at.astimezone(UTC)
        start = {
            "day": at.replace(hour=0, minute=0, second=0, microsecond=0),
            "month": at.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
            "year": datetime(at.year, 1, 1, tzinfo=UTC),
        }[rule.cap_period]
        # Net of returns: an earning's rule points less the share of its
        # points reversed since (entry_reversals: reversed of reversible).
        return (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(r.points - coalesce((SELECT r.points * x.reversed "
                    "/ x.reversible FROM entry_reversals x WHERE x.entry_id = r.id), 0)), 0)"
                    "::bigint FROM (SELECT e.id, sum((line->>'amount')::bigint) AS points "
                    "FROM journal_entries e, jsonb_array_elements(e.breakdown) AS line "
                    "WHERE e.kind = 'earn' AND e.member_id = :m AND e.partner_id = :p "
                    "AND e.effective_at >= :start AND line->>'kind' IN ('base', 'category') "
                    "GROUP BY e.id) AS r"
                ),
                {"m": member_id, "p": rule.partner_id, "start": start},
            )
        ).scalar_one()

    async def _offers(
        self,
        conn,
        defs: Definitions,
        member_id: str,
        purchase: Purchase,
        coupon_codes: tuple[str, ...],
        lock: bool,
    ) -> _Context:
        at, partner = purchase.occurred_at, purchase.partner_id
        received = purchase.received_at or at
        # What the engine would not apply anyway (ended before the purchase was
        # reported, another partner's, none of the basket's categories, spend
        # below its minimum) is not read, so its budget is not locked: a basket
        # a promotion cannot pay for never waits on that promotion's row.
        rows = defs.promotions_for(
            partner, at, received, {line.category for line in purchase.lines}, purchase.total_minor
        )
        limited = [r for r in rows if r.budget_points is not None or r.per_member_limit]
        ids = [r.id for r in limited if r.budget_points is not None]
        if ids:  # budgets move with every earning: re-read them (locked when earning)
            fresh = {
                r.id: r
                for r in (
                    await conn.execute(
                        text(
                            "SELECT * FROM promotions WHERE id = ANY(CAST(:ids AS bigint[])) "
                            "ORDER BY id" + (" FOR UPDATE" if lock else "")
                        ),
                        {"ids": ids},
                    )
                )
            }
            rows = [fresh.get(r.id, r) for r in rows]
        if lock:
            await self.ledger.journal.lock_members(conn, [member_id])
        if lock and limited:
            await conn.execute(
                text(
                    "INSERT INTO promotion_usage (promotion_id, member_id, points) "
                    "SELECT unnest(CAST(:ids AS bigint[])), :m, 0 ON CONFLICT DO NOTHING"
                ),
                {"ids": [r.id for r in limited], "m": member_id},
            )
        used = {}
        if limited:
            used = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT promotion_id, points FROM promotion_usage WHERE member_id = :m "
                            "AND promotion_id = ANY(CAST(:ids AS bigint[])) ORDER BY promotion_id"
                            + (" FOR UPDATE" if lock else "")
                        ),
                        {"m": member_id, "ids": [r.id for r in limited]},
                    )
                ).all()
            )
        offers = [rulebook.offer_from_promotion(r, used.get(r.id, 0)) for r in rows]
        budgeted = {r.code: r.id for r in limited}

        coupons: dict[str, int] = {}
        if coupon_codes:
            found = {
                r.code: r
                for r in (
                    await conn.execute(
                        text(
                            "SELECT c.*, mc.activated_at, mc.used_at FROM member_coupons mc "
                            "JOIN coupons c ON c.id = mc.coupon_id WHERE mc.member_id = :m "
                            "AND c.code = ANY(CAST(:codes AS text[])) ORDER BY c.id"
                            + (" FOR UPDATE OF mc" if lock else "")
                        ),
                        {"m": member_id, "codes": list(coupon_codes)},
                    )
                )
            }
            for code in coupon_codes:
                row = found.get(code)
                if row is None:
                    raise CouponNotFound(f"member has no coupon {code!r}", coupon=code)
                problem = (
                    "was retired"
                    if row.retired_at
                    else "is not activated"
                    if row.activated_at is None
                    else "was already used"
                    if row.used_at
                    else "is not valid at the purchase time"
                    if not row.valid_from <= at < row.valid_to
                    else None
                )
                if problem:
                    raise CouponNotUsable(f"coupon {code!r} {problem}", coupon=code)
                offers.append(rulebook.offer_from_coupon(row))
                coupons[code] = row.id
        return _Context(offers, budgeted, coupons)

    # -- quote and earn ---------------------------------------------------------

    async def quote(
        self, member_id: str, purchase: Purchase, coupon_codes: tuple[str, ...] = ()
    ) -> EarningView:
        """The breakdown an earning would get, posting nothing and using no budget."""
        check_id("member", member_id)
        check_purchase(purchase)
        async with self.engine.connect() as conn:
            defs = await self.definitions.get(conn, self.ledger.clock())
            purchase, _ = self._received(defs, purchase)
            rule = self._rule(defs, purchase)
            tier, _, _ = await self._tier(conn, member_id, tiers=defs.tiers)
            context = await self._offers(conn, defs, member_id, purchase, coupon_codes, False)
            so_far = await self._period_rule_points(conn, member_id, rule, purchase.occurred_at)
            earning = evaluate(
                purchase, rule, tier.code, tier.earn_multiplier, context.offers, so_far
            )
            return _view(member_id, purchase, tier, earning)

    def _received(self, defs: Definitions, purchase: Purchase) -> tuple[Purchase, Contract | None]:
        """The purchase as received now (the ledger's clock), once its time is
        checked against the submission window of the partner's contract in
        force at the purchase time, with that contract. A partner the registry
        does not know has no contract to check against."""
        received_at = self.ledger.clock()
        contract = defs.contract_in_force(purchase.partner_id, purchase.occurred_at)
        if contract is not None:
            check_purchase_time(contract, purchase.occurred_at, received_at)
        return replace(purchase, received_at=received_at), contract

    async def _check_credit(
        self, conn: AsyncConnection, defs: Definitions, earning: Earning, purchase: Purchase
    ) -> None:
        """Refuse the earning if the points the partner pays for take its
        liability beyond the credit limit in force now."""
        points = sum(
            ln.amount for ln in earning.lines if ln.asset == "PTS" and ln.funder == "partner"
        )
        if points <= 0:
            return
        contract = defs.contract_in_force(purchase.partner_id, purchase.received_at)
        if contract is None or contract.credit_limit_minor is None:
            return
        check_credit(await self._standing(conn, contract), points)

    async def _standing(self, conn: AsyncConnection, contract: Contract) -> CreditStanding:
        # The ledger's read of the partner's accounts: sums of their slots, no lock.
        points = {}
        for name in ("issued", "redeemed"):
            address = partner_account(contract.partner_id, name)
            account = await queries.account_balance(conn, address)
            points[name] = sum(b.balance for b in account.balances if b.asset == "PTS")
        return credit_standing(contract, points["issued"], points["redeemed"])

    async def credit(self, partner_id: str) -> CreditStanding:
        """The partner's liability for the points it issued and what its
        credit limit (plus deposit) leaves, under the contract in force now."""
        async with self.engine.connect() as conn:
            contract = await contract_in_force(conn, partner_id, self.ledger.clock())
            if contract is None:
                raise PartnerNotFound(f"no partner {partner_id!r}")
            return await self._standing(conn, contract)

    async def earn_purchase(
        self,
        member_id: str,
        purchase: Purchase,
        partner_reference: str,
        coupon_codes: tuple[str, ...] = (),
        release_at: datetime | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> PurchaseReceipt:
        """Earn for a purchase. The points wait in `pending` until the later of
        `release_at` (a caller's own) and the end of the return window of the
        partner's contract in force at the purchase time, counted from the
        purchase but never from before it was received."""
        check_id("member", member_id)
        check_purchase(purchase)
        request = {
            "member_id": member_id,
            "purchase": purchase,
            "partner_reference": partner_reference,
            "coupons": coupon_codes,
            "release_at": release_at,
        }

        async def body(conn: AsyncConnection) -> PurchaseReceipt:
            return await self.earn_in(
                conn, member_id, purchase, partner_reference, coupon_codes, release_at
            )

        return await self.ledger.run("earn_purchase", request, idempotency, PurchaseReceipt, body)

    async def earn_in(
        self,
        conn: AsyncConnection,
        member_id: str,
        purchase: Purchase,
        partner_reference: str,
        coupon_codes: tuple[str, ...],
        release_at: datetime | None,
    ) -> PurchaseReceipt:
        """One earning inside the caller's transaction (a single earn's own, or
        a batch's, which holds the budgets and members already)."""
        defs = await self.definitions.get(conn, self.ledger.clock())
        received, contract = self._received(defs, purchase)
        if contract is not None:
            window_end = release_time(contract, purchase.occurred_at, received.received_at)
            release = _later(release_at, window_end)
        else:
            release = release_at
        rule = self._rule(defs, received)
        # Locks budgeted promotions, then the member; everything about the
        # member (usage, coupons, tier, caps) is read under that lock, so
        # one member's purchases are evaluated one after another.
        context = await self._offers(conn, defs, member_id, received, coupon_codes, True)
        tier, valid_until, tiers = await self._tier(conn, member_id, tiers=defs.tiers)
        so_far = await self._period_rule_points(conn, member_id, rule, purchase.occurred_at)
        earning = evaluate(received, rule, tier.code, tier.earn_multiplier, context.offers, so_far)
        view = _view(member_id, purchase, tier, earning)
        if not earning.lines:
            await self._record_purchase(conn, member_id, purchase, partner_reference, None)
            balances = await self.ledger.balances_in(conn, member_id)
            return PurchaseReceipt(view, None, balances)
        await self._check_credit(conn, defs, earning, received)
        receipt = await self.ledger.earn_in(
            conn,
            Earn(
                member_id,
                purchase.partner_id,
                partner_reference,
                tuple(
                    EarnLine(ln.amount, ln.asset, ln.reason, ln.funder, ln.kind, ln.source)
                    for ln in earning.lines
                ),
                effective_at=purchase.occurred_at,
                release_at=release,
            ),
        )
        await self._record_purchase(conn, member_id, purchase, partner_reference, receipt.entry_id)
        await self._book_offers(conn, member_id, earning, context, receipt.entry_id)
        new_tier = None
        if earning.qualifying_points:
            new_tier = await self._maybe_upgrade(
                conn,
                member_id,
                tier,
                valid_until,
                tiers,
                purchase.occurred_at,
                receipt.entry_id,
            )
        # A tier change moves no points: the receipt's balances are current.
        return PurchaseReceipt(
            view, receipt.entry_id, receipt.balances, receipt.release_at, new_tier
        )

    async def _record_purchase(
        self, conn, member_id: str, purchase: Purchase, reference: str, entry_id: int | None
    ) -> None:
        """The purchase as reported, with the entry that earned its points (if
        any): later returns are measured against it. A reference used before is
        refused here even when the purchase earned nothing."""
        inserted = (
            await conn.execute(
                text(
                    "INSERT INTO partner_purchases (partner_id, partner_reference, member_id, "
                    "entry_id, currency, total_minor, occurred_at) "
                    "VALUES (:p, :r, :m, :e, :c, :t, :at) ON CONFLICT DO NOTHING RETURNING 1"
                ),
                {
                    "p": purchase.partner_id,
                    "r": reference,
                    "m": member_id,
                    "e": entry_id,
                    "c": purchase.currency,
                    "t": purchase.total_minor,
                    "at": purchase.occurred_at,
                },
            )
        ).first()
        if inserted is None:
            raise DuplicatePartnerReference(
                f"partner {purchase.partner_id} already used reference {reference!r}",
                partner_reference=reference,
            )

    async def return_purchase(
        self,
        partner_id: str,
        reference: str,
        return_reference: str,
        amount_minor: int,
        idempotency: IdempotencyKey | None = None,
    ) -> ReturnReceipt:
        """A return of `amount_minor` of a purchase: claws back the matching share
        of its points, proportional across the earned lines (QP included). Returns
        add up to at most the purchase; the points follow cumulatively, so several
        partial returns never take back more than was earned. When the whole
        purchase has come back, the coupons it used are the member's again."""
        if type(amount_minor) is not int or amount_minor <= 0:
            raise InvalidPurchase("a return is a positive amount in minor units")
        request = {
            "partner_id": partner_id,
            "reference": reference,
            "return_reference": return_reference,
            "amount_minor": amount_minor,
        }

        async def body(conn: AsyncConnection) -> ReturnReceipt:
            row = (
                await conn.execute(
                    text(
                        "SELECT * FROM partner_purchases WHERE partner_id = :p "
                        "AND partner_reference = :r FOR UPDATE"
                    ),
                    {"p": partner_id, "r": reference},
                )
            ).first()
            if row is None:
                raise PurchaseNotFound(f"no purchase {reference!r} from partner {partner_id}")
            left = row.total_minor - row.returned_minor
            if amount_minor > left:
                raise ReturnExceedsPurchase(
                    f"{left} of {row.total_minor} minor units are left to return",
                    returnable_minor=left,
                )
            returned = row.returned_minor + amount_minor
            await conn.execute(
                text(
                    "UPDATE partner_purchases SET returned_minor = :x WHERE partner_id = :p "
                    "AND partner_reference = :r"
                ),
                {"x": returned, "p": partner_id, "r": reference},
            )
            receipt = None
            if row.entry_id is not None:
                earned = (
                    await conn.execute(
                        text(
                            "SELECT coalesce(sum(amount), 0)::bigint FROM postings WHERE "
                            "entry_id = :e AND asset = 'PTS' AND amount > 0"
                        ),
                        {"e": row.entry_id},
                    )
                ).scalar_one()
                points = (
                    earned * returned // row.total_minor
                    - earned * row.returned_minor // row.total_minor
                )
                if points > 0:
                    lines, promotions = await self._promotions_of(conn, row.entry_id)
                    receipt = await self.ledger.reverse_in(
                        conn,
                        Reverse(
                            row.entry_id,
                            points,
                            partner_id=partner_id,
                            partner_reference=return_reference,
                            reason=f"return of {amount_minor} of {row.total_minor} ({reference})",
                        ),
                        f"partner:{partner_id}",
                        member_now=row.member_id,  # after a merge: the member merged into
                    )
                    # Under the member's lock (taken by the reversal).
                    await self._unbook_promotions(
                        conn, row.member_id, lines, promotions, receipt.entry_id
                    )
                    await self._unwind_tier(conn, row, receipt.entry_id, return_reference)
            restored: tuple[str, ...] = ()
            if returned == row.total_minor and row.entry_id is not None:
                restored = await self._restore_coupons(conn, row.member_id, row.entry_id)
            balances = (
                receipt.balances if receipt else await self.ledger.balances_in(conn, row.member_id)
            )
            return ReturnReceipt(
                entry_id=receipt.entry_id if receipt else None,
                points_reversed=receipt.amount if receipt else 0,
                returned_minor=returned,
                total_minor=row.total_minor,
                balances=balances,
                coupons_restored=restored,
            )

        return await self.ledger.run("return_purchase", request, idempotency, ReturnReceipt, body)

    async def _promotions_of(self, conn, entry_id: int) -> tuple[list[dict], dict[str, tuple]]:
        """The earning's points lines (in posting order) and the promotions
        with a budget or a member limit that paid some of them (code -> id,
        budgeted). The budgeted rows are locked, in id order (after the
        purchase row, before the member)."""
        breakdown = (
            await conn.execute(
                text("SELECT breakdown FROM journal_entries WHERE id = :e"), {"e": entry_id}
            )
        ).scalar_one()
        lines = [ln for ln in breakdown or () if ln.get("asset") == PTS and ln["amount"] > 0]
        codes = sorted({ln["source"] for ln in lines if ln.get("kind") == "promotion"})
        if not codes:
            return lines, {}
        rows = (
            await conn.execute(
                text(
                    "SELECT id, code, budget_points IS NOT NULL AS budgeted FROM promotions "
                    "WHERE code = ANY(CAST(:codes AS text[])) "
                    "AND (budget_points IS NOT NULL OR per_member_limit IS NOT NULL) ORDER BY id"
                ),
                {"codes": codes},
            )
        ).all()
        budgeted = [r.id for r in rows if r.budgeted]
        if budgeted:
            await conn.execute(
                text(
                    "SELECT 1 FROM promotions WHERE id = ANY(CAST(:ids AS bigint[])) "
                    "ORDER BY id FOR UPDATE"
                ),
                {"ids": budgeted},
            )
        return lines, {r.code: (r.id, r.budgeted) for r in rows}

    async def _unbook_promotions(
        self, conn, member_id: str, lines: list[dict], promotions: dict, reversal_id: int
    ) -> None:
        """Give back, per promotion, the share of its points the reversal took:
        the ledger's own proportional split over the earning's lines,
        cumulative (after the reversal minus before it), so partial returns
        add up to exactly what the promotion paid."""
        if not promotions:
            return
        (step,) = (
            await conn.execute(
                text("SELECT breakdown FROM journal_entries WHERE id = :e"), {"e": reversal_id}
            )
        ).scalar_one()
        before, after, whole = step["before"], step["before"] + step["reversed"], step["of"]
        sizes = [ln["amount"] for ln in lines]
        now_shares, was_shares = prorate(sizes, after, whole), prorate(sizes, before, whole)
        back: dict[str, int] = {}
        for line, now_share, was_share in zip(lines, now_shares, was_shares, strict=True):
            if line.get("kind") == "promotion" and line.get("source") in promotions:
                back[line["source"]] = back.get(line["source"], 0) + now_share - was_share
        for code, points in sorted(back.items(), key=lambda item: promotions[item[0]][0]):
            if not points:
                continue
            promotion_id, _budgeted = promotions[code]
            await self._count_promotion_points(conn, promotion_id, member_id, -points)

    @staticmethod
    async def _count_promotion_points(conn, promotion_id: int, member_id: str, points: int) -> None:
        """Add `points` (negative: give back) to a promotion's budget used, when
        it has a budget, and to the member's usage of it."""
        await conn.execute(
            text(
                "UPDATE promotions SET budget_used = budget_used + :points WHERE id = :id "
                "AND budget_points IS NOT NULL"
            ),
            {"points": points, "id": promotion_id},
        )
        await conn.execute(
            text(
                "UPDATE promotion_usage SET points = points + :points "
                "WHERE promotion_id = :id AND member_id = :m"
            ),
            {"points": points, "id": promotion_id, "m": member_id},
        )

    async def _unwind_tier(self, conn, purchase, reversal_id: int, return_reference: str) -> None:
        """When the return took the QP of the current qualification period
        (the purchase's own, while the return falls in it) below the status
        the member holds, undo the tier changes this purchase or a later one
        of the period caused (ledger.tiers.after_return)."""
        now = self.ledger.clock()
        period = period_bounds(now, self.tier_period)
        if not period[0] <= purchase.occurred_at < period[1]:
            return  # a later period's QP: as every QP, it counts where it falls
        member_id = purchase.member_id
        qp_back = (
            await conn.execute(
                text(
                    "SELECT coalesce(-sum(amount), 0)::bigint FROM postings "
                    "WHERE entry_id = :e AND account = :account"
                ),
                {"e": reversal_id, "account": member_account(member_id, "qp")},
            )
        ).scalar_one()
        if qp_back <= 0:
            return
        tier, valid_until, tiers = await self._tier(conn, member_id, lock=True)
        period_qp = await self._period_qp(conn, member_id, period)
        history = [
            TierChange(
                r.from_tier,
                r.to_tier,
                r.previous_valid_until,
                r.changed_at,
                r.entry_id if r.kind == "earn" else None,
                r.kind == "reverse",
            )
            for r in await conn.execute(
                text(
                    "SELECT c.from_tier, c.to_tier, c.previous_valid_until, c.changed_at, "
                    "c.entry_id, e.kind FROM tier_changes c LEFT JOIN journal_entries e "
                    "ON e.id = c.entry_id WHERE c.member_id = :m ORDER BY c.id DESC"
                ),
                {"m": member_id},
            )
        ]
        change = after_return(
            tier, valid_until, period_qp, tiers, history, purchase.entry_id, period
        )
        if change is None:
            return
        new, until = change
        await self._set_tier(
            conn,
            member_id,
            tier.code,
            new,
            until,
            now,
            reversal_id,
            f"return {return_reference} of purchase {purchase.partner_reference}: "
            f"{period_qp} QP left in the period",
            valid_until,
        )

    async def _restore_coupons(self, conn, member_id: str, entry_id: int) -> tuple[str, ...]:
        """Give back the coupons the earning `entry_id` used. A coupon is used
        once, for a whole purchase, so only a full return restores it."""
        # The member's coupons are the member's: under their lock (already held
        # when the return reversed points; taken here after the purchase row
        # when it did not).
        await self.ledger.journal.lock_members(conn, [member_id])
        rows = await conn.execute(
            text(
                "UPDATE member_coupons mc SET used_at = NULL, used_entry_id = NULL "
                "FROM coupons c WHERE c.id = mc.coupon_id AND mc.member_id = :m "
                "AND mc.used_entry_id = :e RETURNING c.code"
            ),
            {"m": member_id, "e": entry_id},
        )
        return tuple(sorted(rows.scalars()))

    async def _book_offers(
        self, conn, member_id: str, earning: Earning, context: _Context, entry_id: int
    ) -> None:
        for code, promotion_id in context.budgeted.items():
            points = earning.points_from("promotion", code)
            if not points:
                continue
            await self._count_promotion_points(conn, promotion_id, member_id, points)
        for code, coupon_id in context.coupons.items():
            if earning.points_from("coupon", code):
                await conn.execute(
                    text(
                        "UPDATE member_coupons SET used_at = now(), used_entry_id = :entry "
                        "WHERE coupon_id = :id AND member_id = :m AND used_at IS NULL"
                    ),
                    {"entry": entry_id, "id": coupon_id, "m": member_id},
                )

    async def _maybe_upgrade(
        self, conn, member_id: str, tier: Tier, valid_until, tiers, at: datetime, entry_id: int
    ) -> str | None:
        # No lock of its own: every tier change holds the member's mutex.
        change = after_earning(
            tier,
            valid_until,
            await self._period_qp(conn, member_id, period_bounds(at, self.tier_period)),
            tiers,
            at,
        )
        if change is None:
            return None
        new, until = change
        await self._set_tier(
            conn,
            member_id,
            tier.code,
            new,
            until,
            at,
            entry_id,
            "qualifying points reached the threshold"
            if new.rank > tier.rank
            else "status renewed for another period",
            valid_until,
        )
        return new.code

    async def _set_tier(
        self, conn, member_id, old_code, new: Tier, until, at, entry_id, reason: str, old_until
    ) -> None:
        if new.qp_threshold == 0 and new.code == BASE_TIER.code:
            await conn.execute(
                text("DELETE FROM member_tiers WHERE member_id = :m"), {"m": member_id}
            )
        else:
            await conn.execute(
                text(
                    "INSERT INTO member_tiers (member_id, tier_code, qualified_at, valid_until) "
                    "VALUES (:m, :t, :at, :until) ON CONFLICT (member_id) DO UPDATE SET "
                    "tier_code = EXCLUDED.tier_code, qualified_at = EXCLUDED.qualified_at, "
                    "valid_until = EXCLUDED.valid_until"
                ),
                {"m": member_id, "t": new.code, "at": at, "until": until},
            )
        await conn.execute(
            text(
                "INSERT INTO tier_changes (member_id, from_tier, to_tier, reason, changed_at, "
                "entry_id, previous_valid_until) "
                "VALUES (:m, :old, :new, :reason, :at, :entry, :previous)"
            ),
            {
                "m": member_id,
                "old": old_code,
                "new": new.code,
                "reason": reason,
                "at": at,
                "entry": entry_id,
                "previous": old_until,
            },
        )

    # -- closing and merging members ------------------------------------------------

    async def close_member_in(self, conn, member_id: str, at: datetime, entry_id) -> None:
        """A closed member keeps no status and no usable card (under its lock)."""
        tier, valid_until, _tiers = await self._tier(conn, member_id, lock=True)
        if tier.code != BASE_TIER.code or valid_until is not None:
            await self._set_tier(
                conn,
                member_id,
                tier.code,
                BASE_TIER,
                None,
                at,
                entry_id,
                "account closed",
                valid_until,
            )
        await conn.execute(
            text(
                "UPDATE cards SET status = 'blocked', blocked_at = :at "
                "WHERE member_id = :m AND status = 'active'"
            ),
            {"m": member_id, "at": at},
        )

    async def merge_members_in(
        self, conn, source: str, target: str, at: datetime, entry_id
    ) -> dict[str, object]:
        """What belongs to the person moves with the points (both members are
        locked by the ledger's merge): the higher of the two tiers with its
        validity, the cards, unused coupons, promotion usage (so a per-member
        limit still counts what the person was given) and the purchases a
        partner may still return (returns then take back from `target`)."""
        theirs, their_until, _ = await self._tier(conn, source, lock=True)
        ours, our_until, _ = await self._tier(conn, target, lock=True)
        reason = f"merged with {source}"
        if _stronger_status(theirs.rank, their_until, ours.rank, our_until):
            await self._set_tier(
                conn, target, ours.code, theirs, their_until, at, entry_id, reason, our_until
            )
            kept = theirs.code
        else:
            kept = ours.code
        if theirs.code != BASE_TIER.code or their_until is not None:
            await self._set_tier(
                conn,
                source,
                theirs.code,
                BASE_TIER,
                None,
                at,
                entry_id,
                f"merged into {target}",
                their_until,
            )
        moved = {"tier": kept}
        for label, statement in (
            ("cards", "UPDATE cards SET member_id = :t WHERE member_id = :s"),
            (
                "coupons",
                "UPDATE member_coupons mc SET member_id = :t WHERE member_id = :s "
                "AND used_at IS NULL AND NOT EXISTS (SELECT 1 FROM member_coupons o "
                "WHERE o.member_id = :t AND o.coupon_id = mc.coupon_id)",
            ),
            (
                "promotion_usage",
                "INSERT INTO promotion_usage (promotion_id, member_id, points) "
                "SELECT promotion_id, :t, points FROM promotion_usage WHERE member_id = :s "
                "ON CONFLICT (promotion_id, member_id) DO UPDATE "
                "SET points = promotion_usage.points + EXCLUDED.points",
            ),
            (
                "purchases",
                "UPDATE partner_purchases SET member_id = :t WHERE member_id = :s "
                "AND returned_minor < total_minor",
            ),
        ):
            result = await conn.execute(text(statement), {"s": source, "t": target})
            moved[label] = result.rowcount
        return moved

    # -- the card holder's view ----------------------------------------------------

    async def balance_view(
        self, member_id: str, within_days: int = 90
    ) -> tuple[BalanceView, tuple[int, int], datetime | None]:
        """Balances, pending releases, expiring points and tier from one snapshot,
        with the view's token (`balance_token`) read in that same snapshot, and
        the time the view next changes by time alone (None: not before the
        token changes)."""
        check_id("member", member_id)
        now = self.ledger.clock()
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
        view = BalanceView(
            member_id,
            b.available,
            b.pending,
            b.held,
            b.qp,
            b.version,
            pending,
            summary.expiring,
            within_days,
            TierStatus(tier.code, tier.name, valid_until),
        )
        return view, token, summary.expiring_changes_at

    # Everything in a balance view changes with one of these: every posting to a
    # member account bumps that balance row's version (lots, pending releases and
    # holds move with the balances), and every tier change (with the fresh lot
    # validity a lost protection brings) adds a `tier_changes` row.
    _BALANCE_TOKEN = text(
        "SELECT (SELECT coalesce(sum(version), 0) FROM balances "
        "WHERE member_id = :m AND slot = 0)::bigint AS versions, "
        "(SELECT coalesce(max(id), 0) FROM tier_changes WHERE member_id = :m)::bigint AS tier"
    )

    async def balance_token(
        self, member_id: str, conn: AsyncConnection | None = None
    ) -> tuple[int, int]:
        """(sum of the member's balance-row versions, id of their latest tier
        change or 0): equal tokens mean equal balance views (up to the passing
        of time). One statement, on `conn` (a view's snapshot, or the cache's
        autocommit connection) or else on an autocommit connection of its own."""
        check_id("member", member_id)
        if conn is None:
            async with self.engine.connect() as own:
                own = await own.execution_options(isolation_level="AUTOCOMMIT")
                return await self.balance_token(member_id, own)
        row = (await conn.execute(self._BALANCE_TOKEN, {"m": member_id})).one()
        return int(row.versions), int(row.tier)

    # -- tiers --------------------------------------------------------------------

    async def tier_progress(self, member_id: str) -> TierProgress:
        check_id("member", member_id)
        now = self.ledger.clock()
        async with self.engine.connect() as conn:
            tier, valid_until, tiers = await self._tier(conn, member_id)
            qp = await self._period_qp(conn, member_id, period_bounds(now, self.tier_period))
        return progress(tier, valid_until, qp, tiers, now, self.tier_period)

    async def tier_history(self, member_id: str) -> list[dict]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT from_tier, to_tier, reason, changed_at, entry_id FROM tier_changes "
                    "WHERE member_id = :m ORDER BY id"
                ),
                {"m": member_id},
            )
            return [dict(r._mapping) for r in rows]

    async def requalify_tiers(self, limit: int = 10_000) -> int:
        """Members whose status ran out get what the last complete period earned
        (kept, lowered or raised); one member per transaction, resumable."""
        now = self.ledger.clock()
        async with self.engine.connect() as conn:
            due = (
                (
                    await conn.execute(
                        text(
                            "SELECT member_id FROM member_tiers WHERE valid_until <= :now "
                            "ORDER BY member_id LIMIT :limit"
                        ),
                        {"now": now, "limit": limit},
                    )
                )
                .scalars()
                .all()
            )

        async def requalify_member(conn: AsyncConnection, member_id: str) -> None:
            # The member first: the tier and the lots' expiry are the member's.
            await self.ledger.journal.lock_members(conn, [member_id])
            tier, valid_until, tiers = await self._tier(conn, member_id, lock=True)
            if valid_until is None or valid_until > now:
                return  # renewed meanwhile
            period = last_complete_period(now, self.tier_period)
            qp = await self._period_qp(conn, member_id, period)
            new, until = requalify(qp, tiers, now)
            await self._set_tier(
                conn,
                member_id,
                tier.code,
                new,
                until,
                now,
                None,
                f"requalification: {qp} QP in the last period",
                valid_until,
            )
            if tier.expiry_protected and not new.expiry_protected:
                # Status lost: protected points get a fresh validity from today.
                await conn.execute(
                    text(
                        "UPDATE lots SET expires_at = greatest(expires_at, :fresh) "
                        "WHERE member_id = :m AND remaining > 0"
                    ),
                    {"fresh": self.ledger.config.expiry_policy.expires_at(now), "m": member_id},
                )

        for member_id in due:
            await self.ledger.atomically(lambda conn, m=member_id: requalify_member(conn, m))
        return len(due)

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
            rule = await rulebook.burn_rule_in_force(conn, partner_id, now)
            if rule is None:
                raise NoRuleInForce(f"partner {partner_id} has no burn rule in force")
            if rule.currency != currency:
                raise CurrencyMismatch(f"partner {partner_id} redeems in {rule.currency}")
            tier, _, _ = await self._tier(conn, member_id)
        return quote_redemption(rule, basket_minor, points, Decimal(tier.burn_discount))


def _stronger_status(rank, until, other_rank, other_until) -> bool:
    """Whether one status beats another: a higher tier, or the same tier valid
    for longer (no end date is longest)."""
    if rank != other_rank:
        return rank > other_rank
    if until is None:
        return other_until is not None
    return other_until is not None and until > other_until


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


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


class PurchaseLineInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_minor: int
    category: str
    sku: str | None = None


class PurchaseInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A purchase as callers send it (amounts in minor units, e.g. cents)."""

    currency: str
    lines: list[PurchaseLineInput]
    occurred_at: datetime | None = None  # default: now

    def to_purchase(self, partner_id: str, now: datetime) -> Purchase:
        return Purchase(
            partner_id,
            self.occurred_at or now,
            self.currency,
            tuple(PurchaseLine(ln.amount_minor, ln.category, ln.sku) for ln in self.lines),
        )
