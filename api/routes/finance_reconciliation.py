"""Finance API for partner file reconciliation (finance/reconciliation*.py),
staff JWT: the `finance` role, and for the column mappings also `admin`
(setting up how a partner's file is read is onboarding work as much as
finance's).

- `PUT/GET /v1/finance/reconciliation-mappings/{partner_id}`: the mapping;
- `POST /v1/finance/reconciliations?partner_id=&from=&to=&name=`: the
  partner's CSV as the raw body (`text/csv`), answered 201 with the stored
  run's id, counts and totals per class;
- `GET /v1/finance/reconciliations?partner_id=&limit=&cursor=`: runs, newest first;
- `GET /v1/finance/reconciliations/{id}`: one run and its repairs;
- `GET /v1/finance/reconciliations/{id}/items?class=&limit=&cursor=`: its rows;
- `POST /v1/finance/reconciliations/{id}/repair`: post the rows missing in
  the ledger through the earn path (201, the repair and each row's outcome).

The upload streams to a temporary file (spooled: memory up to 1 MiB, then
disk) and is read from there in chunks, so memory stays flat; it is at most
`MAX_UPLOAD_BYTES` (413 `payload-too-large` beyond, before anything is
stored; larger files go through `loyalty finance reconcile`)."""

import tempfile
from dataclasses import dataclass
from typing import Annotated

import msgspec
from litestar import Request, Router, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import JSONBody, QueryParameter

from api.auth import Principal, provide_principal, require_staff
from api.input_guard import MAX_PARAMETER_LENGTH, PathText, RowId
from api.problems import ApiError
from api.strict_body import strict_json_body
from finance.errors import InvalidPeriod
from finance.period import Period
from finance.reconciliation import reconcile
from finance.reconciliation_files import Mapping
from finance.reconciliation_mappings import MappingView, get_mapping, set_mapping
from finance.reconciliation_repair import RepairResult, repair
from finance.reconciliation_runs import (
    ItemsPage,
    ReconciliationSummary,
    get_reconciliation,
    list_reconciliations,
    reconciliation_items,
)

MAX_UPLOAD_BYTES = 20_000_000  # about 200,000 rows of a typical partner file
SPOOL_BYTES = 1 << 20

PartnerQuery = Annotated[
    str, QueryParameter(name="partner_id", min_length=1, max_length=MAX_PARAMETER_LENGTH)
]
OptionalPartnerQuery = Annotated[
    str | None, QueryParameter(name="partner_id", min_length=1, max_length=MAX_PARAMETER_LENGTH)
]
OptionalInstant = Annotated[
    str | None,
    QueryParameter(
        description="Purchase time: YYYY-MM-DD (00:00 UTC) or an ISO 8601 timestamp",
        max_length=40,
    ),
]
Staff = NamedDependency[Principal]
Cursor = Annotated[str | None, QueryParameter(max_length=40)]
Limit = Annotated[int, QueryParameter(ge=1, le=1000)]


def _actor(staff: Principal) -> str:
    return f"staff:{staff.subject}"


@get(
    "/reconciliation-mappings/{partner_id:str}",
    summary="A partner's reconciliation file mapping (the default when none is stored)",
    guards=[require_staff("finance", "admin")],
)
async def read_mapping(request: Request, partner_id: PathText) -> MappingView:
    return await get_mapping(request.app.state.engine, partner_id)


@put(
    "/reconciliation-mappings/{partner_id:str}",
    summary="Set how a partner's reconciliation file is read",
    guards=[require_staff("finance", "admin"), strict_json_body],
)
async def write_mapping(
    request: Request, partner_id: PathText, data: JSONBody[Mapping], staff: Staff
) -> MappingView:
    return await set_mapping(request.app.state.engine, partner_id, data, _actor(staff))


def _csv_only(content_type: str | None) -> None:
    """A CSV body; its encoding is the partner's mapping's, whatever the header says."""
    if (content_type or "").partition(";")[0].strip().lower() != "text/csv":
        raise HTTPException(status_code=415, detail="send the file as Content-Type text/csv")


async def _spool(request: Request):
    """The body in a spooled temporary file, counted against the limit."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        async for block in request.stream():
            spool.write(block)
    except RequestEntityTooLarge:
        spool.close()
        raise ApiError(
            "payload-too-large",
            f"a reconciliation file is at most {MAX_UPLOAD_BYTES:,} bytes over the API; "
            "reconcile larger files with `loyalty finance reconcile`",
            limit_bytes=MAX_UPLOAD_BYTES,
        ) from None
    spool.seek(0)
    return spool


@dataclass
class CsvUploadOperation(Operation):
    """The operation with the partner's CSV file as its raw request body."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={
                "text/csv": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, description="the partner's CSV file")
                )
            },
            required=True,
            description=f"The partner's transaction file, at most {MAX_UPLOAD_BYTES:,} bytes",
        )


@post(
    "/reconciliations",
    status_code=201,
    summary="Reconcile a partner's transaction file (CSV body) against the ledger",
    guards=[require_staff("finance")],
    request_max_body_size=MAX_UPLOAD_BYTES,
    operation_class=CsvUploadOperation,
)
async def create_reconciliation(
    request: Request,
    staff: Staff,
    partner_id: PartnerQuery,
    start: Annotated[str | None, QueryParameter(name="from", max_length=40)] = None,
    end: Annotated[str | None, QueryParameter(name="to", max_length=40)] = None,
    name: Annotated[str | None, QueryParameter(max_length=MAX_PARAMETER_LENGTH)] = None,
) -> ReconciliationSummary:
    period = _period(start, end)
    _csv_only(request.headers.get("content-type"))
    spool = await _spool(request)
    with spool:
        return await reconcile(
            request.app.state.engine,
            partner_id,
            spool,
            name or "upload.csv",
            actor=_actor(staff),
            period=period,
        )


def _period(start: str | None, end: str | None) -> Period | None:
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise InvalidPeriod("from" if start is None else "to", "give both from and to, or neither")
    return Period.parse(start, end)


class RunsPage(msgspec.Struct, frozen=True):
    runs: list[ReconciliationSummary]
    next_cursor: str | None


@get(
    "/reconciliations",
    summary="Reconciliation runs, newest first",
    guards=[require_staff("finance")],
)
async def list_runs(
    request: Request,
    partner_id: OptionalPartnerQuery = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> RunsPage:
    runs, next_cursor = await list_reconciliations(
        request.app.state.engine, partner_id, limit, cursor
    )
    return RunsPage(runs, next_cursor)


@get(
    "/reconciliations/{reconciliation_id:int}",
    summary="One reconciliation run",
    guards=[require_staff("finance")],
)
async def read_run(request: Request, reconciliation_id: RowId) -> ReconciliationSummary:
    return await get_reconciliation(request.app.state.engine, reconciliation_id)


@get(
    "/reconciliations/{reconciliation_id:int}/items",
    summary="A reconciliation run's rows",
    guards=[require_staff("finance")],
)
async def read_items(
    request: Request,
    reconciliation_id: RowId,
    item_class: Annotated[str | None, QueryParameter(name="class", max_length=40)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> ItemsPage:
    return await reconciliation_items(
        request.app.state.engine, reconciliation_id, item_class, limit, cursor
    )


@post(
    "/reconciliations/{reconciliation_id:int}/repair",
    status_code=201,
    summary="Post the rows missing in the ledger through the earn path (idempotent)",
    guards=[require_staff("finance")],
)
async def repair_run(request: Request, reconciliation_id: RowId, staff: Staff) -> RepairResult:
    return await repair(request.app.state.programme, reconciliation_id, _actor(staff))


finance_reconciliation_router = Router(
    path="/v1/finance",
    route_handlers=[
        read_mapping,
        write_mapping,
        create_reconciliation,
        list_runs,
        read_run,
        read_items,
        repair_run,
    ],
    dependencies={"staff": Provide(provide_principal, sync_to_thread=False)},
    tags=["finance"],
    security=[{"bearer": []}],
)
