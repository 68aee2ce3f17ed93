"""Every HTTP request, observed from outside the app: its request id, its
metrics and its access log line.

`ObservedLitestar` is the Litestar application with one addition: before
Litestar routes a request it becomes the current request (api/logs.py), and
when the answer has gone out it is counted and logged. Wrapping the whole
application, not the routes (Litestar runs route middleware only for a path
a route serves), covers every answer: a 404 for an unknown path, a 405, a
guard's 401, an unexpected 500.

Request ids: a client's `X-Request-Id` is kept when it is 1 to 128 letters,
digits or `.`, `_`, `:`, `-` (a UUID, a ULID, a trace id), so one id can
follow a call through the caller's systems; anything else (too long, other
characters, absent) is replaced by a fresh uuid4 in hex. The id is answered
in the `X-Request-Id` header, written into every problem body (`request_id`,
api/problems.py) and onto every log line of the request.

An answer to a HEAD request goes out without its body (its headers, the
Content-Length included, are the GET's), whatever the route returned."""

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from litestar import Litestar
from litestar.types import Message, Receive, Scope, Send

from api.logs import RequestContext, enter_request, leave_request
from api.metrics import metrics, observe_pools, request_labels

REQUEST_ID_HEADER = b"x-request-id"
REPLAYED_HEADER = b"idempotent-replayed"
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_LENGTH}}}")
# Problem types the partner signature guard answers (api/partner_auth.py).
SIGNATURE_PROBLEMS = frozenset(
    {
        "signature-missing",
        "signature-malformed",
        "key-unknown",
        "key-revoked",
        "signature-stale",
        "signature-invalid",
        "signature-replayed",
    }
)

access_log = logging.getLogger("loyalty.access")
log = logging.getLogger("loyalty.api")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_id(headers) -> str:
    """The client's X-Request-Id when it is a safe one, else a fresh id."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


async def observe(app: Litestar, scope: Scope, receive: Receive, send: Send, call: ASGIApp):
    """Serve one HTTP request through `call`, observed (see the module's docstring)."""
    context = RequestContext(request_id(scope["headers"]), scope["method"], scope)
    token = enter_request(context)
    recorded = metrics()
    recorded.in_progress.inc()
    started = time.perf_counter()
    status, replayed, finished = 500, False, False  # 500: no answer was started
    head = scope["method"] == "HEAD"

    def finish() -> None:
        """Count and log the request, once: as its last byte is about to go
        out (a client that has the answer finds it counted), or when the
        application ended without answering."""
        nonlocal finished
        if finished:
            return
        finished = True
        duration = time.perf_counter() - started
        method, route, code = request_labels(context.method, context.route, status)
        recorded.requests.labels(method, route, code).inc()
        recorded.latency.labels(method, route, code).observe(duration)
        recorded.in_progress.dec()
        if replayed:
            recorded.replays.labels(route).inc()
        if context.problem is not None and status >= 400:
            recorded.problems.labels(context.problem).inc()
            if status == 401 and context.problem in SIGNATURE_PROBLEMS:
                recorded.signature_failures.labels(context.problem).inc()
        observe_pools(app.state)
        access_log.info(
            "%s %s %s",
            context.method,
            context.route or "(no route)",
            status,
            extra={"status": status, "duration_ms": round(duration * 1000, 2)},
        )

    async def send_observed(message: Message) -> None:
        nonlocal status, replayed
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [
                (name, value)
                for name, value in message.get("headers", ())
                if name.lower() != REQUEST_ID_HEADER
            ]
            replayed = any(
                name.lower() == REPLAYED_HEADER and value == b"true" for name, value in headers
            )
            headers.append((REQUEST_ID_HEADER, context.request_id.encode()))
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body":
            if head and message.get("body"):
                message = {**message, "body": b""}
            if not message.get("more_body", False):
                finish()
        await send(message)

    try:
        await call(scope, receive, send_observed)
    except Exception:
        # Litestar answers every error itself; one escaping it is logged here,
        # with the request's id, before the server answers 500.
        log.exception("unhandled error escaped the application")
        raise
    finally:
        finish()
        leave_request(token)


class ObservedLitestar(Litestar):
    """Litestar, with every HTTP request observed (`observe`)."""

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        await observe(self, scope, receive, send, super().__call__)
