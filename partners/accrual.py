"""The accrual path: earning for N purchases of one partner in one
transaction, set-based, with a constant number of statements whatever N is.
A single earning is the same code with N = 1; a quote is its reading half.
The flow and its decisions are here, the statements in partners/accrual_sql.py.

1. One statement opens the call: the definitions' version, the card holders
   and the members' registry rows (shared: a close or a merge waits for the
   earning, or the earning sees it). Everything about the programme
   (contracts, rules, categories, tiers, promotions) then comes from the
   process's cache (partners/definitions.py).
2. Each purchase is checked (card, member status, submission window, rule,
   currency, categories) with no I/O; one that fails is refused alone.
3. Locks, in the ledger's order (after the idempotency key): the budgeted
   promotions that may pay for any of the purchases (id order), then every
   member (one statement); the posting takes the ledger's hot slots last
   (ledger/journal.py). Promotions without a budget lock nothing global, so
   accruals at a partner do not queue behind a running promotion, and the
   partner's balances (its credit limit, partners/credit.py) are read
   without a lock. Where the definitions the process already knows have no
   budgeted promotion at the partner (the common case), step 1's statement
   takes the members too; if the version it reads brings one, the call runs
   again (`DefinitionsMoved`), in the full order.
4. Under those locks, one statement reads what the members' earnings depend
   on: tiers, balances, the references already used, the QP of the tier
   periods and the points counted against period caps; the promotion usage
   (a per-member limit), the coupons and the members' paid club terms (a
   promotion for club members, clubs/) are one statement each, when named.
5. The engine (partners/earning.py, pure) evaluates the purchases in order
   with a running state per member, promotion and partner (tier upgrades,
   caps, budgets, member limits, coupons, the partner's credit), exactly as
   if they had come one by one.
6. One `earn_many_in` posts every earning (`AccrualRun.post`); then one
   statement (`AccrualRun.record`) records the purchases, the promotions'
   budgets and usage, the coupons used, the tier changes and the call's
   result with its idempotency key.

A reference is checked against the journal and the purchases in step 4; a
concurrent call that takes it between that check and the posting makes the
posting or the purchase record see it, and the whole transaction runs again
(`ReferenceTaken`, a `RunAgain`), so nothing is decided on a state that did not hold.
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import member_account
from ledger.commands import Earn, EarnLine, check_points
from ledger.errors import (
    DuplicatePartnerReference,
    LedgerError,
    MemberNotActive,
    MemberNotFound,
)
from ledger.idempotency import Claim
from ledger.views import PostedEarning
from partners import rule_reads
from partners.accrual_sql import (
    club_terms,
    lock_budgets,
    open_call,
    read_coupons,
    read_members,
    read_usage,
    record_call,
)
from partners.accrual_state import (
    RECEIPT_ACCOUNTS,
    CheckedPurchase,
    Evaluated,
    Members,
    cap_start,
    coupon_problem,
    move_on,
    tier_of,
)
from partners.contracts import check_purchase_time, release_time
from partners.credit import CallCredit
from partners.definitions import Definitions
from partners.earning import EarnRule, Purchase, evaluate
from partners.errors import (
    CouponNotFound,
    CouponNotUsable,
    CurrencyMismatch,
    NoRuleInForce,
    UnknownCategory,
)
from partners.receipts import PurchaseReceipt, earning_view
from partners.registry import holder_of
from partners.tiers import period_bounds


class RunAgain(Exception):
    """What the transaction decided on did not hold: run it again."""


class ReferenceTaken(RunAgain):
    """A concurrent transaction used one of the call's references after the
    call checked them."""


class DefinitionsMoved(RunAgain):
    """The call took its members first, as the definitions it knew allowed
    (no budgeted promotion at the partner), but newer ones have a budgeted
    promotion there, whose row must be locked before any member."""


@dataclass(frozen=True, slots=True)
class Accrual:
    """One purchase to earn for: the member by card or by id."""

    purchase: Purchase  # as reported (received_at None)
    reference: str
    card_number: str | None = None
    member_id: str | None = None
    coupons: tuple[str, ...] = ()
    release_at: datetime | None = None  # a caller's own release time, if later
    # A member's missing-points claim (partners/claims.py): its own window
    # bounded the purchase time, the partner's submission window does not.
    claimed: bool = False


def rule_for(defs: Definitions, purchase: Purchase) -> EarnRule:
    """The earn rule in force at the purchase time, for its currency and
    categories, or the refusal."""
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


class AccrualRun:
    """One call of the accrual path inside the caller's transaction."""

    def __init__(
        self,
        programme,
        conn: AsyncConnection,
        partner_id: str,
        lock: bool,
        received_at: datetime | None = None,
        claim: Claim | None = None,
    ) -> None:
        self.programme = programme
        # The call's idempotency key, claimed by the opening statement.
        self.claim = claim
        self.ledger = programme.ledger
        self.conn = conn
        self.partner_id = partner_id
        self.lock = lock  # False: a quote (nothing locked, nothing written)
        # When the call came: the instant a purchase without its own time took,
        # so that it is inside any submission window (a run taken again too).
        self.now: datetime = received_at or programme.ledger.clock()
        # What `post` posted, for `record`: the purchases accepted, their entries.
        self._posted: tuple[list[Evaluated], dict[int, PostedEarning]] = ([], {})
        # A call of one purchase: its reads planned once per session
        # (accrual_sql.GENERIC_PLANS).
        self.one_purchase = False

    # -- reading ----------------------------------------------------------------

    def _check(
        self,
        defs: Definitions,
        index: int,
        accrual: Accrual,
        holders: dict[str, tuple[str, str]],
        statuses: dict[str, str],
    ) -> CheckedPurchase:
        """Everything about one purchase that needs no member state."""
        if accrual.card_number is not None:
            member_id = holder_of(accrual.card_number, holders)
        else:
            member_id = accrual.member_id
        status = statuses.get(member_id)
        if status is None:
            raise MemberNotFound(f"no enrolled member {member_id!r}", member_id=member_id)
        if status != "active":
            raise MemberNotActive(
                f"member {member_id!r} is {status}: its accounts take no postings",
                member_id=member_id,
                member_status=status,
            )
        purchase = accrual.purchase
        contract = defs.contract_in_force(purchase.partner_id, purchase.occurred_at)
        release = accrual.release_at
        if contract is not None:
            if not accrual.claimed:
                check_purchase_time(contract, purchase.occurred_at, self.now)
            window_end = release_time(contract, purchase.occurred_at, self.now)
            if window_end is not None and (release is None or window_end > release):
                release = window_end
        received = replace(purchase, received_at=self.now)
        rule = rule_for(defs, received)
        promotions = defs.promotions_for(
            purchase.partner_id,
            purchase.occurred_at,
            self.now,
            {line.category for line in purchase.lines},
            purchase.total_minor,
        )
        return CheckedPurchase(
            index, accrual, member_id, received, contract, release, rule, promotions
        )

    async def _read_members(self, defs: Definitions, items: list[CheckedPurchase]) -> Members:
        """Under the members' locks: one statement for tiers, balances, used
        references, period QP and cap points; usage and coupons when named."""
        members = sorted({i.member_id for i in items})
        accounts = [member_account(m, name) for m in members for name, _ in RECEIPT_ACCOUNTS]
        qualifying = any(t.qp_threshold > 0 for t in defs.tiers)
        periods = sorted(
            {
                (i.member_id, *period_bounds(i.received.occurred_at, self.programme.tier_period))
                for i in items
            }
            if qualifying
            else set()
        )
        caps = sorted(
            {
                (i.member_id, i.rule.partner_id, cap_start(i.rule, i.received.occurred_at))
                for i in items
                if i.rule.cap_per_period is not None
            }
        )
        refs = sorted({i.accrual.reference for i in items}) if self.lock else []
        found = await read_members(
            self.conn, self.partner_id, members, accounts, refs, periods, caps, self.one_purchase
        )
        usage = sorted(
            {
                (r.id, i.member_id)
                for i in items
                for r in i.promotions
                if r.budget_points is not None or r.per_member_limit
            }
        )
        coupons = sorted({(i.member_id, code) for i in items for code in i.accrual.coupons})
        clubs = sorted({i.member_id for i in items if any(r.clubs for r in i.promotions)})
        return Members(
            tiers=found.tiers,
            balances=found.balances,
            period_qp=found.period_qp,
            cap_points=found.cap_points,
            usage=await read_usage(self.conn, usage, self.lock),
            coupons=await read_coupons(self.conn, coupons, self.lock),
            taken=found.taken,
            club_terms=await club_terms(self.conn, clubs),
        )

    # -- evaluating ---------------------------------------------------------------

    def _evaluate(self, defs: Definitions, item: CheckedPurchase, known: Members) -> Evaluated:
        """The engine over the running state (nothing is changed here)."""
        tier, _ = tier_of(defs, known, item.member_id)
        at = item.received.occurred_at
        offers = [
            rule_reads.offer_from_promotion(
                known.fresh.get(row.id, row),
                known.usage.get((row.id, item.member_id), 0),
                known.budget_used.get(row.id),
            )
            for row in item.promotions
        ]
        coupons: dict[str, int] = {}
        for code in item.accrual.coupons:
            row = known.coupons.get((item.member_id, code))
            if row is None:
                raise CouponNotFound(f"member has no coupon {code!r}", coupon=code)
            problem = (
                "was already used"
                if (item.member_id, code) in known.used_coupons
                else coupon_problem(row, at)
            )
            if problem:
                raise CouponNotUsable(f"coupon {code!r} {problem}", coupon=code)
            offers.append(rule_reads.offer_from_coupon(row))
            coupons[code] = row.id
        start = cap_start(item.rule, at)
        so_far = (
            known.cap_points.get((item.member_id, item.rule.partner_id, start), 0)
            if start is not None
            else 0
        )
        earning = evaluate(
            item.received,
            item.rule,
            tier.code,
            tier.earn_multiplier,
            offers,
            so_far,
            known.clubs_at(item.member_id, at),
        )
        return Evaluated(item, tier, earning, coupons)

    async def evaluate_all(
        self, accruals: Sequence[Accrual]
    ) -> tuple[Definitions, list[Evaluated | LedgerError]]:
        """Check, lock, read and evaluate every purchase; for an earning
        (`lock`) also the credit limit and the references, the running state
        moved on by each accepted purchase."""
        # Lock order (ledger/journal.py): budgeted promotions, then members.
        # Where the definitions this process knows have no budgeted promotion
        # at the partner, the opening statement takes the members too, one
        # round trip less; newer definitions that have one run the call again.
        cached = self.programme.definitions.latest
        take_members = (
            self.lock and cached is not None and not cached.has_budgets_at(self.partner_id)
        )
        self.one_purchase = len(accruals) == 1
        version, holders, statuses = await open_call(
            self.conn,
            sorted({a.card_number for a in accruals if a.card_number is not None}),
            sorted({a.member_id for a in accruals if a.member_id is not None}),
            self.lock,
            take_members,
            self.claim,
            self.one_purchase,
        )
        defs = await self.programme.definitions.at_version(self.conn, self.now, version)
        if take_members:
            if defs.has_budgets_at(self.partner_id):
                raise DefinitionsMoved(version)
            self.ledger.journal.hold_members(
                self.conn, [m for m, status in statuses.items() if status == "active"]
            )
        results: list = [None] * len(accruals)
        for index, accrual in enumerate(accruals):
            try:
                results[index] = self._check(defs, index, accrual, holders, statuses)
            except LedgerError as error:
                results[index] = error
        items = [r for r in results if isinstance(r, CheckedPurchase)]
        if not items:
            return defs, results
        # The budgeted promotions the purchases may be paid by, fresh (their
        # budgets move with every earning), locked in id order when earning.
        fresh = await lock_budgets(
            self.conn,
            sorted({r.id for i in items for r in i.promotions if r.budget_points is not None}),
            self.lock,
        )
        if self.lock:
            await self.ledger.journal.lock_members(self.conn, {i.member_id for i in items})
        known = await self._read_members(defs, items)
        known.fresh = fresh
        known.budget_used = {i: r.budget_used for i, r in fresh.items()}
        credit = CallCredit(self.conn, self.partner_id, self.now, defs)
        for item in items:
            try:
                done = self._evaluate(defs, item, known)
                # Within what a posting may carry (the purchase's points and
                # QP, which a full return reverses in one; its lines are
                # positive parts of them), checked here so that a purchase
                # beyond it is refused alone, not its batch.
                for total, what in (
                    (done.earning.points, "the purchase's points"),
                    (done.earning.qualifying_points, "the purchase's QP"),
                ):
                    if total:
                        check_points(total, what)
                if self.lock:
                    points = await credit.check(done.earning)
                    if item.accrual.reference in known.taken:
                        raise DuplicatePartnerReference.of(self.partner_id, item.accrual.reference)
                    known.taken.add(item.accrual.reference)
                    credit.add(points)
                    move_on(known, defs, done, self.programme.tier_period, self.now)
                results[item.index] = done
            except LedgerError as error:
                results[item.index] = error
        return defs, results

    # -- writing ------------------------------------------------------------------

    def _booked_at(self, occurred_at: datetime) -> datetime:
        """The entry's effective time: the purchase time, or, for a late
        purchase dated in a closed period, the first instant of the open one
        (the boundary this process knows; Programme.accrue learns a newer one
        from the database's refusal and runs again). Rules, promotions, tier
        and contract are still those of the purchase time, and the purchase
        record keeps it."""
        boundary = self.ledger.closed_through
        return boundary if boundary is not None and occurred_at < boundary else occurred_at

    async def post(self, accruals: Sequence[Accrual]) -> list[PurchaseReceipt | LedgerError]:
        """Earn for every purchase that passes (see the module's docstring);
        what the earnings did waits for `record`, the call's last statement."""
        _defs, results = await self.evaluate_all(accruals)
        accepted = [r for r in results if isinstance(r, Evaluated)]
        earning = [done for done in accepted if done.earning.lines]
        posted = await self.ledger.earn_many_in(
            self.conn,
            [
                Earn(
                    done.item.member_id,
                    self.partner_id,
                    done.item.accrual.reference,
                    tuple(
                        EarnLine(ln.amount, ln.asset, ln.reason, ln.funder, ln.kind, ln.source)
                        for ln in done.earning.lines
                    ),
                    effective_at=self._booked_at(done.item.received.occurred_at),
                    release_at=done.item.release,
                )
                for done in earning
            ],
        )
        entries: dict[int, PostedEarning] = {}
        for done, result in zip(earning, posted, strict=True):
            if isinstance(result, DuplicatePartnerReference):
                raise ReferenceTaken(done.item.accrual.reference)
            entries[done.item.index] = result
        self._posted = (accepted, entries)
        return [
            PurchaseReceipt(
                earning_view(r.item.member_id, r.item.accrual.purchase, r.tier, r.earning),
                entries[r.item.index].entry_id if r.item.index in entries else None,
                r.balances,
                entries[r.item.index].release_at if r.item.index in entries else None,
                r.tier_change[2] if r.tier_change else None,
            )
            if isinstance(r, Evaluated)
            else r
            for r in results
        ]

    async def record(self, stored: dict[str, object] | None = None) -> None:
        """One statement: the purchases as reported, with the entries that
        earned their points (later returns are measured against them); the
        budgets and usage of the promotions that paid and the coupons used;
        every tier upgrade or renewal, in order (the members' mutexes are
        held); and, with `stored`, the call's result with its idempotency key."""
        accepted, entries = self._posted
        budget_used: dict[int, int] = defaultdict(int)
        usage: dict[tuple[int, str], int] = defaultdict(int)
        for done in accepted:
            for row in done.item.promotions:
                points = done.earning.points_from("promotion", row.code)
                if not points:
                    continue
                if row.budget_points is not None:
                    budget_used[row.id] += points
                if row.budget_points is not None or row.per_member_limit:
                    usage[(row.id, done.item.member_id)] += points
        recorded = await record_call(
            self.conn,
            self.partner_id,
            purchases=[
                (
                    d.item.accrual.reference,
                    d.item.member_id,
                    entries[d.item.index].entry_id if d.item.index in entries else None,
                    d.item.received.currency,
                    d.item.received.total_minor,
                    d.item.received.occurred_at,
                )
                for d in accepted
            ],
            budget_used=budget_used,
            usage=usage,
            used=[
                (coupon_id, done.item.member_id, entries[done.item.index].entry_id)
                for done in accepted
                for code, coupon_id in done.coupons.items()
                if done.earning.points_from("coupon", code) and done.item.index in entries
            ],
            changes=[
                (d.item.member_id, d.item.received.occurred_at, entries[d.item.index].entry_id, *c)
                for d in accepted
                if (c := d.tier_change) is not None
            ],
            stored=stored,
        )
        for done in accepted:
            if done.item.accrual.reference not in recorded:
                raise ReferenceTaken(done.item.accrual.reference)
