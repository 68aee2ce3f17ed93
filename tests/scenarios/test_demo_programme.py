"""The demo programme, worked through: exact points per line of every demo
purchase (the table in the README), in a database of its own."""

import asyncio
import uuid

import pytest
from cryptography.fernet import Fernet

from api.demo import load_demo
from api.embedded import drop_database, ensure_database, with_database
from api.migrate import upgrade
from ledger.database import create_engine
from ledger.service import LedgerService
from ledger.verify import verify
from partners.programme import Programme
from partners.registry import Registry
from partners.signing_keys import SecretBox


@pytest.fixture
async def demo_ledger(server_url):
    name = f"loyalty_demo_{uuid.uuid4().hex[:8]}"
    await ensure_database(server_url, name)
    url = with_database(server_url, name)
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url, pool_size=2)
    yield LedgerService(engine)
    await engine.dispose()
    await drop_database(server_url, name)


def lines_of(entry) -> list[tuple[str, str, int]]:
    return [(line["kind"], line["reason"], line["amount"]) for line in entry.breakdown]


async def test_demo_purchases_earn_exactly_as_documented(demo_ledger):
    registry = Registry(demo_ledger.engine, SecretBox(Fernet.generate_key()))
    rows = await load_demo(demo_ledger, registry)
    summary = {b.member_id: (b.available, b.pending, b.held, b.qp, tier) for b, tier in rows}
    assert summary == {
        "anna": (88, 0, 0, 0, "base"),
        "ben": (18795, 0, 100, 1020, "silver"),
        "clara": (150, 10, 0, 0, "base"),
    }
    earnings = {
        e.partner_reference: e
        for member in ("anna", "ben", "clara")
        for e in (await demo_ledger.history(member, kinds=("earn",))).entries
    }
    # Drugstore: 45.99 groceries + 30.00 drugstore at 1 point per 2 EUR, vouchers excluded;
    # double points on drugstore products.
    assert lines_of(earnings["DS-1001"]) == [
        ("base", "base 0.5 per EUR", 37),
        ("promotion", "promotion DRUGSTORE-DOUBLE x2", 15),
    ]
    # Fuel station: 60.00 fuel + 8.50 shop; shop x2; the activated 10x shop coupon.
    assert lines_of(earnings["FS-2001"]) == [
        ("base", "base 0.5 per EUR", 34),
        ("category", "category shop x2", 4),
        ("coupon", "coupon FUEL-SHOP-10X x10", 38),
    ]
    # Airline: five business segments at 900.00, 4 points per EUR, 200 QP each.
    assert lines_of(earnings["SK-3001"]) == [
        ("base", "base 4 per EUR", 18000),
        ("qualifying", "qualifying points", 1000),
    ]
    # Ben is silver now: x1.25 on the next flight, 20 QP for economy.
    assert lines_of(earnings["SK-3002"]) == [
        ("base", "base 4 per EUR", 796),
        ("tier", "tier silver x1.25", 199),
        ("qualifying", "qualifying points", 20),
    ]
    assert lines_of(earnings["DS-1002"]) == [("base", "base 0.5 per EUR", 10)]

    programme = Programme(demo_ledger)
    coupons = await programme.coupons("anna")
    assert [(c.code, c.status) for c in coupons] == [("FUEL-SHOP-10X", "used")]
    quote = await programme.redemption_quote("ben", "drugstore", "EUR", 5000, 1000)
    # Silver's 5 % discount: 1,000 points pay 10.52 EUR instead of 10.00.
    assert (quote.points, quote.value_minor) == (1000, 1052)
    assert (await verify(demo_ledger.engine)).clean
    assert await load_demo(demo_ledger, registry) == rows  # a second load posts nothing
