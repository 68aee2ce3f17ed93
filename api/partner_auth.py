"""Partner authentication: the signed-request check, replay refusal and the
per-partner rate limit, as one guard that runs before the body is decoded.

Every accepted signature is recorded in PostgreSQL (table signature_replays,
kept beyond the clock tolerance; `loyalty jobs run purge-idempotency` deletes
expired rows), INSERT ... ON CONFLICT DO NOTHING: a signature seen before is
refused whatever happened to Redis meanwhile (a flush, a failover to a
replica that missed the last writes), which a record in Redis alone did not
survive.

One round trip to PostgreSQL per request. The key's partner and secret come
from the worker's `SigningKeyCache` (partners/signing_keys.py; a key's secret and
partner never change), so the signature is checked with no lookup; then one
autocommit statement records the signature AND reads the key's and the
partner's status as they are now (a revoked key or a suspended partner is
refused at once, never from a stale cache) AND, for a request with an
Idempotency-Key, the answer stored for it (handed to `idempotent()` in
`connection.state`, api/partner_requests.py). A key id the worker has not
seen costs one lookup more; an unknown one is looked up every time.

The contract's `requests_per_second` is cached per partner: a rate limit
protects capacity, not correctness, so it may lag a contract change by a
request or a few seconds. The statement also reads the definitions version
(bumped by every contract change), and re-reads the limit when that number has
moved or the cached figure is a few seconds old (`SigningKeyCache`).

The statement runs once more on a fresh connection if the pooled one turns out
dead (ledger/database.py `once_more_if_dropped`). The one ambiguous case, a
connection lost after the server committed the INSERT but before it answered,
makes the rerun see its own signature: a `401 signature-replayed` the partner
answers by signing the call again (its Idempotency-Key keeps it posted once).

Rate limits, per partner here (the contract's `requests_per_second`, else
the service's default) and per member (api/routes/member.py) through the same
`rate_limit`, are a Redis fixed window, one command (api/cache.py
`RATE_WINDOW`: INCR, and EXPIRE when the window opens; a member's balance read
counts its request in the read's own command); without Redis they are not
enforced (they protect capacity, not correctness). The window is one key
hash-tagged by its scope (`rate:{partner:ID}:SECOND`), so on Redis Cluster the
script runs on the node owning it.
"""

import time

from litestar.connection import ASGIConnection
from sqlalchemy import text

from api.cache import RATE_WINDOW_SECONDS, REDIS_ERRORS, rate_window_key, refuse_over_limit
from api.partner_requests import STORED_ANSWER, StoredAnswer
from api.problems import ApiError
from ledger.database import once_more_if_dropped
from partners.contracts import IN_FORCE
from partners.errors import PartnerSuspended
from partners.signing import (
    SignatureProblem,
    canonical_request,
    check_signature,
    check_timestamp,
    parse_headers,
)
from partners.signing_keys import KnownKey, SigningKeyCache

REPLAY_TTL_SECONDS = 900  # beyond the 300 s tolerance either side


_GUARD = (
    "WITH k AS (SELECT k.status AS key_status, p.status AS partner_status{limit} "
    "FROM partner_keys k JOIN partners p ON p.id = k.partner_id WHERE k.key_id = :key_id), "
    "seen AS (INSERT INTO signature_replays (signature, expires_at) "
    "SELECT :signature, now() + make_interval(secs => :ttl) FROM k WHERE k.key_status = 'active' "
    "ON CONFLICT DO NOTHING RETURNING 1) "
    "SELECT k.*, EXISTS (SELECT 1 FROM seen) AS first_use, r.fingerprint, r.response_status, "
    "r.response_body, (SELECT version FROM definition_versions) AS definitions "
    "FROM k LEFT JOIN partner_requests r ON r.partner_id = :partner_id "
    "AND r.idempotency_key = :idempotency_key AND r.status = 'done'"
)
# Built once; the second also re-reads the partner's rate limit (when it is due).
_GUARD_STATEMENT = text(_GUARD.format(limit=""))
_GUARD_WITH_LIMIT = text(
    _GUARD.format(
        limit=", (SELECT c.requests_per_second FROM partner_contracts c "
        "WHERE c.partner_id = p.id " + IN_FORCE.format(at="now()") + ") AS requests_per_second"
    )
)


async def _record_and_check(
    connection: ASGIConnection,
    key_id: str,
    partner_id: str,
    signature: str,
    idempotency_key: str | None,
    with_limit: bool,
):
    """The guard's one statement (see the module's docstring): a row with
    key_status, partner_status, first_use, the stored answer's columns (NULL
    when none) and, `with_limit`, requests_per_second; None if the key is gone."""
    statement = _GUARD_WITH_LIMIT if with_limit else _GUARD_STATEMENT
    parameters = {
        "key_id": key_id,
        "partner_id": partner_id,
        "signature": signature,
        "ttl": REPLAY_TTL_SECONDS,
        "idempotency_key": idempotency_key,
    }

    async def run():
        async with connection.app.state.engine.connect() as conn:
            # Autocommit: one statement, no BEGIN/COMMIT round trips.
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return (await autocommit.execute(statement, parameters)).first()

    return await once_more_if_dropped(run)


async def rate_limit(connection: ASGIConnection, scope: str, limit: int) -> None:
    """At most `limit` requests per second for `scope` (`partner:ID`, `member:ID`),
    else `429 rate-limited` with Retry-After. The scope is the key's hash tag."""
    window = connection.app.state.rate_window
    if window is None:
        return
    try:
        count = await window(keys=[rate_window_key(scope)], args=[RATE_WINDOW_SECONDS])
    except REDIS_ERRORS:  # a cluster's routing errors too
        return
    refuse_over_limit(count, limit)


async def _known_key(connection: ASGIConnection, cache: SigningKeyCache, key_id: str) -> KnownKey:
    known = cache.key(key_id)
    if known is None:  # first seen by this worker: one lookup, remembered unless unknown
        if await connection.app.state.registry.signing_key(key_id, cache) is None:
            raise SignatureProblem("key-unknown", f"no key {key_id!r}")
        known = cache.key(key_id)
    if known is None or known.revoked:
        raise SignatureProblem("key-revoked", f"key {key_id!r} was revoked")
    return known


async def authenticate_partner(connection: ASGIConnection, _: object) -> None:
    """Guard: a correctly signed, fresh, first-seen request from an active partner."""
    cache: SigningKeyCache = connection.app.state.signing_keys
    try:
        key_id, timestamp, signature = parse_headers(connection.headers)
        check_timestamp(timestamp, time.time())
        known = await _known_key(connection, cache, key_id)
        idempotency_key = connection.headers.get("idempotency-key")
        body = await connection.body()  # type: ignore[attr-defined]
        canonical = canonical_request(
            connection.scope["method"],
            connection.scope["path"],
            connection.scope.get("query_string", b"").decode(),
            str(timestamp),
            body,
            idempotency_key or "",
        )
        check_signature(known.secret, canonical, signature)
        # Before the replay record: a partner over its limit costs no write.
        limit, limit_due = cache.limit(known.partner_id)
        await rate_limit(
            connection,
            f"partner:{known.partner_id}",
            limit or connection.app.state.settings.partner_rate_limit,
        )
        lookup = idempotency_key if connection.scope["method"] == "POST" else None
        row = await _record_and_check(
            connection, key_id, known.partner_id, signature, lookup, limit_due
        )
        if row is None:  # keys are never deleted; should one be, forget it here too
            cache.forget(key_id)
            raise SignatureProblem("key-unknown", f"no key {key_id!r}")
        cache.saw_definitions(row.definitions)
        if limit_due:
            cache.set_limit(known.partner_id, row.requests_per_second)
        if row.key_status != "active":
            cache.revoked(key_id)
            raise SignatureProblem("key-revoked", f"key {key_id!r} was revoked")
        if not row.first_use:
            raise SignatureProblem("signature-replayed", "this signature was used before")
    except SignatureProblem as problem:
        raise ApiError(problem.code, problem.detail) from None
    if row.partner_status != "active":
        raise PartnerSuspended(f"partner {known.partner_id} is suspended")
    connection.state.partner_id = known.partner_id
    if lookup is not None:
        stored = (
            None
            if row.fingerprint is None
            else StoredAnswer(row.fingerprint, row.response_status, bytes(row.response_body))
        )
        setattr(connection.state, STORED_ANSWER, stored)
