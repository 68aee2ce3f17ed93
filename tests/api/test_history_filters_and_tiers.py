"""Two answers that used to mislead: a history filtered by an unknown entry
kind answered an empty page (now a 422 naming the parameter and the kinds
allowed), and the tier list left out the base tier members without a tier
have (now listed, marked built in)."""

import dataclasses
import re
from decimal import Decimal

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from api.app import create_app
from ledger.commands import Adjust
from ledger.database import create_engine
from ledger.kinds import ENTRY_KINDS
from ledger.service import LedgerService
from partners.rule_inputs import TierInput
from partners.rulebook import Rulebook
from tests.conftest import own_database


@pytest.fixture
async def member(ledger, new_member) -> str:
    member_id = await new_member()
    await ledger.adjust(Adjust(member_id, 40, "welcome"), "staff:tests")
    return member_id


def assert_unknown_kind(response, *refused: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "/problems/invalid-query-parameter"
    assert body["parameter"] == "kind"
    assert body["invalid"] == sorted(refused)
    assert body["allowed"] == list(ENTRY_KINDS)


async def test_an_unknown_kind_is_refused_on_the_staff_history(client, token, member):
    path = f"/v1/staff/members/{member}/history"
    assert_unknown_kind(await client.get(f"{path}?kind=bogus", headers=token()), "bogus")
    both = await client.get(f"{path}?kind=adjust&kind=Earn&kind=x", headers=token())
    assert_unknown_kind(both, "Earn", "x")
    known = await client.get(f"{path}?kind=adjust&kind=earn", headers=token())
    assert [e["kind"] for e in known.json()["entries"]] == ["adjust"]
    none = await client.get(f"{path}?kind=burn", headers=token())
    assert none.status_code == 200 and none.json()["entries"] == []


async def test_an_unknown_kind_is_refused_on_my_history(client, token, member):
    me = token(member, roles=("member",))
    assert_unknown_kind(await client.get("/v1/me/history?kind=bogus", headers=me), "bogus")
    mine = await client.get("/v1/me/history?kind=adjust", headers=me)
    assert [e["kind"] for e in mine.json()["entries"]] == ["adjust"]


async def test_the_entry_kinds_are_those_the_journal_accepts(engine):
    async with engine.connect() as conn:
        definition = await conn.scalar(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conname = 'journal_entries_kind_check'"
            )
        )
    assert sorted(re.findall(r"'(\w+)'", definition)) == sorted(ENTRY_KINDS)


@pytest.fixture(scope="module")
def tiers_database_url(server_url):
    """A database of the test's own: the tier list is programme-wide."""
    with own_database(server_url, "loyalty_tiers") as url:
        yield url


async def test_the_tier_list_includes_the_base_tier(api_settings, tiers_database_url, token):
    settings = dataclasses.replace(api_settings, database_url=tiers_database_url)
    engine = create_engine(tiers_database_url, pool_size=2)
    rules = Rulebook(LedgerService(engine))
    try:
        assert [(t["code"], t["built_in"]) for t in await rules.list_tiers()] == [("base", True)]
        silver = TierInput("Silver", 1, 1000, Decimal("1.25"), Decimal("0.05"))
        await rules.put_tier("silver", silver, "staff:tests")
        async with AsyncTestClient(create_app(settings)) as client:
            listed = await client.get("/v1/admin/tiers", headers=token())
        assert listed.status_code == 200
        base, defined = listed.json()
        assert base == {
            "code": "base",
            "name": "Base",
            "rank": 0,
            "qp_threshold": 0,
            "earn_multiplier": "1",
            "burn_discount": "0",
            "expiry_protected": False,
            "created_by": None,
            "updated_at": None,
            "retired_at": None,
            "built_in": True,
        }
        assert (defined["code"], defined["built_in"]) == ("silver", False)
        # A programme that defines its own entry tier at 0 QP has no other base.
        entry = TierInput("Entry", 0, 0)
        await rules.put_tier("entry", entry, "staff:tests")
        codes = [(t["code"], t["built_in"]) for t in await rules.list_tiers()]
        assert codes == [("entry", False), ("silver", False)]
    finally:
        await engine.dispose()
