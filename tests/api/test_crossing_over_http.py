"""Crossing requests on the same members through the real service with two
worker processes and the default settings (transfer daily limit 20,000):
transfers A->B and B->A at the same moment, each with its own connection.
Before the lock order was fixed, 18 of 20 such requests answered 500
(deadlock). Every one must now be a 201, and the books must balance."""

import asyncio
import uuid

import httpx

from ledger.commands import Adjust
from ledger.service import LedgerConfig, LedgerService
from ledger.verify import verify
from partners.registry import Registry
from partners.signing_keys import SecretBox
from tests.api.conftest import SECRET_KEY

CROSSINGS = 20


async def test_crossing_transfers_between_two_members_all_succeed(service, engine, new_member):
    registry = Registry(engine, SecretBox(SECRET_KEY))
    ledger = LedgerService(engine, LedgerConfig())
    members = [await new_member(), await new_member()]
    cards = {}
    for member in members:
        cards[member] = str(uuid.uuid4().int)[:16]
        await registry.issue_card(member, cards[member], "staff:tests")
        await ledger.adjust(Adjust(member, 10_000, "seed"), "staff:tests")

    async def transfer(i: int) -> httpx.Response:
        sender, receiver = members[i % 2], members[1 - i % 2]
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=service.base, limits=limits, timeout=30) as client:
            return await client.post(
                "/v1/me/transfers",
                headers={**service.headers(sender), "Idempotency-Key": uuid.uuid4().hex},
                json={"to_card_number": cards[receiver], "amount": 100 + i},
            )

    for _ in range(3):
        responses = await asyncio.gather(*(transfer(i) for i in range(CROSSINGS)))
        statuses = [r.status_code for r in responses]
        assert statuses == [201] * CROSSINGS, [r.text for r in responses if r.status_code != 201]

    sent = {m: 0 for m in members}
    for i in range(CROSSINGS):
        sent[members[i % 2]] += 3 * (100 + i)
    a, b = members
    assert (await ledger.balances(a)).available == 10_000 - sent[a] + sent[b]
    assert (await ledger.balances(b)).available == 10_000 - sent[b] + sent[a]
    report = await verify(engine)
    assert report.clean, report.render()
