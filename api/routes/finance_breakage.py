"""Breakage API (staff JWT with the `finance` role; finance/breakage.py): the
IFRS 15 breakage report of a period and the expected redemption rates
finance sets. The same figures as `loyalty finance breakage`.

Setting an estimate is finance's accounting judgement, so it takes the
`finance` role too (`admin` alone is refused). Bad input is a 422 problem
(`invalid-period`, `invalid-trailing-months`, `invalid-breakage-rate`,
`breakage-estimate-backdated`, `reason-required`) and stores nothing."""

from decimal import Decimal
from typing import Annotated

import msgspec
from litestar import Request, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, QueryParameter

from api.auth import Principal, provide_principal, require_staff
from api.strict_body import strict_json_body
from finance.breakage import (
    DEFAULT_TRAILING_MONTHS,
    BreakageReport,
    Estimate,
    breakage_period,
    breakage_report,
    check_rate,
    check_reason,
    check_trailing_months,
    list_estimates,
    set_estimate,
)
from finance.period import parse_instant

Staff = NamedDependency[Principal]

From = Annotated[
    str | None,
    QueryParameter(
        name="from",
        description="First instant of the period (booking time; default: the first entry)",
        max_length=40,
    ),
]
To = Annotated[
    str | None,
    QueryParameter(
        name="to", description="End of the period, excluded (default: now)", max_length=40
    ),
]
TrailingMonths = Annotated[
    int,
    QueryParameter(
        name="trailing_months",
        description="History window of the rate when finance set none (1..120)",
    ),
]


class EstimateInput(msgspec.Struct, forbid_unknown_fields=True):
    """An expected redemption rate: `"0.97"` (or 0.97), in (0, 1], at most 6 places."""

    rate: Decimal
    reason: str
    effective_from: str | None = None  # a date or ISO 8601 timestamp; default now, never earlier


@get("/", summary="Breakage (IFRS 15) of a period: revenue recognised and deferred")
async def get_breakage(
    request: Request,
    start: From = None,
    end: To = None,
    trailing_months: TrailingMonths = DEFAULT_TRAILING_MONTHS,
) -> BreakageReport:
    period = breakage_period(start, end)
    months = check_trailing_months(trailing_months)
    return await breakage_report(request.app.state.engine, period, months)


@get("/estimates", summary="The expected redemption rates finance set")
async def get_estimates(request: Request) -> list[Estimate]:
    return await list_estimates(request.app.state.engine)


@post("/estimates", summary="Set the expected redemption rate, from now (or later)")
async def post_estimate(request: Request, data: JSONBody[EstimateInput], staff: Staff) -> Estimate:
    rate, reason = check_rate(data.rate), check_reason(data.reason)
    moment = (
        None
        if data.effective_from is None
        else parse_instant(data.effective_from, "effective_from")
    )
    return await set_estimate(
        request.app.state.engine, rate, reason, f"staff:{staff.subject}", moment
    )


finance_breakage_router = Router(
    path="/v1/finance/breakage",
    route_handlers=[get_breakage, get_estimates, post_estimate],
    guards=[require_staff("finance"), strict_json_body],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False)},
    tags=["finance"],
    security=[{"bearer": []}],
)
