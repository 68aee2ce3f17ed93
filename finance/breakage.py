"""Breakage (IFRS 15 "material right"): the consideration partners pay for the
points their customers earn is deferred and recognised as revenue as points
are redeemed, in proportion to the redemptions expected in total.

For an instant T (booking time, `created_at`: the entries booked before T):

    cumulative revenue(T) = min(C, C x R / (rate x I))       (0 when R or I <= 0)
    deferred revenue(T)   = C - cumulative revenue(T)
    revenue of [from, to) = cumulative revenue(to) - cumulative revenue(from)

  I  points issued: every point credited to members by earnings, partner-
     funded (`partner:{id}:issued`) and programme promotions
     (`program:promotions`), net of returns of earnings. Goodwill
     adjustments and transfers are not issued points.
  R  points redeemed: burns, captures and reward orders to `partner:{id}:redeemed`, net of
     redemptions refunded.
  C  the consideration, per currency: the partner-funded points issued net of
     returns, valued at the partner's contract `price_per_point` in force at
     the earning (the roll-forward's valuation, finance/rollforward.py:
     rounded half up once per contract version). Promotion points carry no
     consideration.
  rate  the expected redemption rate in force at T (below).

Each cumulative revenue is rounded once, half up, to minor units; the
revenue of a period is the difference of two rounded figures, so periods add
up exactly to the cumulative figure. Each instant uses the rate in force
then, so a change of estimate is prospective and catches up in the period of
the change (IFRS 15.126; the illustrative example IE267-IE270). Expiry
enters through the rate (the history method), not as revenue of its own.

Currencies: the fraction R / (rate x I) is programme-wide and every
currency's consideration is recognised by that same fraction; that is,
redemptions are apportioned to currencies in proportion to their points
issued (promotion points in the same proportion). A programme with one
currency, the common case, has one line.

The expected redemption rate in force at T, the first that applies:
  1. estimate: the latest estimate finance set (`breakage_estimates`) with
     `effective_from` <= T. Estimates are append-only and start when they
     are recorded or later, never earlier, so a period already reported
     keeps its figures;
  2. history: redeemed / (redeemed + expired) over the trailing N months
     before T (default 12), in points: redeemed as above, expired = expiry
     and forfeiture to `program:expired`; rounded half up to 6 places;
  3. default: 0.95 (the share PAYBACK reports redeemed) when the window has
     no redemptions (nothing to base a rate on).
"""

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from math import floor

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finance.errors import BreakageEstimateBackdated, InvalidBreakageRate, InvalidTrailingMonths
from finance.period import EARLIEST, LATEST, Period, stamp
from finance.rollforward import (
    RollForwardLine,
    build_lines,
    merge_movements,
    movements_by_window,
)
from ledger.errors import ReasonRequired
from ledger.history import snapshot

DEFAULT_RATE = Decimal("0.95")
DEFAULT_TRAILING_MONTHS = 12
MAX_TRAILING_MONTHS = 120
RATE_PLACES = Decimal("0.000001")  # numeric(7, 6) in breakage_estimates
MAX_REASON_LENGTH = 500
PERIOD_TIME = "created_at"
ROUNDING = "cumulative revenue rounded half up to minor units, once per instant"
# A breakage report reads the whole history up to its end whatever its
# period, so its period is not bounded like the roll-forward's.
MAX_PERIOD = LATEST - EARLIEST


# -- validation ---------------------------------------------------------------------


def check_rate(value: Decimal | str) -> Decimal:
    """A rate as finance gives it, checked: in (0, 1], at most 6 places."""
    try:
        rate = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidBreakageRate(f"not a decimal number: {str(value)[:40]!r}") from None
    if not rate.is_finite() or not Decimal(0) < rate <= Decimal(1):
        raise InvalidBreakageRate(
            f"the expected redemption rate is a share in (0, 1], not {rate}", rate=str(rate)
        )
    if rate != rate.quantize(RATE_PLACES):
        raise InvalidBreakageRate(
            f"at most {-RATE_PLACES.as_tuple().exponent} decimal places: {rate}", rate=str(rate)
        )
    return rate.quantize(RATE_PLACES)


def check_reason(reason: str) -> str:
    cleaned = (reason or "").strip()
    if not cleaned:
        raise ReasonRequired("an estimate needs a reason (what it is based on)")
    if len(cleaned) > MAX_REASON_LENGTH:
        raise ReasonRequired(f"a reason of at most {MAX_REASON_LENGTH} characters")
    return cleaned


def check_trailing_months(months: int) -> int:
    if isinstance(months, bool) or not isinstance(months, int):
        raise InvalidTrailingMonths(f"a whole number of months, not {months!r}")
    if not 1 <= months <= MAX_TRAILING_MONTHS:
        raise InvalidTrailingMonths(
            f"trailing_months is between 1 and {MAX_TRAILING_MONTHS}, not {months}"
        )
    return months


# -- the computations (pure) ----------------------------------------------------------


def months_before(moment: datetime, months: int) -> datetime:
    """The same instant `months` calendar months earlier (the day clipped to
    the month's last: 31 March - 1 month = 28/29 February)."""
    total = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(total, 12)
    month += 1
    following = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=moment.tzinfo)
    last_day = (following - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


def history_rate(redeemed: int, expired: int) -> Decimal | None:
    """redeemed / (redeemed + expired), half up to 6 places (at least
    0.000001); None when there were no redemptions to base a rate on."""
    if redeemed <= 0 or expired < 0:
        return None
    rate = (Decimal(redeemed) / Decimal(redeemed + expired)).quantize(RATE_PLACES, ROUND_HALF_UP)
    return max(rate, RATE_PLACES).normalize()


def half_up(value: Fraction) -> int:
    """An exact non-negative fraction rounded half up to an integer."""
    return floor(value + Fraction(1, 2))


def cumulative_revenue(consideration: int, redeemed: int, rate: Decimal, issued: int) -> int:
    """min(C, C x R / (rate x I)) in minor units, computed exactly and
    rounded half up once; 0 when nothing was paid, issued or redeemed."""
    if consideration <= 0 or redeemed <= 0 or issued <= 0:
        return 0
    exact = Fraction(consideration * redeemed) / (Fraction(rate) * issued)
    return min(consideration, half_up(exact))


def expected_redemptions(rate: Decimal, issued: int) -> int:
    """rate x I in whole points, half up (shown; revenue uses the exact product)."""
    return half_up(Fraction(rate) * issued) if issued > 0 else 0


# -- the report's structures -----------------------------------------------------------


class Estimate(msgspec.Struct, frozen=True):
    """An expected redemption rate set by finance, in force from `effective_from`."""

    id: int
    rate: Decimal
    effective_from: str
    created_at: str
    set_by: str
    reason: str


class HistoryWindow(msgspec.Struct, frozen=True):
    """Redemptions and expiries booked in [window_from, window_to), in points."""

    window_from: str
    window_to: str
    months: int
    redeemed: int
    expired: int
    rate: Decimal | None  # None: no redemptions in the window


class RateInForce(msgspec.Struct, frozen=True):
    rate: Decimal
    method: str  # estimate | history | default
    estimate: Estimate | None
    history: HistoryWindow


class PointsAt(msgspec.Struct, frozen=True):
    """Programme-wide points as of an instant (cumulative since the first entry)."""

    as_of: str
    issued: int  # partner-funded + promotions, net of returns
    issued_partner: int
    issued_promotions: int
    redeemed: int  # net of refunds
    expired: int  # expired and forfeited (for information: enters through the rate)
    rate: RateInForce
    expected_redemptions: int  # rate x issued, half up
    expected_breakage: int  # issued - expected_redemptions


class CurrencyBreakage(msgspec.Struct, frozen=True):
    """One currency's consideration and revenue, in its minor units."""

    currency: str
    points_issued_partner: int  # its partners' points issued net of returns, at the end
    consideration_start: int
    consideration: int  # at the end
    cumulative_revenue_start: int
    cumulative_revenue: int  # at the end
    revenue: int  # of the period
    deferred_revenue_start: int
    deferred_revenue: int  # at the end


class BreakageReport(msgspec.Struct, frozen=True):
    period_from: str
    period_to: str
    period_time: str
    trailing_months: int
    default_rate: Decimal
    rounding: str
    start: PointsAt
    end: PointsAt
    redeemed_in_period: int
    currencies: list[CurrencyBreakage]


# -- reads --------------------------------------------------------------------------


def _span(windows: list[list[tuple]], bounds: list[datetime], start, end) -> list[tuple]:
    """The movement rows of [start, end), a union of consecutive windows."""
    return merge_movements(
        *(rows for i, rows in enumerate(windows) if start <= bounds[i] and bounds[i + 1] <= end)
    )


def _points(lines: list[RollForwardLine], *codes: str) -> int:
    return sum(line.points for line in lines if line.code in codes)


ESTIMATE_COLUMNS = "id, rate, effective_from, created_at, set_by, reason"


def _estimate(row) -> Estimate:
    return Estimate(
        int(row.id),
        Decimal(row.rate).normalize(),
        stamp(row.effective_from),
        stamp(row.created_at),
        row.set_by,
        row.reason,
    )


async def estimate_in_force(conn: AsyncConnection, as_of: datetime) -> Estimate | None:
    row = (
        await conn.execute(
            text(
                f"SELECT {ESTIMATE_COLUMNS} FROM breakage_estimates WHERE effective_from <= :t "
                "ORDER BY effective_from DESC, id DESC LIMIT 1"
            ),
            {"t": as_of},
        )
    ).one_or_none()
    return None if row is None else _estimate(row)


async def rate_in_force(
    conn: AsyncConnection, as_of: datetime, months: int, window: list[tuple]
) -> RateInForce:
    """The expected redemption rate at `as_of` and the method that gave it;
    `window`: the movement rows of the trailing `months` before `as_of`."""
    lines = build_lines(window)
    redeemed = -_points(lines, "redeemed", "refunded")
    expired = -_points(lines, "expired", "forfeited")
    history = HistoryWindow(
        stamp(months_before(as_of, months)),
        stamp(as_of),
        months,
        redeemed,
        expired,
        history_rate(redeemed, expired),
    )
    estimate = await estimate_in_force(conn, as_of)
    if estimate is not None:
        return RateInForce(estimate.rate, "estimate", estimate, history)
    if history.rate is not None:
        return RateInForce(history.rate, "history", None, history)
    return RateInForce(DEFAULT_RATE, "default", None, history)


def _at(
    as_of: datetime, rate: RateInForce, movements: list[tuple]
) -> tuple[PointsAt, dict[str, tuple[int, int]]]:
    """Programme-wide points as of `as_of` from the movements booked before
    it (pure), and per currency (partner points, consideration in minor units)."""
    lines = build_lines(movements)
    partner = _points(lines, "issued-partner", "returned-partner")
    promotions = _points(lines, "issued-promotions", "returned-promotions")
    issued = partner + promotions
    expected = expected_redemptions(rate.rate, issued)
    points = PointsAt(
        as_of=stamp(as_of),
        issued=issued,
        issued_partner=partner,
        issued_promotions=promotions,
        redeemed=-_points(lines, "redeemed", "refunded"),
        expired=-_points(lines, "expired", "forfeited"),
        rate=rate,
        expected_redemptions=expected,
        expected_breakage=issued - expected,
    )
    money: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in lines:
        if line.code in ("issued-partner", "returned-partner"):
            for part in line.money or ():
                money[part.currency][0] += part.points
                money[part.currency][1] += part.minor
    return points, {currency: (p, m) for currency, (p, m) in money.items()}


async def breakage_in(
    conn: AsyncConnection, period: Period, trailing_months: int = DEFAULT_TRAILING_MONTHS
) -> BreakageReport:
    """The breakage report of `period`, read inside the caller's snapshot."""
    months = check_trailing_months(trailing_months)
    # The journal read once, cut at every instant a figure starts or ends: the
    # history up to the period and to its end, and the trailing windows of
    # both rates are unions of those windows.
    start_window = months_before(period.start, months)
    end_window = months_before(period.end, months)
    bounds = sorted({EARLIEST, start_window, period.start, end_window, period.end})
    windows = await movements_by_window(conn, bounds)
    start_rate = await rate_in_force(
        conn, period.start, months, _span(windows, bounds, start_window, period.start)
    )
    end_rate = await rate_in_force(
        conn, period.end, months, _span(windows, bounds, end_window, period.end)
    )
    start, start_money = _at(
        period.start, start_rate, _span(windows, bounds, bounds[0], period.start)
    )
    end, end_money = _at(period.end, end_rate, _span(windows, bounds, bounds[0], period.end))
    currencies = []
    for currency in sorted(set(start_money) | set(end_money)):
        _, paid_start = start_money.get(currency, (0, 0))
        points, paid = end_money.get(currency, (0, 0))
        before = cumulative_revenue(paid_start, start.redeemed, start.rate.rate, start.issued)
        after = cumulative_revenue(paid, end.redeemed, end.rate.rate, end.issued)
        currencies.append(
            CurrencyBreakage(
                currency=currency,
                points_issued_partner=points,
                consideration_start=paid_start,
                consideration=paid,
                cumulative_revenue_start=before,
                cumulative_revenue=after,
                revenue=after - before,
                deferred_revenue_start=paid_start - before,
                deferred_revenue=paid - after,
            )
        )
    return BreakageReport(
        period_from=stamp(period.start),
        period_to=stamp(period.end),
        period_time=PERIOD_TIME,
        trailing_months=months,
        default_rate=DEFAULT_RATE,
        rounding=ROUNDING,
        start=start,
        end=end,
        redeemed_in_period=end.redeemed - start.redeemed,
        currencies=currencies,
    )


def breakage_period(start: str | datetime | None, end: str | datetime | None) -> Period:
    """The report's period: `from` defaults to the first instant the ledger
    can hold (the period's revenue is then the cumulative revenue), `to` to now."""
    return Period.parse(
        EARLIEST if start is None else start,
        datetime.now(UTC) if end is None else end,
        max_length=MAX_PERIOD,
    )


async def breakage_report(
    engine: AsyncEngine, period: Period, trailing_months: int = DEFAULT_TRAILING_MONTHS
) -> BreakageReport:
    """The breakage report of `period`, every figure from one snapshot."""
    check_trailing_months(trailing_months)
    async with snapshot(engine, long=True) as conn:
        return await breakage_in(conn, period, trailing_months)


# -- estimates ----------------------------------------------------------------------


async def set_estimate(
    engine: AsyncEngine,
    rate: Decimal | str,
    reason: str,
    set_by: str,
    effective_from: datetime | None = None,
) -> Estimate:
    """Record an expected redemption rate, in force from now (the database's
    transaction time) or from a later `effective_from`; never earlier."""
    checked, why = check_rate(rate), check_reason(reason)
    async with engine.begin() as conn:
        now = (await conn.execute(text("SELECT now()"))).scalar_one()
        if effective_from is not None and effective_from < now:
            raise BreakageEstimateBackdated(
                f"an estimate starts when it is recorded ({stamp(now)}) or later, "
                f"not {stamp(effective_from)}: a reported period's figures never change",
                effective_from=stamp(effective_from),
                recorded_at=stamp(now),
            )
        row = (
            await conn.execute(
                text(
                    "INSERT INTO breakage_estimates (rate, effective_from, set_by, reason) "
                    "VALUES (:rate, coalesce(CAST(:effective_from AS timestamptz), now()), "
                    f":set_by, :reason) RETURNING {ESTIMATE_COLUMNS}"
                ),
                {
                    "rate": checked,
                    "effective_from": effective_from,
                    "set_by": set_by,
                    "reason": why,
                },
            )
        ).one()
    return _estimate(row)


async def list_estimates(engine: AsyncEngine) -> list[Estimate]:
    """Every estimate, in the order they take effect."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(f"SELECT {ESTIMATE_COLUMNS} FROM breakage_estimates ORDER BY effective_from, id")
        )
        return [_estimate(r) for r in rows]
