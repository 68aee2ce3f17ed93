"""The programme service: applies the rulebook to the ledger. An earning
(rules, tier bonus, promotions with budgets, coupons, QP and tier upgrade) is
one transaction; a quote is the same computation with nothing posted or used.

The partner's contract (partners/contracts.py) bounds an earning: the purchase
time must lie in the contract's submission window, the points wait for the
return window counted from the purchase but never from before it was
reported, and the points the partner pays for may not take its liability
beyond its credit limit. The liability is read from the partner's ledger
accounts (slot sums, no lock), so accruals at one partner still never queue
on one row; the price is that earnings running at the same moment are each
checked against what was committed when they started.

`Programme` is one interface assembled by concept: the purchase as callers
send it, quotes and earnings (the accrual path, partners/accrual.py, with its
lock order), the partner's credit and the programme's part of closing and
merging members here; returns.py (returns of purchases), tiering.py (the
member's tier) and member_views.py (the card holder's view, coupons,
redemption quotes) add theirs.
"""

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import check_id
from ledger.errors import LedgerError, PeriodClosed
from ledger.idempotency import Claim, IdempotencyKey, Stored, storing
from ledger.service import LedgerService
from partners.accrual import Accrual, AccrualRun, RunAgain
from partners.contracts import CreditStanding, contract_in_force, credit_standing
from partners.credit import partner_points
from partners.definitions import DefinitionCache
from partners.earning import Purchase, PurchaseLine
from partners.errors import InvalidPurchase, PartnerNotFound
from partners.expiry_notice import ExpiringWindow
from partners.member_views import MemberViews
from partners.money import check_currency
from partners.receipts import EarningView, PurchaseReceipt, earning_view
from partners.returns import Returns
from partners.tiering import Tiering

MAX_LINES = 200
MAX_LINE_MINOR = 10**10

R = TypeVar("R")
# A reference taken by a concurrent call between the check and the posting, or
# definitions that moved under the call (`RunAgain`).
RUN_ATTEMPTS = 3
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


class Programme(Returns, Tiering, MemberViews):
    """The programme's operations over one ledger; returns, the member's tier
    and the card holder's views are mixed in (returns.py, tiering.py,
    member_views.py)."""

    def __init__(
        self,
        ledger: LedgerService,
        tier_period: str = "calendar",
        expiring: ExpiringWindow | None = None,
    ) -> None:
        self.ledger = ledger
        self.engine = ledger.engine
        self.tier_period = tier_period
        # How far ahead the balance view shows expiring points (LOYALTY_EXPIRING_VIEW).
        self.expiring_window = expiring or ExpiringWindow()
        self.definitions = DefinitionCache()

    # -- quote and earn ---------------------------------------------------------

    async def quote(
        self,
        member_id: str,
        purchase: Purchase,
        coupon_codes: tuple[str, ...] = (),
        received_at: datetime | None = None,
    ) -> EarningView:
        """The breakdown an earning would get, posting nothing and using no
        budget. `received_at`: when the call came (see `accrue`)."""
        check_id("member", member_id)
        check_purchase(purchase)
        async with self.engine.connect() as conn:
            run = AccrualRun(self, conn, purchase.partner_id, lock=False, received_at=received_at)
            _, (result,) = await run.evaluate_all(
                [Accrual(purchase, "quote", member_id=member_id, coupons=coupon_codes)]
            )
            if isinstance(result, LedgerError):
                raise result
            return earning_view(member_id, purchase, result.tier, result.earning)

    async def credit(self, partner_id: str) -> CreditStanding:
        """The partner's liability for the points it issued and what its
        credit limit (plus deposit) leaves, under the contract in force now."""
        async with self.engine.connect() as conn:
            contract = await contract_in_force(conn, partner_id, self.ledger.clock())
            if contract is None:
                raise PartnerNotFound(f"no partner {partner_id!r}")
            return credit_standing(contract, *await partner_points(conn, partner_id))

    async def accrue(
        self,
        partner_id: str,
        accruals: Sequence[Accrual],
        operation: str,
        request: object,
        idempotency: IdempotencyKey | None,
        result_type: type[R],
        answer: Callable[[AsyncConnection, list[PurchaseReceipt | LedgerError]], Awaitable[R]],
        received_at: datetime | None = None,
    ) -> R:
        """Earn for the accruals in one transaction (`AccrualRun`), once per
        idempotency key, answering `answer(conn, outcomes)` (in the same
        transaction: what it writes commits with the earnings). `received_at`:
        when the call came, the time its purchases without one of their own
        were given (default: when the run starts). A reference taken by a
        concurrent call after this one checked it, or definitions that moved
        under it (`RunAgain`), runs the transaction again. So does a
        purchase dated in a month closed since this process last learnt the
        boundary: the database refused it (`PeriodClosed`, carrying the
        boundary), and the run again books it at the boundary."""

        async def body(conn: AsyncConnection, claim: Claim | None) -> R | Stored[R]:
            # The key is claimed by the run's opening statement.
            run = AccrualRun(
                self, conn, partner_id, lock=True, received_at=received_at, claim=claim
            )
            result = await answer(conn, await run.post(accruals))
            if idempotency is None:
                await run.record()
                return result
            # The result rides with the call's records: one round trip less.
            await run.record(storing(idempotency, result))
            return Stored(result)

        for attempt in range(1, RUN_ATTEMPTS + 1):
            used = self.ledger.closed_through  # what this run books late purchases by
            try:
                return await self.ledger.run(
                    operation, request, idempotency, result_type, body, claims_itself=True
                )
            except RunAgain:
                if attempt == RUN_ATTEMPTS:
                    raise
            except PeriodClosed as refusal:
                if attempt == RUN_ATTEMPTS or not self.ledger.learn_closed_through(refusal, used):
                    raise
        raise AssertionError("unreachable")

    async def earn_purchase(
        self,
        member_id: str,
        purchase: Purchase,
        partner_reference: str,
        coupon_codes: tuple[str, ...] = (),
        release_at: datetime | None = None,
        idempotency: IdempotencyKey | None = None,
        card_number: str | None = None,
        received_at: datetime | None = None,
    ) -> PurchaseReceipt:
        """Earn for a purchase (the member by id, or by `card_number` when
        `member_id` is None). The points wait in `pending` until the later of
        `release_at` (a caller's own) and the end of the return window of the
        partner's contract in force at the purchase time, counted from the
        purchase but never from before it was received (`received_at`, see
        `accrue`)."""
        if card_number is None:
            check_id("member", member_id)
        check_purchase(purchase)
        request = {
            "member_id": member_id,
            "card_number": card_number,
            "purchase": purchase,
            "partner_reference": partner_reference,
            "coupons": coupon_codes,
            "release_at": release_at,
        }
        accrual = Accrual(
            purchase, partner_reference, card_number, member_id, coupon_codes, release_at
        )

        async def only(_conn, outcomes: list[PurchaseReceipt | LedgerError]) -> PurchaseReceipt:
            (outcome,) = outcomes
            if isinstance(outcome, LedgerError):
                raise outcome
            return outcome

        return await self.accrue(
            purchase.partner_id,
            [accrual],
            "earn_purchase",
            request,
            idempotency,
            PurchaseReceipt,
            only,
            received_at,
        )

    # -- closing and merging members ------------------------------------------------

    async def close_member_in(self, conn, member_id: str, at: datetime, entry_id) -> None:
        """A closed member keeps no status and no usable card (under its lock)."""
        await self._close_tier(conn, member_id, at, entry_id)
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
        kept = await self._merge_tiers(conn, source, target, at, entry_id)
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
