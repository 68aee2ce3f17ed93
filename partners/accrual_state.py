"""What an accrual call (partners/accrual.py) knows while it evaluates its
purchases in order, as plain data: each purchase as checked, its evaluation,
and the members' state (tiers, balances, period QP and caps, promotion usage
and budgets, coupons, club terms), read once under the locks and then kept
current in memory after every accepted earning (`move_on`), exactly as if
the purchases had come one by one."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ledger.accounts import PTS
from ledger.views import Balances
from partners.contracts import Contract
from partners.definitions import Definitions
from partners.earning import Earning, EarnRule, Purchase
from partners.tiers import Tier, after_earning, ladder, period_bounds

if TYPE_CHECKING:  # the call's input, defined with the call
    from partners.accrual import Accrual

# The member accounts a receipt shows, and their asset.
RECEIPT_ACCOUNTS = (("available", PTS), ("pending", PTS), ("held", PTS), ("qp", "QP"))


@dataclass(slots=True)
class CheckedPurchase:
    index: int
    accrual: "Accrual"
    member_id: str
    received: Purchase
    contract: Contract | None
    release: datetime | None
    rule: EarnRule
    promotions: list  # rows that may pay for it, by id


@dataclass(slots=True)
class Evaluated:
    item: CheckedPurchase
    tier: Tier
    earning: Earning
    coupons: dict[str, int]  # code -> coupon id, used by this earning
    # (from, previous validity, to, validity, reason) when the earning moved the tier
    tier_change: tuple | None = None
    balances: Balances | None = None  # the member's balances after this earning


@dataclass(slots=True)
class Members:
    """What the call reads about its members, then keeps current in memory."""

    tiers: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)
    balances: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    period_qp: dict[tuple[str, datetime, datetime], int] = field(default_factory=dict)
    cap_points: dict[tuple[str, str, datetime], int] = field(default_factory=dict)
    usage: dict[tuple[int, str], int] = field(default_factory=dict)
    coupons: dict[tuple[str, str], object] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    fresh: dict[int, object] = field(default_factory=dict)  # budgeted promotions, as locked
    budget_used: dict[int, int] = field(default_factory=dict)  # their budgets, running
    used_coupons: set[tuple[str, str]] = field(default_factory=set)  # (member, code)
    # member -> (club, term start, term end): the paid club terms
    club_terms: dict[str, list[tuple[str, datetime, datetime]]] = field(default_factory=dict)

    def clubs_at(self, member_id: str, at: datetime) -> frozenset[str]:
        """The clubs the member belonged to at `at` (a paid term covers it)."""
        return frozenset(
            club for club, start, end in self.club_terms.get(member_id, ()) if start <= at < end
        )


def cap_start(rule: EarnRule, at: datetime) -> datetime | None:
    if rule.cap_per_period is None:
        return None
    at = at.astimezone(UTC)
    return {
        "day": at.replace(hour=0, minute=0, second=0, microsecond=0),
        "month": at.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
        "year": datetime(at.year, 1, 1, tzinfo=UTC),
    }[rule.cap_period]


def coupon_problem(row, at: datetime) -> str | None:
    if row.retired_at:
        return "was retired"
    if row.activated_at is None:
        return "is not activated"
    if row.used_at:
        return "was already used"
    if not row.valid_from <= at < row.valid_to:
        return "is not valid at the purchase time"
    return None


def move_on(
    known: Members, defs: Definitions, done: Evaluated, tier_period: str, now: datetime
) -> None:
    """The running state after an accepted earning: budgets, usage, coupons,
    caps, period QP, the tier it reached and the member's balances."""
    item, earning, member_id = done.item, done.earning, done.item.member_id
    at = item.received.occurred_at
    for row in item.promotions:
        points = earning.points_from("promotion", row.code)
        if not points:
            continue
        if row.id in known.budget_used:
            known.budget_used[row.id] += points
        if row.budget_points is not None or row.per_member_limit:
            key = (row.id, member_id)
            known.usage[key] = known.usage.get(key, 0) + points
    for code in done.coupons:
        if earning.points_from("coupon", code):
            known.used_coupons.add((member_id, code))
    if item.rule.cap_per_period is not None:
        rule_points = earning.points_from("base") + earning.points_from("category")
        for key in known.cap_points:
            if key[0] == member_id and key[1] == item.rule.partner_id and key[2] <= at:
                known.cap_points[key] += rule_points
    qp = earning.qualifying_points
    if qp and known.period_qp:
        for key in known.period_qp:
            if key[0] == member_id and key[1] <= at < key[2]:
                known.period_qp[key] += qp
        period = period_bounds(at, tier_period)
        _, until = tier_of(defs, known, member_id)
        change = after_earning(
            done.tier, until, known.period_qp[(member_id, *period)], defs.tiers, at
        )
        if change is not None:
            new, new_until = change
            reason = (
                "qualifying points reached the threshold"
                if new.rank > done.tier.rank
                else "status renewed for another period"
            )
            done.tier_change = (done.tier.code, until, new.code, new_until, reason)
            known.tiers[member_id] = (new.code, new_until)
    pending = item.release is not None and item.release > now
    balances = known.balances.setdefault(member_id, {})
    for name, amount in (("pending" if pending else "available", earning.points), ("qp", qp)):
        if amount:
            balance, version = balances.get(name, (0, 0))
            balances[name] = (balance + amount, version + 1)
    done.balances = balances_of(member_id, balances)


def tier_of(defs: Definitions, known: Members, member_id: str) -> tuple[Tier, datetime | None]:
    """The member's tier and its validity; the lowest tier (no validity) for
    a member without one or with a tier no longer defined."""
    code, until = known.tiers.get(member_id, (None, None))
    by_code = {t.code: t for t in defs.tiers}
    if code not in by_code:
        return ladder(defs.tiers)[0], None
    return by_code[code], until


def balances_of(member_id: str, rows: dict[str, tuple[int, int]]) -> Balances:
    found = {name: rows.get(name, (0, 0)) for name, _ in RECEIPT_ACCOUNTS}
    return Balances(
        member_id,
        found["available"][0],
        found["pending"][0],
        found["held"][0],
        found["qp"][0],
        sum(version for _, version in found.values()),
    )
