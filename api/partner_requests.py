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

A success the ledger stored with the key is not stored again here: the
operations whose answer is exactly the ledger's result (`ANSWERED_BY_THE_LEDGER`:
earn, batch earn, returns, capture, void) learn from the key's outcome
(ledger/idempotency.py `KeyOutcome`) that the result committed with the key,
and a retry gets it back from the ledger (`claim`): the same status and body,
with `Idempotent-Replayed: true`. Domain errors (their transaction rolled
back, nothing kept) and the answers of anything else (a quote; an
authorisation, whose answer adds the value of the points from a quote taken
before the ledger ran) are stored here, in their own transaction.

The stored answer for (partner, key) is read by the partner guard within its
one statement and handed over in `connection.state` (`STORED_ANSWER`), so a
guarded request does not read it again.
"""

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import NamedTuple

import msgspec
from litestar import Request, Response
from sqlalchemy import text

from api.problems import PROBLEM_JSON, ApiError, problem
from ledger.errors import IdempotencyKeyReused, LedgerError, RequestInFlight
from ledger.idempotency import KEY_LOCK, IdempotencyKey

# Answers about the key itself, not about the request: never stored.
_NOT_STORED = (IdempotencyKeyReused, RequestInFlight)
# Ledger operations (`LedgerService.run`) whose result, as stored with the key,
# is the whole answer: a retry rebuilds it from the ledger byte for byte.
ANSWERED_BY_THE_LEDGER = frozenset(
    {"earn_purchase", "earn_batch", "return_purchase", "capture", "void"}
)
# The connection.state attribute the partner guard leaves the stored answer in
# (a StoredAnswer, or None when there is none); absent: not looked up.
STORED_ANSWER = "stored_answer"
_NOT_LOOKED_UP = object()

_STORED = text(
    "SELECT fingerprint, response_status, response_body FROM partner_requests "
    "WHERE partner_id = :p AND idempotency_key = :k AND status = 'done'"
)
_INSERT_ANSWER = (
    "INSERT INTO partner_requests (partner_id, idempotency_key, fingerprint, status, "
    "response_status, response_body) "
)
# A concurrent retry's answer, stored first, stays; a row left `in_flight` by
# an older version of this module is completed.
_KEEP_FIRST = (
    " ON CONFLICT (partner_id, idempotency_key) DO UPDATE SET status = 'done', "
    "fingerprint = EXCLUDED.fingerprint, response_status = EXCLUDED.response_status, "
    "response_body = EXCLUDED.response_body "
    "WHERE partner_requests.status = 'in_flight'"
)
_STORE = text(_INSERT_ANSWER + "VALUES (:p, :k, :f, 'done', :s, :b)" + _KEEP_FIRST)


# An error answer is kept only while no call under the key has posted: the
# erring call's transaction rolled back, and a retry may have posted since.
# Waiting for the key's lock first puts this after any call still running
# under it (its own statement then sees that call's committed key).
_WAIT_FOR_KEY = text(f"SELECT pg_advisory_xact_lock({KEY_LOCK})")
_STORE_ERROR = text(
    _INSERT_ANSWER + "SELECT :p, :k, :f, 'done', :s, :b "
    "WHERE NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE caller = :claim_caller "
    "AND key = :claim_key)" + _KEEP_FIRST
)


class StoredAnswer(NamedTuple):
    fingerprint: str
    status: int
    body: bytes


async def idempotent(
    request: Request,
    partner_id: str,
    operation: Callable[[IdempotencyKey], Awaitable[object]],
    status_code: int = 201,
) -> Response:
    key = request.headers.get("idempotency-key")
    if key is None:  # one sent malformed was refused by the input guard
        raise ApiError(
            "idempotency-key-missing",
            "partner POSTs need an Idempotency-Key header (1-255 printable characters)",
        )
    body = await request.body()
    digest = hashlib.sha256(
        f"{request.method} {request.url.path}?{request.url.query}\n".encode() + body
    ).hexdigest()
    engine = request.app.state.engine
    stored = getattr(request.state, STORED_ANSWER, _NOT_LOOKED_UP)
    if stored is _NOT_LOOKED_UP:
        stored = await _stored_answer(engine, partner_id, key)
    if stored is not None:
        if stored.fingerprint != digest:
            return problem(
                "idempotency-key-reused",
                f"idempotency key {key!r} was used for a different request",
                request.url.path,
            )
        media = PROBLEM_JSON if stored.status >= 400 else "application/json"
        return Response(
            stored.body,
            status_code=stored.status,
            media_type=media,
            headers={"Idempotent-Replayed": "true"},
        )
    idempotency = IdempotencyKey(f"partner:{partner_id}", key, digest)
    try:
        result = await operation(idempotency)
        response_status, response_body = status_code, msgspec.json.encode(result)
    except _NOT_STORED as error:
        return problem(error.code, error.detail, request.url.path, extensions=error.extensions)
    except LedgerError as error:
        response = problem(error.code, error.detail, request.url.path, extensions=error.extensions)
        response_status = response.status_code
        response_body = msgspec.json.encode(response.content)
    else:
        outcome = idempotency.outcome
        if outcome.operation in ANSWERED_BY_THE_LEDGER:
            # Committed with the key (now, or by the call this one retries).
            return Response(
                response_body,
                status_code=status_code,
                media_type="application/json",
                headers={"Idempotent-Replayed": "true"} if outcome.replayed else None,
            )
        response = Response(response_body, status_code=status_code, media_type="application/json")
    await store_response(engine, partner_id, key, digest, response_status, response_body)
    return response


async def _stored_answer(engine, partner_id: str, key: str) -> StoredAnswer | None:
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = (await autocommit.execute(_STORED, {"p": partner_id, "k": key})).first()
    return None if row is None else StoredAnswer(*row)


async def store_response(
    engine, partner_id: str, key: str, digest: str, status: int, body: bytes
) -> None:
    """Keep the answer for retries. A concurrent retry may have stored the same
    answer first: keep that one (rows left `in_flight` by an older version of
    this module are completed). An error is not kept once a call under the
    key has posted (`_STORE_ERROR`)."""
    values = {"p": partner_id, "k": key, "f": digest, "s": status, "b": body}
    async with engine.begin() as conn:
        if status < 400:
            await conn.execute(_STORE, values)
            return
        held = {"claim_caller": f"partner:{partner_id}", "claim_key": key}
        await conn.execute(_WAIT_FOR_KEY, held)
        await conn.execute(_STORE_ERROR, {**values, **held})


async def purge(engine, retention: timedelta) -> int:
    """Forget idempotency keys (the answers stored here and the results the
    ledger stored with its keys) and seen signatures past their retention;
    how many keys and answers were forgotten."""
    async with engine.begin() as conn:
        requests = await conn.execute(
            text("DELETE FROM partner_requests WHERE created_at < now() - CAST(:r AS interval)"),
            {"r": retention},
        )
        keys = await conn.execute(
            text("DELETE FROM idempotency_keys WHERE created_at < now() - CAST(:r AS interval)"),
            {"r": retention},
        )
        await conn.execute(text("DELETE FROM signature_replays WHERE expires_at < now()"))
        return requests.rowcount + keys.rowcount
