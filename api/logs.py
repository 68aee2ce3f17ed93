"""Structured logs: one JSON object per line (or, `LOYALTY_LOG_FORMAT=text`,
one readable line), each carrying the request it was written for.

The request being served lives in a context variable (`RequestContext`, set
by api/observability.py for the whole of a request), so every line logged
while handling it, in any module, says which request it belongs to:
`request_id`, `method` and `route` (the route template, never the raw path:
paths hold card numbers), and `partner_id` / `member_id` once a guard or the
path has told them. The access line adds `status` and `duration_ms`.

What a line never holds: headers (Authorization, the partner signature and
key id), tokens, signatures, query strings or bodies. Nothing here reads
them, and a bearer token or JWT that found its way into a message anyway is
masked before the line is written.

`logging_config` is the `logging.config.dictConfig` document of a serving
process: the app's loggers (`loyalty.*`, through the root logger), Litestar's
and uvicorn's go through the same formatter to standard error, and uvicorn's
access log is left off (the app writes one line per request). The app applies
it when it is created (`litestar_logging`, from its settings), and `loyalty
serve` hands it to uvicorn, which applies it in every worker before the app
exists (its start-up lines) and in the supervising process."""

import json
import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

FORMATS = ("json", "text")
LEVELS = ("debug", "info", "warning", "error", "critical")
MAX_ID_LENGTH = 128  # a member or partner id taken from a path is cut to this

# A bearer token or a bare JWT (three base64url parts, the first `{"` encoded).
_SECRETS = re.compile(r"(?i)(bearer\s+)[^\s,;\"']+|eyJ[\w-]+\.[\w-]+\.[\w-]*")


@dataclass(slots=True)
class RequestContext:
    """The request being served, as the log lines written for it see it.
    `scope` is the ASGI scope: Litestar fills in the route template and the
    path parameters while routing, and the guards leave the authenticated
    partner or member in its `state`. api/problems.py notes the problem
    type it answered, for the metrics."""

    request_id: str
    method: str
    scope: dict[str, Any] = field(repr=False)
    problem: str | None = None  # the type of the problem answered, if one was

    @property
    def route(self) -> str | None:
        return self.scope.get("path_template")

    def party(self, name: str) -> str | None:
        """`partner_id` or `member_id`: as authenticated (the guard's), else
        as named by the path (a staff read of one member)."""
        value = self.scope.get("state", {}).get(name)
        if value is None:
            value = self.scope.get("path_params", {}).get(name)
        return None if value is None else str(value)[:MAX_ID_LENGTH]

    def fields(self) -> dict[str, Any]:
        result: dict[str, Any] = {"request_id": self.request_id, "method": self.method}
        if (route := self.route) is not None:
            result["route"] = route
        for name in ("partner_id", "member_id"):
            if (value := self.party(name)) is not None:
                result[name] = value
        return result


_current: ContextVar[RequestContext | None] = ContextVar("loyalty_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str | None:
    context = _current.get()
    return None if context is None else context.request_id


def enter_request(context: RequestContext):
    """Make `context` the current request; returns the token `leave_request` takes."""
    return _current.set(context)


def leave_request(token) -> None:
    _current.reset(token)


def mask_secrets(text: str) -> str:
    if "earer" not in text and "EARER" not in text and "eyJ" not in text:
        return text  # the common case: no regular expression run
    return _SECRETS.sub(lambda m: f"{m.group(1)}[masked]" if m.group(1) else "[masked]", text)


# Fields a call may add with `extra=` (the access line's); anything else a
# library passes that way (uvicorn's `color_message`, ...) stays out.
EXTRA_FIELDS = ("status", "duration_ms")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The request's fields, then the record's own (status, duration)."""
    context = _current.get()
    result = context.fields() if context is not None else {}
    for name in EXTRA_FIELDS:
        if (value := getattr(record, name, None)) is not None:
            result[name] = value
    return result


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601), level, logger,
    message, the request's fields, and the traceback as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = mask_secrets(self.formatException(record.exc_info))
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-11-30T09:15:00.123+00:00 INFO loyalty.access GET /v1/me/balance 200
    request_id=... duration_ms=...`: the same fields, for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        text = f"{stamp} {record.levelname} {record.name} {mask_secrets(record.getMessage())}"
        extra = " ".join(f"{name}={value}" for name, value in _fields(record).items())
        if extra:
            text = f"{text} {extra}"
        if record.exc_info:
            text = f"{text}\n{mask_secrets(self.formatException(record.exc_info))}"
        return text


def logging_config(log_format: str = "json", level: str = "info") -> dict[str, Any]:
    """The dictConfig document for a serving process (uvicorn applies it in
    each worker): one handler on standard error, used by the root logger (so
    by `loyalty.*`) and by uvicorn's loggers; uvicorn's access log silenced."""
    if log_format not in FORMATS:
        raise ValueError(f"log format is one of {', '.join(FORMATS)}, not {log_format!r}")
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    level = level.upper()  # the setting is case-blind
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"loyalty": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "loyalty",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            # One line per request comes from the app (loyalty.access).
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "litestar": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
    }


def litestar_logging(log_format: str = "json", level: str = "info"):
    """`logging_config` as Litestar's logging configuration (applied when the
    app is created). Errors are logged by the app's own problem handlers
    (api/problems.py), so Litestar logs none of its own."""
    from litestar.logging import LoggingConfig

    document = logging_config(log_format, level)
    return LoggingConfig(
        formatters=document["formatters"],
        handlers=document["handlers"],
        root=document["root"],
        loggers=document["loggers"],
        log_exceptions="never",
        # The standard library: Litestar would pick picologging when installed.
        logging_module="logging",
    )


__all__ = [
    "FORMATS",
    "LEVELS",
    "JsonFormatter",
    "RequestContext",
    "TextFormatter",
    "current_request",
    "current_request_id",
    "enter_request",
    "leave_request",
    "litestar_logging",
    "logging_config",
    "mask_secrets",
]
