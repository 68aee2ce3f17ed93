"""The Redis balance cache: card holders' balance views, read far more often
than they change.

One hash per member, `bal:{member:ID}` (the hash tag keeps it on one slot of a
Redis Cluster), with fields `view` (the JSON the API answers), `versions` and
`tier` (the view's token, see `Programme.balance_token`), `at` (when its
build started) and `until` (when it stops being served, Unix seconds).

The cache never decides freshness on its own: every read asks Redis for the
hash (counting the member's request against their rate limit in the same
command, `READ_COUNTED`), then PostgreSQL for the member's current token (one
indexed statement on an autocommit connection, one round trip; read after the
request started, so it covers every write committed before), and answers the
cached view only when its token is the current one and its `until` has not
come. `until` is the earlier of the TTL (an upper bound on how long an
entry lives) and the time the view changes by time alone: when a lot's
expiry comes into the 90-day window (the view's source says when). So a
member whose balance does not change is served from Redis until then, however
long ago the last write was.
Anything else (no entry, another token, too old, Redis down, slow, restarted
from an old snapshot, flushed, or shared with instances that never told it
anything) builds the view from PostgreSQL in one snapshot, answers it and
stores it. So a read that starts after a write has committed shows that write,
in any worker of any instance sharing the database, whatever Redis does;
nothing has to be invalidated after a commit.

A fill replaces what is there unless that has a token at least as new in both
parts (a slow reader never puts back an older view; the same token is
replaced by a later build). Keys expire after the TTL.

Redis slow or down: every call has a short timeout (the client's) and the read
goes on from PostgreSQL; a request whose Redis read failed does not try to
fill. Nothing is remembered between requests, because nothing read from Redis
is trusted without the check.

Redis Cluster (`LOYALTY_REDIS_CLUSTER=1`, `connect_redis`): each member's
hash is one key, so HMGET and the FILL script touch one slot; a failover
or a slot moving shows as a failed call (a miss from PostgreSQL) until the
client has the new map, and a view lost with a failed master is rebuilt.

With a replica (`LOYALTY_REPLICA_DATABASE_URL`, api/replica.py) a miss is
built on the replica when its snapshot's token covers the primary's token read
for this request, else on the primary: the same guarantee, less work on the
primary.

Every read is counted (`loyalty_balance_cache_reads_total`, api/metrics.py):
`hit`, `miss`, or `bypass` when Redis is not configured or failed on the read.
"""

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisClusterException, RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.metrics import metrics
from api.problems import ApiError
from ledger.database import DatabaseLimits, create_engine

log = logging.getLogger("loyalty.cache")

Token = tuple[int, int]

# KEYS[1] = the member's hash
# ARGV = versions, tier change, the view, built at (s), key TTL (ms), served until (s)
FILL = """
local have = redis.call('HMGET', KEYS[1], 'versions', 'tier', 'at')
local versions, tier, at = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local hv, ht, hat = tonumber(have[1]), tonumber(have[2]), tonumber(have[3])
if hv and ht and hv >= versions and ht >= tier then
  if hv > versions or ht > tier then return 0 end
  if hat and hat >= at then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'view', ARGV[3], 'versions', ARGV[1], 'tier', ARGV[2], 'at', ARGV[4],
           'until', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

FIELDS = ("view", "versions", "tier", "until")

# Rate limits (api/partner_auth.py `rate_limit`) are a fixed window per second:
# KEYS[1] = the window's counter, ARGV[1] = its lifetime (s). One command: the
# count, and the expiry when the window opens. A Redis that lost its scripts
# (restarted, SCRIPT FLUSH) is sent them again by the client.
RATE_WINDOW_SECONDS = 2
COUNT_REQUEST = (
    "local count = redis.call('INCR', KEYS[1]) "
    "if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end "
)
RATE_WINDOW = COUNT_REQUEST + "return count"
# The balance read counts the member's request in the same command: KEYS[2] =
# the member's hash, on the same slot as the window (both `{member:ID}`).
READ_COUNTED = (
    COUNT_REQUEST
    + "local got = redis.call('HMGET', KEYS[2], "
    + ", ".join(f"'{field}'" for field in FIELDS)
    + ") return {count, got[1], got[2], got[3], got[4]}"
)
WARN_EVERY_SECONDS = 10.0
TIMEOUT_SECONDS = 0.25  # every Redis call: beyond it, PostgreSQL answers
# What a failed Redis call raises: the cluster client's routing errors (no node
# for a slot, cluster down while it learns the new map) are no RedisError.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)


def connect_redis(url: str, cluster: bool = False) -> Redis | RedisCluster:
    """The app's Redis client: one server, or (`cluster`) a Redis Cluster
    reached through the node `url` names (the client learns the others and
    routes each command by its key's hash slot). Every key the service uses
    carries a `{...}` hash tag and every multi-command round trip stays on one
    key, so nothing needs a cross-slot operation."""
    options = {"socket_timeout": TIMEOUT_SECONDS, "socket_connect_timeout": TIMEOUT_SECONDS}
    if not cluster:
        return Redis.from_url(url, **options)
    # A command that failed on a node (down, failing over) is tried once more
    # after the slot map is refreshed, not the client's default ten times: the
    # caller falls back to PostgreSQL. MOVED / ASK redirects are followed anyway.
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.05), retries=1)
    return RedisCluster.from_url(url, retry=retry, **options)


def key(member_id: str) -> str:
    return f"bal:{{member:{member_id}}}"


def rate_window_key(scope: str) -> str:
    """This second's window of `scope` (`partner:ID`, `member:ID`: its hash tag)."""
    return f"rate:{{{scope}}}:{int(time.time())}"


def refuse_over_limit(count: int, limit: int) -> None:
    if count > limit:
        raise ApiError("rate-limited", f"more than {limit} requests per second", retry_after=1)


def token_engine(
    database_url: str, limits: DatabaseLimits | None = None, pool_size: int = 10
) -> AsyncEngine:
    """Connections for the token check: autocommit (no BEGIN/ROLLBACK) and no
    ping on checkout, so a check is exactly one round trip. A connection found
    dead is replaced and the check run once more (`BalanceCache.current_token`)."""
    return create_engine(database_url, pool_size=pool_size, limits=limits, autocommit=True)


class BalanceSource(Protocol):
    """What the cache needs from the book of record (`partners.programme.Programme`)."""

    async def balance_view(self, member_id: str) -> tuple[object, Token, datetime | None]: ...

    async def balance_token(self, member_id: str, conn: AsyncConnection | None = None) -> Token: ...


class ReplicaViews(Protocol):
    """Views built on a replica (`api.replica.ReplicaReads`)."""

    async def balance_view(self, member_id: str, token: Token) -> tuple | None: ...


CACHE, REPLICA, PRIMARY = "cache", "replica", "primary"


class BalanceCache:
    def __init__(
        self,
        redis: Redis | RedisCluster | None,
        source: BalanceSource,
        engine: AsyncEngine | None = None,
        ttl_seconds: int = 3600,
        clock: Callable[[], float] = time.time,
        replica: "ReplicaViews | None" = None,
    ) -> None:
        self.redis = redis
        self.source = source
        self.engine = engine  # for the token check; None: the source's own connections
        self.ttl = ttl_seconds
        self.clock = clock
        self.replica = replica  # where misses are built when it is fresh enough
        self._fill = redis.register_script(FILL) if redis is not None else None
        self._read_counted = redis.register_script(READ_COUNTED) if redis is not None else None
        self._warned_at = float("-inf")
        self.hits = self.misses = 0

    async def balance(self, member_id: str) -> tuple[bytes, bool]:
        """The member's balance view as JSON, and whether it came from Redis."""
        body, source = await self.read(member_id)
        return body, source == CACHE

    async def read(self, member_id: str, rate_limit: int | None = None) -> tuple[bytes, str]:
        """The member's balance view as JSON, and where it came from: `cache`,
        `replica` or `primary`. With `rate_limit`, the member's request is
        counted in their window in the same Redis command as the read, and
        one over the limit is `429 rate-limited` before PostgreSQL is asked."""
        reads = metrics().cache_reads
        if self.redis is None:
            reads.labels("bypass").inc()
            token = await self.current_token(member_id) if self.replica is not None else None
            return await self._build(member_id, fill=False, token=token)
        started = self.clock()
        cached = await self._get(member_id, rate_limit)
        token = await self.current_token(member_id)
        if cached is not None and self._valid(cached, token, started):
            self.hits += 1
            reads.labels("hit").inc()
            return cached[0], CACHE
        self.misses += 1
        reads.labels("miss" if cached is not None else "bypass").inc()  # None: Redis failed
        return await self._build(member_id, fill=cached is not None, token=token)

    async def current_token(self, member_id: str) -> Token:
        """The member's token as committed now (one round trip)."""
        if self.engine is None:
            return await self.source.balance_token(member_id, None)
        for attempt in (1, 2):
            try:
                async with self.engine.connect() as conn:
                    return await self.source.balance_token(member_id, conn)
            except DBAPIError as error:  # a pooled connection the server has closed
                if attempt == 2 or not error.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _valid(self, cached: list, token: Token, now: float) -> bool:
        view, versions, tier, until = cached
        if view is None:
            return False
        try:
            return (int(versions), int(tier)) == token and now < float(until)
        except (TypeError, ValueError):
            return False

    async def _build(
        self, member_id: str, fill: bool, token: Token | None = None
    ) -> tuple[bytes, str]:
        """The view built on the replica when its snapshot covers `token` (the
        primary's, read after the request started), else on the primary."""
        built_at = self.clock()
        built, where = None, REPLICA
        if self.replica is not None and token is not None:
            built = await self.replica.balance_view(member_id, token)
        if built is None:
            built, where = await self.source.balance_view(member_id), PRIMARY
        view, token, changes_at = built
        body = msgspec.json.encode(view)
        if fill:
            until = built_at + self.ttl
            if changes_at is not None:
                until = min(until, changes_at.timestamp())
            await self.fill(member_id, token, body, built_at, until)
        return body, where

    async def _get(self, member_id: str, rate_limit: int | None = None) -> list | None:
        """The cached fields (each None when absent); None when Redis failed
        (and then no limit is enforced: limits protect capacity, not
        correctness)."""
        try:
            if rate_limit is None:
                return await self.redis.hmget(key(member_id), FIELDS)
            window = rate_window_key(f"member:{member_id}")
            keys, args = [window, key(member_id)], [RATE_WINDOW_SECONDS]
            count, *fields = await self._read_counted(keys=keys, args=args)
        except REDIS_ERRORS as error:
            self._failed(error)
            return None
        refuse_over_limit(count, rate_limit)
        return fields

    async def fill(
        self, member_id: str, token: Token, view: bytes, built_at: float, until: float
    ) -> bool:
        """Store a view built at `built_at`, to be served until `until`."""
        if self._fill is None:
            return False
        try:
            ttl_ms = max(1, int((until - self.clock()) * 1000))
            args = [token[0], token[1], view, repr(built_at), ttl_ms, repr(until)]
            return bool(await self._fill(keys=[key(member_id)], args=args))
        except REDIS_ERRORS as error:
            self._failed(error)
            return False

    def _failed(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("balance cache unavailable (%s): serving from PostgreSQL", error)

    async def aclose(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
