"""Partner settlement statements over the API (staff JWT with the `finance`
role; finance/settlement.py has the rules):

| method and path | answer |
| --- | --- |
| `POST /v1/finance/settlements` | 201, the statement run (or reissued) and stored |
| `GET /v1/finance/settlements?partner_id=&period=` | the stored statements |
| `GET /v1/finance/settlements/{number}?format=json\\|csv\\|html` | one statement as a document |
| `GET /v1/finance/settlements/{number}/entries` | CSV of the entries behind each line, streamed |

Without `format`, the document follows Accept (text/csv, text/html, else
JSON). Each document is exactly the bytes `loyalty finance statement NUMBER
--format ...` writes. Problems: 404 `partner-not-found`, 404
`statement-not-found`, 409 `settlement-exists` (the month is settled: reissue
it), 409 `settlement-out-of-order`, 422 `settlement-period-open` (the month is
not over), 422 `invalid-period`, 422 `invalid-export-format`. Only `finance`
runs statements: they are what the finance team sends to partners.

The entries CSV is streamed from a connection of the finance exports' own
pool (api/routes/finance.py), read in one snapshot; the statement is looked
up before the response starts, so an unknown number is a 404, never a cut
stream."""

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, QueryParameter
from litestar.response import Stream
from sqlalchemy import exc as sqlalchemy_errors

from api.auth import Principal, provide_principal, require_staff
from api.input_guard import PathText
from api.routes.finance import EXPORT_CONNECTIONS, EXPORT_RETRY_AFTER_SECONDS, export_pool
from api.strict_body import strict_json_body
from finance.errors import ExportsBusy
from finance.settlement import (
    Statement,
    StatementSummary,
    settle,
    statement,
    statement_in,
    statements,
)
from finance.settlement_documents import (
    DOCUMENT_MEDIA_TYPES,
    check_document_format,
    entries_csv,
    render,
)
from ledger.history import snapshot


class SettlementRun(msgspec.Struct, forbid_unknown_fields=True):
    partner_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    period: Annotated[str, msgspec.Meta(min_length=1, max_length=20, description="YYYY-MM")]
    reissue: bool = False
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


Format = Annotated[
    str | None,
    QueryParameter(name="format", description="json, csv or html (default: by Accept)"),
]
PartnerFilter = Annotated[str | None, QueryParameter(name="partner_id", max_length=64)]
PeriodFilter = Annotated[
    str | None, QueryParameter(name="period", description="YYYY-MM", max_length=20)
]


def _engine(request: Request):
    return request.app.state.engine


def _format(fmt: str | None, accept: str) -> str:
    if fmt is not None:
        return fmt
    for media, name in (("text/csv", "csv"), ("text/html", "html")):
        if media in accept:
            return name
    return "json"


@post("/", summary="Run (or reissue) a partner's settlement statement for a month", status_code=201)
async def run_settlement(
    request: Request, data: JSONBody[SettlementRun], staff: NamedDependency[Principal]
) -> Statement:
    return await settle(
        _engine(request),
        data.partner_id,
        data.period,
        f"staff:{staff.subject}",
        reissue=data.reissue,
        reason=data.reason,
    )


@get("/", summary="The stored settlement statements")
async def list_settlements(
    request: Request, partner_id: PartnerFilter = None, period: PeriodFilter = None
) -> list[StatementSummary]:
    return await statements(_engine(request), partner_id, period)


@get("/{number:str}", summary="One settlement statement as JSON, CSV or HTML")
async def get_settlement(request: Request, number: PathText, fmt: Format = None) -> Response:
    chosen = check_document_format(_format(fmt, request.headers.get("accept", "")))
    body = render(await statement(_engine(request), number), chosen)
    headers = {}
    if chosen != "json":
        headers["Content-Disposition"] = f'inline; filename="{number}.{chosen}"'
    return Response(body, media_type=DOCUMENT_MEDIA_TYPES[chosen], headers=headers)


@get("/{number:str}/entries", summary="The entries behind each line of a statement (CSV)")
async def get_settlement_entries(request: Request, number: PathText) -> Stream:
    stack = contextlib.AsyncExitStack()
    try:
        try:
            conn = await stack.enter_async_context(snapshot(export_pool(request.app).engine))
        except sqlalchemy_errors.TimeoutError:
            raise ExportsBusy(
                f"every export connection is in use ({EXPORT_CONNECTIONS} per worker); retry later",
                retry_after=EXPORT_RETRY_AFTER_SECONDS,
            ) from None
        found = await statement_in(conn, number)
    except BaseException:
        await stack.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b""  # started here: from now on, closing the body releases the connection
            async for chunk in entries_csv(conn, found):
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await stack.aclose()

    stream = body()
    try:
        await anext(stream)
    except BaseException:
        await stack.aclose()
        raise
    return Stream(
        stream,
        media_type=DOCUMENT_MEDIA_TYPES["csv"],
        headers={"Content-Disposition": f'attachment; filename="{number}.entries.csv"'},
    )


finance_settlement_router = Router(
    path="/v1/finance/settlements",
    route_handlers=[run_settlement, list_settlements, get_settlement, get_settlement_entries],
    guards=[require_staff("finance"), strict_json_body],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False)},
    tags=["finance"],
    security=[{"bearer": []}],
)
