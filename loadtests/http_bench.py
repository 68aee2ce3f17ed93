"""Signed single earns over HTTP: `python -m loadtests http-earn`.

In a fresh database (created and dropped by `python -m loadtests`):

1. a partner whose contract allows 1,000,000 requests a second (the only
   setting changed from the defaults; the service's default is 100), an earn
   rule, a key, and `--members` members with a card each;
2. the real service, `loyalty serve` with its defaults (one worker, or
   `--workers N`) as a subprocess, with a Redis of its own unless
   LOYALTY_BENCH_REDIS_URL / LOYALTY_REDIS_URL names one;
3. peak: `--concurrency` (16) clients send signed earns for `--duration` (15)
   seconds, each on one keep-alive connection, as fast as answers come back.
   The driver is lean, since it shares the machine with the service: requests
   are signed before the clock starts and written as raw HTTP/1.1 on asyncio
   streams;
4. the baseline, in the same run on the same PostgreSQL: `pgbench -n -c 16
   -j 2 -T 15 -f loadtests/bare_transfer.sql` (a bare double-entry transfer:
   one entry, two postings, two balance updates, on plain tables of its own),
   and the ratio earn / transfer (skipped, and said so, without pgbench);
5. paced: the same clients at half of the measured peak rate, latency counted
   from when each request was due (so a queue behind a slow answer counts);
6. the service stopped, `ledger.verify` over the whole database.

Figures are earns/s and p50/p95/p99 latency; on a machine shared with other
work they move by tens of percent from run to run.
"""

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import text

from ledger.database import create_engine
from ledger.service import LedgerService
from ledger.verify import verify
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing import canonical_request
from partners.signing_keys import SecretBox

ROOT = Path(__file__).resolve().parents[1]
PARTNER = "bench-http"
PATH = "/v1/partner/earn"
BARE_TRANSFER = Path(__file__).with_name("bare_transfer.sql")


# -- the service ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """`loyalty serve` (as `python -m api.cli serve`, from this checkout) on
    the bench database, its output in a log file."""

    def __init__(self, url: str, secret_key: str, workers: int | None, tmp: Path) -> None:
        self.port = _free_port()
        self.log = tmp / "serve.log"
        self.member_secret = uuid.uuid4().hex * 2  # to mint card holders' tokens
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "LOYALTY_DATABASE_URL": url,
                "LOYALTY_SECRET_KEY": secret_key,
                "LOYALTY_JWT_SECRET": uuid.uuid4().hex * 2,
                "LOYALTY_MEMBER_JWT_SECRET": self.member_secret,
                "LOYALTY_DATA_DIR": str(tmp / "data"),  # its embedded Redis, if any
            }
        )
        redis_url = os.environ.get("LOYALTY_BENCH_REDIS_URL") or os.environ.get("LOYALTY_REDIS_URL")
        if redis_url:
            env["LOYALTY_REDIS_URL"] = redis_url
        args = [sys.executable, "-m", "api.cli", "serve", "--port", str(self.port)]
        if workers:
            args += ["--workers", str(workers)]
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the service ended:\n{self.log.read_text()}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"GET /health/ready HTTP/1.1\r\nHost: bench\r\n\r\n")
                status, _, _ = await _answer(reader)
                writer.close()
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise SystemExit(f"the service did not become ready:\n{self.log.read_text()}")

    def cpu_seconds(self) -> float:
        """CPU used so far by the service's processes (psutil, when installed)."""
        try:
            import psutil
        except ImportError:
            return float("nan")
        try:
            root = psutil.Process(self.process.pid)
            total = 0.0
            for process in [root, *root.children(recursive=True)]:
                times = process.cpu_times()
                total += times.user + times.system
            return total
        except psutil.Error:
            return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- the driver: pre-signed raw HTTP/1.1 on keep-alive connections --------------------


class Signer:
    """Whole signed requests as bytes, one per earn (a reference and an
    Idempotency-Key each), signed as partners/signing.py says."""

    def __init__(self, key_id: str, secret: str, port: int, cards: list[str]) -> None:
        self.key_id, self.secret, self.cards = key_id, secret.encode(), cards
        self.host = f"127.0.0.1:{port}".encode()
        self.run = uuid.uuid4().hex[:8]
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        reference = f"{self.run}-{self.count}"
        body = json.dumps(
            {
                "card_number": random.choice(self.cards),
                "reference": reference,
                "purchase": {
                    "currency": "EUR",
                    "lines": [
                        {"amount_minor": random.randrange(100, 20_000), "category": "groceries"}
                    ],
                },
            },
            separators=(",", ":"),
        ).encode()
        return self.request(PATH, body, reference)

    def request(self, path: str, body: bytes, idempotency_key: str) -> bytes:
        """A signed POST of `body` to `path`, as raw HTTP/1.1."""
        timestamp = str(int(time.time()))
        canonical = canonical_request("POST", path, "", timestamp, body, idempotency_key)
        signature = hmac.new(self.secret, canonical.encode(), hashlib.sha256).hexdigest()
        return b"".join(
            [
                b"POST ", path.encode(), b" HTTP/1.1\r\nHost: ", self.host,
                b"\r\nContent-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\nIdempotency-Key: ", idempotency_key.encode(),
                b"\r\nX-Loyalty-Key-Id: ", self.key_id.encode(),
                b"\r\nX-Loyalty-Timestamp: ", timestamp.encode(),
                b"\r\nX-Loyalty-Signature: ", signature.encode(),
                b"\r\n\r\n", body,
            ]
        )  # fmt: skip

    def presigned(self, count: int) -> Iterator[bytes]:
        """`count` requests signed now, then more signed as they are taken
        (a signature is valid for 300 s: sign right before each phase)."""
        ready = [self.next() for _ in range(count)]
        return itertools.chain(ready, iter(self.next, None))


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """Status, head and body of one answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    found = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if found is None:
        raise RuntimeError(f"no Content-Length in {head!r}")
    return status, head, await reader.readexactly(int(found.group(1)))


class Clients:
    """`count` keep-alive connections, each used by one request at a time; the
    statuses answered and where reads were answered from (`X-Read-From`)."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.idle: asyncio.Queue = asyncio.Queue()
        self.statuses: Counter[int] = Counter()
        self.sources: Counter[str] = Counter()

    async def open(self) -> None:
        """Fresh connections (the server closes idle ones after 5 s)."""
        await self.close()
        for _ in range(self.count):
            self.idle.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    async def send(self, request: bytes) -> None:
        reader, writer = await self.idle.get()
        try:
            writer.write(request)
            status, head, _ = await _answer(reader)
        except (OSError, asyncio.IncompleteReadError) as error:
            self.statuses[f"connection lost: {type(error).__name__}"] += 1  # type: ignore[index]
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        else:
            self.statuses[status] += 1
            source = re.search(rb"(?i)\r\nx-read-from:\s*(\w+)", head)
            if source is not None:
                self.sources[source.group(1).decode()] += 1
        finally:
            self.idle.put_nowait((reader, writer))

    async def close(self) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()


async def drive_paced(
    operation: Callable[[int], Awaitable[object]], concurrency: int, rate: float, duration: float
) -> tuple[int, float, list[float]]:
    """`operation(i)` due at `i / rate` seconds, by `concurrency` workers; the
    latency of each counts from when it was due, not from when a worker got
    to it (a request queued behind slow ones waited that long)."""
    latencies: list[float] = []
    counter = iter(range(10**9))
    started = time.perf_counter()
    total = int(rate * duration)

    async def worker() -> None:
        while (i := next(counter)) < total:
            due = started + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            await operation(i)
            latencies.append(time.perf_counter() - due)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - started, latencies


# -- set-up, baseline, the run ------------------------------------------------------


async def _programme(url: str, secret_key: str, members: int) -> tuple[str, str, list[str]]:
    """The partner (rate limit raised in its contract), its rule and key, and
    members with a card each; returns the key id, its secret and the cards."""
    from loadtests.__main__ import enrol  # the module that runs us

    engine = create_engine(url, pool_size=2)
    try:
        ids = [f"h{i}" for i in range(members)]
        await enrol(engine, [], ids)
        cards = [f"9{i:015d}" for i in range(members)]
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO cards (card_number, member_id) "
                    "SELECT unnest(CAST(:cards AS text[])), unnest(CAST(:ids AS text[]))"
                ),
                {"cards": cards, "ids": ids},
            )
        registry = Registry(engine, SecretBox(secret_key))
        await registry.create_partner(
            PartnerInput(
                PARTNER, "HTTP bench", return_window_days=14, requests_per_second=1_000_000
            ),
            "bench",
        )
        await Rulebook(LedgerService(engine)).create_earn_rule(
            PARTNER,
            EarnRuleInput(
                datetime(2024, 1, 1, tzinfo=UTC), "EUR", Decimal(1), qp_per_unit=Decimal("0.1")
            ),
            "bench",
        )
        key = await registry.create_key(PARTNER, "bench")
    finally:
        await engine.dispose()
    return key.key_id, key.secret, cards


def pgbench_baseline(url: str, accounts: int, concurrency: int, duration: float) -> float | None:
    """Transfers per second of `bare_transfer.sql`, or None without pgbench."""
    from api.embedded import _asyncpg_dsn

    if shutil.which("pgbench") is None:
        print("baseline skipped: pgbench is not installed (apt-get install postgresql-client)")
        return None
    command = [
        "pgbench", "-n", "-c", str(concurrency), "-j", "2", "-T", str(round(duration)),
        "-f", str(BARE_TRANSFER), "-D", f"accounts={accounts}", _asyncpg_dsn(url),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"tps = ([\d.]+)", done.stdout)
    if done.returncode != 0 or found is None:
        print(f"baseline failed: {' '.join(command[:-1])}\n{done.stdout}{done.stderr}")
        return None
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    print(
        f"{'baseline: pgbench bare transfer':<34} {float(found.group(1)):>17.0f}/s   "
        f"(pgbench -n -c {concurrency} -j 2 -T {round(duration)}"
        + (f"; latency average {latency.group(1)} ms)" if latency else ")")
    )
    return float(found.group(1))


async def _baseline_tables(url: str, accounts: int) -> None:
    from loadtests.__main__ import BASELINE_SCHEMA

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for statement in BASELINE_SCHEMA:
                await conn.execute(text(statement))
            await conn.execute(
                text(
                    "INSERT INTO bench_balances (account, balance) "
                    "SELECT 'member:b' || i || '\\:available', 0 FROM generate_series(1, :n) i"
                ),
                {"n": accounts},
            )
    finally:
        await engine.dispose()


async def bench_http_earn(
    url: str, members: int, concurrency: int, duration: float, workers: int | None
) -> None:
    from loadtests.__main__ import drive, report

    secret_key = Fernet.generate_key().decode()
    key_id, secret, cards = await _programme(url, secret_key, members)
    tmp = Path(tempfile.mkdtemp(prefix="loyalty-http-bench-"))
    service = Service(url, secret_key, workers, tmp)
    try:
        await service.wait_ready()
        print(
            f"http-earn benchmark: `loyalty serve` with {workers or 'the default number of'} "
            f"worker(s), {members} members, {concurrency} clients, {duration:.0f} s per phase"
        )
        signer = Signer(key_id, secret, service.port, cards)
        clients = Clients(service.port, concurrency)
        await clients.open()

        warm = signer.presigned(0)
        await drive(lambda i: clients.send(next(warm)), concurrency, 2.0)  # warm-up
        clients.statuses.clear()

        # Enough signed up front for ~2,500 earns/s; beyond that, signed as taken.
        requests = signer.presigned(int(2_500 * duration))
        cpu_before = service.cpu_seconds()
        count, elapsed, latencies = await drive(
            lambda i: clients.send(next(requests)), concurrency, duration
        )
        cpu = service.cpu_seconds() - cpu_before
        peak = report("signed earn over HTTP (peak)", count, elapsed, latencies)
        print(f"  answers: {dict(clients.statuses)}; service CPU {cpu / count * 1000:.2f} ms/earn")
        failed = sum(n for status, n in clients.statuses.items() if status != 201)

        await _baseline_tables(url, members)
        baseline = pgbench_baseline(url, members, concurrency, duration)
        if baseline:
            print(f"ratio earn / bare transfer: {peak / baseline:.3f}")

        await clients.open()
        clients.statuses.clear()
        rate = peak / 2
        paced = signer.presigned(int(rate * duration) + concurrency)
        count, elapsed, latencies = await drive_paced(
            lambda i: clients.send(next(paced)), concurrency, rate, duration
        )
        report(f"paced at {rate:.0f}/s (half of peak)", count, elapsed, latencies)
        print(f"  answers: {dict(clients.statuses)}")
        failed += sum(n for status, n in clients.statuses.items() if status != 201)
        await clients.close()
    finally:
        service.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        print(f"WARNING: {failed} earns were not answered 201 (see the answers above)")
    engine = create_engine(url, pool_size=1)
    try:
        check = await verify(engine)
        print("verify:", "clean" if check.clean else check.render())
    finally:
        await engine.dispose()
