"""The repair of a reconciliation run (finance/reconciliation.py): its
missing-in-ledger rows posted through the normal earn path
(partners/batch.py), once, whoever runs it and how often; every row's
outcome (posted, already-posted, refused) is stored with the repair."""

from collections.abc import Sequence

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from finance.reconciliation import day_start
from finance.reconciliation_runs import (
    ReconciliationItem,
    ReconciliationSummary,
    RepairSummary,
    get_reconciliation,
    reconciliation_items,
)
from ledger.errors import DuplicatePartnerReference
from partners.batch import MAX_BATCH_ITEMS, BatchReceipt, EarnItem, earn_batch
from partners.programme import Programme, PurchaseInput, PurchaseLineInput


class RepairOutcome(msgspec.Struct, frozen=True):
    item_id: int
    reference: str
    outcome: str  # posted | already-posted | refused
    entry_id: int | None = None
    points: int | None = None  # credited by the earn path (posted)
    file_points: int | None = None
    code: str | None = None  # the problem type of a refusal
    detail: str | None = None


class RepairResult(RepairSummary, frozen=True, kw_only=True):
    outcomes: list[RepairOutcome]  # one per missing-in-ledger row, in item order


async def repair(programme: Programme, reconciliation_id: int, actor: str) -> RepairResult:
    """Post the run's missing-in-ledger rows through the normal earn path
    (partners/batch.py, in batches of up to 1,000): each row is a purchase
    with its reference, the member of its card, its time (a date alone: its
    00:00 UTC), one line of its amount in its category (the mapped column, or
    the mapping's `default_category`) in the partner's currency. Rules, caps,
    promotions and the contract's windows apply as for any earning. A
    reference the ledger knows by now is `already-posted` (nothing is posted
    twice, whoever runs the repair and how often); a row the earn path
    refuses is `refused` with its problem. Every outcome is stored."""
    engine = programme.ledger.engine
    run = await get_reconciliation(engine, reconciliation_id)
    async with engine.begin() as conn:
        header = (
            await conn.execute(
                text(
                    "INSERT INTO reconciliation_repairs (reconciliation_id, created_by) "
                    "VALUES (:id, :actor) RETURNING id, created_at"
                ),
                {"id": reconciliation_id, "actor": actor},
            )
        ).one()
    outcomes: list[RepairOutcome] = []
    after = 0
    while True:
        page = await reconciliation_items(
            engine, reconciliation_id, "missing-in-ledger", MAX_BATCH_ITEMS, str(after)
        )
        if not page.items:
            break
        outcomes += await _repair_batch(programme, run, header.id, page.items)
        after = page.items[-1].item_id
        if page.next_cursor is None:
            break
    return RepairResult(
        repair_id=header.id,
        reconciliation_id=reconciliation_id,
        created_by=actor,
        created_at=header.created_at,
        posted=sum(o.outcome == "posted" for o in outcomes),
        already_posted=sum(o.outcome == "already-posted" for o in outcomes),
        refused=sum(o.outcome == "refused" for o in outcomes),
        points=sum(o.points or 0 for o in outcomes if o.outcome == "posted"),
        file_points=sum(o.file_points or 0 for o in outcomes if o.outcome == "posted"),
        outcomes=outcomes,
    )


def _earn_item(run: ReconciliationSummary, item: ReconciliationItem) -> EarnItem:
    at = item.file_at or day_start(item.file_date)
    category = item.file_category or run.mapping.default_category
    purchase = PurchaseInput(
        run.currency, [PurchaseLineInput(item.file_amount_minor, category)], at
    )
    return EarnItem(item.file_card, item.reference, purchase)


async def _repair_batch(
    programme: Programme,
    run: ReconciliationSummary,
    repair_id: int,
    items: Sequence[ReconciliationItem],
) -> list[RepairOutcome]:
    outcomes: list[RepairOutcome] = []

    async def record(conn: AsyncConnection, receipt: BatchReceipt) -> None:
        outcomes.clear()  # a transaction run again records afresh
        taken = [
            o.reference
            for o in receipt.outcomes
            if o.error is not None and o.error.code == DuplicatePartnerReference.code
        ]
        entries = {}
        if taken:
            entries = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT r, coalesce((SELECT entry_id FROM partner_purchases "
                            "WHERE partner_id = :p AND partner_reference = r), "
                            "(SELECT entry_id FROM partner_references WHERE partner_id = :p "
                            "AND partner_reference = r)) "
                            "FROM unnest(CAST(:refs AS text[])) AS r"
                        ),
                        {"p": run.partner_id, "refs": taken},
                    )
                ).all()
            )
        for item, result in zip(items, receipt.outcomes, strict=True):
            if result.receipt is not None:
                outcome = RepairOutcome(
                    item.item_id,
                    item.reference,
                    "posted",
                    result.receipt.entry_id,
                    result.receipt.earning.points,
                    item.file_points,
                )
            elif result.error.code == DuplicatePartnerReference.code:
                outcome = RepairOutcome(
                    item.item_id,
                    item.reference,
                    "already-posted",
                    entries.get(item.reference),
                    file_points=item.file_points,
                    code=result.error.code,
                    detail=result.error.detail,
                )
            else:
                outcome = RepairOutcome(
                    item.item_id,
                    item.reference,
                    "refused",
                    file_points=item.file_points,
                    code=result.error.code,
                    detail=result.error.detail[:1000],
                )
            outcomes.append(outcome)
        await conn.execute(
            text(
                "INSERT INTO reconciliation_repair_items (repair_id, item_id, reference, "
                "outcome, entry_id, points, file_points, code, detail) SELECT :r, * FROM unnest("
                "CAST(:ids AS bigint[]), CAST(:refs AS text[]), CAST(:outcomes AS text[]), "
                "CAST(:entries AS bigint[]), CAST(:points AS bigint[]), "
                "CAST(:file_points AS bigint[]), CAST(:codes AS text[]), "
                "CAST(:details AS text[]))"
            ),
            {
                "r": repair_id,
                "ids": [o.item_id for o in outcomes],
                "refs": [o.reference for o in outcomes],
                "outcomes": [o.outcome for o in outcomes],
                "entries": [o.entry_id for o in outcomes],
                "points": [o.points for o in outcomes],
                "file_points": [o.file_points for o in outcomes],
                "codes": [o.code for o in outcomes],
                "details": [o.detail for o in outcomes],
            },
        )

    await earn_batch(programme, run.partner_id, [_earn_item(run, i) for i in items], after=record)
    return outcomes
