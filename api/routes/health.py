"""Liveness and readiness probes, and the Prometheus scrape (`/metrics`,
registered unless LOYALTY_METRICS_ENABLED=0; see api/metrics.py).

Each answers HEAD as well as GET (a load balancer's or a person's `curl -I`):
the same status and headers, no body (the app drops the body of every answer
to a HEAD, api/observability.py)."""

import asyncio

from litestar import HttpMethod, Request, Response, route
from litestar.datastructures import State
from sqlalchemy import text

from api.metrics import exposition

GET_AND_HEAD = [HttpMethod.GET, HttpMethod.HEAD]


@route("/health/live", http_method=GET_AND_HEAD, tags=["health"], summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@route(
    "/health/ready",
    http_method=GET_AND_HEAD,
    tags=["health"],
    summary="PostgreSQL and Redis reachable",
)
async def ready(state: State) -> Response:
    """503 when PostgreSQL is unreachable; `degraded` (still 200) when only
    Redis is: the book of record keeps working without its cache."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            async with state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as error:
        checks["postgres"] = f"unavailable: {type(error).__name__}"
    if state.redis is None:
        checks["redis"] = "not configured"
    else:
        try:
            async with asyncio.timeout(1):
                await state.redis.ping()
            checks["redis"] = "ok"
        except Exception as error:
            checks["redis"] = f"unavailable: {type(error).__name__}"
    if checks["postgres"] != "ok":
        status, code = "unavailable", 503
    elif checks["redis"] != "ok":
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    return Response({"status": status, **checks}, status_code=code)


@route("/metrics", http_method=GET_AND_HEAD, include_in_schema=False)
async def scrape(request: Request) -> Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it). No
    authentication: expose it to the monitoring network only."""
    body, content_type = await exposition(request.app.state, request.headers.get("accept"))
    # As a header: Litestar would append a second charset to a text/ media type.
    return Response(body, headers={"content-type": content_type})
