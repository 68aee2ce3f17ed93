"""Returns: a partner's return of (part of) a purchase takes back the matching
share of the points its earning gave, QP included, and with them the share
of the promotions' budgets and member usage, the tier the purchase brought
(while its qualification period runs) and, once the whole purchase is back,
the coupons it used. Part of `Programme`.

Lock order (after the idempotency key): the purchase row, then the budgeted
promotions its earning was paid by (id order), then the ledger's reversal
takes its own rows and the member, under whose lock the promotion usage, a
coupon and the tier come back.
"""

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import PTS, member_account
from ledger.commands import Reverse
from ledger.errors import DuplicatePartnerReference
from ledger.idempotency import IdempotencyKey
from ledger.lots import prorate
from ledger.views import Balances
from partners.accrual_sql import reference_used
from partners.errors import InvalidPurchase, PurchaseNotFound, ReturnExceedsPurchase
from partners.tiers import TierChange, after_return, period_bounds


class ReturnReceipt(msgspec.Struct, frozen=True):
    entry_id: int | None  # None when the returned share was worth no whole point
    points_reversed: int
    returned_minor: int
    total_minor: int
    balances: Balances
    coupons_restored: tuple[str, ...] = ()  # usable again: the whole purchase came back


class Returns:
    """Returns of purchases (mixed into `Programme`)."""

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
            await _check_return_reference(conn, partner_id, return_reference)
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
            # The return's own row holds its reference (a share worth no point
            # posts no entry that would): a second return under it is refused.
            kept = (
                await conn.execute(
                    text(
                        "INSERT INTO partner_returns (partner_id, return_reference, "
                        "purchase_reference, amount_minor, entry_id) VALUES (:p, :rr, :r, :a, :e) "
                        "ON CONFLICT (partner_id, return_reference) DO NOTHING RETURNING 1"
                    ),
                    {
                        "p": partner_id,
                        "rr": return_reference,
                        "r": reference,
                        "a": amount_minor,
                        "e": receipt.entry_id if receipt else None,
                    },
                )
            ).first()
            if kept is None:
                raise DuplicatePartnerReference.of(partner_id, return_reference)
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
        of the period caused (partners.tiers.after_return)."""
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


async def _check_return_reference(conn: AsyncConnection, partner_id: str, reference: str) -> None:
    """A return's reference is the partner's like any other: refused when a
    purchase, an entry or another return of the partner used it. (A return
    running now under the same reference is met by the return's own row.)"""
    used = (
        await conn.execute(
            text("SELECT EXISTS (" + reference_used(":p", ":r") + ")"),
            {"p": partner_id, "r": reference},
        )
    ).scalar_one()
    if used:
        raise DuplicatePartnerReference.of(partner_id, reference)
