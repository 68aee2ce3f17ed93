"""Expiry policies for lots: when points earned at a given time expire.

Pure functions over datetimes (UTC). A lot expires at `expires_at`: from that
instant on it is expired; statements show the day before as the last valid day.
"""

from dataclasses import dataclass
from datetime import UTC, datetime


def _add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


@dataclass(frozen=True, slots=True)
class RollingToQuarterEnd:
    """Miles & More style: N months after earning, to the end of that quarter."""

    months: int = 36

    def expires_at(self, earned_at: datetime) -> datetime:
        earned_at = earned_at.astimezone(UTC)
        year, month = _add_months(earned_at.year, earned_at.month, self.months)
        quarter_start_month = 3 * ((month - 1) // 3) + 1
        year, month = _add_months(year, quarter_start_month, 3)
        return datetime(year, month, 1, tzinfo=UTC)

    def describe(self) -> str:
        return f"rolling:{self.months}"


@dataclass(frozen=True, slots=True)
class AnnualCutoff:
    """PAYBACK style: one run a year (at `month`/`day`) expires points older
    than N months at that date."""

    months: int = 36
    month: int = 1
    day: int = 1

    def expires_at(self, earned_at: datetime) -> datetime:
        earned_at = earned_at.astimezone(UTC)
        year, month = _add_months(earned_at.year, earned_at.month, self.months)
        old_enough = datetime(year, month, 1, tzinfo=UTC).replace(day=min(earned_at.day, 28))
        cutoff = datetime(old_enough.year, self.month, self.day, tzinfo=UTC)
        if cutoff < old_enough:
            cutoff = cutoff.replace(year=cutoff.year + 1)
        return cutoff

    def describe(self) -> str:
        return f"annual:{self.months}"


ExpiryPolicy = RollingToQuarterEnd | AnnualCutoff


def parse_policy(text: str) -> ExpiryPolicy:
    """`rolling:36` or `annual:36` (months)."""
    kind, _, months = text.partition(":")
    try:
        count = int(months) if months else 36
    except ValueError:
        raise ValueError(f"expiry policy months must be an integer: {text!r}") from None
    if count <= 0:
        raise ValueError(f"expiry policy months must be positive: {text!r}")
    if kind == "rolling":
        return RollingToQuarterEnd(count)
    if kind == "annual":
        return AnnualCutoff(count)
    raise ValueError(f"unknown expiry policy {text!r}: use rolling:N or annual:N")
