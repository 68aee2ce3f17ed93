"""Batch earning: up to 1,000 purchases of one partner in one call, each with
its own reference and its own outcome.

One transaction for the batch, under the batch's idempotency key: the cards
are resolved in one statement; then, in the ledger's lock order, the
budgeted promotions that may pay for any of the purchases (own rows, id
order), the members' registry rows (shared: a close or merge waits for the
batch, or the batch sees it) and every active member of the batch (one
statement, address order) are locked once; then each purchase is earned
exactly as a single earn is (`Programme.earn_in`: contract window, rule and
offers at the purchase time, tier, caps, budgets, coupons, credit limit,
pending window, tier upgrade). One bad item (a duplicate reference, an
unknown card, a closed member, a bad line, an exhausted credit limit) is
reported and never rejects the others: every refusal an earning can meet
comes before it writes anything (a partner reference is claimed by the
entry's own insert, which skips a taken one), so no savepoint is needed, and
none is taken (a transaction with more than 64 subtransactions slows down
for everything it reads). A member with several purchases in the batch earns
them in the batch's order, as if they had come one by one.

The price of one transaction: while a batch runs, single earnings of its
members, and those a budgeted promotion of the batch may pay for, wait for it
(bounded by the lock timeout; the waiting transaction is retried).
"""

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.errors import DuplicatePartnerReference, LedgerError, MemberNotActive
from ledger.idempotency import IdempotencyKey
from partners.earning import Purchase
from partners.errors import InvalidPurchase
from partners.programme import (
    Programme,
    PurchaseInput,
    PurchaseReceipt,
    check_purchase,
    check_reference,
)
from partners.registry import card_holders, holder_of

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


async def _member_statuses(conn: AsyncConnection, member_ids: set[str]) -> dict[str, str]:
    """The members' registry status, their rows share-locked (a close or a
    merge of one of them waits for the batch to end)."""
    rows = await conn.execute(
        text(
            "SELECT id, status FROM members WHERE id = ANY(CAST(:ids AS text[])) "
            'ORDER BY id COLLATE "C" FOR SHARE'
        ),
        {"ids": sorted(member_ids)},
    )
    return {r.id: r.status for r in rows}


async def _lock_budgets(conn: AsyncConnection, partner_id: str, purchases: list[Purchase]) -> None:
    """Every budgeted promotion one of the purchases could be paid by (a
    superset of what each earning locks), in id order, before any member."""
    await conn.execute(
        text(
            "SELECT id FROM promotions WHERE budget_points IS NOT NULL AND retired_at IS NULL "
            "AND starts_at <= :last AND ends_at > :first "
            "AND (cardinality(partner_ids) = 0 OR :p = ANY(partner_ids)) ORDER BY id FOR UPDATE"
        ),
        {
            "p": partner_id,
            "first": min(p.occurred_at for p in purchases),
            "last": max(p.occurred_at for p in purchases),
        },
    )


async def earn_batch(
    programme: Programme,
    partner_id: str,
    items: list[EarnItem],
    idempotency: IdempotencyKey | None = None,
) -> BatchReceipt:
    """Earn for each item; see the module's docstring."""
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise InvalidPurchase(f"a batch has 1 to {MAX_BATCH_ITEMS} items", max=MAX_BATCH_ITEMS)
    request = {"partner_id": partner_id, "items": items}

    async def body(conn: AsyncConnection) -> BatchReceipt:
        now: datetime = programme.ledger.clock()
        cards = await card_holders(conn, sorted({item.card_number for item in items}))
        outcomes: list[ItemOutcome | None] = [None] * len(items)
        ready: list[tuple[int, str, Purchase]] = []
        for index, item in enumerate(items):
            try:
                check_reference(item.reference)
                member_id = holder_of(item.card_number, cards)
                purchase = item.purchase.to_purchase(partner_id, now)
                check_purchase(purchase)
                ready.append((index, member_id, purchase))
            except LedgerError as error:
                outcomes[index] = ItemOutcome(item.reference, error=_error(error))
        if ready:
            await _lock_budgets(conn, partner_id, [purchase for _, _, purchase in ready])
            statuses = await _member_statuses(conn, {m for _, m, _ in ready})
            for index, member_id, _ in ready:
                if statuses.get(member_id) != "active":
                    error = MemberNotActive(
                        f"member {member_id!r} is {statuses.get(member_id, 'not enrolled')}",
                        member_id=member_id,
                    )
                    outcomes[index] = ItemOutcome(items[index].reference, error=_error(error))
            ready = [r for r in ready if outcomes[r[0]] is None]
            await programme.ledger.journal.lock_members(conn, {m for _, m, _ in ready})
        for index, member_id, purchase in ready:
            item = items[index]
            try:
                receipt = await programme.earn_in(
                    conn, member_id, purchase, item.reference, tuple(item.coupons), None
                )
                outcomes[index] = ItemOutcome(item.reference, receipt=receipt)
            except LedgerError as error:
                outcomes[index] = ItemOutcome(item.reference, error=_error(error))
        done = [o for o in outcomes if o is not None]
        duplicate = DuplicatePartnerReference.code
        return BatchReceipt(
            outcomes=done,
            posted=sum(o.receipt is not None for o in done),
            duplicates=sum(o.error is not None and o.error.code == duplicate for o in done),
            rejected=sum(o.error is not None and o.error.code != duplicate for o in done),
            points=sum(o.receipt.earning.points for o in done if o.receipt is not None),
        )

    return await programme.ledger.run("earn_batch", request, idempotency, BatchReceipt, body)
