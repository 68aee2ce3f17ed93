"""Status tiers from qualifying points: pure functions over plain data.

A member's tier is the highest-ranked tier whose QP threshold the member's
QP of the qualification period reaches. Reaching a tier upgrades at once;
status, once reached, lasts until the end of February of the year after next
(Miles & More); requalification after that keeps, lowers or raises it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Tier:
    code: str
    name: str
    rank: int
    qp_threshold: int
    earn_multiplier: Decimal = Decimal(1)
    burn_discount: Decimal = Decimal(0)
    expiry_protected: bool = False


BASE_TIER = Tier("base", "Base", 0, 0)


@dataclass(frozen=True, slots=True)
class TierProgress:
    tier: Tier
    valid_until: datetime | None
    period_start: datetime
    period_end: datetime
    qp_this_period: int
    next_tier: Tier | None
    qp_needed: int  # 0 when there is no higher tier


def ladder(tiers: Sequence[Tier]) -> list[Tier]:
    """Tiers by rank, with the base tier when none has threshold 0."""
    ordered = sorted(tiers, key=lambda t: t.rank)
    if not ordered or ordered[0].qp_threshold > 0:
        ordered.insert(0, BASE_TIER)
    return ordered


def tier_for(qp: int, tiers: Sequence[Tier]) -> Tier:
    """The highest tier `qp` reaches; the lowest when it reaches none (a
    period's QP can be negative after returns of an earlier period's purchases)."""
    ordered = ladder(tiers)
    reached = [t for t in ordered if t.qp_threshold <= qp]
    return reached[-1] if reached else ordered[0]


def period_bounds(at: datetime, mode: str = "calendar") -> tuple[datetime, datetime]:
    """The qualification period holding `at`: the calendar year, or the 12
    months up to `at` (rolling)."""
    at = at.astimezone(UTC)
    if mode == "rolling":
        # Up to and including `at`: the earning being booked counts.
        return at - timedelta(days=365), at + timedelta(microseconds=1)
    return datetime(at.year, 1, 1, tzinfo=UTC), datetime(at.year + 1, 1, 1, tzinfo=UTC)


def last_complete_period(at: datetime, mode: str = "calendar") -> tuple[datetime, datetime]:
    """The qualification period a requalification at `at` looks back on: the
    previous calendar year, or the 12 months up to `at` (rolling)."""
    if mode == "rolling":
        return period_bounds(at, mode)
    year = at.astimezone(UTC).year - 1
    return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)


def status_valid_until(qualified_at: datetime) -> datetime:
    """End of February of the year after next (exclusive bound: 1 March)."""
    return datetime(qualified_at.astimezone(UTC).year + 2, 3, 1, tzinfo=UTC)


def progress(
    tier: Tier,
    valid_until: datetime | None,
    qp: int,
    tiers: Sequence[Tier],
    at: datetime,
    mode: str = "calendar",
) -> TierProgress:
    start, end = period_bounds(at, mode)
    higher = [t for t in ladder(tiers) if t.rank > tier.rank]
    target = next((t for t in higher if t.qp_threshold > qp), None) if higher else None
    if higher and target is None:
        target = higher[-1]
    needed = max(target.qp_threshold - qp, 0) if target else 0
    return TierProgress(tier, valid_until, start, end, qp, target, needed)


def after_earning(
    current: Tier,
    current_valid_until: datetime | None,
    period_qp: int,
    tiers: Sequence[Tier],
    at: datetime,
) -> tuple[Tier, datetime | None] | None:
    """The member's new status after QP was credited, or None if unchanged:
    an upgrade as soon as a higher threshold is crossed, or a renewal when the
    current tier is reached again in a later period."""
    reached = tier_for(period_qp, tiers)
    if reached.qp_threshold == 0:
        return None
    valid_until = status_valid_until(at)
    if reached.rank > current.rank:
        return reached, valid_until
    if reached.rank == current.rank and (
        current_valid_until is None or valid_until > current_valid_until
    ):
        return reached, valid_until
    return None


def requalify(
    last_period_qp: int, tiers: Sequence[Tier], at: datetime
) -> tuple[Tier, datetime | None]:
    """Status when the old one ran out: what the last complete period earned."""
    tier = tier_for(last_period_qp, tiers)
    # Requalified on the last period, as if reached at its end: valid to the
    # end of February of the year after this one.
    until = datetime(at.astimezone(UTC).year + 1, 3, 1, tzinfo=UTC)
    return tier, (until if tier.qp_threshold else None)


@dataclass(frozen=True, slots=True)
class TierChange:
    """A row of the tier history, as a return unwinds it."""

    from_tier: str | None
    to_tier: str
    previous_valid_until: datetime | None  # the status's validity before this change
    changed_at: datetime
    by_earning: int | None  # the earn entry that caused it (None: requalification, a return)
    by_return: bool = False  # a return's own change (it undid later ones)


def after_return(
    current: Tier,
    current_valid_until: datetime | None,
    period_qp: int,
    tiers: Sequence[Tier],
    history: Sequence[TierChange],
    purchase_entry: int,
    period: tuple[datetime, datetime],
) -> tuple[Tier, datetime | None] | None:
    """The member's status after a return of the purchase earned by
    `purchase_entry` left `period_qp` in the period, or None if unchanged.

    A status the remaining QP still reach stays. Otherwise the changes that
    purchase (or a later one of the same period) caused are undone, newest
    first (`history` is newest first), each giving back the tier and validity
    from before it, until the status is one the remaining QP reach or one
    reached otherwise (another period, a requalification): that stays. A
    change a return already undid is skipped; when undoing a change would go
    below what the QP reach, the member keeps the tier the QP reach, with the
    validity that change gave."""
    supported = tier_for(period_qp, tiers)
    if supported.rank >= current.rank:
        return None
    ordered = ladder(tiers)
    by_code = {t.code: t for t in ordered}
    start, end = period
    tier, until = current, current_valid_until
    for change in history:
        if tier.rank <= supported.rank:
            break
        if change.by_return or change.to_tier != tier.code:
            continue  # undone by an earlier return
        if (
            change.by_earning is None
            or change.by_earning < purchase_entry
            or not start <= change.changed_at < end
        ):
            break  # reached otherwise: stays
        below = by_code.get(change.from_tier or "", ordered[0])
        if below.rank < supported.rank:
            tier = supported
            break
        if change.previous_valid_until is not None or below.qp_threshold == 0:
            until = change.previous_valid_until
        tier = below
    if tier.qp_threshold == 0:
        until = None
    if tier.code == current.code and until == current_valid_until:
        return None
    return tier, until
