"""Test infrastructure: a fresh PostgreSQL database per run (dropped afterwards)
and a Redis, from LOYALTY_TEST_DATABASE_URL / LOYALTY_TEST_REDIS_URL when set,
else from embedded servers started here."""

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, settings

from api.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    drop_database,
    ensure_database,
    with_database,
)
from api.migrate import upgrade
from ledger.database import create_engine
from ledger.expiry import RollingToQuarterEnd
from ledger.service import LedgerConfig, LedgerService

# `quick` by default; `pytest --hypothesis-profile=ci` for the deeper run CI makes.
settings.register_profile(
    "quick", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("quick")
    # A run stopped with SIGTERM (a CI timeout, `kill`) ends as Ctrl-C does:
    # fixtures are torn down, so the embedded servers it started (PostgreSQL
    # runs detached) and the databases it made do not outlive it.
    signal.signal(signal.SIGTERM, _interrupted)


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def pytest_collection_modifyitems(items):
    """Schemathesis gives every operation's test the function's node id (the
    operation is in the item's name only); pytest-xdist tells items apart by
    node id and would run one of them. Each gets the id its name gives
    (pytest 9 keeps a node's id in `_id`; no public way to set it)."""
    for item in items:
        if item.nodeid.rpartition("::")[2] != item.name:
            item._id = item.parent.id.child(item.name)
    # pytest-xdist hands modules out in collection order: the long ones first,
    # so that the two workers finish together (a stable sort keeps the rest).
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def server_url():
    url = os.environ.get("LOYALTY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    parent = Path(tempfile.mkdtemp(prefix="loyalty-test-pg-"))
    try:
        embedded = EmbeddedPostgres(parent / "pg", delete_on_stop=True)
        yield embedded.start()
        embedded.stop()
    finally:
        # Also when the server fails to start or stop, or the run is interrupted.
        shutil.rmtree(parent, ignore_errors=True)


@contextlib.contextmanager
def own_database(server_url: str, prefix: str) -> Iterator[str]:
    """A fresh database at the latest revision (`{prefix}_<random>`), dropped
    afterwards: for tests whose data is programme-wide (tiers, promotions, due
    jobs) and must not meet the other tests'."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(ensure_database(server_url, name))
    try:
        url = with_database(server_url, name)
        upgrade(url)
        yield url
    finally:
        asyncio.run(drop_database(server_url, name))


@pytest.fixture(scope="session")
def database_url(server_url):
    with own_database(server_url, "loyalty_test") as url:
        yield url


def own_redis_database(url: str) -> str:
    """The Redis database of this test process: the URL's own for a run in one
    process; under pytest-xdist, one per worker counting down from it among
    Redis' 16 (gw0 the URL's, gw1 the one below, 0 followed by 15), so that a
    test that flushes its Redis flushes no other worker's."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    parts = urlsplit(url)
    database = (int(parts.path.strip("/") or 0) - worker) % 16
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("LOYALTY_TEST_REDIS_URL")
    if url:
        yield own_redis_database(url)
        return
    directory = Path(tempfile.mkdtemp(prefix="loyalty-test-redis-"))
    embedded = EmbeddedRedis(directory)
    try:
        yield embedded.start()
    finally:
        embedded.remove()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
async def engine(database_url):
    engine = create_engine(database_url, pool_size=20)
    yield engine
    await engine.dispose()


@pytest.fixture
def ledger(engine) -> LedgerService:
    return LedgerService(engine, LedgerConfig(expiry_policy=RollingToQuarterEnd(36)))


@pytest.fixture
def new_id():
    """A fresh id (a reference, a key, a name); members and partners come from
    `new_member` and `new_partner`, which register them."""

    def make(prefix: str = "m") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def new_member(engine, new_id):
    """`await new_member()`: a freshly enrolled, active member's id."""
    from members.registry import MemberInput, Members
    from partners.programme import Programme

    ledger = LedgerService(engine)
    members = Members(ledger, Programme(ledger))

    async def make(prefix: str = "m") -> str:
        return (await members.enrol(MemberInput(id=new_id(prefix)), "staff:tests")).id

    return make


TEST_SECRET_KEY = "K4cpIiv3R3JWAXbq8kFn2o3VlqK8M2r0E9gr0Hr9lWQ="  # Fernet key for the tests


class SigningSeconds:
    """A clock for signing test requests that gives every call a second of its
    own: two identical requests signed in the same second are one signature,
    which the service refuses as a replay. Each call takes the latest second
    not taken yet, counting back from now (well within the 300 s tolerance
    unless hundreds of calls come within a few seconds)."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def __call__(self) -> float:
        now = int(time.time())
        self.taken = {second for second in self.taken if second > now - 300}
        second = now
        while second in self.taken:
            second -= 1
        self.taken.add(second)
        return float(second)


@pytest.fixture
def new_partner(engine, new_id):
    """`await new_partner(**terms)`: a freshly registered, active partner's id
    (EUR, contract terms as given, else the defaults)."""
    from partners.registry import PartnerInput, Registry
    from partners.signing_keys import SecretBox

    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))

    async def make(prefix: str = "p", **terms) -> str:
        partner_id = new_id(prefix)
        await registry.create_partner(
            PartnerInput(id=partner_id, name=partner_id, **terms), "staff:tests"
        )
        return partner_id

    return make


class Clock:
    """A clock tests can move forward (holds, pending points and lots expire)."""

    def __init__(self) -> None:
        from datetime import UTC, datetime

        self.now = datetime.now(UTC)

    def __call__(self):
        return self.now

    def advance(self, **delta) -> None:
        from datetime import timedelta

        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed_ledger(engine, clock) -> LedgerService:
    return LedgerService(engine, LedgerConfig(expiry_policy=RollingToQuarterEnd(36)), clock=clock)


@pytest.fixture
async def assert_clean(engine):
    """Call at the end of a test: the whole ledger verifies clean."""
    from ledger.verify import verify

    async def check() -> None:
        report = await verify(engine)
        assert report.clean, report.render()

    return check


async def put_programme_tiers(engine) -> None:
    """Silver (1,000 QP, x1.25) and gold (3,000 QP, x1.5, expiry-protected)."""
    from decimal import Decimal

    from partners.rule_inputs import TierInput
    from partners.rulebook import Rulebook

    rules = Rulebook(LedgerService(engine))
    await rules.put_tier(
        "silver", TierInput("Silver", 1, 1000, Decimal("1.25"), Decimal("0.05")), "staff:tests"
    )
    await rules.put_tier(
        "gold",
        TierInput("Gold", 2, 3000, Decimal("1.5"), Decimal("0.10"), expiry_protected=True),
        "staff:tests",
    )


@pytest.fixture(scope="session")
async def programme_tiers(engine):
    """The programme tiers in the session's database, once per run."""
    await put_programme_tiers(engine)
