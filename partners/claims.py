"""Missing-points claims: a member reports a purchase the partner did not send
(partner, purchase time, receipt number, amount, optional lines and the
coupons activated for it) within the claim window; staff confirm or reject it.

A claim is checked when filed exactly as its earning would be (a quote on the
accrual path: rule, currency, categories and coupons at the purchase time),
so a claim that could never post is refused then and writes nothing. The
confirmation posts through the accrual path (partners/accrual.py) with the
rule and promotions in force at the purchase time; the receipt number is the
partner's reference, unique per partner forever, so the receipt is booked
once whoever books it first: a second confirmation finds the claim no longer
open, and the partner's own later send of the receipt is a duplicate. The
partner's send arriving first settles the claim (a trigger on
`partner_purchases`, migration 0019) and the claim then posts nothing.

The claim window is the programme's (LOYALTY_CLAIM_WINDOW_DAYS); the
partner's late-submission window bounds the partner's own reports, not a
member's claims.
"""

from datetime import datetime, timedelta

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import check_id
from ledger.commands import check_reason
from ledger.errors import DuplicatePartnerReference, InvalidAccount, LedgerError
from partners.accrual import Accrual, AccrualRun
from partners.earning import Purchase, PurchaseLine
from partners.errors import (
    ClaimExists,
    ClaimNotFound,
    ClaimNotOpen,
    ClaimOutsideWindow,
    CouponNotUsable,
    InvalidClaim,
    InvalidPurchase,
    PartnerNotFound,
)
from partners.programme import MAX_LINE_MINOR, Programme, check_purchase, check_reference
from partners.receipts import PurchaseReceipt

DEFAULT_WINDOW_DAYS = 90
# A claim without lines is one line of its amount in this category.
DEFAULT_CATEGORY = "general"
STATUSES = ("open", "confirmed", "settled", "rejected")
MAX_REASON = 500


class ClaimLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_minor: int
    category: str
    sku: str | None = None


class ClaimInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    partner_id: str
    receipt: str  # the partner's receipt number: its transaction reference
    occurred_at: datetime  # the purchase time
    amount_minor: int
    currency: str = "EUR"
    lines: list[ClaimLine] = []  # none: one line of the amount, category `general`
    coupons: list[str] = []  # activated before the purchase


class ClaimView(msgspec.Struct, frozen=True):
    id: int
    member_id: str
    partner_id: str
    receipt: str
    occurred_at: datetime
    currency: str
    amount_minor: int
    status: str  # open | confirmed | settled (the partner sent it) | rejected
    filed_at: datetime
    expected_points: int  # what the purchase earns, as quoted when filed
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    reason: str | None = None  # why it was rejected
    entry_id: int | None = None  # the earning that booked the receipt
    points: int | None = None  # the PTS that earning posted


_COLUMNS = (
    "c.id, c.member_id, c.partner_id, c.receipt, c.occurred_at, c.currency, c.amount_minor, "
    "c.status, c.filed_at, c.lines, c.coupons, c.resolved_at, c.resolved_by, c.reason, "
    "c.entry_id, c.expected_points, "
    "(SELECT sum(p.amount) FROM postings p WHERE p.entry_id = c.entry_id "
    "AND p.member_id = c.member_id AND p.asset = 'PTS') AS points"
)


def _view(row) -> ClaimView:
    return ClaimView(
        row.id,
        row.member_id,
        row.partner_id,
        row.receipt,
        row.occurred_at,
        row.currency,
        row.amount_minor,
        row.status,
        row.filed_at,
        row.expected_points,
        row.resolved_at,
        row.resolved_by,
        row.reason,
        row.entry_id,
        None if row.entry_id is None else int(row.points or 0),
    )


def claimed_purchase(data: ClaimInput) -> Purchase:
    """The purchase a claim describes, checked as a partner's would be."""
    try:
        check_id("partner", data.partner_id)
    except InvalidAccount as error:
        raise InvalidClaim("partner_id", error.detail) from None
    try:
        check_reference(data.receipt, "receipt")
    except InvalidPurchase as error:
        raise InvalidClaim("receipt", error.detail) from None
    if type(data.amount_minor) is not int or not 0 < data.amount_minor <= MAX_LINE_MINOR:
        raise InvalidClaim("amount_minor", f"an integer of minor units, 1 to {MAX_LINE_MINOR}")
    if data.occurred_at.tzinfo is None:
        raise InvalidClaim("occurred_at", "needs a time zone (e.g. 2026-04-30T12:00Z)")
    lines = tuple(PurchaseLine(ln.amount_minor, ln.category, ln.sku) for ln in data.lines) or (
        PurchaseLine(data.amount_minor, DEFAULT_CATEGORY),
    )
    purchase = Purchase(data.partner_id, data.occurred_at, data.currency, lines)
    check_purchase(purchase)
    if purchase.total_minor != data.amount_minor:
        raise InvalidClaim(
            "lines", f"the lines add up to {purchase.total_minor}, not {data.amount_minor}"
        )
    return purchase


class Claims:
    """Members' missing-points claims over one programme."""

    def __init__(self, programme: Programme, window_days: int = DEFAULT_WINDOW_DAYS) -> None:
        self.programme = programme
        self.ledger = programme.ledger
        self.engine = programme.engine
        self.window = timedelta(days=window_days)

    async def file(self, member_id: str, data: ClaimInput) -> ClaimView:
        """Record a claim after checking it could post; writes nothing otherwise."""
        check_id("member", member_id)
        purchase = claimed_purchase(data)
        now = self.ledger.clock()
        if data.occurred_at > now:
            raise InvalidClaim("occurred_at", "is in the future")
        if data.occurred_at < now - self.window:
            raise ClaimOutsideWindow(
                f"purchases are claimed within {self.window.days} days; "
                f"{data.occurred_at.isoformat()} is older",
                claim_window_days=self.window.days,
                earliest=(now - self.window).isoformat(),
            )
        async with self.engine.begin() as conn:
            partner = (
                await conn.execute(
                    text("SELECT 1 FROM partners WHERE id = :id"), {"id": data.partner_id}
                )
            ).first()
            if partner is None:
                raise PartnerNotFound(f"no partner {data.partner_id!r}")
            booked = (
                await conn.execute(
                    text(
                        "SELECT entry_id FROM partner_references "
                        "WHERE partner_id = :p AND partner_reference = :r"
                    ),
                    {"p": data.partner_id, "r": data.receipt},
                )
            ).first()
            if booked is not None:
                raise DuplicatePartnerReference(
                    f"partner {data.partner_id} booked receipt {data.receipt!r} already",
                    partner_reference=data.receipt,
                )
            expected = await self._quote(conn, member_id, purchase, tuple(data.coupons))
            await self._check_activated_before(conn, member_id, data)
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO points_claims (member_id, partner_id, receipt, occurred_at, "
                        "currency, amount_minor, lines, expected_points, coupons, filed_at) "
                        "VALUES (:m, :p, :r, :at, :currency, :amount, CAST(:lines AS jsonb), "
                        ":expected, :coupons, :now) "
                        "ON CONFLICT (partner_id, receipt) WHERE status = 'open' DO NOTHING "
                        "RETURNING id"
                    ),
                    {
                        "m": member_id,
                        "p": data.partner_id,
                        "r": data.receipt,
                        "at": data.occurred_at,
                        "currency": data.currency,
                        "amount": data.amount_minor,
                        "lines": msgspec.json.encode(data.lines).decode(),
                        "expected": expected,
                        "coupons": list(data.coupons),
                        "now": now,
                    },
                )
            ).first()
            if row is None:
                # A retried filing learns its claim; another member's stays unnamed.
                mine = (
                    await conn.execute(
                        text(
                            "SELECT id FROM points_claims WHERE partner_id = :p AND receipt = :r "
                            "AND status = 'open' AND member_id = :m"
                        ),
                        {"p": data.partner_id, "r": data.receipt, "m": member_id},
                    )
                ).scalar()
                raise ClaimExists(
                    f"receipt {data.receipt!r} of partner {data.partner_id} is claimed already",
                    partner_id=data.partner_id,
                    receipt=data.receipt,
                    claim_id=mine,
                )
            return await self._read(conn, row.id)

    async def _quote(
        self, conn: AsyncConnection, member_id: str, purchase: Purchase, coupons: tuple[str, ...]
    ) -> int:
        run = AccrualRun(self.programme, conn, purchase.partner_id, lock=False)
        _, (result,) = await run.evaluate_all(
            [Accrual(purchase, "claim", member_id=member_id, coupons=coupons, claimed=True)]
        )
        if isinstance(result, LedgerError):
            raise result
        return result.earning.points

    async def _check_activated_before(
        self, conn: AsyncConnection, member_id: str, data: ClaimInput
    ) -> None:
        """A coupon counts for a purchase only if it was activated before it."""
        if not data.coupons:
            return
        late = (
            await conn.execute(
                text(
                    "SELECT c.code FROM member_coupons mc JOIN coupons c ON c.id = mc.coupon_id "
                    "WHERE mc.member_id = :m AND c.code = ANY(CAST(:codes AS text[])) "
                    "AND mc.activated_at > :at ORDER BY c.code"
                ),
                {"m": member_id, "codes": list(data.coupons), "at": data.occurred_at},
            )
        ).scalars()
        for code in late:
            raise CouponNotUsable(f"coupon {code!r} was activated after the purchase", coupon=code)

    async def _read(self, conn: AsyncConnection, claim_id: int, member_id: str | None = None):
        row = (
            await conn.execute(
                text(f"SELECT {_COLUMNS} FROM points_claims c WHERE c.id = :id"), {"id": claim_id}
            )
        ).first()
        if row is None or (member_id is not None and row.member_id != member_id):
            raise ClaimNotFound(f"no claim {claim_id}", claim_id=claim_id)
        return _view(row)

    async def claim(self, claim_id: int, member_id: str | None = None) -> ClaimView:
        async with self.engine.connect() as conn:
            return await self._read(conn, claim_id, member_id)

    async def claims(
        self, member_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[ClaimView]:
        """Claims newest first: a member's, or all (of a status)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT {_COLUMNS} FROM points_claims c "
                    "WHERE (CAST(:m AS text) IS NULL OR c.member_id = :m) "
                    "AND (CAST(:s AS text) IS NULL OR c.status = :s) "
                    "ORDER BY c.id DESC LIMIT :limit"
                ),
                {"m": member_id, "s": status, "limit": limit},
            )
            return [_view(row) for row in rows]

    async def confirm(self, claim_id: int, actor: str) -> ClaimView:
        """Post the claimed purchase through the accrual path, once."""
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(
                    text(
                        "SELECT member_id, partner_id, receipt, occurred_at, currency, "
                        "amount_minor, lines, coupons, status FROM points_claims WHERE id = :id"
                    ),
                    {"id": claim_id},
                )
            ).first()
        if found is None:
            raise ClaimNotFound(f"no claim {claim_id}", claim_id=claim_id)
        if found.status != "open":
            raise ClaimNotOpen(f"claim {claim_id} is {found.status}", claim_status=found.status)
        data = ClaimInput(
            found.partner_id,
            found.receipt,
            found.occurred_at,
            found.amount_minor,
            found.currency,
            msgspec.convert(found.lines, list[ClaimLine]),
            list(found.coupons),
        )
        accrual = Accrual(
            claimed_purchase(data),
            data.receipt,
            member_id=found.member_id,
            coupons=tuple(data.coupons),
            claimed=True,
        )

        async def answer(conn: AsyncConnection, outcomes: list) -> ClaimView:
            (outcome,) = outcomes
            if isinstance(outcome, DuplicatePartnerReference):
                # Booked meanwhile: by another confirmation or the partner's send.
                status = (
                    await conn.execute(
                        text("SELECT status FROM points_claims WHERE id = :id"), {"id": claim_id}
                    )
                ).scalar_one()
                if status != "open":
                    raise ClaimNotOpen(f"claim {claim_id} is {status}", claim_status=status)
                raise outcome
            if isinstance(outcome, LedgerError):
                raise outcome
            receipt: PurchaseReceipt = outcome
            # The purchase record's trigger marked the claim settled by this
            # very earning; it is the confirmation.
            await conn.execute(
                text(
                    "UPDATE points_claims SET status = 'confirmed', resolved_at = :now, "
                    "resolved_by = :actor, entry_id = :entry WHERE id = :id"
                ),
                {
                    "now": self.ledger.clock(),
                    "actor": actor,
                    "entry": receipt.entry_id,
                    "id": claim_id,
                },
            )
            return await self._read(conn, claim_id)

        return await self.programme.accrue(
            found.partner_id,
            [accrual],
            "claim_confirm",
            {"claim_id": claim_id},
            None,
            ClaimView,
            answer,
        )

    async def reject(self, claim_id: int, reason: str, actor: str) -> ClaimView:
        reason = check_reason(reason)
        if len(reason) > MAX_REASON:
            raise InvalidClaim("reason", f"at most {MAX_REASON} characters")
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE points_claims SET status = 'rejected', resolved_at = :now, "
                        "resolved_by = :actor, reason = :reason WHERE id = :id "
                        "AND status = 'open' RETURNING id"
                    ),
                    {"now": self.ledger.clock(), "actor": actor, "reason": reason, "id": claim_id},
                )
            ).first()
            if row is None:
                current = await self._read(conn, claim_id)
                raise ClaimNotOpen(
                    f"claim {claim_id} is {current.status}", claim_status=current.status
                )
            return await self._read(conn, claim_id)
