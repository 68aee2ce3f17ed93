"""Card holders' cached balance reads over HTTP: `python -m loadtests http-balance`.

In a fresh database (created and dropped by `python -m loadtests`):

1. `--members` members, each with one earning (their last write);
2. the real service, `loyalty serve` with its defaults (one worker, or
   `--workers N`) as a subprocess, with a Redis of its own unless
   LOYALTY_BENCH_REDIS_URL / LOYALTY_REDIS_URL names one;
3. warm-up: every member reads their balance once (filling the cache), then
   once more, which must be answered from the cache (`X-Read-From: cache`);
4. cached: `--concurrency` (16) clients read random members' balances
   (`GET /v1/me/balance`, each with the member's own token) for `--duration`
   seconds, as fast as answers come back, on keep-alive connections;
5. the baseline, in the same run on the same server: `GET /health/live`
   (no database, no Redis) by the same clients for as long; the ratio;
6. `--idle` seconds (default 70) with no write, then the cached reads again:
   the cache must still hit, long after the last change of every balance.

Every cached read is still checked against PostgreSQL (the member's balance
row versions, one indexed statement: read-your-writes whatever Redis holds),
so the ratio to a route that touches nothing is the price of that check plus
authentication. The default member rate limit (10 requests per second per
member) is kept: with 2,000 members no one comes near it.
"""

import asyncio
import os
import random
import shutil
import tempfile
import uuid
from pathlib import Path

from cryptography.fernet import Fernet

from api.auth import mint_token
from api.cache import key
from api.settings import Settings
from ledger.commands import Earn
from ledger.database import create_engine
from ledger.service import LedgerService
from loadtests.http_bench import Clients, Service

PARTNER = "bench-balance"


async def _members_with_points(url: str, members: int) -> list[str]:
    """Members who each earned once (in parallel, 16 at a time)."""
    from loadtests.__main__ import enrol  # the module that runs us

    engine = create_engine(url, pool_size=16)
    try:
        run = uuid.uuid4().hex[:6]  # a Redis shared between runs holds no one else's views
        ids = [f"r{run}-{i}" for i in range(members)]
        await enrol(engine, [PARTNER], ids)
        ledger = LedgerService(engine)
        for start in range(0, members, 16):
            await asyncio.gather(
                *(
                    ledger.earn(Earn.simple(m, PARTNER, f"seed-{m}", 100))
                    for m in ids[start : start + 16]
                )
            )
    finally:
        await engine.dispose()
    return ids


def _balance_requests(port: int, member_secret: str, ids: list[str]) -> list[bytes]:
    """One raw keep-alive GET /v1/me/balance per member, with their token."""
    settings = Settings(member_jwt_secret=member_secret)
    host = f"127.0.0.1:{port}".encode()
    return [
        b"GET /v1/me/balance HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: Bearer "
        + mint_token(settings, m, ["member"], ttl_seconds=3600).encode() + b"\r\n\r\n"
        for m in ids
    ]  # fmt: skip


async def _forget(ids: list[str]) -> None:
    """Delete the bench's cached views from a Redis it was given (an embedded
    one goes with its directory)."""
    url = os.environ.get("LOYALTY_BENCH_REDIS_URL") or os.environ.get("LOYALTY_REDIS_URL")
    if not url:
        return
    import redis.asyncio as redis

    client = redis.from_url(url)
    try:
        for start in range(0, len(ids), 500):
            await client.delete(*(key(m) for m in ids[start : start + 500]))
    finally:
        await client.aclose()


def _hits(clients: Clients) -> str:
    total = sum(clients.sources.values())
    share = clients.sources["cache"] / total if total else 0.0
    return f"{share:.1%} from the cache ({dict(clients.sources)}), answers {dict(clients.statuses)}"


async def bench_http_balance(
    url: str, members: int, concurrency: int, duration: float, idle: float, workers: int | None
) -> None:
    from loadtests.__main__ import drive, report

    ids = await _members_with_points(url, members)
    tmp = Path(tempfile.mkdtemp(prefix="loyalty-http-balance-"))
    service = Service(url, Fernet.generate_key().decode(), workers, tmp)
    try:
        await service.wait_ready()
        print(
            f"http-balance benchmark: `loyalty serve` with {workers or 'the default number of'} "
            f"worker(s), {members} members, {concurrency} clients, {duration:.0f} s per phase"
        )
        reads = _balance_requests(service.port, service.member_secret, ids)
        live = f"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\n\r\n".encode()
        clients = Clients(service.port, concurrency)
        await clients.open()

        for _ in range(2):  # fill, then confirm
            clients.sources.clear()
            await asyncio.gather(*(clients.send(r) for r in reads))
        print(f"warm-up: the second read of every member: {_hits(clients)}")

        async def cached_phase(name: str) -> float:
            await clients.open()
            clients.statuses.clear()
            clients.sources.clear()
            count, elapsed, latencies = await drive(
                lambda i: clients.send(random.choice(reads)), concurrency, duration
            )
            rate = report(name, count, elapsed, latencies)
            print(f"  {_hits(clients)}")
            return rate

        cached = await cached_phase("cached balance read")

        await clients.open()
        clients.statuses.clear()
        count, elapsed, latencies = await drive(lambda i: clients.send(live), concurrency, duration)
        baseline = report("baseline: GET /health/live", count, elapsed, latencies)
        print(f"ratio cached balance / health: {cached / baseline:.2f}")

        print(f"no write for {idle:.0f} s ...")
        await asyncio.sleep(idle)
        later = await cached_phase(f"cached balance read, {idle:.0f} s on")
        print(f"ratio cached balance {idle:.0f} s on / health: {later / baseline:.2f}")
        await clients.close()
    finally:
        service.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        await _forget(ids)
