"""The API boundary against hostile input: before any other guard, handler or
query runs, every value a request carries towards PostgreSQL is checked
against what its column can hold. Integers fit `bigint`, or `int` where the
column is `int` (migrations/versions); strings carry no NUL character (a
PostgreSQL text value cannot hold one) and have a bounded length. This covers
path and query parameters, the headers and every value of a JSON body. A
violation answers 422 `invalid-input`, naming each offending value, and
nothing runs.

Parameters may declare tighter bounds (`PathParameter(ge=..., le=...,
max_length=...)`): the guard enforces those too, so the OpenAPI document and
the check share one source. The type aliases below are those declarations.

Also here: the headers the OpenAPI document declares for routes that check
them in their own code (the partner signature, a required Idempotency-Key),
without Litestar enforcing them first, so each keeps its own problem type."""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from typing import Annotated

import msgspec
from litestar.connection import ASGIConnection
from litestar.enums import ParamType
from litestar.exceptions import ClientException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Operation, Schema
from litestar.openapi.spec import Parameter as OpenAPIParameter
from litestar.params import HeaderParameter, ParameterKwarg, PathParameter, QueryParameter
from litestar.typing import FieldDefinition

from api.problems import ApiError
from ledger.idempotency import check_key
from partners.contracts import ContractInput
from partners.registry import PartnerInput
from partners.rule_inputs import TierInput
from partners.signing import KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
MAX_PARAMETER_LENGTH = 255  # a path segment, a query value, a header value
MAX_TEXT_LENGTH = 1_000  # any string in a JSON body (names, reasons, references)
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_REPORTED = 20  # offending values named in one answer

# JSON body fields stored in `int` columns (0002 tier_definitions.rank, 0005
# partner_contracts' windows); every other integer column is bigint.
INT4_BODY_FIELDS: dict[type, tuple[str, ...]] = {
    TierInput: ("rank",),
    PartnerInput: ("return_window_days",),
    ContractInput: ("return_window_days", "late_submission_days", "future_tolerance_seconds"),
}


def _integer_path_parameter(maximum: int, description: str) -> PathParameter:
    # Litestar writes bounds into the document as floats, and 2**63 - 1 as a
    # float is 2**63: schema_extra states them exactly.
    return PathParameter(
        ge=1,
        le=maximum,
        description=description,
        schema_extra={"minimum": 1, "maximum": maximum},
    )


RowId = Annotated[int, _integer_path_parameter(BIGINT_MAX, "A row id (PostgreSQL bigint)")]
RuleVersion = Annotated[int, _integer_path_parameter(INT4_MAX, "A rule version (PostgreSQL int)")]
PathText = Annotated[str, PathParameter(min_length=1, max_length=MAX_PARAMETER_LENGTH)]
SearchText = Annotated[str, QueryParameter(min_length=1, max_length=MAX_PARAMETER_LENGTH)]
# The same, optional: the bounds stay on the parameter (`SearchText | None`
# would leave Litestar to infer a plain query parameter without them).
OptionalSearchText = Annotated[
    str | None, QueryParameter(min_length=1, max_length=MAX_PARAMETER_LENGTH)
]
IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        description="Retry-safe: the same key and body return the first result",
    ),
]

_INTEGER = re.compile(r"[+-]?[0-9]+")
_JSON_NUMBERS_AS_DECIMAL = msgspec.json.Decoder(float_hook=Decimal)


@dataclass(frozen=True)
class _Bounds:
    minimum: int = BIGINT_MIN
    maximum: int = BIGINT_MAX
    max_length: int = MAX_PARAMETER_LENGTH


def _declared_bounds(field: FieldDefinition | None) -> _Bounds:
    """The column's range, narrowed by what the parameter declares."""
    kwarg = field.kwarg_definition if field is not None else None
    if not isinstance(kwarg, ParameterKwarg):
        return _Bounds()
    return _Bounds(
        minimum=max(BIGINT_MIN, int(kwarg.ge)) if kwarg.ge is not None else BIGINT_MIN,
        maximum=min(BIGINT_MAX, int(kwarg.le)) if kwarg.le is not None else BIGINT_MAX,
        max_length=min(MAX_PARAMETER_LENGTH, kwarg.max_length or MAX_PARAMETER_LENGTH),
    )


def _takes_int(field: FieldDefinition) -> bool:
    types = [field.annotation, *(inner.annotation for inner in field.inner_types)]
    return int in types


def _text_problem(value: str, max_length: int) -> str | None:
    if "\x00" in value:
        return "contains a NUL character"
    if len(value) > max_length:
        return f"is longer than {max_length} characters"
    return None


def _int_problem(value: int, minimum: int, maximum: int) -> str | None:
    if not minimum <= value <= maximum:
        return f"is outside {minimum}..{maximum}"
    return None


def _query_int(raw: str) -> int | None:
    """The integer a query value spells, None if it is not one (Litestar
    refuses those as a type error later)."""
    if not _INTEGER.fullmatch(raw):
        return None
    try:
        return int(raw)
    except ValueError:  # more digits than Python converts: far out of range
        return BIGINT_MAX + 1


def _path_problems(connection: ASGIConnection, handler: BaseRouteHandler) -> Iterator[dict]:
    fields = handler.parsed_fn_signature.parameters
    for name, value in connection.path_params.items():
        bounds = _declared_bounds(fields.get(name))
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            message = _int_problem(value, bounds.minimum, bounds.maximum)
        elif isinstance(value, str):
            message = _text_problem(value, bounds.max_length)
        else:
            message = None
        if message:
            yield {"source": "path", "key": name, "message": f"{name} {message}"}


def _query_fields(handler: BaseRouteHandler) -> dict[str, FieldDefinition]:
    by_alias = {}
    for name, field in handler.parsed_fn_signature.parameters.items():
        kwarg = field.kwarg_definition
        alias = kwarg.name if isinstance(kwarg, ParameterKwarg) and kwarg.name else name
        by_alias[alias] = field
    return by_alias


def _query_problems(connection: ASGIConnection, handler: BaseRouteHandler) -> Iterator[dict]:
    fields = _query_fields(handler)
    for name, value in connection.query_params.multi_items():
        message = _text_problem(name, MAX_PARAMETER_LENGTH)
        field = fields.get(name)
        bounds = _declared_bounds(field)
        if message is None:
            message = _text_problem(value, bounds.max_length)
        if message is None and field is not None and _takes_int(field):
            number = _query_int(value)
            if number is not None:
                message = _int_problem(number, bounds.minimum, bounds.maximum)
        if message:
            yield {"source": "query", "key": name[:64], "message": f"{name[:64]!r} {message}"}


def _header_problems(connection: ASGIConnection) -> Iterator[dict]:
    for name, value in connection.headers.items():
        if "\x00" in value:
            yield {"source": "header", "key": name, "message": f"{name} contains a NUL character"}
    value = connection.headers.get(KEY_ID_HEADER.lower())
    if value is not None and len(value) > MAX_PARAMETER_LENGTH:
        yield {
            "source": "header",
            "key": KEY_ID_HEADER.lower(),
            "message": f"{KEY_ID_HEADER.lower()} is longer than {MAX_PARAMETER_LENGTH} characters",
        }


# Where a value sits in the body: (the parent's path, its key or index), None
# at the top; spelled as a JSON Pointer only for a value found wrong (a batch
# of 1,000 purchases has some 10,000 values, nearly always all fine).
_Path = tuple | None


def _pointer(path: _Path) -> str:
    keys = []
    while path is not None:
        path, key = path
        keys.append(str(key).replace("~", "~0").replace("/", "~1"))
    return "".join(f"/{key}" for key in reversed(keys))


def _body_problem(pointer: str, message: str) -> dict:
    return {"source": "body", "key": pointer or "/", "message": message}


def _body_problems(body: object, data_type: object) -> Iterator[dict]:
    """Every string, key and integer of a decoded JSON body, in document
    order, walked without recursion (a deeply nested body must not exhaust
    the stack: a container's children go on the stack last first). The
    decoder makes plain dicts, lists, strings and numbers: their exact types
    are compared."""
    if isinstance(body, dict):
        for name in INT4_BODY_FIELDS.get(data_type, ()):  # type: ignore[call-overload]
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                message = _int_problem(value, INT4_MIN, INT4_MAX)
                if message:
                    yield _body_problem(f"/{name}", f"/{name} {message}")
    pending: list[tuple[_Path, object]] = [(None, body)]
    while pending:
        path, value = pending.pop()
        kind = type(value)
        message = None
        if kind is dict:
            for key in value:  # type: ignore[attr-defined]
                key_message = _text_problem(key, MAX_TEXT_LENGTH)
                if key_message:
                    pointer = _pointer(path)
                    yield _body_problem(pointer, f"a key in {pointer or 'the body'} {key_message}")
            for key, item in reversed(value.items()):  # type: ignore[attr-defined]
                pending.append(((path, key), item))
        elif kind is list:
            for index in range(len(value) - 1, -1, -1):  # type: ignore[arg-type]
                pending.append(((path, index), value[index]))  # type: ignore[index]
        elif kind is str:
            message = _text_problem(value, MAX_TEXT_LENGTH)  # type: ignore[arg-type]
        elif kind is int:
            message = _int_problem(value, BIGINT_MIN, BIGINT_MAX)  # type: ignore[arg-type]
        if message:
            pointer = _pointer(path)
            yield _body_problem(pointer, f"{pointer or 'the body'} {message}")


async def reject_hostile_input(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """App-wide guard: 422 `invalid-input` for any value no column could take;
    an `Idempotency-Key` sent but malformed (empty, over 255 characters, not
    printable) is `400 invalid-idempotency-key` on every route, before
    anything reads it."""
    if (sent_key := connection.headers.get("idempotency-key")) is not None:
        check_key(sent_key)
    found = [
        *_path_problems(connection, handler),
        *_query_problems(connection, handler),
        *_header_problems(connection),
    ]
    data_field = getattr(handler, "parsed_data_field", None)
    if data_field is not None:
        # Read once here; Litestar caches it for the other guards and the handler.
        raw = await connection.body()  # type: ignore[attr-defined]
        try:
            body = _JSON_NUMBERS_AS_DECIMAL.decode(raw) if raw else None
        except msgspec.DecodeError:
            body = None  # not JSON: strict_json_body refuses it, after authentication
        except RecursionError:
            raise ClientException(detail="request body is nested too deeply") from None
        # The first ones in the body's order are those answered: the walk
        # stops there (a body of 100,000 bad values is not spelled out).
        found.extend(islice(_body_problems(body, data_field.annotation), MAX_REPORTED))
    if found:
        raise ApiError("invalid-input", found[0]["message"], errors=found[:MAX_REPORTED])


# -- headers declared for the OpenAPI document only ---------------------------


def _required_header(name: str, description: str, schema: Schema) -> OpenAPIParameter:
    return OpenAPIParameter(
        name=name,
        param_in=ParamType.HEADER,
        required=True,
        description=description,
        schema=schema,
    )


IDEMPOTENCY_KEY_REQUIRED = _required_header(
    "Idempotency-Key",
    "Required. Retry-safe: the same key and body return the first result, posted once",
    Schema(type="string", min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH),
)
SIGNATURE_HEADERS = (
    _required_header(
        KEY_ID_HEADER,
        "The id of the partner key that signed the request",
        Schema(type="string", min_length=1, max_length=MAX_PARAMETER_LENGTH),
    ),
    _required_header(
        TIMESTAMP_HEADER,
        "Unix seconds when the request was signed (300 s tolerance)",
        Schema(type="string", pattern="^[0-9]{1,12}$"),
    ),
    _required_header(
        SIGNATURE_HEADER,
        "Lower-case hex HMAC-SHA256 of the canonical request (see partners/signing.py)",
        Schema(type="string", pattern="^[0-9a-f]{64}$"),
    ),
)


def operation_declaring(*headers: OpenAPIParameter) -> type[Operation]:
    """An OpenAPI Operation class that lists `headers` among the operation's
    parameters (replacing a header of the same name the handler declares)."""
    names = {header.name.lower() for header in headers}

    @dataclass
    class DeclaredHeadersOperation(Operation):
        def __post_init__(self) -> None:
            kept = [
                parameter
                for parameter in self.parameters or ()
                if not (
                    isinstance(parameter, OpenAPIParameter)
                    and parameter.param_in == ParamType.HEADER
                    and parameter.name.lower() in names
                )
            ]
            self.parameters = [*kept, *headers]

    return DeclaredHeadersOperation


SignedOperation = operation_declaring(*SIGNATURE_HEADERS)
SignedIdempotentOperation = operation_declaring(*SIGNATURE_HEADERS, IDEMPOTENCY_KEY_REQUIRED)
IdempotentOperation = operation_declaring(IDEMPOTENCY_KEY_REQUIRED)
