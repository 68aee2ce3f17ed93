"""Strict JSON bodies: Litestar converts request data leniently ("5" -> 5);
a partner's or operator's mistyped field must be refused instead. This guard
decodes the body strictly against the handler's `data` type before anything
runs (the parsed body is cached, so the handler does not read it twice)."""

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import ClientException, ValidationException
from litestar.handlers.base import BaseRouteHandler


async def strict_json_body(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    field = getattr(handler, "parsed_data_field", None)
    if field is None:
        return
    raw = await connection.body()  # type: ignore[attr-defined]
    try:
        msgspec.json.decode(raw, type=field.annotation, strict=True)
    except msgspec.ValidationError as error:
        raise ValidationException(
            detail=f"request body: {error}", extra=[{"message": str(error), "source": "body"}]
        ) from None
    except msgspec.DecodeError as error:
        raise ClientException(detail=f"request body is not valid JSON: {error}") from None
