"""Liveness and readiness probes."""

import asyncio

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import text


@get("/health/live", tags=["health"], summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", tags=["health"], summary="PostgreSQL and Redis reachable")
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
