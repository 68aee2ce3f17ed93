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
response is cut off before its last chunk, never completed."""

import logging
from datetime import UTC, datetime
from typing import Annotated

from litestar import Request, Router, get
from litestar.di import Provide
from litestar.params import QueryParameter
from litestar.response import Stream

from api.auth import provide_principal, require_staff
from api.input_guard import PathText
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


def _as_of(value: str | None) -> datetime:
    return parse_instant(value, "as_of") if value is not None else datetime.now(UTC)


def _engine(request: Request):
    return request.app.state.engine


@get(
    "/journal",
    summary="The journal of a period, streamed as CSV or JSON Lines",
    response_description="CSV (one row per posting) or JSON Lines (one line per entry)",
)
async def journal(request: Request, start: From, end: To, fmt: Format = "csv") -> Stream:
    period = Period.parse(start, end)
    check_format(fmt)
    engine = _engine(request)

    async def body():
        async with snapshot(engine, long=True) as conn:
            export = JournalStream(conn, period, fmt)
            await export.open()
            async for chunk in export.chunks():
                yield chunk
        log.info(
            "journal %s exported: %d entries, %d bytes, sha256 %s",
            period.label(),
            export.tally.totals.entries,
            export.size,
            export.sha256,
        )

    name = f"journal_{period.start:%Y%m%dT%H%M%S}_{period.end:%Y%m%dT%H%M%S}.{fmt}"
    return Stream(
        body(),
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
    return await trial_balance(_engine(request), _as_of(as_of))


@get("/balances/{account:str}", summary="One account's balances as of an instant")
async def get_balance(
    request: Request, account: PathText, as_of: AsOf = None
) -> AccountBalanceAsOf:
    return await balance_as_of(_engine(request), account, _as_of(as_of))


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
