"""Partner authentication: the signed-request check, replay refusal and the
per-partner rate limit, as one guard that runs before the body is decoded.

Replays are refused through Redis (SET NX with a TTL beyond the clock
tolerance). When Redis is unreachable the check falls back to PostgreSQL
(table signature_replays), so replays stay refused and partners keep working.
The rate limit is a Redis fixed window; without Redis it is not enforced
(the limit protects capacity, not correctness).
"""

import logging
import time

from litestar.connection import ASGIConnection
from redis.exceptions import RedisError
from sqlalchemy import text

from api.problems import ApiError
from partners.errors import PartnerSuspended
from partners.signing import (
    SignatureProblem,
    canonical_request,
    check_signature,
    check_timestamp,
    parse_headers,
)

log = logging.getLogger("loyalty.partner_auth")
REPLAY_TTL_SECONDS = 900  # beyond the 300 s tolerance either side


async def _first_use(connection: ASGIConnection, signature: str) -> bool:
    state = connection.app.state
    if state.redis is not None:
        try:
            return bool(
                await state.redis.set(f"replay:{signature}", 1, nx=True, ex=REPLAY_TTL_SECONDS)
            )
        except (RedisError, OSError, TimeoutError):
            log.warning("Redis unreachable: replay check falls back to PostgreSQL")
    async with state.engine.begin() as conn:
        inserted = await conn.execute(
            text(
                "INSERT INTO signature_replays (signature, expires_at) VALUES "
                "(:s, now() + make_interval(secs => :ttl)) ON CONFLICT DO NOTHING RETURNING 1"
            ),
            {"s": signature, "ttl": REPLAY_TTL_SECONDS},
        )
        return inserted.first() is not None


async def _rate_limit(connection: ASGIConnection, partner_id: str) -> None:
    state = connection.app.state
    if state.redis is None:
        return
    window = int(time.time())
    key = f"rate:{{partner:{partner_id}}}:{window}"
    try:
        pipe = state.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 2)
        count, _ = await pipe.execute()
    except (RedisError, OSError, TimeoutError):
        return
    if count > state.settings.partner_rate_limit:
        raise ApiError(
            "rate-limited",
            f"more than {state.settings.partner_rate_limit} requests per second",
            retry_after=1,
        )


async def authenticate_partner(connection: ASGIConnection, _: object) -> None:
    """Guard: a correctly signed, fresh, first-seen request from an active partner."""
    try:
        key_id, timestamp, signature = parse_headers(connection.headers)
        check_timestamp(timestamp, time.time())
        key = await connection.app.state.registry.signing_key(key_id)
        if key is None:
            raise SignatureProblem("key-unknown", f"no key {key_id!r}")
        if key.status != "active":
            raise SignatureProblem("key-revoked", f"key {key_id!r} was revoked")
        body = await connection.body()  # type: ignore[attr-defined]
        canonical = canonical_request(
            connection.scope["method"],
            connection.scope["path"],
            connection.scope.get("query_string", b"").decode(),
            str(timestamp),
            body,
        )
        check_signature(key.secret, canonical, signature)
        if not await _first_use(connection, signature):
            raise SignatureProblem("signature-replayed", "this signature was used before")
    except SignatureProblem as problem:
        raise ApiError(problem.code, problem.detail) from None
    if key.partner_status != "active":
        raise PartnerSuspended(f"partner {key.partner_id} is suspended")
    await _rate_limit(connection, key.partner_id)
    connection.state.partner_id = key.partner_id
    connection.state.return_window_days = key.return_window_days
