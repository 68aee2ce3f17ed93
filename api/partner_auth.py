"""Partner authentication: the signed-request check, replay refusal and the
per-partner rate limit, as one guard that runs before the body is decoded.

Every accepted signature is recorded in PostgreSQL (table signature_replays,
kept beyond the clock tolerance; `loyalty jobs run purge-idempotency` deletes
expired rows), one autocommit INSERT ... ON CONFLICT DO NOTHING: a signature
seen before is refused whatever happened to Redis meanwhile (a flush, a
failover to a replica that missed the last writes), which a record in Redis
alone did not survive.

Rate limits, per partner here (the contract's `requests_per_second`, else
the service's default) and per member (api/routes/member.py) through the same
`rate_limit`, are a Redis fixed window, one pipelined round trip; without
Redis they are not enforced (they protect capacity, not correctness).
"""

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

REPLAY_TTL_SECONDS = 900  # beyond the 300 s tolerance either side


async def _first_use(connection: ASGIConnection, signature: str) -> bool:
    async with connection.app.state.engine.connect() as conn:
        # Autocommit: one statement, no BEGIN/COMMIT round trips.
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        inserted = await autocommit.execute(
            text(
                "INSERT INTO signature_replays (signature, expires_at) VALUES "
                "(:s, now() + make_interval(secs => :ttl)) ON CONFLICT DO NOTHING RETURNING 1"
            ),
            {"s": signature, "ttl": REPLAY_TTL_SECONDS},
        )
        return inserted.first() is not None


async def rate_limit(connection: ASGIConnection, scope: str, limit: int) -> None:
    """At most `limit` requests per second for `scope` (`partner:ID`, `member:ID`),
    else `429 rate-limited` with Retry-After. The scope is the key's hash tag."""
    redis = connection.app.state.redis
    if redis is None:
        return
    key = f"rate:{{{scope}}}:{int(time.time())}"
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 2)
        count, _ = await pipe.execute()
    except (RedisError, OSError, TimeoutError):
        return
    if count > limit:
        raise ApiError("rate-limited", f"more than {limit} requests per second", retry_after=1)


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
            connection.headers.get("idempotency-key", ""),
        )
        check_signature(key.secret, canonical, signature)
        # Before the replay record: a partner over its limit costs no write.
        await rate_limit(
            connection,
            f"partner:{key.partner_id}",
            key.requests_per_second or connection.app.state.settings.partner_rate_limit,
        )
        if not await _first_use(connection, signature):
            raise SignatureProblem("signature-replayed", "this signature was used before")
    except SignatureProblem as problem:
        raise ApiError(problem.code, problem.detail) from None
    if key.partner_status != "active":
        raise PartnerSuspended(f"partner {key.partner_id} is suspended")
    connection.state.partner_id = key.partner_id
