"""Batch earning: up to 1,000 purchases of one partner in one call, each with
its own reference and its own outcome.

One transaction for the batch, under the batch's idempotency key, through
the accrual path (partners/accrual.py): a constant number of statements
whatever the batch's size; every purchase is earned exactly as a single
earn would be (contract window, rule and offers at the purchase time, tier,
caps, budgets, coupons, credit limit, pending window, tier upgrade), and a
member with several purchases in the batch earns them in the batch's order,
as if they had come one by one. One bad item (a duplicate reference, an
unknown card, a closed member, a bad line, an exhausted credit limit) is
reported and never rejects the others: every refusal is decided before
anything is written.

The price of one transaction: while a batch runs, single earnings of its
members, and those a budgeted promotion of the batch may pay for, wait for it
(bounded by the lock timeout; the waiting transaction is retried).
"""

from collections.abc import Awaitable, Callable

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.errors import DuplicatePartnerReference, LedgerError
from ledger.idempotency import IdempotencyKey
from partners.accrual import Accrual
from partners.errors import InvalidPurchase
from partners.programme import Programme, PurchaseInput, check_purchase, check_reference
from partners.receipts import PurchaseReceipt

MAX_BATCH_ITEMS = 1000


class EarnItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    card_number: str
    reference: str  # the partner's transaction reference, unique forever
    purchase: PurchaseInput
    coupons: list[str] = []


class ItemError(msgspec.Struct, frozen=True):
    code: str  # the problem type's name (e.g. duplicate-partner-reference)
    detail: str
    extensions: dict = {}


class ItemOutcome(msgspec.Struct, frozen=True):
    reference: str
    receipt: PurchaseReceipt | None = None  # posted (or earned nothing)
    error: ItemError | None = None  # refused: nothing of this item was written


class BatchReceipt(msgspec.Struct, frozen=True):
    outcomes: list[ItemOutcome]  # one per item, in the order sent
    posted: int  # items accepted (an item may earn nothing and still be accepted)
    duplicates: int  # items whose reference had been used before
    rejected: int  # other refusals
    points: int  # PTS earned by the accepted items


def _error(error: LedgerError) -> ItemError:
    return ItemError(error.code, error.detail, dict(error.extensions))


async def earn_batch(
    programme: Programme,
    partner_id: str,
    items: list[EarnItem],
    idempotency: IdempotencyKey | None = None,
    after: Callable[[AsyncConnection, BatchReceipt], Awaitable[None]] | None = None,
) -> BatchReceipt:
    """Earn for each item; see the module's docstring. `after(conn, receipt)`,
    if given, runs last in the batch's transaction (a file import records its
    checkpoint there): it commits with the postings, or nothing does."""
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise InvalidPurchase(f"a batch has 1 to {MAX_BATCH_ITEMS} items", max=MAX_BATCH_ITEMS)
    request = {"partner_id": partner_id, "items": items}

    now = programme.ledger.clock()
    refused: dict[int, LedgerError] = {}
    accruals: list[Accrual] = []
    positions: list[int] = []  # the item of each accrual
    for index, item in enumerate(items):
        try:
            check_reference(item.reference)
            purchase = item.purchase.to_purchase(partner_id, now)
            check_purchase(purchase)
        except LedgerError as error:
            refused[index] = error
            continue
        accruals.append(
            Accrual(
                purchase, item.reference, card_number=item.card_number, coupons=tuple(item.coupons)
            )
        )
        positions.append(index)

    async def answer(conn: AsyncConnection, earned) -> BatchReceipt:
        results = dict(refused)
        results.update(zip(positions, earned, strict=True))
        outcomes = [
            ItemOutcome(item.reference, error=_error(result))
            if isinstance(result, LedgerError)
            else ItemOutcome(item.reference, receipt=result)
            for item, result in ((items[i], results[i]) for i in range(len(items)))
        ]
        duplicate = DuplicatePartnerReference.code
        receipt = BatchReceipt(
            outcomes=outcomes,
            posted=sum(o.receipt is not None for o in outcomes),
            duplicates=sum(o.error is not None and o.error.code == duplicate for o in outcomes),
            rejected=sum(o.error is not None and o.error.code != duplicate for o in outcomes),
            points=sum(o.receipt.earning.points for o in outcomes if o.receipt is not None),
        )
        if after is not None:
            await after(conn, receipt)
        return receipt

    return await programme.accrue(
        partner_id, accruals, "earn_batch", request, idempotency, BatchReceipt, answer, now
    )
