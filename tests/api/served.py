"""The real service as a subprocess: `loyalty serve --workers 2` on the test
database and a Redis of its own, with helpers to read, write and look at its
worker processes. Used by the tests that need several workers. Also the app
in a thread of the test process on a real port (`app_in_thread`), for clients
that need a socket (a browser, Schemathesis)."""

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import psutil
import redis.asyncio as redis
import uvicorn

from api.auth import mint_token
from api.cache import key
from api.embedded import EmbeddedRedis
from tests.api.conftest import MEMBER_SECRET, SECRET, SECRET_KEY

READS = 20
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def app_in_thread(app, name: str) -> Iterator[str]:
    """`app` under uvicorn on a free port, in a thread with its own loop; the
    base URL while it runs."""
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_config=None, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start the app")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def loyalty(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")},
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def output(log: Path) -> str:
    return log.read_text()


async def wait_ready(base: str, process: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, output(log)
            try:
                response = await client.get("/health/ready")
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"the service did not become ready:\n{output(log)}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()


class Service:
    """`loyalty serve --workers 2` on the test database and a private Redis."""

    def __init__(
        self, database_url: str, api_settings, tmp: Path, redis_url: str | None = None
    ) -> None:
        self.redis_server = EmbeddedRedis(tmp / "redis")
        self.redis_url = redis_url or self.redis_server.start()
        self.redis_port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api_settings = api_settings
        self.log = tmp / "serve.log"
        self.process = loyalty(
            "serve",
            "--workers",
            "2",
            env={
                "LOYALTY_DATABASE_URL": database_url,
                "LOYALTY_REDIS_URL": self.redis_url,
                "LOYALTY_JWT_SECRET": SECRET,
                "LOYALTY_MEMBER_JWT_SECRET": MEMBER_SECRET,
                "LOYALTY_MEMBER_RATE_LIMIT": "1000",
                "LOYALTY_SECRET_KEY": SECRET_KEY,
                "LOYALTY_PORT": str(self.port),
                "LOYALTY_DATA_DIR": str(tmp / "data"),
            },
            log=self.log,
        )

    def headers(self, member_id: str) -> dict[str, str]:
        jwt = mint_token(self.api_settings, member_id, ["member"])
        return {"Authorization": f"Bearer {jwt}", "Connection": "close"}

    async def read(self, member_id: str) -> tuple[str, int]:
        """One balance read on a connection of its own: (X-Cache, available)."""
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.base, limits=limits, timeout=10) as client:
            response = await client.get("/v1/me/balance", headers=self.headers(member_id))
        assert response.status_code == 200, response.text
        return response.headers["x-cache"], response.json()["available"]

    async def reads(self, member_id: str, count: int = READS) -> list[tuple[str, int]]:
        return [await self.read(member_id) for _ in range(count)]

    async def transfer(self, sender: str, receiver_card: str, amount: int) -> dict:
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as client:
            response = await client.post(
                "/v1/me/transfers",
                headers={**self.headers(sender), "Idempotency-Key": uuid.uuid4().hex},
                json={"to_card_number": receiver_card, "amount": amount},
            )
        assert response.status_code == 201, response.text
        return response.json()

    async def warm(self, member_id: str, available: int) -> None:
        """Read until the view comes from Redis (the cache is shared by the workers)."""
        for _ in range(50):
            source, seen = await self.read(member_id)
            assert seen == available
            if source == "hit":
                return
        raise AssertionError("the cache never hit")

    async def cached_available(self, member_id: str) -> int | None:
        client = redis.from_url(self.redis_url)
        try:
            view = await client.hget(key(member_id), "view")
        finally:
            await client.aclose()
        return None if view is None else msgspec.json.decode(view)["available"]

    def workers(self) -> list[psutil.Process]:
        """uvicorn's worker processes (spawned by multiprocessing)."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        return [child for child in children if "spawn_main" in " ".join(child.cmdline())]

    def close(self) -> None:
        stop(self.process)
        self.redis_server.remove()
