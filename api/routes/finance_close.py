"""Finance API, period close (staff JWT with the `finance` role; finance/close.py):
close a month, list the closes with the boundary, read one close with the
trial balance and roll-forward it recorded.

A month is `YYYY-MM` (UTC). Closing a month that is not over is 422
`period-not-over`; one closed already 409 `period-already-closed`; one that is
not the month after the boundary 409 `period-not-next`; a malformed month 422
`invalid-period`; reading a month that was not closed 404 `period-not-closed`."""

from litestar import Request, Router, get, post
from litestar.di import NamedDependency, Provide

from api.auth import Principal, provide_principal, require_staff
from api.input_guard import PathText
from finance.close import PeriodClose, PeriodCloses, close_period, period_close, period_closes


@post(
    "/periods/{period:str}/close",
    summary="Close a month: nothing may be dated or booked before its end afterwards",
    status_code=201,
)
async def close(
    request: Request, period: PathText, staff: NamedDependency[Principal]
) -> PeriodClose:
    return await close_period(request.app.state.engine, period, f"staff:{staff.subject}")


@get("/periods", summary="The closed months, newest first, and the boundary")
async def closes(request: Request) -> PeriodCloses:
    return await period_closes(request.app.state.engine)


@get("/periods/{period:str}", summary="One closed month with the figures it recorded")
async def one_close(request: Request, period: PathText) -> PeriodClose:
    return await period_close(request.app.state.engine, period)


finance_close_router = Router(
    path="/v1/finance",
    route_handlers=[close, closes, one_close],
    guards=[require_staff("finance")],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False)},
    tags=["finance"],
    security=[{"bearer": []}],
)
