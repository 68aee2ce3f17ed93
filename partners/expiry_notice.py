"""How far ahead a card holder's balance view shows expiring points, a setting
of the programme (LOYALTY_EXPIRING_VIEW): the next N days (`days:90`, the
default), or this calendar quarter and the next N-1 (`quarters:2`, Miles &
More's statement: what expires this quarter and next), then also grouped by
quarter. Pure functions over datetimes (UTC).

A lot's `expires_at` is the first instant it is no longer valid, so it
belongs to the quarter of the instant before: a lot expiring at 2026-01-01
00:00 is valid through 31 December, and shows in the fourth quarter of 2025.
A lot whose expiry passed before the expiry job ran shows in this quarter.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from ledger.views import ExpiringPoints

MAX_DAYS = 3660
MAX_QUARTERS = 8


class QuarterExpiring(msgspec.Struct, frozen=True):
    quarter: str  # e.g. 2025-Q4
    last_day: str  # the quarter's last day, e.g. 2025-12-31: the last day those points count
    points: int


def _quarter_start(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return datetime(at.year, 3 * ((at.month - 1) // 3) + 1, 1, tzinfo=UTC)


def _quarters_later(start: datetime, quarters: int) -> datetime:
    year, month = divmod(start.year * 12 + start.month - 1 + 3 * quarters, 12)
    return start.replace(year=year, month=month + 1)


@dataclass(frozen=True, slots=True)
class ExpiringWindow:
    """`quarters` > 0: this quarter and the next quarters - 1; else `days`."""

    days: int = 90
    quarters: int = 0

    def end(self, now: datetime) -> datetime:
        """The latest `expires_at` the view shows (inclusive)."""
        if not self.quarters:
            return now + timedelta(days=self.days)
        return _quarters_later(_quarter_start(now), self.quarters)

    def within_days(self, now: datetime) -> int:
        """Whole days from `now` that cover the window."""
        if not self.quarters:
            return self.days
        return -(-(self.end(now) - now) // timedelta(days=1))

    def next_change(self, now: datetime) -> datetime | None:
        """When the window moves by the calendar alone (None: it slides with time)."""
        return _quarters_later(_quarter_start(now), 1) if self.quarters else None

    def by_quarter(
        self, expiring: Sequence[ExpiringPoints], now: datetime
    ) -> tuple[QuarterExpiring, ...]:
        """The window's quarters, each with the points that expire in it (zero
        included); () for a window of days."""
        if not self.quarters:
            return ()
        this = _quarter_start(now)
        totals = [0] * self.quarters
        for entry in expiring:
            valid_through = entry.expires_at.astimezone(UTC) - timedelta(microseconds=1)
            index = max(
                (valid_through.year - this.year) * 4 + (valid_through.month - this.month) // 3, 0
            )
            if index < self.quarters:
                totals[index] += entry.points
        quarters = []
        for index, points in enumerate(totals):
            start = _quarters_later(this, index)
            last_day = (_quarters_later(start, 1) - timedelta(days=1)).date()
            quarters.append(
                QuarterExpiring(
                    f"{start.year}-Q{(start.month + 2) // 3}", last_day.isoformat(), points
                )
            )
        return tuple(quarters)

    def describe(self) -> str:
        return f"quarters:{self.quarters}" if self.quarters else f"days:{self.days}"


def parse_window(text: str) -> ExpiringWindow:
    """`days:N` (1 to 3660) or `quarters:N` (1 to 8)."""
    unit, _, count = text.partition(":")
    try:
        number = int(count)
    except ValueError:
        raise ValueError(f"the count must be an integer: {text!r}") from None
    if unit == "days" and 1 <= number <= MAX_DAYS:
        return ExpiringWindow(days=number)
    if unit == "quarters" and 1 <= number <= MAX_QUARTERS:
        return ExpiringWindow(quarters=number)
    raise ValueError(f"days:N (1 to {MAX_DAYS}) or quarters:N (1 to {MAX_QUARTERS}), not {text!r}")
