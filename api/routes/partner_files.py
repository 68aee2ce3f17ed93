"""Partner transaction files over HTTP: `POST /v1/partner/files`, a CSV
(`Content-Type: text/csv`) or JSON Lines (`application/x-ndjson`) file as the
raw request body, signed like every partner call (the signature covers the
body's SHA-256, so the file cannot be altered in transit) and idempotent under
its Idempotency-Key. The file is imported as `loyalty partner import` would
(partners/imports.py): the same file sent again, under any key, goes on from
its checkpoint or answers its earlier summary, and never posts twice.

The answer (200) is the summary and every reject (line, reference, problem
code, reason). An upload is at most `LOYALTY_MAX_BODY_BYTES` (the API's body
limit, 1,000,000 bytes by default); a larger one is refused with 413 before
anything is read into the ledger: such files go through the CLI.

The JSON routes' strict body guard has nothing to check here (the handler
takes no decoded `data`; it reads the raw bytes), so it is not on this router;
the partner routes keep it."""

from dataclasses import dataclass
from typing import Annotated

import msgspec
from litestar import Request, Response, Router, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, RequestBody, Schema
from litestar.params import QueryParameter

from api.deps import SERVICES
from api.input_guard import MAX_PARAMETER_LENGTH, SignedIdempotentOperation
from api.partner_auth import authenticate_partner
from api.partner_requests import idempotent
from api.problems import ApiError
from partners.import_formats import ImportSource
from partners.imports import ImportSummary, Reject, import_file, stream_rejects
from partners.programme import Programme

MEDIA_TYPES = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
}
DOCUMENTED = ("text/csv", "application/x-ndjson")  # the others are accepted aliases

Programmes = NamedDependency[Programme]


class FileImportResult(ImportSummary, frozen=True, kw_only=True):
    rejects: list[Reject]  # every rejected purchase, in line order


async def limit_upload(connection: ASGIConnection, _: object) -> None:
    """Guard, before the signature check: an upload over the body limit is a
    413 that says what the limit is and where larger files go."""
    limit = connection.app.state.settings.max_body_bytes
    try:
        await connection.body()  # type: ignore[attr-defined]  (cached for the next guards)
    except RequestEntityTooLarge:
        raise ApiError(
            "payload-too-large",
            f"an uploaded file is at most {limit:,} bytes (LOYALTY_MAX_BODY_BYTES); "
            "send larger files in parts, or have the operator run `loyalty partner import`",
            limit_bytes=limit,
        ) from None


def _format(content_type: str | None) -> str:
    media, _, parameters = (content_type or "").partition(";")
    fmt = MEDIA_TYPES.get(media.strip().lower())
    charset = parameters.strip().lower().removeprefix("charset=").strip('"')
    if fmt is None or (parameters.strip() and charset not in ("utf-8", "utf8")):
        raise HTTPException(
            status_code=415,
            detail="send the file as Content-Type text/csv or application/x-ndjson (UTF-8)",
        )
    return fmt


@dataclass
class FileUploadOperation(SignedIdempotentOperation):
    """The signed, idempotent operation with the raw file as its request body."""

    def __post_init__(self) -> None:
        super().__post_init__()
        text = Schema(type=OpenAPIType.STRING, description="the file, UTF-8")
        self.request_body = RequestBody(
            content={media: OpenAPIMediaType(schema=text) for media in DOCUMENTED},
            required=True,
            description="A transaction file, at most LOYALTY_MAX_BODY_BYTES (see the README)",
        )


# An upload is at most a megabyte (a few thousand rows) and shares the
# worker's pool with every other request: two lanes, not the command's four
# (each lane holds a connection while it runs, the import's lock one more).
UPLOAD_LANES = 2


@post(
    "/files",
    status_code=200,
    summary="Import a transaction file (CSV or JSON Lines): a summary and its rejects",
    operation_class=FileUploadOperation,
)
async def upload_file(
    request: Request,
    programme: Programmes,
    name: Annotated[
        str | None,
        QueryParameter(
            max_length=MAX_PARAMETER_LENGTH, description="The file's name, kept with the import"
        ),
    ] = None,
) -> Response[FileImportResult]:
    partner_id: str = request.state.partner_id
    fmt = _format(request.headers.get("content-type"))
    body = await request.body()

    async def run(_key) -> FileImportResult:
        summary = await import_file(
            programme,
            partner_id,
            ImportSource.from_bytes(name or "upload", body),
            fmt,
            actor=f"partner:{partner_id}",
            lanes=UPLOAD_LANES,
        )
        rejects = [r async for r in stream_rejects(programme.ledger.engine, summary.import_id)]
        return FileImportResult(**msgspec.structs.asdict(summary), rejects=rejects)

    return await idempotent(request, partner_id, run, status_code=200)


partner_files_router = Router(
    path="/v1/partner",
    route_handlers=[upload_file],
    guards=[limit_upload, authenticate_partner],
    dependencies=SERVICES,
    tags=["partner"],
    security=[{"hmac": []}],
)
