"""Dropped database connections without a pool pre-ping: PostgreSQL restarted
between two signed earns, sessions killed under idle pooled connections, a
connection lost inside a transaction (run again on a fresh connection) and
one lost during COMMIT (never run again: it may have committed)."""

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import event, exc, text

from api.app import create_app
from ledger.database import _replace_closed, create_engine, is_unavailable
from ledger.service import LedgerService
from partners.client import PartnerAuth
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.api.conftest import SECRET_KEY
from tests.api.test_database_unavailable import (  # noqa: F401  (fixture)
    LogRecords,
    enrol,
    private_postgres,
)


@dataclasses.dataclass
class PrivateShop:
    auth: PartnerAuth
    card: str


async def open_shop(url: str) -> PrivateShop:
    """A partner with an earn rule and a key, and a member with a card, on `url`."""
    await enrol(url, "dropped-1")
    engine = create_engine(url)
    try:
        registry = Registry(engine, SecretBox(SECRET_KEY))
        await registry.create_partner(PartnerInput("drop-shop", "Drop shop"), "staff:tests")
        await Rulebook(LedgerService(engine)).create_earn_rule(
            "drop-shop",
            EarnRuleInput(datetime(2024, 1, 1, tzinfo=UTC), "EUR", Decimal(1)),
            "staff:tests",
        )
        card = str(uuid.uuid4().int)[:16]
        await registry.issue_card("dropped-1", card, "staff:tests")
        key = await registry.create_key("drop-shop", "staff:tests")
    finally:
        await engine.dispose()
    return PrivateShop(PartnerAuth(key.key_id, key.secret), card)


async def earn(client, shop: PrivateShop, reference: str):
    return await client.post(
        "/v1/partner/earn",
        json={
            "card_number": shop.card,
            "reference": reference,
            "purchase": {
                "currency": "EUR",
                "lines": [{"amount_minor": 1000, "category": "groceries"}],
            },
        },
        headers={"Idempotency-Key": reference},
        auth=shop.auth,
    )


def unavailable(log: LogRecords) -> list[str]:
    return [
        r.getMessage() for r in log.records if r.getMessage().startswith("database unavailable")
    ]


@pytest.fixture
async def private_app(api_settings, private_postgres):  # noqa: F811
    server, url = private_postgres
    shop = await open_shop(url)
    settings = dataclasses.replace(
        api_settings, database_url=url, redis_url=None, db_pool_timeout_seconds=2
    )
    async with AsyncTestClient(create_app(settings)) as client:
        yield client, server, url, shop


async def test_postgres_restarted_between_two_signed_earns(private_app):
    """No pre-ping: the second earn after a restart succeeds on its first try
    (the pooled connections the server closed are replaced on checkout)."""
    client, server, url, shop = private_app
    pool = client.app.state.engine.sync_engine.pool
    assert pool._pre_ping is False
    first = await earn(client, shop, "restart-1")
    assert first.status_code == 201, first.text

    await asyncio.to_thread(server.stop)
    assert await asyncio.to_thread(server.start) == url
    with LogRecords() as log:
        second = await earn(client, shop, "restart-2")
    assert second.status_code == 201, second.text
    assert unavailable(log) == []
    balances = second.json()["balances"]
    assert balances["available"] + balances["pending"] == 20  # both earns, once each


async def test_sessions_killed_under_idle_pooled_connections(private_app):
    """Even when the checkout cannot tell (here: its check switched off), a
    dead pooled connection costs a retry of the statement, not a 503."""
    client, _, url, shop = private_app
    engine = client.app.state.engine
    first = await earn(client, shop, "killed-1")
    assert first.status_code == 201, first.text
    event.remove(engine.sync_engine.pool, "checkout", _replace_closed)
    try:
        killer = create_engine(url, pool_size=1)
        try:
            async with killer.connect() as conn:
                killed = await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
        finally:
            await killer.dispose()
        assert killed >= 1
        await asyncio.sleep(0.2)  # the closes arrive; nothing looks at them
        with LogRecords() as log:
            second = await earn(client, shop, "killed-2")
        assert second.status_code == 201, second.text
        assert unavailable(log) == []
        assert any("run again on a fresh connection" in r.getMessage() for r in log.records)
    finally:
        event.listen(engine.sync_engine.pool, "checkout", _replace_closed)


async def test_a_transaction_that_loses_its_connection_runs_again(database_url):
    """Lost before the COMMIT: the server rolled it back, so it runs once more
    on a fresh connection."""
    ledger = LedgerService(create_engine(database_url, pool_size=1))
    runs = 0

    async def body(conn):
        nonlocal runs
        runs += 1
        if runs == 1:
            await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return await conn.scalar(text("SELECT 42"))

    try:
        assert await ledger.atomically(body) == 42
    finally:
        await ledger.engine.dispose()
    assert runs == 2


async def test_a_connection_lost_during_commit_is_not_run_again(database_url):
    """Lost during the COMMIT (here a deferred trigger ends the session while
    the transaction commits): whether it committed is unknown, so it is not
    run again; the caller gets an "unavailable" error (a 503)."""
    ledger = LedgerService(create_engine(database_url, pool_size=1))
    runs = 0

    async def body(conn):
        nonlocal runs
        runs += 1
        for statement in (
            "CREATE TEMP TABLE doomed (x int)",
            "CREATE FUNCTION pg_temp.end_session() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$",
            "CREATE CONSTRAINT TRIGGER end_session AFTER INSERT ON doomed "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.end_session()",
            "INSERT INTO doomed VALUES (1)",
        ):
            await conn.execute(text(statement))

    try:
        with pytest.raises(exc.DBAPIError) as lost:
            await ledger.atomically(body)
    finally:
        await ledger.engine.dispose()
    assert runs == 1
    assert is_unavailable(lost.value)
