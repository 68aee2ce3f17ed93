"""Period close: finance closes a month, and from then on nothing may be dated
(`effective_at`) or booked (`created_at`) before the month's end: the database
refuses it (migration 0015's triggers, `PeriodClosed`). The close records the
trial balance as of the month's end and the month's roll-forward, taken with
finance/trial_balance.py and finance/rollforward.py, the same reports over the
same instants (booking time).

The boundary, "closed through", is the end of the latest closed month. Months
close in order: the first close may name any month that is over; after that,
only the month that starts at the boundary (`PeriodNotNext` otherwise), so
every closed month has its figures recorded. A month closed already is
`PeriodAlreadyClosed`; one not over yet by the database's clock is
`PeriodNotOver`.

The close and in-flight postings. The close's transaction takes SHARE on
`journal_entries`, which waits for every transaction that has inserted an
entry to end (and makes new ones wait), then inserts the close and commits: a
posting either committed before (and the figures count it) or its INSERT runs
after the close committed and the trigger refuses it when it is dated or
booked before the boundary. The lock is held for milliseconds (a lock wait
over `CLOSE_LOCK_TIMEOUT` gives up, changing nothing), never while the figures
are read: once the close has committed, nothing can be booked before the
month's end, so the month's figures no longer change and are read right after,
in a snapshot of their own, and stored once (`period_close_figures`). Should
that step fail, closing the month again records them (and only then is closing
a closed month not a conflict: while the first close is still recording them,
a second one is `PeriodAlreadyClosed`, a session advisory lock telling the
two apart).

Domain code: imports neither litestar, redis nor jwt.
"""

import re
from datetime import UTC, datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from finance.errors import (
    InvalidPeriod,
    PeriodAlreadyClosed,
    PeriodNotClosed,
    PeriodNotNext,
    PeriodNotOver,
)
from finance.period import EARLIEST, LATEST, Period, stamp
from finance.rollforward import RollForward, roll_forward
from finance.trial_balance import TrialBalance, trial_balance

# How long a close waits for in-flight postings before it gives up (postings
# queue behind a waiting close, so the wait is short).
CLOSE_LOCK_TIMEOUT = "5s"

# ASCII digits only (`\d` takes any Unicode digit); the year is checked against the
# bounds before a datetime is built (9999-12's end and 0000-01 are none).
_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


def month_period(label: str) -> Period:
    """`YYYY-MM` as the month's [first instant, first instant of the next), UTC."""
    found = _MONTH.fullmatch((label or "").strip())
    if found is None:
        raise InvalidPeriod("period", f"a month as YYYY-MM, not {label[:20]!r}")
    year, month = int(found.group(1)), int(found.group(2))
    if not EARLIEST.year <= year < LATEST.year:
        raise InvalidPeriod("period", f"between {EARLIEST:%Y-%m} and {LATEST:%Y-%m}")
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    if not EARLIEST <= start < end <= LATEST:
        raise InvalidPeriod("period", f"between {EARLIEST:%Y-%m} and {LATEST:%Y-%m}")
    return Period(start, end)


def month_label(start: datetime) -> str:
    return f"{start.year:04d}-{start.month:02d}"


class PeriodCloseSummary(msgspec.Struct, frozen=True):
    period: str  # YYYY-MM
    period_start: str
    period_end: str  # the boundary this close set
    closed_at: str  # the database's clock
    closed_by: str
    figures_recorded: bool
    balanced: bool | None  # the trial balance sums to zero per asset
    ties: bool | None  # the roll-forward ties out
    closing_liability: int | None  # points members held at the month's end


class PeriodClose(msgspec.Struct, frozen=True):
    summary: PeriodCloseSummary
    trial_balance: TrialBalance | None  # as of period_end
    roll_forward: RollForward | None  # [period_start, period_end)


class PeriodCloses(msgspec.Struct, frozen=True):
    closed_through: str | None  # nothing may be dated or booked before it
    next_period: str | None  # the month the next close must name (None: any that is over)
    closes: list[PeriodCloseSummary]  # newest first


_SELECT = (
    "SELECT c.period, c.period_start, c.period_end, c.closed_at, c.closed_by, "
    "f.period IS NOT NULL AS recorded, f.balanced, f.ties, f.closing_liability{figures} "
    "FROM period_closes c LEFT JOIN period_close_figures f USING (period)"
)


def _summary(row) -> PeriodCloseSummary:
    return PeriodCloseSummary(
        period=row.period,
        period_start=stamp(row.period_start),
        period_end=stamp(row.period_end),
        closed_at=stamp(row.closed_at),
        closed_by=row.closed_by,
        figures_recorded=row.recorded,
        balanced=row.balanced,
        ties=row.ties,
        closing_liability=row.closing_liability,
    )


async def close_period(engine: AsyncEngine, label: str, closed_by: str) -> PeriodClose:
    """Close the month `label` (YYYY-MM) and record its figures; see the module."""
    period = month_period(label)
    label = month_label(period.start)
    async with engine.connect() as conn:
        key = {"key": f"period-close:{label}"}
        # The month's figures have one recorder at a time: a session lock,
        # taken before the close commits and held until its figures are
        # stored. A second close finding them missing records them only when
        # nobody holds it (the first one's step failed); while the first is
        # still recording, it is a duplicate (409), not a second 201.
        recorder = False
        try:
            async with conn.begin():
                recorder = await _close(conn, label, period, closed_by, key)
            await record_figures(engine, label, period)
        finally:
            if recorder:
                await conn.execute(text(f"SELECT pg_advisory_unlock({_KEY})"), key)
                await conn.commit()
    return await period_close(engine, label)


_KEY = "hashtextextended(:key, 0)"


async def _close(conn, label: str, period: Period, closed_by: str, key: dict) -> bool:
    """The close's transaction; True once this call holds the recorder's lock."""
    await conn.execute(text(f"SET LOCAL lock_timeout = '{CLOSE_LOCK_TIMEOUT}'"))
    # One close at a time (SHARE ROW EXCLUSIVE conflicts with itself; the
    # triggers' reads of period_closes are not blocked).
    await conn.execute(text("LOCK TABLE period_closes IN SHARE ROW EXCLUSIVE MODE"))
    state = (
        await conn.execute(
            text(
                "SELECT clock_timestamp() AS now, ledger_closed_through() AS boundary, "
                "(SELECT NOT EXISTS (SELECT 1 FROM period_close_figures f "
                " WHERE f.period = c.period) FROM period_closes c "
                " WHERE c.period = :period) AS unrecorded"
            ),
            {"period": label},
        )
    ).one()
    boundary = state.boundary
    if boundary is not None and period.end <= boundary:
        if not state.unrecorded or not await _recorder(conn, key):
            # closed implicitly, recorded, or being recorded by a close
            raise PeriodAlreadyClosed(
                f"{label} is closed: the books are closed through {stamp(boundary)}",
                period=label,
                closed_through=stamp(boundary),
            )
        return True
    elif state.now < period.end:
        raise PeriodNotOver(
            f"{label} ends at {stamp(period.end)}; the database's clock says {stamp(state.now)}",
            period=label,
            period_end=stamp(period.end),
        )
    elif boundary is not None and period.start != boundary:
        following = month_label(boundary)
        raise PeriodNotNext(
            f"months close in order: the next to close is {following}",
            period=label,
            next_period=following,
            closed_through=stamp(boundary),
        )
    else:
        # Wait for the postings in flight; new ones wait for the commit.
        await conn.execute(text("LOCK TABLE journal_entries IN SHARE MODE"))
        await conn.execute(
            text(
                "INSERT INTO period_closes (period, period_start, period_end, closed_by) "
                "VALUES (:period, :start, :end, :by)"
            ),
            {"period": label, "start": period.start, "end": period.end, "by": closed_by},
        )
        return await _recorder(conn, key)


async def _recorder(conn, key: dict) -> bool:
    found = await conn.execute(text(f"SELECT pg_try_advisory_lock({_KEY})"), key)
    return bool(found.scalar_one())


async def record_figures(engine: AsyncEngine, label: str, period: Period) -> None:
    """The closed month's trial balance and roll-forward, stored once (the
    reports themselves; their figures no longer change once it is closed)."""
    tb = await trial_balance(engine, period.end)
    rf = await roll_forward(engine, period)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO period_close_figures (period, trial_balance, roll_forward, "
                "balanced, ties, closing_liability) VALUES (:period, CAST(:tb AS jsonb), "
                "CAST(:rf AS jsonb), :balanced, :ties, :liability) "
                "ON CONFLICT (period) DO NOTHING"
            ),
            {
                "period": label,
                "tb": msgspec.json.encode(tb).decode(),
                "rf": msgspec.json.encode(rf).decode(),
                "balanced": tb.balanced,
                "ties": rf.ties,
                "liability": rf.closing,
            },
        )


async def period_close(engine: AsyncEngine, label: str) -> PeriodClose:
    """One close with the figures it recorded; `PeriodNotClosed` when none."""
    label = month_label(month_period(label).start)
    figures = ", f.trial_balance::text AS tb, f.roll_forward::text AS rf"
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(_SELECT.format(figures=figures) + " WHERE c.period = :period"),
                {"period": label},
            )
        ).first()
    if row is None:
        raise PeriodNotClosed(f"no close of {label} was recorded", period=label)
    return PeriodClose(
        summary=_summary(row),
        trial_balance=msgspec.json.decode(row.tb, type=TrialBalance) if row.tb else None,
        roll_forward=msgspec.json.decode(row.rf, type=RollForward) if row.rf else None,
    )


async def period_closes(engine: AsyncEngine) -> PeriodCloses:
    """Every close, newest first, with the boundary."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text(_SELECT.format(figures="") + " ORDER BY c.period_end DESC"))
        ).all()
    closes = [_summary(row) for row in rows]
    boundary = rows[0].period_end if rows else None
    return PeriodCloses(
        closed_through=stamp(boundary) if boundary is not None else None,
        next_period=month_label(boundary) if boundary is not None else None,
        closes=closes,
    )
