"""The paid membership's state machine and the service interval, as plain
functions over plain data (no I/O).

A member's membership of a club is, as the member sees it:

  pending_payment  joined, the fee not paid yet: no benefits
  active           a paid term runs: the club's benefits hold
  lapsed           the last term ended unpaid (the `lapse-club-memberships` job)
  cancelled        the member cancelled: at once when nothing is paid, else at
                   the paid term's end (the fee is for the term: no refund)

A fee payment pays one term of `term_months`: a first payment (or one after a
lapse) starts the term at the payment; a renewal of a running term starts
where it ends, and at most one term may be paid ahead. A cancelled
membership takes no payment (join again first), nor does one whose
cancellation waits for the term's end. The benefits are judged by the paid
terms, not the status: a purchase earns the club's multiplier exactly when a
paid term covers its time, whenever the lapse job runs.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from clubs.errors import MembershipCancelled, MembershipExists, RenewalTooEarly
from members.pooling import add_months

STATUSES = ("pending_payment", "active", "lapsed", "cancelled")


@dataclass(frozen=True, slots=True)
class Term:
    starts_at: datetime
    ends_at: datetime
    renewal: bool  # not the membership's first paid term


def next_term(
    status: str,
    paid_until: datetime | None,
    cancel_requested: bool,
    now: datetime,
    term_months: int,
) -> Term:
    """The term a fee paid at `now` buys, or the refusal."""
    if status == "cancelled" or cancel_requested:
        raise MembershipCancelled(
            "the membership is cancelled"
            + (" at the end of its term" if cancel_requested and status != "cancelled" else "")
            + ": join again to pay a new term",
            membership_status=status,
        )
    if status == "active" and paid_until is not None and paid_until > now:
        if paid_until > add_months(now, term_months):
            raise RenewalTooEarly(
                f"the next term is paid already (until {paid_until.isoformat()})",
                paid_until=paid_until.isoformat(),
            )
        return Term(paid_until, add_months(paid_until, term_months), True)
    # First payment, or after a lapse (the lapse job may not have run yet):
    # the term starts now; the time between earned no benefits.
    return Term(now, add_months(now, term_months), status != "pending_payment")


def after_cancel(status: str) -> str:
    """The status right after the member cancels: a running term keeps its
    benefits to its end (the lapse job then marks it cancelled)."""
    return "active" if status == "active" else "cancelled"


def check_join(status: str | None) -> None:
    """A member joins a club once; a cancelled membership may be joined again."""
    if status is not None and status != "cancelled":
        raise MembershipExists(
            f"already a member ({status}): pay the fee to renew", membership_status=status
        )


def service_interval(registered_at: datetime, visited_at: datetime, months: int) -> int:
    """The service interval (0 first) a visit falls in: interval n runs from
    `n * months` after the product's registration to `(n + 1) * months`."""
    start, visited_at = registered_at.astimezone(UTC), visited_at.astimezone(UTC)
    elapsed = (visited_at.year - start.year) * 12 + visited_at.month - start.month
    index = max(elapsed // months, 0)
    # The month count overshoots when the day of the month is not reached yet.
    while index > 0 and add_months(start, index * months) > visited_at:
        index -= 1
    while add_months(start, (index + 1) * months) <= visited_at:
        index += 1
    return index


def interval_bounds(registered_at: datetime, index: int, months: int) -> tuple[datetime, datetime]:
    start = registered_at.astimezone(UTC)
    return add_months(start, index * months), add_months(start, (index + 1) * months)
