"""Strict JSON bodies: Litestar converts request data leniently ("5" -> 5);
a partner's or operator's mistyped field must be refused instead. This guard
decodes the body strictly against the handler's `data` type before anything
runs (the parsed body is cached, so the handler does not read it twice), and
takes it only as JSON: another Content-Type (a form, text) is a 415."""

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import ClientException, HTTPException, ValidationException
from litestar.handlers.base import BaseRouteHandler


def is_json(content_type: str) -> bool:
    """application/json, or a JSON-based type (application/problem+json, ...)."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def strict_json_body(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    field = getattr(handler, "parsed_data_field", None)
    if field is None:
        return
    raw = await connection.body()  # type: ignore[attr-defined]
    if raw and not is_json(connection.headers.get("content-type", "")):
        raise HTTPException(
            status_code=415, detail="send the body as JSON: Content-Type: application/json"
        )
    try:
        msgspec.json.decode(raw, type=field.annotation, strict=True)
    except msgspec.ValidationError as error:
        raise ValidationException(
            detail=f"request body: {error}", extra=[{"message": str(error), "source": "body"}]
        ) from None
    except msgspec.DecodeError as error:
        raise ClientException(detail=f"request body is not valid JSON: {error}") from None
