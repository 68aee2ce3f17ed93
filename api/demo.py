"""A small demo programme: three members and two partners, so a newcomer sees
balances at once. Loading it again posts nothing: a programme that already has
the demo members is left as it is."""

from datetime import timedelta

from ledger.commands import Adjust, Authorise, Burn, Earn, Transfer
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from ledger.views import Balances

MEMBERS = ("anna", "ben", "clara")
PARTNERS = ("drugstore", "fuelstation")


def _key(name: str) -> IdempotencyKey:
    return IdempotencyKey("demo", name)


async def load_demo(ledger: LedgerService) -> list[Balances]:
    if not (await ledger.history(MEMBERS[0], limit=1)).entries:
        await _post_demo(ledger)
    return [await ledger.balances(member) for member in MEMBERS]


async def _post_demo(ledger: LedgerService) -> None:
    now = ledger.clock()
    await ledger.earn(Earn.simple("anna", "drugstore", "demo-ds-1001", 250, 25), _key("earn-1"))
    await ledger.earn(Earn.simple("ben", "fuelstation", "demo-fs-2001", 500, 50), _key("earn-2"))
    await ledger.earn(Earn.simple("clara", "drugstore", "demo-ds-1002", 80, 8), _key("earn-3"))
    await ledger.earn(
        Earn.simple(
            "anna", "fuelstation", "demo-fs-2002", 120, 12, release_at=now + timedelta(days=14)
        ),
        _key("earn-4-pending"),
    )
    await ledger.burn(Burn("anna", "fuelstation", "demo-fs-2003", 40), _key("burn-1"))
    await ledger.authorise(
        Authorise("ben", "drugstore", 100, "demo-ds-1003", expires_in_seconds=86400),
        _key("hold-1"),
    )
    await ledger.transfer(Transfer("ben", "clara", 30), _key("transfer-1"))
    await ledger.adjust(Adjust("clara", 50, "welcome bonus"), "staff:demo", _key("adjust-1"))
