"""Idempotent partner POSTs: every call carries `Idempotency-Key`, scoped to
the partner. The first response (success or domain error) is stored and
returned again for a retry with the same request; the same key with another
request is a 422; while the first call is still running, a retry gets 409.

Crash safety comes from the ledger: the operation carries the key (with the
digest of the request as sent) into its own transaction, so the posting and
the key commit together. A worker killed before that commit leaves nothing
behind and the retry runs afresh; killed after it but before the response is
stored here, the retry gets the ledger's stored result: the same 201, posted
once. Only answers of the operation itself are stored, never an error of the
retry machinery (in flight, key reused) or of an unavailable database.
"""

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import msgspec
from litestar import Request, Response
from sqlalchemy import text

from api.problems import PROBLEM_JSON, ApiError, problem
from ledger.errors import IdempotencyKeyReused, LedgerError, RequestInFlight
from ledger.idempotency import IdempotencyKey

# Answers about the key itself, not about the request: never stored.
_NOT_STORED = (IdempotencyKeyReused, RequestInFlight)


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
            "partner POSTs need an Idempotency-Key header (1-255 printable characters)",
        )
    body = await request.body()
    digest = hashlib.sha256(
        f"{request.method} {request.url.path}?{request.url.query}\n".encode() + body
    ).hexdigest()
    engine = request.app.state.engine
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                text(
                    "SELECT fingerprint, response_status, response_body FROM partner_requests "
                    "WHERE partner_id = :p AND idempotency_key = :k AND status = 'done'"
                ),
                {"p": partner_id, "k": key},
            )
        ).first()
    if stored is not None:
        if stored.fingerprint != digest:
            return problem(
                "idempotency-key-reused",
                f"idempotency key {key!r} was used for a different request",
                request.url.path,
            )
        media = PROBLEM_JSON if stored.response_status >= 400 else "application/json"
        return Response(
            bytes(stored.response_body),
            status_code=stored.response_status,
            media_type=media,
            headers={"Idempotent-Replayed": "true"},
        )
    try:
        result = await operation(IdempotencyKey(f"partner:{partner_id}", key, digest))
        response_status, response_body = status_code, msgspec.json.encode(result)
        response = Response(response_body, status_code=status_code, media_type="application/json")
    except _NOT_STORED as error:
        return problem(error.code, error.detail, request.url.path, extensions=error.extensions)
    except LedgerError as error:
        response = problem(error.code, error.detail, request.url.path, extensions=error.extensions)
        response_status = response.status_code
        response_body = msgspec.json.encode(response.content)
    await store_response(engine, partner_id, key, digest, response_status, response_body)
    return response


async def store_response(
    engine, partner_id: str, key: str, digest: str, status: int, body: bytes
) -> None:
    """Keep the answer for retries. A concurrent retry may have stored the same
    answer first: keep that one (rows left `in_flight` by an older version of
    this module are completed)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO partner_requests (partner_id, idempotency_key, fingerprint, status, "
                "response_status, response_body) VALUES (:p, :k, :f, 'done', :s, :b) "
                "ON CONFLICT (partner_id, idempotency_key) DO UPDATE SET status = 'done', "
                "fingerprint = EXCLUDED.fingerprint, response_status = EXCLUDED.response_status, "
                "response_body = EXCLUDED.response_body "
                "WHERE partner_requests.status = 'in_flight'"
            ),
            {"p": partner_id, "k": key, "f": digest, "s": status, "b": body},
        )


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
