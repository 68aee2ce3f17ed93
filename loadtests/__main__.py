"""Benchmarks with an asyncio driver: `python -m loadtests earn`.

Each run creates a fresh database on the server, measures the ledger's `earn`
(with idempotency keys, lots and slotted partner balances) and, in the same
run on the same PostgreSQL, a baseline: a bare SQL double-entry transfer (one
entry row, two postings, two balance updates). It prints rates, latency
percentiles and the ratio against the baseline, then drops the database.
"""

import argparse
import asyncio
import itertools
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import text

from api.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    drop_database,
    ensure_database,
    with_database,
)
from api.migrate import upgrade
from ledger.commands import Earn
from ledger.database import create_engine
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from ledger.verify import verify

BASELINE_SCHEMA = (
    "CREATE TABLE bench_entries (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "kind text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE bench_postings (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "entry_id bigint NOT NULL REFERENCES bench_entries, account text NOT NULL, "
    "amount bigint NOT NULL)",
    "CREATE TABLE bench_balances (account text PRIMARY KEY, balance bigint NOT NULL)",
)


async def drive(
    operation: Callable[[int], Awaitable[object]], concurrency: int, duration: float
) -> tuple[int, float, list[float]]:
    """Run `operation(i)` from `concurrency` workers for `duration` seconds."""
    latencies: list[float] = []
    counter = iter(range(10**9))
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await operation(next(counter))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - started, latencies


def report(name: str, count: int, elapsed: float, latencies: list[float]) -> float:
    rate = count / elapsed
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(
        f"{name:<34} {count:>7} ops {rate:>9.0f}/s   p50 {cuts[49] * 1000:6.2f} ms"
        f"   p95 {cuts[94] * 1000:6.2f} ms   p99 {cuts[98] * 1000:6.2f} ms"
    )
    return rate


async def enrol(engine, partners: list[str], members: list[str]) -> None:
    """The parties a benchmark posts to: partners registered through the
    registry, members enrolled in bulk (one statement, as a member import would)."""
    from cryptography.fernet import Fernet

    from partners.registry import PartnerInput, Registry
    from partners.signing_keys import SecretBox

    registry = Registry(engine, SecretBox(Fernet.generate_key()))
    for partner in partners:
        await registry.create_partner(PartnerInput(partner, partner), "bench")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO members (id, enrolled_by) SELECT unnest(CAST(:ids AS text[])), 'bench'"
            ),
            {"ids": members},
        )


async def bench_earn(url: str, members: int, concurrency: int, duration: float) -> None:
    engine = create_engine(url, pool_size=concurrency)
    ledger = LedgerService(engine)
    partner = "bench-partner"
    run = uuid.uuid4().hex[:6]
    references = itertools.count()  # unique across every phase of the run

    # The baseline's own plain tables: no triggers, lots, idempotency or slots.
    async with engine.begin() as conn:
        for statement in BASELINE_SCHEMA:
            await conn.execute(text(statement))
    await enrol(engine, [partner], [f"m{i}" for i in range(members)])

    async def bare_transfer(i: int) -> None:
        member = f"member:b{random.randrange(members)}:available"
        async with engine.begin() as conn:
            entry = (
                await conn.execute(
                    text("INSERT INTO bench_entries (kind) VALUES ('earn') RETURNING id")
                )
            ).scalar_one()
            await conn.execute(
                text(
                    "INSERT INTO bench_postings (entry_id, account, amount) VALUES "
                    "(:e, :member, 10), (:e, :partner, -10)"
                ),
                {"e": entry, "member": member, "partner": f"partner:{partner}:issued"},
            )
            await conn.execute(
                text(
                    "INSERT INTO bench_balances (account, balance) VALUES "
                    "(:member, 10), (:partner, -10) ON CONFLICT (account) DO UPDATE "
                    "SET balance = bench_balances.balance + EXCLUDED.balance"
                ),
                {"member": member, "partner": f"partner:{partner}:issued"},
            )

    async def earn(i: int) -> None:
        member = f"m{random.randrange(members)}"
        reference = f"{run}-{next(references)}"
        await ledger.earn(
            Earn.simple(member, partner, reference, 10, 1),
            IdempotencyKey(f"partner:{partner}", reference),
        )

    print(f"earn benchmark: {members} members, {concurrency} concurrent, {duration:.0f} s each")
    await drive(bare_transfer, concurrency, 1.0)  # warm-up: connections, plans
    baseline = report(
        "baseline: bare SQL double-entry", *await drive(bare_transfer, concurrency, duration)
    )
    rate = report("ledger earn (idempotent, lots)", *await drive(earn, concurrency, duration))
    print(f"ratio earn / baseline: {rate / baseline:.2f}")
    single = report("ledger earn, 1 connection", *await drive(earn, 1, duration / 2))
    print(f"single-connection earn rate: {single:.0f}/s")
    check = await verify(engine)
    print("verify:", "clean" if check.clean else check.render())
    await engine.dispose()


async def bench_balance(
    url: str, redis_url: str, members: int, concurrency: int, duration: float
) -> None:
    """The card holder's balance read: built from PostgreSQL vs served from Redis
    (each cached read checked against PostgreSQL with one indexed statement)."""
    import msgspec
    import redis.asyncio as redis

    from api.cache import BalanceCache, key, token_engine
    from partners.programme import Programme

    engine = create_engine(url, pool_size=concurrency)
    client = redis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
    ledger = LedgerService(engine)
    programme = Programme(ledger)
    cache = BalanceCache(
        client, programme, token_engine(url, pool_size=concurrency), ttl_seconds=3600
    )
    run = uuid.uuid4().hex[:8]
    ids = [f"bal-{run}-{i}" for i in range(members)]
    keys = [key(m) for m in ids]
    try:
        # Inside the try: whatever happens from here, the keys this run may
        # have written go (the cache's own TTL is an hour; nothing is left).
        print(f"seeding {members} members (one earning each)...", flush=True)
        await enrol(engine, ["bench"], ids)
        started = last = time.perf_counter()
        for start in range(0, members, 200):
            await asyncio.gather(
                *(
                    ledger.earn(Earn.simple(m, "bench", f"seed-{m}", 100))
                    for m in ids[start : start + 200]
                )
            )
            done = min(start + 200, members)
            if time.perf_counter() - last >= 2 or done == members:
                last = time.perf_counter()
                print(f"  seeded {done}/{members} ({last - started:.0f} s)", flush=True)

        async def uncached(i: int) -> None:
            view, _, _ = await programme.balance_view(random.choice(ids))
            msgspec.json.encode(view)

        async def cached(i: int) -> None:
            await cache.balance(random.choice(ids))

        print(
            f"balance read benchmark: {members} members, {concurrency} concurrent, "
            f"{duration:.0f} s each"
        )
        # Warm-up, however slow the machine: every member's view read once
        # (a miss fills it), then read again until a whole pass hits, and every
        # key confirmed in Redis; then the uncached path's connections and plans.
        print("warming the cache: every member's view into Redis...", flush=True)
        for attempt in range(1, 6):
            hits_before = cache.hits
            for start in range(0, members, concurrency):
                await asyncio.gather(*(cache.balance(m) for m in ids[start : start + concurrency]))
            if attempt > 1 and cache.hits - hits_before == members:
                break
        else:
            raise SystemExit("the cache does not hit: is Redis reachable?")
        stored = sum([await client.exists(*keys[i : i + 500]) for i in range(0, members, 500)])
        if stored != members:
            raise SystemExit(f"only {stored} of {members} views are in Redis after the warm-up")
        print(f"  {members} views cached, a full pass of reads hit", flush=True)
        await drive(uncached, concurrency, min(duration, 1.0))

        baseline = report(
            "uncached: view from PostgreSQL", *await drive(uncached, concurrency, duration)
        )
        hits_before, misses_before = cache.hits, cache.misses
        rate = report("cached: Redis + token check", *await drive(cached, concurrency, duration))
        print(
            f"ratio cached / uncached: {rate / baseline:.1f}   (cached phase: "
            f"{cache.hits - hits_before} hits, {cache.misses - misses_before} misses)"
        )

        async def redis_only(i: int) -> None:
            await client.hmget(key(random.choice(ids)), ["view", "versions", "tier", "at"])

        async def token_only(i: int) -> None:
            await cache.current_token(random.choice(ids))

        # Where a cached read's time goes: its two halves, each on its own.
        report("  of which: the Redis read alone", *await drive(redis_only, concurrency, duration))
        report("  of which: the token check alone", *await drive(token_only, concurrency, duration))
    finally:
        try:
            for start in range(0, members, 500):  # leave nothing behind in that Redis
                await client.delete(*keys[start : start + 500])
        except Exception as error:  # Redis gone: say which keys may be left
            print(f"could not delete the bench's keys ({error}): bal:{{member:bal-{run}-*}}")
        finally:
            await client.aclose()
            await cache.aclose()
            await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    earn = sub.add_parser("earn", help="earn rate against a bare SQL double-entry baseline")
    earn.add_argument("--members", type=int, default=10_000)
    earn.add_argument("--concurrency", type=int, default=16)
    earn.add_argument("--duration", type=float, default=10.0)
    balance = sub.add_parser("balance", help="balance reads: Redis cache against PostgreSQL")
    balance.add_argument("--members", type=int, default=2_000)
    balance.add_argument("--concurrency", type=int, default=16)
    balance.add_argument("--duration", type=float, default=10.0)
    expire = sub.add_parser("expire", help="expire-points against bare INSERT ... SELECT + UPDATE")
    expire.add_argument("--members", type=int, default=100_000, help="the issue's figure: 1000000")
    release = sub.add_parser(
        "release", help="release-pending against bare INSERT ... SELECT + UPDATE"
    )
    release.add_argument("--members", type=int, default=100_000, help="the issue's figure: 1000000")
    requalify = sub.add_parser(
        "requalify", help="requalify-tiers against bare INSERT ... SELECT + UPDATE"
    )
    requalify.add_argument(
        "--members", type=int, default=100_000, help="the issue's figure: 1000000"
    )
    batch = sub.add_parser("batch", help="batch earn against COPY of the same rows")
    batch.add_argument("--members", type=int, default=10_000)
    batch.add_argument("--batch", type=int, default=1_000)
    batch.add_argument("--batches", type=int, default=10)
    batch.add_argument(
        "--clients",
        type=int,
        default=1,
        help="partner clients sending batches at once, each its own card holders",
    )
    batch.add_argument(
        "--http", action="store_true", help="through the signed endpoint of `loyalty serve`"
    )
    batch.add_argument("--workers", type=int, default=None, help="with --http; default: serve's")
    http_earn = sub.add_parser(
        "http-earn", help="signed earns over HTTP against a pgbench bare transfer"
    )
    http_earn.add_argument("--members", type=int, default=10_000)
    http_earn.add_argument("--concurrency", type=int, default=16)
    http_earn.add_argument("--duration", type=float, default=15.0)
    http_earn.add_argument("--workers", type=int, default=None, help="default: serve's own")
    http_balance = sub.add_parser(
        "http-balance", help="cached balance reads over HTTP against GET /health/live"
    )
    http_balance.add_argument("--members", type=int, default=2_000)
    http_balance.add_argument("--concurrency", type=int, default=16)
    http_balance.add_argument("--duration", type=float, default=15.0)
    http_balance.add_argument("--idle", type=float, default=70.0, help="seconds without a write")
    http_balance.add_argument("--workers", type=int, default=None, help="default: serve's own")
    imports = sub.add_parser("import", help="partner file import against COPY of the same rows")
    imports.add_argument("--rows", type=int, default=1_000_000)
    imports.add_argument("--members", type=int, default=10_000)
    imports.add_argument("--chunk-size", type=int, default=1_000)
    imports.add_argument("--lanes", type=int, default=None, help="default: the command's")
    exports = sub.add_parser("export", help="journal export against COPY of the same rows")
    exports.add_argument("--postings", type=int, default=1_000_000)
    exports.add_argument("--members", type=int, default=10_000)
    insight = sub.add_parser(
        "insights", help="insights query times on the generated demo against a bare scan"
    )
    insight.add_argument("--members", type=int, default=20_000)
    insight.add_argument("--months", type=int, default=18)
    insight.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    server = os.environ.get("LOYALTY_BENCH_DATABASE_URL") or os.environ.get("LOYALTY_DATABASE_URL")
    embedded = None
    scratch = None  # the embedded servers' temporary directory, removed at the end
    if not server:
        import tempfile
        from pathlib import Path

        scratch = Path(tempfile.mkdtemp(prefix="loyalty-bench-"))
        embedded = EmbeddedPostgres(scratch / "pg", delete_on_stop=True)
        server = embedded.start()
    name = f"loyalty_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_database(server, name))
    url = with_database(server, name)
    redis_server = None
    try:
        upgrade(url)
        if args.scenario == "earn":
            asyncio.run(bench_earn(url, args.members, args.concurrency, args.duration))
        elif args.scenario == "http-earn":
            from loadtests.http_bench import bench_http_earn

            asyncio.run(
                bench_http_earn(url, args.members, args.concurrency, args.duration, args.workers)
            )
        elif args.scenario == "http-balance":
            from loadtests.http_balance_bench import bench_http_balance

            asyncio.run(
                bench_http_balance(
                    url, args.members, args.concurrency, args.duration, args.idle, args.workers
                )
            )
        elif args.scenario == "batch":
            from loadtests.batch_bench import bench_batch, bench_http_batch

            if args.http:
                asyncio.run(
                    bench_http_batch(
                        url, args.members, args.batch, args.batches, args.clients, args.workers
                    )
                )
            else:
                asyncio.run(bench_batch(url, args.members, args.batch, args.batches, args.clients))
        elif args.scenario == "import":
            from loadtests.import_bench import bench_import

            asyncio.run(bench_import(url, args.rows, args.members, args.chunk_size, args.lanes))
        elif args.scenario == "export":
            from loadtests.export_bench import bench_export

            asyncio.run(bench_export(url, args.postings, args.members))
        elif args.scenario == "insights":
            from loadtests.insights_bench import bench_insights

            asyncio.run(bench_insights(url, args.members, args.months, args.seed))
        elif args.scenario in ("expire", "release", "requalify"):
            from loadtests.jobs_bench import JOBS, bench_job

            asyncio.run(bench_job(url, args.members, JOBS[args.scenario]))
        else:
            redis_url = os.environ.get("LOYALTY_BENCH_REDIS_URL") or os.environ.get(
                "LOYALTY_REDIS_URL"
            )
            if not redis_url:
                import tempfile
                from pathlib import Path

                redis_server = EmbeddedRedis(Path(tempfile.mkdtemp()))
                redis_url = redis_server.start()
            asyncio.run(
                bench_balance(url, redis_url, args.members, args.concurrency, args.duration)
            )
    finally:
        asyncio.run(drop_database(server, name))
        if embedded:
            embedded.stop()
        if redis_server:
            redis_server.remove()
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
