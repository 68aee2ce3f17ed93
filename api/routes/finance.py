"""Finance API (staff JWT with the `finance` role): the journal export
streamed as CSV or JSON Lines, its control totals, balances as of any
instant, the trial balance and the points-liability roll-forward (finance/).

Periods and instants are booking times (`created_at`): `from` and `to` are
dates (00:00 UTC) or ISO 8601 timestamps, the period is [from, to), at most
367 days; `as_of` means the entries booked before it (default: now). A bad
period, instant or format is a 422 problem (`invalid-period`,
`invalid-export-format`) before anything is read.

`GET /v1/finance/journal` streams exactly the bytes `loyalty finance
export-journal` writes for the same period and format. A stream cannot carry
its totals in headers (they are known at its end), so they come from `GET
/v1/finance/journal/totals` (entries, postings, debits and credits per
asset); the CLI also writes the file's SHA-256. The rows are checked against
the database's totals of the same snapshot as they stream: on a mismatch the
response is cut off before its last chunk, never completed.

Exports have a pool of their own (`ExportPool`, at most `EXPORT_CONNECTIONS`
connections per worker, created on the first export, disposed at shutdown by
`close_export_pool`): a slow download holds its connection (and transaction)
as long as the client reads, and must never take one the other routes need.
The connection is taken, and the control totals read, before the response
starts: an export that cannot get one within `EXPORT_POOL_WAIT_SECONDS`
answers a 503 `exports-busy` problem with Retry-After, never a 200 that is
cut. The other finance reads (small answers) use the request pool."""

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

import anyio
from litestar import Litestar, Request, Router, get
from litestar.di import Provide
from litestar.params import QueryParameter
from litestar.response import Stream
from sqlalchemy import exc as sqlalchemy_errors
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import provide_principal, require_staff
from api.input_guard import PathText
from finance.errors import ExportsBusy
from finance.journal_export import (
    MEDIA_TYPES,
    ControlTotals,
    JournalStream,
    check_format,
    journal_totals,
)
from finance.period import Period, parse_instant
from finance.rollforward import RollForward, roll_forward
from finance.trial_balance import TrialBalance, balance_as_of, trial_balance
from ledger.database import create_engine
from ledger.history import AccountBalanceAsOf, snapshot

log = logging.getLogger("loyalty.finance")

From = Annotated[
    str,
    QueryParameter(
        name="from",
        description="First instant of the period (booking time): YYYY-MM-DD (00:00 UTC) "
        "or an ISO 8601 timestamp",
        max_length=40,
    ),
]
To = Annotated[
    str,
    QueryParameter(
        name="to", description="End of the period, excluded (booking time)", max_length=40
    ),
]
AsOf = Annotated[
    str | None,
    QueryParameter(
        name="as_of",
        description="The entries booked before this instant count (default: now)",
        max_length=40,
    ),
]
Format = Annotated[str, QueryParameter(name="format", description="csv or jsonl", max_length=10)]


def _as_of(request: Request, value: str | None) -> datetime:
    if value is not None:
        return parse_instant(value, "as_of")
    return request.app.state.ledger.clock()  # the app's business time


def _engine(request: Request):
    return request.app.state.engine


# -- the exports' own pool ----------------------------------------------------------

# Connections one worker gives to streamed exports at once (a constant, not a
# setting: exports are rare, and each holds a connection for minutes). The
# ledger's create_engine allows as much overflow as its pool size, so a pool
# of 1 holds at most 2 (one kept idle between exports).
EXPORT_CONNECTIONS = 2
EXPORT_POOL_SIZE = EXPORT_CONNECTIONS // 2
# How long an export waits for one of them before answering 503 exports-busy.
EXPORT_POOL_WAIT_SECONDS = 2.0
# What its Retry-After says: the running exports take a while.
EXPORT_RETRY_AFTER_SECONDS = 30
STATE_KEY = "finance_export_pool"


class ExportPool:
    """The engine streamed exports use, created on first use (an app that
    serves no export opens no connection for them)."""

    def __init__(self, url: str, limits) -> None:
        self.url = url
        self.limits = dataclasses.replace(limits, pool_timeout_seconds=EXPORT_POOL_WAIT_SECONDS)
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(self.url, pool_size=EXPORT_POOL_SIZE, limits=self.limits)
        return self._engine

    async def aclose(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()


def export_pool(app: Litestar) -> ExportPool:
    """The app's export pool (made on first call; nothing connects until an
    export asks for a connection)."""
    pool = app.state.get(STATE_KEY)
    if pool is None:
        settings = app.state.settings
        pool = ExportPool(settings.database_url, settings.database_limits())
        app.state[STATE_KEY] = pool
    return pool


async def close_export_pool(app: Litestar) -> None:
    """Dispose of the export pool's connections: at the app's shutdown
    (api/app.py), after the requests have ended."""
    pool = app.state.get(STATE_KEY)
    if pool is not None:
        await pool.aclose()


async def _open_export(
    request: Request, period: Period, fmt: str
) -> tuple[contextlib.AsyncExitStack, JournalStream]:
    """A connection of the export pool in a snapshot, and the database's
    control totals read in it: all before the response starts. The stack
    releases the connection."""
    stack = contextlib.AsyncExitStack()
    try:
        try:
            conn = await stack.enter_async_context(
                snapshot(export_pool(request.app).engine, long=True)
            )
        except sqlalchemy_errors.TimeoutError:
            raise ExportsBusy(
                f"every export connection is in use ({EXPORT_CONNECTIONS} per worker); retry later",
                retry_after=EXPORT_RETRY_AFTER_SECONDS,
            ) from None
        export = JournalStream(conn, period, fmt)
        await export.open()
    except BaseException:
        await _release(stack)
        raise
    return stack, export


async def _release(stack: contextlib.AsyncExitStack) -> None:
    """End the export's transaction and return its connection, also when the
    client went away (the request's cancellation must not skip it)."""
    with anyio.CancelScope(shield=True):
        try:
            await stack.aclose()
        except Exception:  # the connection is dropped by the pool instead
            log.warning("releasing an export's connection failed", exc_info=True)


@get(
    "/journal",
    summary="The journal of a period, streamed as CSV or JSON Lines",
    response_description="CSV (one row per posting) or JSON Lines (one line per entry)",
)
async def journal(request: Request, start: From, end: To, fmt: Format = "csv") -> Stream:
    period = Period.parse(start, end)
    check_format(fmt)
    stack, export = await _open_export(request, period, fmt)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b""  # started here: from now on, closing the body releases the connection
            async for chunk in export.chunks():
                yield chunk
        finally:
            await _release(stack)
        log.info(
            "journal %s exported: %d entries, %d bytes, sha256 %s",
            period.label(),
            export.tally.totals.entries,
            export.size,
            export.sha256,
        )

    stream = body()
    try:
        await anext(stream)
    except BaseException:
        await _release(stack)
        raise
    name = f"journal_{period.start:%Y%m%dT%H%M%S}_{period.end:%Y%m%dT%H%M%S}.{fmt}"
    return Stream(
        stream,
        media_type=MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Period-Time": "created_at",
        },
    )


@get("/journal/totals", summary="Control totals of a period's journal")
async def journal_control_totals(
    request: Request, start: From, end: To, fmt: Format = "csv"
) -> ControlTotals:
    period = Period.parse(start, end)
    return await journal_totals(_engine(request), period, check_format(fmt))


@get("/trial-balance", summary="The trial balance as of an instant")
async def get_trial_balance(request: Request, as_of: AsOf = None) -> TrialBalance:
    return await trial_balance(_engine(request), _as_of(request, as_of))


@get("/balances/{account:str}", summary="One account's balances as of an instant")
async def get_balance(
    request: Request, account: PathText, as_of: AsOf = None
) -> AccountBalanceAsOf:
    return await balance_as_of(_engine(request), account, _as_of(request, as_of))


@get("/roll-forward", summary="The points-liability roll-forward of a period")
async def get_roll_forward(request: Request, start: From, end: To) -> RollForward:
    return await roll_forward(_engine(request), Period.parse(start, end))


finance_router = Router(
    path="/v1/finance",
    route_handlers=[
        journal,
        journal_control_totals,
        get_trial_balance,
        get_balance,
        get_roll_forward,
    ],
    guards=[require_staff("finance")],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False)},
    tags=["finance"],
    security=[{"bearer": []}],
)
