"""Partner API (HMAC-signed, /v1/partner): earn, quote, returns, two-phase
redemption, the till's balance lookup and the partner's credit standing.
Every POST needs Idempotency-Key."""

from typing import Annotated

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from api.deps import SERVICES
from api.input_guard import PathText, RowId, SignedIdempotentOperation, SignedOperation
from api.partner_auth import authenticate_partner
from api.partner_requests import idempotent
from api.problems import problem
from api.strict_body import strict_json_body
from ledger.commands import Authorise, Capture, Void
from ledger.service import LedgerService
from ledger.views import Balances, HoldView
from partners.batch import MAX_BATCH_ITEMS, EarnItem, earn_batch
from partners.burning import value_of_points
from partners.contracts import CreditStanding
from partners.errors import InvalidPurchase
from partners.programme import (
    Programme,
    PurchaseInput,
    check_reference,
)
from partners.receipts import EarningView, PurchaseReceipt
from partners.registry import Registry
from partners.returns import ReturnReceipt
from partners.rule_reads import burn_rule_in_force


class EarnRequest(msgspec.Struct, forbid_unknown_fields=True):
    card_number: str
    reference: str  # the partner's transaction reference, unique forever
    purchase: PurchaseInput
    coupons: list[str] = []


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[EarnItem], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class BatchItemResult(msgspec.Struct, frozen=True, omit_defaults=True):
    reference: str
    status: int  # 201 posted; otherwise the problem's status
    receipt: PurchaseReceipt | None = None
    problem: dict | None = None  # RFC 9457, as a single call would have answered


class BatchResult(msgspec.Struct, frozen=True):
    results: list[BatchItemResult]  # one per item, in the order sent
    posted: int
    duplicates: int
    rejected: int
    points: int


class QuoteRequest(msgspec.Struct, forbid_unknown_fields=True):
    card_number: str
    purchase: PurchaseInput
    coupons: list[str] = []


class ReturnLine(msgspec.Struct, forbid_unknown_fields=True):
    amount_minor: int
    category: str | None = None


class ReturnRequest(msgspec.Struct, forbid_unknown_fields=True):
    reference: str  # the original purchase
    return_reference: str  # this return, unique like any reference
    amount_minor: int | None = None
    lines: list[ReturnLine] | None = None


class AuthoriseRequest(msgspec.Struct, forbid_unknown_fields=True):
    card_number: str
    reference: str
    currency: str
    basket_minor: int
    points: int
    expires_in_seconds: int | None = None


class CaptureRequest(msgspec.Struct, forbid_unknown_fields=True):
    points: int | None = None  # default: the whole hold
    reference: str | None = None


class VoidRequest(msgspec.Struct, forbid_unknown_fields=True):
    pass


class RedemptionReceipt(msgspec.Struct, frozen=True):
    entry_id: int
    hold: HoldView
    value_minor: int | None
    currency: str | None
    balances: Balances | None


class TillBalance(msgspec.Struct, frozen=True):
    available: int
    value_minor: int | None
    currency: str | None


Ledger = NamedDependency[LedgerService]
Programmes = NamedDependency[Programme]


def _partner(request: Request) -> str:
    return request.state.partner_id


async def _member(request: Request, card_number: str) -> str:
    registry: Registry = request.app.state.registry
    return await registry.member_for_card(card_number)


@post(
    "/earn",
    summary="Award points for a purchase",
    operation_class=SignedIdempotentOperation,
)
async def earn(request: Request, data: JSONBody[EarnRequest], programme: Programmes) -> Response:
    partner_id = _partner(request)

    async def run(key):
        received_at = programme.ledger.clock()
        purchase = data.purchase.to_purchase(partner_id, received_at)
        # The card's holder, and the contract in force at the purchase time
        # (submission and return windows, credit limit), are read inside the
        # earning's own transaction.
        return await programme.earn_purchase(
            None,
            purchase,
            check_reference(data.reference),
            tuple(data.coupons),
            idempotency=key,
            card_number=data.card_number,
            received_at=received_at,
        )

    return await idempotent(request, partner_id, run)


@post(
    "/earnings/batch",
    status_code=200,
    summary="Award points for up to 1,000 purchases, each with its own outcome",
    operation_class=SignedIdempotentOperation,
)
async def earn_batch_route(
    request: Request, data: JSONBody[BatchRequest], programme: Programmes
) -> Response:
    partner_id = _partner(request)

    async def run(key) -> BatchResult:
        receipt = await earn_batch(programme, partner_id, data.items, idempotency=key)
        results = []
        for outcome in receipt.outcomes:
            if outcome.error is None:
                results.append(BatchItemResult(outcome.reference, 201, receipt=outcome.receipt))
                continue
            # In name order: the receipt is kept as jsonb with its key, which
            # orders an object's names its own way, and a replay must answer
            # the first answer's bytes.
            extensions = dict(sorted(outcome.error.extensions.items()))
            answer = problem(outcome.error.code, outcome.error.detail, extensions=extensions)
            results.append(
                BatchItemResult(outcome.reference, answer.status_code, problem=answer.content)
            )
        return BatchResult(
            results, receipt.posted, receipt.duplicates, receipt.rejected, receipt.points
        )

    return await idempotent(request, partner_id, run, status_code=200)


@post(
    "/quote",
    status_code=200,
    summary="What a purchase would earn; nothing is posted",
    operation_class=SignedIdempotentOperation,
)
async def quote(request: Request, data: JSONBody[QuoteRequest], programme: Programmes) -> Response:
    partner_id = _partner(request)

    async def run(_key) -> EarningView:
        member_id = await _member(request, data.card_number)
        received_at = programme.ledger.clock()
        purchase = data.purchase.to_purchase(partner_id, received_at)
        return await programme.quote(member_id, purchase, tuple(data.coupons), received_at)

    return await idempotent(request, partner_id, run, status_code=200)


@post(
    "/returns",
    summary="A full or partial return of a purchase",
    operation_class=SignedIdempotentOperation,
)
async def return_purchase(
    request: Request, data: JSONBody[ReturnRequest], programme: Programmes
) -> Response:
    partner_id = _partner(request)

    async def run(key) -> ReturnReceipt:
        if (data.amount_minor is None) == (data.lines is None):
            raise InvalidPurchase("give either amount_minor or lines")
        amount = (
            data.amount_minor
            if data.lines is None
            else sum(line.amount_minor for line in data.lines)
        )
        return await programme.return_purchase(
            partner_id,
            check_reference(data.reference),
            check_reference(data.return_reference, "return_reference"),
            amount,
            key,
        )

    return await idempotent(request, partner_id, run)


@post(
    "/redemptions",
    summary="Authorise: hold points for a basket",
    operation_class=SignedIdempotentOperation,
)
async def authorise(
    request: Request, data: JSONBody[AuthoriseRequest], programme: Programmes, ledger: Ledger
) -> Response:
    partner_id = _partner(request)

    async def run(key) -> RedemptionReceipt:
        member_id = await _member(request, data.card_number)
        quote = await programme.redemption_quote(
            member_id, partner_id, data.currency, data.basket_minor, data.points
        )
        receipt = await ledger.authorise(
            Authorise(
                member_id,
                partner_id,
                quote.points,
                check_reference(data.reference),
                data.expires_in_seconds,
            ),
            key,
        )
        return RedemptionReceipt(
            receipt.entry_id, receipt.hold, quote.value_minor, data.currency, receipt.balances
        )

    return await idempotent(request, partner_id, run)


@post(
    "/redemptions/{hold_id:int}/capture",
    status_code=200,
    summary="Capture all or part of a hold",
    operation_class=SignedIdempotentOperation,
)
async def capture(
    request: Request, hold_id: RowId, data: JSONBody[CaptureRequest], ledger: Ledger
) -> Response:
    partner_id = _partner(request)

    async def run(key) -> RedemptionReceipt:
        reference = check_reference(data.reference) if data.reference else None
        receipt = await ledger.capture(Capture(hold_id, partner_id, data.points, reference), key)
        return RedemptionReceipt(receipt.entry_id, receipt.hold, None, None, receipt.balances)

    return await idempotent(request, partner_id, run, status_code=200)


@post(
    "/redemptions/{hold_id:int}/void",
    status_code=200,
    summary="Release a hold",
    operation_class=SignedIdempotentOperation,
)
async def void(
    request: Request, hold_id: RowId, data: JSONBody[VoidRequest], ledger: Ledger
) -> Response:
    partner_id = _partner(request)

    async def run(key) -> RedemptionReceipt:
        receipt = await ledger.void(Void(hold_id, partner_id), key)
        return RedemptionReceipt(receipt.entry_id, receipt.hold, None, None, receipt.balances)

    return await idempotent(request, partner_id, run, status_code=200)


@get(
    "/cards/{card_number:str}/balance",
    summary="Points on a card and their value here",
    operation_class=SignedOperation,
)
async def till_balance(
    request: Request, card_number: PathText, ledger: Ledger, programme: Programmes
) -> TillBalance:
    partner_id = _partner(request)
    member_id = await _member(request, card_number)
    balances = await ledger.balances(member_id)
    available = max(balances.available, 0)
    async with ledger.engine.connect() as conn:
        rule = await burn_rule_in_force(conn, partner_id, ledger.clock())
    if rule is None:
        return TillBalance(available, None, None)
    tier = (await programme.tier_progress(member_id)).tier
    return TillBalance(
        available, value_of_points(rule, available, tier.burn_discount), rule.currency
    )


@get(
    "/credit",
    summary="The partner's points liability, credit limit and headroom",
    operation_class=SignedOperation,
)
async def credit(request: Request, programme: Programmes) -> CreditStanding:
    return await programme.credit(_partner(request))


partner_router = Router(
    path="/v1/partner",
    route_handlers=[
        earn,
        earn_batch_route,
        quote,
        return_purchase,
        authorise,
        capture,
        void,
        till_balance,
        credit,
    ],
    guards=[authenticate_partner, strict_json_body],
    dependencies=SERVICES,
    tags=["partner"],
    security=[{"hmac": []}],
)
