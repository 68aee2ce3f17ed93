"""Each programme's worked example over the HTTP API (tests/programmes/
http_player.py): its definitions loaded into a database of its own, its
story played through the real app, built with a clock at each step's date,
by signed partner calls and member and staff tokens. Every step's outcome
and every member's available points after it are the README's table for
the programme, which test_NAME_example.py checks against the same story
played through the services."""

from datetime import UTC, datetime

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.settings import Settings
from ledger.database import create_engine
from ledger.service import LedgerService
from partners.registry import Registry
from partners.signing_keys import SecretBox
from programmes import airline, club, coalition
from programmes.story import play
from tests.api.conftest import MEMBER_SECRET, SECRET
from tests.conftest import TEST_SECRET_KEY, own_database
from tests.finance.test_worked_month import number, readme_table
from tests.programmes.http_player import HttpPlayer, PartnerKey, StoryClock


@pytest.fixture(params=[coalition, airline, club], ids=lambda m: m.NAME)
def module(request):
    return request.param


@pytest.fixture
def url(server_url, module):
    with own_database(server_url, f"loyalty_{module.NAME}_http") as url:
        yield url


def programme_settings(module, url: str, data_dir) -> Settings:
    """The service's settings for the programme, as its operator sets them."""
    return Settings.from_env(
        {
            "LOYALTY_DATABASE_URL": url,
            "LOYALTY_DATA_DIR": str(data_dir),
            "LOYALTY_JWT_SECRET": SECRET,
            "LOYALTY_MEMBER_JWT_SECRET": MEMBER_SECRET,
            "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
            "LOYALTY_PARTNER_RATE_LIMIT": "1000",
            "LOYALTY_MEMBER_RATE_LIMIT": "1000",
            "LOYALTY_EXPIRY_POLICY": module.EXPIRY_POLICY.describe(),
            **getattr(module, "SETTINGS", {}),
        }
    )


async def over_http(url: str, module, data_dir) -> list:
    """The programme defined, its partners given keys, the story over HTTP."""
    settings = programme_settings(module, url, data_dir)
    engine = create_engine(url, pool_size=4)
    try:
        ledger = LedgerService(engine, settings.ledger_config())
        registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
        await module.define(ledger, registry)
        keys = {}
        for partner in module.PARTNERS:
            key = await registry.create_key(partner.id, module.ADMIN)
            keys[partner.id] = PartnerKey(key.key_id, key.secret)
        clock = StoryClock(datetime.now(UTC))
        async with AsyncTestClient(create_app(settings, clock=clock)) as client:
            services = module.StoryPlayer(ledger, registry)
            player = HttpPlayer(client, settings, clock, module, keys, services)
            return await play(player, module.STORY, player.balances)
    finally:
        await engine.dispose()


async def test_the_worked_example_over_http_is_the_readme(module, url, tmp_path):
    played = await over_http(url, module, tmp_path)
    rows = readme_table(f"{module.NAME} step")
    assert len(played) == len(rows) == len(module.STORY)
    for cells, outcome in zip(rows, played, strict=True):
        step = (cells[0], outcome.step.at.date().isoformat())
        assert (cells[1], cells[3]) == (step[1], outcome.result), step
        assert [number(c) for c in cells[4:]] == list(outcome.available.values()), step
