"""The Redis balance cache: card holders' balance views, read far more often
than they change.

One hash per member, `bal:{member:ID}` (the hash tag keeps it on one slot of a
Redis Cluster), with fields `view` (the JSON the API answers), `version` (the
view's balances version) and `floor` (the newest version committed).
- After every commit that changed a member's balances, the ledger tells the
  cache the new version: the floor rises to it and the view is dropped.
- A read that misses builds the view from PostgreSQL and stores it only if its
  version is at least the floor and newer than what is there, so a slow reader
  holding an older view can never overwrite a newer one.
So a read after a write returns (read-your-writes) shows that write.

A view older than the TTL counts as a miss (time passes: points come within
the 90-day expiry window without any write).

Redis slow or down: every call has a short timeout; reads and writes go on
from PostgreSQL. A drop that failed leaves a view that may be stale, so after
any failure this process bypasses the cache until Redis has answered again for
longer than a view lives (the TTL): the cache heals by itself.
"""

import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("loyalty.cache")

# KEYS[1] = the member's hash; ARGV[1] = the committed version; ARGV[2] = key TTL
RAISE_FLOOR = """
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '-1')
if tonumber(ARGV[1]) > floor then redis.call('HSET', KEYS[1], 'floor', ARGV[1]) end
redis.call('HDEL', KEYS[1], 'view', 'version', 'at')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1]; ARGV[1] = version of the view; ARGV[2] = the view; ARGV[3] = when it was built
FILL = """
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '-1')
local have = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local version = tonumber(ARGV[1])
if version < floor or version <= have then return 0 end
redis.call('HSET', KEYS[1], 'view', ARGV[2], 'version', ARGV[1], 'at', ARGV[3])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], 86400) end
return 1
"""

FLOOR_TTL_SECONDS = 86_400  # the floor outlives any read in progress


def key(member_id: str) -> str:
    return f"bal:{{member:{member_id}}}"


class BalanceCache:
    def __init__(self, redis: Redis | None, ttl_seconds: int = 60) -> None:
        self.redis = redis
        self.ttl = ttl_seconds
        self._raise_floor = redis.register_script(RAISE_FLOOR) if redis else None
        self._fill = redis.register_script(FILL) if redis else None
        self._bypass_until = 0.0
        self.hits = self.misses = 0

    def _failed(self, error: Exception) -> None:
        log.warning("balance cache unavailable (%s): serving from PostgreSQL", error)
        self._bypass_until = float("inf")  # until Redis answers again, then one TTL more

    def _recovered(self) -> None:
        if self._bypass_until == float("inf"):
            self._bypass_until = time.monotonic() + self.ttl

    @property
    def usable(self) -> bool:
        return self.redis is not None and time.monotonic() >= self._bypass_until

    async def get(self, member_id: str) -> bytes | None:
        if self.redis is None:
            return None
        try:
            view, built_at = await self.redis.hmget(key(member_id), ["view", "at"])
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            return None
        self._recovered()
        if view is None or not self.usable or time.time() - float(built_at) > self.ttl:
            self.misses += 1
            return None
        self.hits += 1
        return view

    async def fill(self, member_id: str, version: int, view: bytes) -> bool:
        if not self.usable:
            return False
        try:
            return bool(
                await self._fill(keys=[key(member_id)], args=[version, view, int(time.time())])
            )
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
            return False

    async def balances_changed(self, versions: dict[str, int]) -> None:
        """The ledger's observer: called after commit with the new versions."""
        if self.redis is None:
            return
        try:
            for member_id, version in versions.items():
                await self._raise_floor(keys=[key(member_id)], args=[version, FLOOR_TTL_SECONDS])
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(error)
