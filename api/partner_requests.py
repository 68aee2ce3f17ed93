"""Idempotent partner POSTs: every call carries `Idempotency-Key`, scoped to
the partner. The first response (success or domain error) is stored and
returned again for a retry with the same request; the same key with another
request is a 422; while the first call is still running, a retry gets 409.

The operation itself also carries the key into the ledger, so even a crash
between posting and storing the response posts once: the retry after the
in-flight claim goes stale finds the ledger's stored result.
"""

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import msgspec
from litestar import Request, Response
from sqlalchemy import text

from api.problems import PROBLEM_JSON, ApiError, problem
from ledger.errors import LedgerError
from ledger.idempotency import IdempotencyKey

IN_FLIGHT_STALE = timedelta(seconds=60)


async def idempotent(
    request: Request,
    partner_id: str,
    operation: Callable[[IdempotencyKey], Awaitable[object]],
    status_code: int = 201,
) -> Response:
    key = request.headers.get("idempotency-key")
    if not key or len(key) > 255 or not key.isprintable():
        raise ApiError(
            "idempotency-key-missing",
            "partner POSTs need an Idempotency-Key header (1-255 characters)",
        )
    body = await request.body()
    digest = hashlib.sha256(
        f"{request.method} {request.url.path}?{request.url.query}\n".encode() + body
    ).hexdigest()
    engine = request.app.state.engine
    async with engine.begin() as conn:
        claimed = (
            await conn.execute(
                text(
                    "INSERT INTO partner_requests (partner_id, idempotency_key, fingerprint, "
                    "status) VALUES (:p, :k, :f, 'in_flight') ON CONFLICT DO NOTHING RETURNING 1"
                ),
                {"p": partner_id, "k": key, "f": digest},
            )
        ).first()
        if claimed is None:
            row = (
                await conn.execute(
                    text(
                        "SELECT fingerprint, status, response_status, response_body, "
                        "now() - created_at AS age FROM partner_requests "
                        "WHERE partner_id = :p AND idempotency_key = :k FOR UPDATE"
                    ),
                    {"p": partner_id, "k": key},
                )
            ).one()
            if row.fingerprint != digest:
                return problem(
                    "idempotency-key-reused",
                    f"idempotency key {key!r} was used for a different request",
                    request.url.path,
                )
            if row.status == "done":
                media = PROBLEM_JSON if row.response_status >= 400 else "application/json"
                return Response(
                    bytes(row.response_body),
                    status_code=row.response_status,
                    media_type=media,
                    headers={"Idempotent-Replayed": "true"},
                )
            if row.age < IN_FLIGHT_STALE:
                return problem(
                    "request-in-flight",
                    "the first request with this key is still being processed; retry shortly",
                    request.url.path,
                    headers={"Retry-After": "1"},
                )
            # Abandoned by a crashed worker: take it over (the ledger's own key
            # still guarantees a single posting).
            await conn.execute(
                text(
                    "UPDATE partner_requests SET created_at = now() WHERE partner_id = :p "
                    "AND idempotency_key = :k"
                ),
                {"p": partner_id, "k": key},
            )
    try:
        result = await operation(IdempotencyKey(f"partner:{partner_id}", key))
        response_status, response_body = status_code, msgspec.json.encode(result)
        response = Response(response_body, status_code=status_code, media_type="application/json")
    except LedgerError as error:
        response = problem(error.code, error.detail, request.url.path, **error.extensions)
        response_status = response.status_code
        response_body = msgspec.json.encode(response.content)
    except BaseException:
        async with engine.begin() as conn:  # nothing to store: let a retry run again
            await conn.execute(
                text("DELETE FROM partner_requests WHERE partner_id = :p AND idempotency_key = :k"),
                {"p": partner_id, "k": key},
            )
        raise
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE partner_requests SET status = 'done', response_status = :s, "
                "response_body = :b WHERE partner_id = :p AND idempotency_key = :k"
            ),
            {"s": response_status, "b": response_body, "p": partner_id, "k": key},
        )
    return response


async def purge(engine, retention: timedelta) -> int:
    """Forget idempotency keys and seen signatures past their retention."""
    async with engine.begin() as conn:
        requests = await conn.execute(
            text("DELETE FROM partner_requests WHERE created_at < now() - CAST(:r AS interval)"),
            {"r": retention},
        )
        await conn.execute(
            text("DELETE FROM idempotency_keys WHERE created_at < now() - CAST(:r AS interval)"),
            {"r": retention},
        )
        await conn.execute(text("DELETE FROM signature_replays WHERE expires_at < now()"))
        return requests.rowcount
