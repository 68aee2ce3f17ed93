"""Instants and periods as finance gives them: a date (`2026-04-01`, midnight
UTC) or an ISO 8601 timestamp with a zone (`2026-04-01T12:00:00+02:00`; one
without a zone is taken as UTC). A period is [start, end): it starts at its
first instant and ends before its last, so April is `--from 2026-04-01 --to
2026-05-01` and the month-end balances are those as of 2026-05-01.

Periods select entries by booking time (`created_at`, see ledger/history.py)."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from finance.errors import InvalidPeriod

# A bound on one request: a year and a day (a leap year's closing included).
MAX_PERIOD = timedelta(days=367)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def parse_instant(value: str | datetime, parameter: str) -> datetime:
    """A date or timestamp as an aware UTC datetime; `InvalidPeriod` otherwise."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        raw = (value or "").strip()
        if not raw or len(raw) > 40:
            raise InvalidPeriod(parameter, "a date (YYYY-MM-DD) or ISO 8601 timestamp is required")
        try:
            if len(raw) == 10:
                day = date.fromisoformat(raw)
                moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            else:
                moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "T"))
        except ValueError:
            raise InvalidPeriod(
                parameter, f"not a date (YYYY-MM-DD) or ISO 8601 timestamp: {raw!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past the last representable instant
        raise InvalidPeriod(parameter, "outside the instants this can represent") from None
    if not EARLIEST <= moment < LATEST:
        raise InvalidPeriod(parameter, f"between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return moment


@dataclass(frozen=True)
class Period:
    """[start, end) in booking time, UTC."""

    start: datetime
    end: datetime

    @classmethod
    def parse(
        cls, start: str | datetime, end: str | datetime, max_length: timedelta = MAX_PERIOD
    ) -> "Period":
        begin, finish = parse_instant(start, "from"), parse_instant(end, "to")
        if not begin < finish:
            raise InvalidPeriod("to", f"must be after from ({begin:%Y-%m-%dT%H:%M:%SZ})")
        if finish - begin > max_length:
            raise InvalidPeriod(
                "to", f"a period is at most {max_length.days} days; split longer ones"
            )
        return cls(begin, finish)

    def label(self) -> str:
        return f"{stamp(self.start)}..{stamp(self.end)}"


def stamp(moment: datetime) -> str:
    """An instant as finance files write it: UTC, microseconds, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
