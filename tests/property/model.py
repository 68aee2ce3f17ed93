"""A plain-Python model of the loyalty ledger and programme, for the property
tests. It knows the documented rules (README, DESIGN.md) and nothing of the
database: balances, lots with their expiry, debt, pending points, holds,
reversals, transfer rules, tiers, the promotion budget, and members leaving
(closed, their points forfeited or the close refused) or merged into another
(points lot by lot, pending, QP by the time it was earned, the stronger status, purchases
still returnable), after which nothing posts to them.

Each operation is split in two: `refusal_*` says which domain error the real
service must raise (None: it must succeed), `apply_*` changes the model as the
successful operation must change the books. The only engine code the model
uses is the earning engine's pure function (`partners.earning.evaluate`), to
compute the points of a purchase; everything posted from them is modelled here.
"""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from itertools import count

from ledger.errors import (
    CaptureExceedsHold,
    HoldExpired,
    HoldNotOpen,
    InsufficientPoints,
    MemberAccountsNotSettled,
    MemberNotActive,
    NotReversible,
    ReversalExceedsOriginal,
    SameMember,
    TransferRefused,
)
from partners.errors import ReturnExceedsPurchase

PTS, QP = "PTS", "QP"
EXPIRED = "program:expired"
ADJUSTMENTS = "program:adjustments"
PROMOTIONS = "program:promotions"
QP_SOURCE = "program:qp_source"


def rolling_expiry(earned_at: datetime, months: int) -> datetime:
    """`months` after earning, to the end of that quarter (exclusive bound:
    the first instant of the next quarter)."""
    earned_at = earned_at.astimezone(UTC)
    index = earned_at.year * 12 + earned_at.month - 1 + months
    year, month0 = divmod(index, 12)
    next_quarter = year * 12 + 3 * (month0 // 3) + 3
    return datetime(next_quarter // 12, next_quarter % 12 + 1, 1, tzinfo=UTC)


def status_valid_until(at: datetime) -> datetime:
    """Status lasts until the end of February of the year after next."""
    return datetime(at.astimezone(UTC).year + 2, 3, 1, tzinfo=UTC)


def prorate(sizes: list[int], part: int, whole: int) -> list[int]:
    """Largest-remainder split of `part` of `whole` over `sizes` (ties: earlier)."""
    shares = [s * part // whole for s in sizes]
    order = sorted(range(len(sizes)), key=lambda i: (-(sizes[i] * part % whole), i))
    for i in order[: part - sum(shares)]:
        shares[i] += 1
    return shares


@dataclass(frozen=True)
class TierDef:
    code: str
    rank: int
    threshold: int
    earn_multiplier: Decimal
    expiry_protected: bool


BASE = TierDef("base", 0, 0, Decimal(1), False)


@dataclass
class Lot:
    id: int  # creation order (the database's lot ids grow the same way)
    remaining: int
    expires_at: datetime
    earn_entry: int | None  # the earning it came from (a return claws these first)


@dataclass
class Member:
    id: str
    available: int = 0
    pending: int = 0
    held: int = 0
    qp: int = 0
    lots: list[Lot] = field(default_factory=list)
    clawed: bool = False  # a return took points already released or spent
    qp_by_year: Counter = field(default_factory=Counter)  # calendar year -> QP booked
    qp_by_time: Counter = field(default_factory=Counter)  # effective time -> QP (merges move it)
    sent_on: Counter = field(default_factory=Counter)  # day -> points sent, fees included
    tier: str = "base"
    tier_valid_until: datetime | None = None
    # The tier history, oldest first: (from, to, validity before, changed at,
    # earn entry that caused it or None, whether a return made it).
    tier_history: list[tuple] = field(default_factory=list)
    status: str = "active"  # closed, merged: its accounts take no postings
    merged_into: str | None = None
    merged_from: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def lots_total(self) -> int:
        return sum(lot.remaining for lot in self.lots)


@dataclass
class Earning:
    """An earn entry: what it credited and who paid, for reversals."""

    entry_id: int
    member: str  # the entry's member (a reversal by entry posts to it)
    points: int  # PTS credited: the reversible whole
    qp: int
    debits: list[tuple[str, int]]  # the PTS funder postings, in posting order
    pending: int  # still pending (0 when credited to available or released)
    release_at: datetime | None
    earned_at: datetime
    reversed: int = 0
    promoted: list[bool] = field(default_factory=list)  # per debit: the promotion's line
    # Who holds its points now: `member`, or the member it was merged into
    # (pending points are released, and a purchase's return takes back, there).
    holder: str = ""

    def __post_init__(self) -> None:
        self.holder = self.holder or self.member


@dataclass
class Redemption:
    """A burn or capture: a refund gives back the lots `origin` took."""

    entry_id: int
    member: str
    points: int
    origin: int  # the burn itself, or the hold's authorisation
    reversed: int = 0


@dataclass
class Hold:
    hold_id: int
    member: str
    amount: int
    expires_at: datetime
    authorise_entry: int
    status: str = "open"


@dataclass
class PurchaseRecord:
    reference: str
    member: str  # who a return takes back from: the buyer, or whom it was merged into
    entry_id: int | None
    total_minor: int
    returned_minor: int = 0


class Book:
    """The model of one test's members, partner and the programme accounts
    their entries touch (PTS unless the key says QP)."""

    def __init__(
        self,
        members: list[str],
        partner: str,
        *,
        expiry_months: int,
        transfer_min: int,
        transfer_fee_rate: Decimal,
        transfer_daily_limit: int | None,
        tiers: list[TierDef],
    ) -> None:
        self.members: dict[str, Member] = {}
        for member in members:
            self.add_member(member)
        self.counts: Counter = Counter()  # outcome counters for the report
        self.partner = partner
        self.expiry_months = expiry_months
        self.transfer_min = transfer_min
        self.fee_rate = transfer_fee_rate
        self.daily_limit = transfer_daily_limit
        self.tiers = {t.code: t for t in tiers}
        self.tiers.setdefault("base", BASE)
        self.accounts: Counter = Counter()  # (account, asset) -> balance from our entries
        self.entries = 0  # journal entries posted for our members
        self.lot_ids = count()
        self.consumed: dict[int, dict[int, int]] = defaultdict(dict)  # origin -> lot -> out
        self.earnings: dict[int, Earning] = {}
        self.redemptions: dict[int, Redemption] = {}
        self.holds: dict[int, Hold] = {}
        self.purchases: dict[str, PurchaseRecord] = {}
        self.promotion_used: int = 0
        self.promotion_used_by: Counter = Counter()
        self.other_entries: list[int] = []  # holds, voids, transfers, adjustments

    def add_member(self, member_id: str) -> None:
        """An enrolment: a member with nothing yet."""
        assert member_id not in self.members
        self.members[member_id] = Member(member_id)

    # -- helpers --------------------------------------------------------------

    @property
    def expired(self) -> int:
        return self.accounts[(EXPIRED, PTS)]

    def expiry(self, earned_at: datetime) -> datetime:
        return rolling_expiry(earned_at, self.expiry_months)

    def fee(self, amount: int) -> int:
        return int((amount * self.fee_rate).to_integral_value(ROUND_CEILING))

    def tier_of(self, member: str) -> TierDef:
        return self.tiers.get(self.members[member].tier, BASE)

    def tier_for(self, qp: int) -> TierDef:
        """The highest tier `qp` reaches; the lowest when it reaches none (a
        year's QP goes negative when it returns an earlier year's purchase)."""
        ranked = sorted(self.tiers.values(), key=lambda t: t.rank)
        reached = [t for t in ranked if t.threshold <= qp]
        return reached[-1] if reached else ranked[0]

    def protected(self, member: Member, now: datetime) -> bool:
        tier = self.tiers.get(member.tier, BASE)
        return tier.expiry_protected and (
            member.tier_valid_until is None or member.tier_valid_until > now
        )

    def _open_lots(self, member: Member) -> list[Lot]:
        return [lot for lot in member.lots if lot.remaining > 0]

    def refusal_inactive(self, *member_ids: str):
        """A closed or merged member's accounts take no postings."""
        return MemberNotActive if any(not self.members[m].active for m in member_ids) else None

    def _book_qp(self, member: Member, qp: int, at: datetime) -> None:
        member.qp += qp
        member.qp_by_year[at.year] += qp
        member.qp_by_time[at] += qp

    # -- lot effects ------------------------------------------------------------

    def _credit_new_lot(
        self, member: Member, amount: int, earned_at: datetime, earn_entry: int | None
    ) -> None:
        """A credit to available: repays any debt first, the rest is a new lot."""
        debt = max(-member.available, 0)
        member.available += amount
        into = amount - min(amount, debt)
        if debt:
            self.counts["debt repaid by a credit"] += 1
        if into:
            member.lots.append(Lot(next(self.lot_ids), into, self.expiry(earned_at), earn_entry))

    def _spend(self, member: Member, amount: int, entry: int) -> None:
        """A debit that may not overdraw: earliest-expiring lots first."""
        assert member.available >= amount
        member.available -= amount
        left = amount
        for lot in sorted(self._open_lots(member), key=lambda lot: (lot.expires_at, lot.id)):
            take = min(lot.remaining, left)
            lot.remaining -= take
            self.consumed[entry][lot.id] = self.consumed[entry].get(lot.id, 0) + take
            left -= take
            if not left:
                break
        assert left == 0, "lots do not cover available points"

    def _claw_back(self, member: Member, amount: int, earn_entry: int) -> None:
        """A return's debit of available: the purchase's own lots first, then
        earliest expiry; what no lot covers becomes debt."""
        member.available -= amount
        member.clawed = True
        left = amount
        order = sorted(
            self._open_lots(member),
            key=lambda lot: (lot.earn_entry != earn_entry, lot.expires_at, lot.id),
        )
        for lot in order:
            take = min(lot.remaining, left)
            lot.remaining -= take
            left -= take
            if not left:
                break
        if left:
            self.counts["return left the member in debt"] += 1

    def _restore(self, member: Member, amount: int, origin: int, now: datetime) -> None:
        """A refund or released hold: repays debt first, then refills the lots
        `origin` took, latest expiry first, with their original expiry (points
        whose lot expired meanwhile wait for the next expiry run, which skips
        members whose tier protects them then)."""
        debt = max(-member.available, 0)
        member.available += amount
        left = amount - min(amount, debt)
        by_id = {lot.id: lot for lot in member.lots}
        outstanding = self.consumed[origin]
        for lot_id in sorted(
            (i for i, out in outstanding.items() if out > 0),
            key=lambda i: (by_id[i].expires_at, i),
            reverse=True,
        ):
            if not left:
                break
            give = min(outstanding[lot_id], left)
            outstanding[lot_id] -= give
            left -= give
            lot = by_id[lot_id]
            lot.remaining += give
            if lot.expires_at <= now:
                self.counts["points given back into a lot past its expiry"] += 1
        if debt:
            self.counts["debt repaid by a restore"] += 1
        if left:
            member.lots.append(Lot(next(self.lot_ids), left, self.expiry(now), None))

    # -- earning ----------------------------------------------------------------

    def apply_earn(
        self,
        member_id: str,
        entry_id: int | None,
        lines: list[tuple[str, int, str]],  # (asset, amount, funder) in line order
        now: datetime,
        earned_at: datetime,
        release_at: datetime | None,
        kinds: list[str] | None = None,  # per line: the engine's kind (promotion...)
    ) -> None:
        """An earning's lines: PTS to pending (release_at in the future) or to
        available (a new lot, expiring from the purchase time), QP to qp."""
        if entry_id is None:
            return
        member = self.members[member_id]
        self.entries += 1
        points = sum(amount for asset, amount, _ in lines if asset == PTS)
        qp = sum(amount for asset, amount, _ in lines if asset == QP)
        pending = release_at is not None and release_at > now
        debits, promoted = [], []
        for i, (asset, amount, funder) in enumerate(lines):
            if asset == QP:
                self.accounts[(QP_SOURCE, QP)] -= amount
                continue
            account = f"partner:{self.partner}:issued" if funder == "partner" else PROMOTIONS
            self.accounts[(account, PTS)] -= amount
            debits.append((account, amount))
            promoted.append(kinds is not None and kinds[i] == "promotion")
        self._book_qp(member, qp, earned_at)
        if points and pending:
            member.pending += points
        elif points:
            self._credit_new_lot(member, points, earned_at, entry_id)
        self.earnings[entry_id] = Earning(
            entry_id,
            member_id,
            points,
            qp,
            debits,
            points if pending else 0,
            release_at if pending else None,
            earned_at,
            promoted=promoted,
        )

    def due_releases(self, now: datetime) -> list[Earning]:
        return sorted(
            (
                e
                for e in self.earnings.values()
                if e.pending > 0 and e.release_at is not None and e.release_at <= now
            ),
            key=lambda e: (e.release_at, e.entry_id),
        )

    def apply_release_pending(self, now: datetime) -> int:
        released = 0
        for earning in self.due_releases(now):
            member = self.members[earning.holder]
            if earning.holder != earning.member:
                self.counts["released to the survivor of a merge"] += 1
            member.pending -= earning.pending
            self._credit_new_lot(member, earning.pending, earning.earned_at, earning.entry_id)
            earning.pending = 0
            self.entries += 1
            released += 1
        return released

    # -- tiers ---------------------------------------------------------------------

    def apply_tier_after_earning(
        self, member_id: str, at: datetime, entry_id: int | None = None
    ) -> str | None:
        """Crossing a threshold upgrades at once; reaching the current tier
        again in a later period renews it."""
        member = self.members[member_id]
        reached = self.tier_for(member.qp_by_year[at.year])
        if reached.threshold == 0:
            return None
        until = status_valid_until(at)
        current = self.tier_of(member_id)
        if reached.rank > current.rank or (
            reached.rank == current.rank
            and (member.tier_valid_until is None or until > member.tier_valid_until)
        ):
            member.tier_history.append(
                (member.tier, reached.code, member.tier_valid_until, at, entry_id, False)
            )
            member.tier, member.tier_valid_until = reached.code, until
            return reached.code
        return None

    def apply_tier_after_return(self, member_id: str, purchase_entry: int, now: datetime):
        """A return that took the QP of the current year (the purchase's own)
        below the status held undoes, newest first, the changes that purchase
        or a later one of the year caused (each gives back the tier and
        validity from before it), skipping those an earlier return undid,
        until the status is one the year's QP reach or one reached otherwise
        (another year, a requalification), which stays. Undoing past what the
        QP reach stops at the tier they reach, with the validity it had."""
        member = self.members[member_id]
        supported = self.tier_for(member.qp_by_year[now.year])
        current = self.tier_of(member_id)
        if supported.rank >= current.rank:
            return None
        tier, until = current, member.tier_valid_until
        for old, new, before, at, by_earning, by_return in reversed(member.tier_history):
            if tier.rank <= supported.rank:
                break
            if by_return or new != tier.code:
                continue
            if by_earning is None or by_earning < purchase_entry or at.year != now.year:
                break
            below = self.tiers.get(old, BASE)
            if below.rank < supported.rank:
                tier = supported
                break
            tier, until = below, before
        if tier.threshold == 0:
            until = None
        if (tier.code, until) == (member.tier, member.tier_valid_until):
            return None
        member.tier_history.append(
            (member.tier, tier.code, member.tier_valid_until, now, None, True)
        )
        member.tier, member.tier_valid_until = tier.code, until
        self.counts[f"tier unwound by a return {current.code}->{tier.code}"] += 1
        return tier.code

    def apply_requalify(self, now: datetime) -> list[tuple[str, str, str]]:
        """Members whose status ran out get what the last complete calendar
        year earned; losing an expiry-protected tier gives the points a fresh
        validity from today."""
        changes = []
        for member in self.members.values():
            if member.tier == "base" or member.tier_valid_until is None:
                continue
            if member.tier_valid_until > now:
                continue
            old = self.tier_of(member.id)
            new = self.tier_for(member.qp_by_year[now.year - 1])
            member.tier_history.append(
                (old.code, new.code, member.tier_valid_until, now, None, False)
            )
            if new.threshold == 0:
                member.tier, member.tier_valid_until = "base", None
            else:
                member.tier = new.code
                member.tier_valid_until = datetime(now.year + 1, 3, 1, tzinfo=UTC)
            if old.expiry_protected and not new.expiry_protected:
                self.counts["protected status lost: fresh validity"] += 1
                fresh = self.expiry(now)
                for lot in self._open_lots(member):
                    lot.expires_at = max(lot.expires_at, fresh)
            changes.append((member.id, old.code, new.code))
        return changes

    def refusal_earn(self, member_id: str):
        return self.refusal_inactive(member_id)

    # -- redemption -------------------------------------------------------------------

    def refusal_spend(self, member_id: str, amount: int):
        """The member's lock comes first (the database refuses an inactive
        member's balance row), the balance check after it."""
        if self.refusal_inactive(member_id):
            return MemberNotActive
        return InsufficientPoints if self.members[member_id].available < amount else None

    def apply_burn(self, member_id: str, amount: int, entry_id: int) -> None:
        self._spend(self.members[member_id], amount, entry_id)
        self.accounts[(f"partner:{self.partner}:redeemed", PTS)] += amount
        self.redemptions[entry_id] = Redemption(entry_id, member_id, amount, entry_id)
        self.entries += 1

    def apply_authorise(
        self, member_id: str, amount: int, entry_id: int, hold_id: int, expires_at: datetime
    ) -> None:
        member = self.members[member_id]
        self._spend(member, amount, entry_id)
        member.held += amount
        self.holds[hold_id] = Hold(hold_id, member_id, amount, expires_at, entry_id)
        self.other_entries.append(entry_id)
        self.entries += 1

    def refusal_capture(self, hold_id: int, amount: int | None, now: datetime):
        hold = self.holds[hold_id]
        if hold.status != "open":
            return HoldNotOpen
        if hold.expires_at <= now:
            return HoldExpired
        if amount is not None and amount > hold.amount:
            return CaptureExceedsHold
        return None

    def apply_capture(self, hold_id: int, amount: int | None, entry_id: int, now: datetime):
        hold = self.holds[hold_id]
        member = self.members[hold.member]
        captured = hold.amount if amount is None else amount
        member.held -= hold.amount
        self.accounts[(f"partner:{self.partner}:redeemed", PTS)] += captured
        self.entries += 1
        if captured < hold.amount:
            self._restore(member, hold.amount - captured, hold.authorise_entry, now)
            self.entries += 1
        hold.status = "captured"
        self.redemptions[entry_id] = Redemption(
            entry_id, hold.member, captured, hold.authorise_entry
        )
        return captured

    def refusal_void(self, hold_id: int):
        return None if self.holds[hold_id].status == "open" else HoldNotOpen

    def _return_hold(self, hold: Hold, status: str, now: datetime) -> None:
        member = self.members[hold.member]
        member.held -= hold.amount
        self._restore(member, hold.amount, hold.authorise_entry, now)
        hold.status = status
        self.entries += 1

    def apply_void(self, hold_id: int, now: datetime) -> None:
        self._return_hold(self.holds[hold_id], "voided", now)

    def apply_expire_holds(self, now: datetime) -> int:
        due = [h for h in self.holds.values() if h.status == "open" and h.expires_at <= now]
        for hold in sorted(due, key=lambda h: (h.expires_at, h.hold_id)):
            self._return_hold(hold, "expired", now)
        return len(due)

    # -- transfers and adjustments ---------------------------------------------------

    def refusal_transfer(self, sender: str, receiver: str, amount: int, now: datetime):
        if sender == receiver:
            return SameMember
        if amount < self.transfer_min:
            return TransferRefused
        if self.refusal_inactive(sender, receiver):  # locked before the day is counted
            return MemberNotActive
        fee = self.fee(amount)
        if (
            self.daily_limit is not None
            and self.members[sender].sent_on[now.date()] + amount + fee > self.daily_limit
        ):
            return TransferRefused
        return self.refusal_spend(sender, amount + fee)

    def apply_transfer(self, sender: str, receiver: str, amount: int, entry_id: int, now):
        fee = self.fee(amount)
        member = self.members[sender]
        member.sent_on[now.date()] += amount + fee
        self._spend(member, amount + fee, entry_id)
        self._credit_new_lot(self.members[receiver], amount, now, None)
        if fee:
            self.accounts[(ADJUSTMENTS, PTS)] += fee
        self.other_entries.append(entry_id)
        self.entries += 1
        return fee

    def refusal_adjust(self, member_id: str, amount: int):
        if amount < 0:
            return self.refusal_spend(member_id, -amount)
        return self.refusal_inactive(member_id)

    def apply_adjust(self, member_id: str, amount: int, entry_id: int, now: datetime) -> None:
        member = self.members[member_id]
        if amount > 0:
            self._credit_new_lot(member, amount, now, None)
        else:
            self._spend(member, -amount, entry_id)
        self.accounts[(ADJUSTMENTS, PTS)] -= amount
        self.other_entries.append(entry_id)
        self.entries += 1

    # -- reversals ------------------------------------------------------------------------

    def refusal_reverse(self, entry_id: int, amount: int | None):
        """What the entry allows is checked first; the reversal then posts to
        the entry's member, which must still be active."""
        error = self._refusal_reversal(entry_id, amount)
        if error is not None:
            return error
        original = self.earnings.get(entry_id) or self.redemptions.get(entry_id)
        return self.refusal_inactive(original.member)

    def _refusal_reversal(self, entry_id: int, amount: int | None):
        original = self.earnings.get(entry_id) or self.redemptions.get(entry_id)
        if original is None:
            return NotReversible
        if original.points <= 0:
            return NotReversible
        left = original.points - original.reversed
        asked = left if amount is None else amount
        if asked <= 0 or asked > left:
            return ReversalExceedsOriginal
        return None

    def apply_reverse(self, entry_id: int, amount: int | None, now: datetime) -> int:
        """Reverse (part of) an earning or a redemption; returns the points."""
        if entry_id in self.earnings:
            earning = self.earnings[entry_id]
            amount = earning.points - earning.reversed if amount is None else amount
            self._reverse_earning(earning, amount, now)
            return amount
        redemption = self.redemptions[entry_id]
        amount = redemption.points - redemption.reversed if amount is None else amount
        redemption.reversed += amount
        assert redemption.reversed <= redemption.points
        self.accounts[(f"partner:{self.partner}:redeemed", PTS)] -= amount
        member = self.members[redemption.member]
        self._restore(member, amount, redemption.origin, now)
        self.entries += 1
        return amount

    def reversal_qp(self, entry_id: int, amount: int) -> int:
        """The QP a reversal of `amount` points of an earning takes back."""
        earning = self.earnings[entry_id]
        before, after = earning.reversed, earning.reversed + amount
        return earning.qp * after // earning.points - earning.qp * before // earning.points

    def _reverse_earning(self, earning: Earning, amount: int, now: datetime) -> None:
        """Negate the earning's postings in proportion, cumulatively (so
        partial reversals add up to the original exactly); the points come out
        of pending while they are still there, else out of available."""
        before, after = earning.reversed, earning.reversed + amount
        whole = earning.points
        earning.reversed = after
        assert after <= whole
        member = self.members[earning.holder]
        qp = earning.qp * after // whole - earning.qp * before // whole
        if qp:
            self._book_qp(member, -qp, now)
            if member.qp_by_year[now.year] < 0:
                self.counts["a year's QP went negative"] += 1
            self.accounts[(QP_SOURCE, QP)] += qp
        sizes = [a for _, a in earning.debits]
        now_shares = prorate(sizes, after, whole)
        was_shares = prorate(sizes, before, whole)
        for (account, _), now_share, was_share in zip(
            earning.debits, now_shares, was_shares, strict=True
        ):
            self.accounts[(account, PTS)] += now_share - was_share
        from_pending = min(amount, earning.pending)
        earning.pending -= from_pending
        member.pending -= from_pending
        if amount - from_pending:
            self._claw_back(member, amount - from_pending, earning.entry_id)
        self.entries += 1

    # -- purchases and returns --------------------------------------------------------------

    def record_purchase(self, reference, member, entry_id, total_minor) -> None:
        self.purchases[reference] = PurchaseRecord(reference, member, entry_id, total_minor)

    def return_points(self, reference: str, amount_minor: int) -> int:
        """The points a return of `amount_minor` claws back (cumulative)."""
        purchase = self.purchases[reference]
        if purchase.entry_id is None:
            return 0
        earned = self.earnings[purchase.entry_id].points
        after = purchase.returned_minor + amount_minor
        return (
            earned * after // purchase.total_minor
            - earned * purchase.returned_minor // purchase.total_minor
        )

    def refusal_return(self, reference: str, amount_minor: int):
        purchase = self.purchases[reference]
        if amount_minor > purchase.total_minor - purchase.returned_minor:
            return ReturnExceedsPurchase
        points = self.return_points(reference, amount_minor)
        if points > 0:
            # Posted to whoever holds the purchase now (after a merge: the survivor).
            return self._refusal_reversal(purchase.entry_id, points) or self.refusal_inactive(
                purchase.member
            )
        if purchase.returned_minor + amount_minor == purchase.total_minor and purchase.entry_id:
            return self.refusal_inactive(purchase.member)  # its coupons go back, under its lock
        return None

    def promotion_reversed(self, earning: Earning, before: int, after: int) -> int:
        """The promotion's share of the points reversed from `before` to
        `after` (cumulative, the ledger's largest-remainder split over the lines)."""
        sizes = [a for _, a in earning.debits]
        now_shares = prorate(sizes, after, earning.points)
        was_shares = prorate(sizes, before, earning.points)
        return sum(
            now - was
            for now, was, promoted in zip(now_shares, was_shares, earning.promoted, strict=True)
            if promoted
        )

    def apply_return(self, reference: str, amount_minor: int, now: datetime) -> int:
        """A return reverses its share of the points (and QP), gives the
        promotion back its share of what it paid (budget and the member's
        usage) and re-evaluates the member's tier."""
        purchase = self.purchases[reference]
        points = self.return_points(reference, amount_minor)
        purchase.returned_minor += amount_minor
        if points > 0:
            earning = self.earnings[purchase.entry_id]
            if purchase.member != earning.member:
                self.counts["return took back from the survivor of a merge"] += 1
            before = earning.reversed
            qp = self.reversal_qp(purchase.entry_id, points)
            self._reverse_earning(earning, points, now)
            back = self.promotion_reversed(earning, before, before + points)
            if back:
                self.promotion_used -= back
                self.promotion_used_by[purchase.member] -= back
                self.counts["promotion given back by a return"] += 1
            if qp and earning.earned_at.year == now.year:
                self.apply_tier_after_return(purchase.member, purchase.entry_id, now)
        return points

    # -- members leaving: closing and merging ------------------------------------------------

    def _settled(self, member: Member, action: str) -> bool:
        """No points held by open authorisations, no debt."""
        for unsettled, why in ((member.held, "open holds"), (member.available < 0, "debt")):
            if unsettled:
                self.counts[f"{action} refused: {why}"] += 1
                return False
        return True

    def _drop_status(self, member: Member, now: datetime) -> None:
        if member.tier != "base" or member.tier_valid_until is not None:
            member.tier_history.append(
                (member.tier, "base", member.tier_valid_until, now, None, False)
            )
            member.tier, member.tier_valid_until = "base", None

    def refusal_close(self, member_id: str, balance: str):
        """Open holds and debt always refuse a close; points left refuse it
        unless they are forfeited."""
        member = self.members[member_id]
        if not member.active:
            return MemberNotActive
        if not self._settled(member, "close"):
            return MemberAccountsNotSettled
        if balance == "refuse" and member.available + member.pending:
            self.counts["close refused: points left"] += 1
            return MemberAccountsNotSettled
        return None

    def apply_close(self, member_id: str, now: datetime) -> int:
        """Available and pending points go to program:expired in one entry
        (none when nothing is left; the pending earnings are never released);
        the status goes; QP stay where they are. Returns the points forfeited."""
        member = self.members[member_id]
        points = member.available + member.pending
        if points:
            for lot in self._open_lots(member):
                lot.remaining = 0
            for earning in self.earnings.values():
                if earning.holder == member_id:
                    earning.pending = 0
            member.available = member.pending = 0
            self.accounts[(EXPIRED, PTS)] += points
            self.entries += 1
        self._drop_status(member, now)
        member.status = "closed"
        return points

    def refusal_merge(self, source_id: str, target_id: str):
        if source_id == target_id:
            return SameMember
        if self.refusal_inactive(source_id, target_id):
            return MemberNotActive
        return None if self._settled(self.members[source_id], "merge") else MemberAccountsNotSettled

    def apply_merge(self, source_id: str, target_id: str, now: datetime) -> dict:
        """Everything `source` holds moves to `target`: in one entry its
        available points, lot by lot with each lot's expiry (soonest-expiring
        first; they repay the target's debt first), and its pending points
        (their earnings are released to `target`); then its QP, one entry per
        time it was booked at; the stronger status (a higher tier, or the same
        one valid longer); the promotion's usage (added to the target's, the
        source's row stays); the purchases not wholly returned. Returns what
        the merge should report: entries, the points entry's new lots, the
        purchases moved and the tier kept."""
        source, target = self.members[source_id], self.members[target_id]
        entries = 0
        carried: list[Lot] = []
        if source.available or source.pending:
            entries += 1
            repay = min(source.available, max(-target.available, 0))
            if repay:
                self.counts["merge repaid the survivor's debt"] += 1
            target.available += source.available
            for lot in sorted(self._open_lots(source), key=lambda lot: (lot.expires_at, lot.id)):
                kept = lot.remaining - min(repay, lot.remaining)
                repay -= lot.remaining - kept
                lot.remaining = 0
                if kept:
                    carried.append(Lot(next(self.lot_ids), kept, lot.expires_at, lot.earn_entry))
            target.lots += carried
            target.pending += source.pending
            if source.pending:
                self.counts["merge moved pending points"] += 1
            source.available = source.pending = 0
        for earning in self.earnings.values():
            if earning.holder == source_id:
                earning.holder = target_id
        for at, qp in sorted(source.qp_by_time.items()):
            if qp:
                entries += 1
                self._book_qp(target, qp, at)
                self._book_qp(source, -qp, at)
        self.entries += entries
        theirs, ours = self.tier_of(source_id), self.tier_of(target_id)
        if stronger_status(
            theirs.rank, source.tier_valid_until, ours.rank, target.tier_valid_until
        ):
            target.tier_history.append(
                (target.tier, source.tier, target.tier_valid_until, now, None, False)
            )
            target.tier, target.tier_valid_until = source.tier, source.tier_valid_until
            self.counts["merge kept the source's status"] += 1
        self._drop_status(source, now)
        if self.promotion_used_by[source_id]:
            self.promotion_used_by[target_id] += self.promotion_used_by[source_id]
        moved = [
            p
            for p in self.purchases.values()
            if p.member == source_id and p.returned_minor < p.total_minor
        ]
        for purchase in moved:
            purchase.member = target_id
        source.status, source.merged_into = "merged", target_id
        target.merged_from.append(source_id)
        return {"entries": entries, "lots": carried, "purchases": len(moved), "tier": target.tier}

    # -- points expiry ---------------------------------------------------------------------

    def apply_expire_points(self, now: datetime) -> int:
        """Expired lots of members without an expiry-protected status go to
        program:expired, one entry per member."""
        members = 0
        for member in self.members.values():
            if self.protected(member, now):
                if any(lot.expires_at <= now for lot in self._open_lots(member)):
                    self.counts["expiry skipped: protected member"] += 1
                continue
            due = [lot for lot in self._open_lots(member) if lot.expires_at <= now]
            total = sum(lot.remaining for lot in due)
            if not total:
                continue
            for lot in due:
                lot.remaining = 0
            member.available -= total
            self.accounts[(EXPIRED, PTS)] += total
            self.entries += 1
            members += 1
        return members

    # -- checks -------------------------------------------------------------------------------

    def check_internal(self) -> None:
        for member in self.members.values():
            assert member.lots_total() == max(member.available, 0), member
            assert member.qp == sum(member.qp_by_time.values()) == sum(member.qp_by_year.values())
            if not member.active:
                assert (member.available, member.pending, member.held) == (0, 0, 0), member
                assert (member.tier, member.tier_valid_until) == ("base", None), member
            if member.status == "merged":
                assert member.qp == 0, member
            assert member.pending >= 0 and member.held >= 0, member
            if not member.clawed:
                assert member.available >= 0, member
            if self.daily_limit is not None:
                assert all(v <= self.daily_limit for v in member.sent_on.values()), member
        for earning in self.earnings.values():
            assert 0 <= earning.reversed <= earning.points
        for redemption in self.redemptions.values():
            assert 0 <= redemption.reversed <= redemption.points
        for purchase in self.purchases.values():
            assert purchase.returned_minor <= purchase.total_minor


def stronger_status(rank, until, other_rank, other_until) -> bool:
    """A higher tier, or the same tier valid longer (no end date is longest)."""
    if rank != other_rank:
        return rank > other_rank
    if until is None:
        return other_until is not None
    return other_until is not None and until > other_until
