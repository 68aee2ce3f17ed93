"""Read-your-writes for card holders across worker processes, whatever Redis
does: the real service (`loyalty serve --workers 2`, production defaults) on
the test database and a Redis of the test's own, written through one worker
and read through the others. The worker a request lands on cannot be chosen,
so every read is a new connection and there are many of them; every single
one must show the write.

And embedded mode: a second `loyalty serve` on the same data directory joins
the PostgreSQL and Redis already running there, and leaves them (and their
files) to the process that started them."""

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest
import redis.asyncio as redis

from api.embedded import EmbeddedPostgres, EmbeddedRedis
from ledger.commands import Adjust
from ledger.service import LedgerConfig, LedgerService
from partners.registry import Registry
from partners.signing_keys import SecretBox
from tests.api.conftest import SECRET_KEY
from tests.api.served import Service, free_port, loyalty, output, stop, wait_ready


@pytest.fixture(scope="module")
async def other_instance(database_url, api_settings, redis_url):
    """A second instance on the same database, with a Redis of its own."""
    tmp = Path(tempfile.mkdtemp(prefix="loyalty-instance-"))
    running = Service(database_url, api_settings, tmp, redis_url=redis_url)
    try:
        await wait_ready(running.base, running.process, running.log)
        yield running
    finally:
        running.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def pair(engine, new_member):
    """A member with 1,000 points (posted by the ledger directly, as a job or
    a partner would) and another member's card to send points to."""
    registry = Registry(engine, SecretBox(SECRET_KEY))
    sender, receiver = await new_member(), await new_member()
    receiver_card = str(uuid.uuid4().int)[:16]
    await registry.issue_card(sender, str(uuid.uuid4().int)[:16], "staff:tests")
    await registry.issue_card(receiver, receiver_card, "staff:tests")
    await LedgerService(engine, LedgerConfig()).adjust(Adjust(sender, 1000, "seed"), "staff:t")
    return sender, receiver, receiver_card


async def test_the_service_runs_two_workers(service):
    for _ in range(50):
        if len(service.workers()) >= 2:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"workers: {service.workers()}")


async def test_a_write_shows_in_every_read_from_every_worker(service, pair, engine):
    sender, receiver, receiver_card = pair
    await service.warm(sender, 1000)
    await service.warm(receiver, 0)
    receipt = await service.transfer(sender, receiver_card, 300)
    assert receipt["balances"]["available"] == 700
    assert {available for _, available in await service.reads(sender)} == {700}
    assert {available for _, available in await service.reads(receiver)} == {300}
    # ... and the cache is back to hitting with the new view.
    assert (await service.reads(sender, 3))[-1] == ("hit", 700)
    # A write from outside the service (a CLI job, another instance) shows as well.
    await LedgerService(engine, LedgerConfig()).adjust(Adjust(sender, 25, "job"), "staff:t")
    assert {available for _, available in await service.reads(sender)} == {725}


async def test_a_write_through_another_instance_with_another_redis(service, other_instance, pair):
    sender, receiver, receiver_card = pair
    for instance in (service, other_instance):
        await instance.warm(sender, 1000)
        await instance.warm(receiver, 0)
    await other_instance.transfer(sender, receiver_card, 100)
    assert {available for _, available in await service.reads(sender)} == {900}
    assert {available for _, available in await service.reads(receiver)} == {100}
    await service.transfer(sender, receiver_card, 100)
    assert {available for _, available in await other_instance.reads(sender)} == {800}
    assert {available for _, available in await other_instance.reads(receiver)} == {200}


async def test_redis_connections_dropped_right_after_the_write(service, pair):
    sender, _, receiver_card = pair
    await service.warm(sender, 1000)
    await service.transfer(sender, receiver_card, 200)
    admin = redis.from_url(service.redis_url)
    try:
        assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
    finally:
        await admin.aclose()
    assert {available for _, available in await service.reads(sender)} == {800}
    assert (await service.reads(sender, 3))[-1] == ("hit", 800)


async def test_redis_stopped_during_the_write_and_back_with_the_old_view(service, pair):
    sender, _, receiver_card = pair
    await service.warm(sender, 1000)
    service.redis_server.stop()  # saves its data, the view of 1,000 included
    try:
        await service.transfer(sender, receiver_card, 400)
    finally:
        service.redis_server.start(service.redis_port)
    assert await service.cached_available(sender) == 1000  # the stale view is back
    assert {available for _, available in await service.reads(sender)} == {600}
    assert (await service.reads(sender, 3))[-1] == ("hit", 600)


async def test_redis_restarted_from_a_stale_snapshot(service, pair):
    sender, _, receiver_card = pair
    await service.warm(sender, 1000)
    admin = redis.from_url(service.redis_url)
    try:
        await admin.save()  # the snapshot holds the view of 1,000
    finally:
        await admin.aclose()
    await service.transfer(sender, receiver_card, 500)
    await service.warm(sender, 500)  # Redis now holds the new view...
    service.redis_server.process.send_signal(signal.SIGKILL)  # ...and dies without saving it
    service.redis_server.process.wait()
    service.redis_server.start(service.redis_port)  # back from the old snapshot
    assert await service.cached_available(sender) == 1000
    assert {available for _, available in await service.reads(sender)} == {500}
    assert (await service.reads(sender, 3))[-1] == ("hit", 500)


async def test_workers_go_with_a_supervisor_killed_outright(database_url, api_settings, tmp_path):
    """`kill -9` of `loyalty serve --workers 2`: its workers stop too (they
    would go on holding the port, and a new serve could not listen there)."""
    killed = Service(database_url, api_settings, tmp_path)
    try:
        await wait_ready(killed.base, killed.process, killed.log)
        for _ in range(50):
            workers = killed.workers()
            if len(workers) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(workers) == 2, workers
        killed.process.kill()
        killed.process.wait()
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, alive
        with socket.socket() as probe:  # the port is free for the next serve
            probe.bind(("127.0.0.1", killed.port))
    finally:
        killed.close()


def test_embedded_servers_left_by_a_process_killed_outright_go_with_the_next_one(tmp_path):
    """A process that started the embedded PostgreSQL and Redis dies by
    `kill -9` (no exit hook runs): the next process on the data directory
    joins both, and on its exit stops them, as their starter would have."""
    data = tmp_path / "data"
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from api.embedded import EmbeddedPostgres, EmbeddedRedis\n"
            "data = Path(sys.argv[1])\n"
            "EmbeddedPostgres(data / 'postgres').start_or_join()\n"
            "EmbeddedRedis(data / 'redis').start_or_join()\n"
            "print('up', flush=True)\n"
            "time.sleep(600)\n",
            str(data.resolve()),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert starter.stdout.readline().strip() == b"up"
    finally:
        starter.kill()
        starter.wait()
    postgres = EmbeddedPostgres(data.resolve() / "postgres")
    redis_server = EmbeddedRedis(data.resolve() / "redis")
    assert postgres.running() and redis_server.running_url() is not None  # left running
    postgres.start_or_join()
    _, started = redis_server.start_or_join()
    assert not started
    redis_server.stop()
    postgres.stop()
    assert redis_server.running_url() is None and not postgres.running()
    assert not (redis_server.data_dir / "url").exists()


async def test_a_second_serve_joins_the_embedded_servers_and_leaves_them_running(tmp_path):
    """The first process (this test) started PostgreSQL and Redis in the data
    directory; `loyalty serve` there uses both, and its exit stops neither
    nor removes the Redis URL file."""
    data = tmp_path / "data"
    postgres = EmbeddedPostgres(data.resolve() / "postgres")
    owner = EmbeddedRedis(data.resolve() / "redis")
    postgres.start()
    try:
        url, started = owner.start_or_join()
        assert started
        assert EmbeddedRedis(owner.data_dir).start_or_join() == (url, False)
        port, log = free_port(), tmp_path / "serve.log"
        second = loyalty(
            "serve", env={"LOYALTY_DATA_DIR": str(data), "LOYALTY_PORT": str(port)}, log=log
        )
        try:
            ready = await wait_ready(f"http://127.0.0.1:{port}", second, log)
        finally:
            stop(second)
        text = output(log)
        assert ready["redis"] == "ok" and ready["postgres"] == "ok"
        assert "using embedded PostgreSQL" in text and "(already running)" in text
        assert "using embedded Redis" in text
        assert "starting embedded" not in text, text
        assert (owner.data_dir / "url").read_text() == url
        assert owner.running_url() == url and postgres.running()
    finally:
        owner.stop()
        postgres.stop()
    assert not (owner.data_dir / "url").exists()
    assert not postgres.running()
