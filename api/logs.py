"""Structured logs: one JSON object per line (or, `LOYALTY_LOG_FORMAT=text`,
one readable line), each carrying the request it was written for.

The request being served lives in a context variable (`RequestContext`, set
by api/observability.py for the whole of a request), so every line logged
while handling it, in any module, says which request it belongs to:
`request_id`, `method` and `route` (the route template, never the raw path:
paths hold card numbers), and `partner_id` / `member_id` once a guard or the
path has told them. The access line adds `status` and `duration_ms`.

A party id goes on a line only when it is known, not merely claimed: the
`partner_id` or `member_id` a guard authenticated, or a route's path
parameter of that name once the caller has been authenticated (a staff read
of one member). An unauthenticated request, refused (401) or not found, says
no id it named.

Every value on a line is the caller's to choose in part (a path, a refused
input in a message), so neither format writes a control character as it is:
the text format escapes C0 and C1 controls, DEL and the Unicode line and
paragraph separators (`\\n`, `\\r`, `\\t`, `\\x1b`, `\\u2028`) in the message
and every field, so one record is one line and no terminal escape reaches the
reader; a traceback keeps its lines, each indented, so none can pass for a
record. The JSON format escapes the same characters inside its strings.

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

# What a line never holds as it is: C0 and C1 controls, DEL, and the Unicode
# line and paragraph separators (str.splitlines breaks on all of them).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# In a JSON document: what json.dumps(ensure_ascii=False) leaves raw.
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029]")
# A bearer token or a bare JWT (three base64url parts, the first `{"` encoded).
_SECRETS = re.compile(r"(?i)(bearer\s+)[^\s,;\"']+|eyJ[\w-]+\.[\w-]+\.[\w-]*")


# What the guards leave in the request's state once they have authenticated
# the caller (api/auth.py, api/partner_auth.py, api/routes/member.py).
AUTHENTICATED = ("principal", "partner_id", "member_id")


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

    def authenticated(self) -> bool:
        """Whether a guard has authenticated the caller (staff, partner or member)."""
        state = self.scope.get("state", {})
        return any(state.get(name) is not None for name in AUTHENTICATED)

    def party(self, name: str) -> str | None:
        """`partner_id` or `member_id`: as authenticated (the guard's), else
        as named by a route's path parameter once the caller is authenticated
        (a staff read of one member); never what an unauthenticated caller
        put in a path."""
        value = self.scope.get("state", {}).get(name)
        if value is None and self.authenticated():
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


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character (C0, C1, DEL, U+2028/9) written
    as an escape: `\\n`, `\\r`, `\\t`, `\\x1b`, `\\u2028`."""
    return _CONTROL.sub(_escape_one, text)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


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
        # json.dumps escapes C0 controls (ESC included) itself; DEL, C1 and
        # U+2028/9 it leaves raw, and they only ever occur inside strings.
        return _JSON_RAW.sub(_json_escape, json.dumps(line, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """`2026-11-30T09:15:00.123+00:00 INFO loyalty.access GET /v1/me/balance 200
    request_id=... duration_ms=...`: the same fields, for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        message = escape_controls(mask_secrets(record.getMessage()))
        text = (
            f"{stamp} {escape_controls(record.levelname)} {escape_controls(record.name)} {message}"
        )
        extra = " ".join(
            f"{name}={escape_controls(str(value))}" for name, value in _fields(record).items()
        )
        if extra:
            text = f"{text} {extra}"
        trace = None
        if record.exc_info:
            trace = mask_secrets(self.formatException(record.exc_info))
        elif record.stack_info:
            trace = self.formatStack(record.stack_info)
        if trace:
            # Its own lines, each indented and escaped: none reads as a record.
            text += "".join(f"\n    {escape_controls(ln)}" for ln in trace.splitlines())
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
    "escape_controls",
    "leave_request",
    "litestar_logging",
    "logging_config",
    "mask_secrets",
]
