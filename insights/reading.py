"""How insights read, and what every figure shares: the analytics engine
(`LOYALTY_ANALYTICS_DATABASE_URL`, default the main database; it may be a
replica), one read-only snapshot per figure, the parameters (a window of
purchase time, a currency, bounded integers) and how a ratio becomes a share.

Time: insights look at when things happened for the member, the purchase
time (`partner_purchases.occurred_at`, an entry's `effective_at`), not at
booking time as finance does: a purchase reported late belongs to the week
it was made. A window is [from, to), at most 367 days (finance/period.py);
without one, the 365 days up to now (or up to `as_of`)."""

import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finance.period import Period, parse_instant
from insights.errors import InvalidInsightParameter
from ledger.database import DatabaseLimits, create_engine
from ledger.errors import MemberNotFound, PartnerNotFound
from ledger.history import snapshot
from partners.money import MINOR_UNIT_EXPONENTS

DEFAULT_WINDOW = timedelta(days=365)
# Shares and rates are fractions (0.4250 is 42.5 %), four places, half up.
SHARE_PLACES = Decimal("0.0001")
DEFAULT_CURRENCY = "EUR"
# Connections one process gives to insights (small: a figure is one snapshot).
POOL_SIZE = 2


# Per sort or hash of one insights statement, in its own transaction only.
ANALYTICS_WORK_MEM = "64MB"


def create_insights_engine(url: str, limits: DatabaseLimits | None = None) -> AsyncEngine:
    """The engine insights read through; every read opens `read_only`."""
    return create_engine(url, pool_size=POOL_SIZE, limits=limits)


@contextlib.asynccontextmanager
async def read_only(engine: AsyncEngine, *, long: bool = False) -> AsyncIterator[AsyncConnection]:
    """One REPEATABLE READ, READ ONLY transaction (ledger/history.py's
    snapshot): the statements of a figure agree with each other, and nothing
    can be written through it, so it runs on a hot standby as well.
    `long` lifts the statement time limit (the command line)."""
    async with snapshot(engine, long=long) as conn:
        # Months and days are cut in UTC, whatever the server's time zone; the
        # figures hash and sort whole tables, in memory rather than on disk.
        await conn.execute(
            text(
                "SELECT set_config('TimeZone', 'UTC', true), "
                f"set_config('work_mem', '{ANALYTICS_WORK_MEM}', true)"
            )
        )
        yield conn


def now() -> datetime:
    return datetime.now(UTC)


def instant(value: str | datetime | None, parameter: str) -> datetime:
    """An instant parameter (default: now); `InvalidPeriod` when unusable."""
    return now() if value is None else parse_instant(value, parameter)


def window(
    start: str | datetime | None, end: str | datetime | None, as_of: datetime | None = None
) -> Period:
    """[from, to): `to` defaults to `as_of` (or now), `from` to 365 days before `to`."""
    finish = parse_instant(end, "to") if end is not None else (as_of or now())
    begin = parse_instant(start, "from") if start is not None else finish - DEFAULT_WINDOW
    return Period.parse(begin, finish)


def currency(value: str | None) -> str:
    code = DEFAULT_CURRENCY if value is None else value
    if not re.fullmatch(r"[A-Z]{3}", code) or code not in MINOR_UNIT_EXPONENTS:
        raise InvalidInsightParameter(
            "currency", f"a currency partners may use, such as EUR, not {code!r}"
        )
    return code


def bounded(parameter: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInsightParameter(parameter, f"between {low} and {high}, not {value}")
    return value


def share(part: int, whole: int) -> Decimal | None:
    """part / whole as a fraction with four places, rounded half up; None
    when there is no whole (nothing to share)."""
    if whole == 0:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(SHARE_PLACES, rounding=ROUND_HALF_UP)


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(moment: datetime, months: int) -> datetime:
    """The first of the month `months` after the month of `moment` (UTC)."""
    index = moment.year * 12 + moment.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def month_label(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m}"


async def require_partner(conn: AsyncConnection, partner_id: str | None) -> None:
    """A partner a figure is asked about must be registered (404 otherwise)."""
    if partner_id is None:
        return
    found = await conn.execute(text("SELECT 1 FROM partners WHERE id = :p"), {"p": partner_id})
    if found.first() is None:
        raise PartnerNotFound(f"no registered partner {partner_id!r}", partner_id=partner_id)


async def require_member(conn: AsyncConnection, member_id: str) -> None:
    found = await conn.execute(text("SELECT 1 FROM members WHERE id = :m"), {"m": member_id})
    if found.first() is None:
        raise MemberNotFound(f"no enrolled member {member_id!r}", member_id=member_id)
