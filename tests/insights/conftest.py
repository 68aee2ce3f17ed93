"""A small programme on a database of its own, built once for the insights
tests through the real services (registry, rulebook, programme, ledger),
with a clock the tests move: ten members whose figures are worked out by
hand in the tests.

Partners drugstore (DS), fuelstation (FS) and airline (AIR): 1 point and 1
QP per EUR, no return window (points go straight to `available`, as lots).
Points expire 4 months after earning, at that quarter's end (January and
February earnings on 2026-07-01, March to May on 2026-10-01, June on
2027-01-01). Tiers: silver at 500 QP, gold at 1,000 QP (expiry-protected).
Promotion DS-DOUBLE: x2 on drugstore products in June 2026, paid by the
programme.

Purchases in 2026 (EUR; the clock at 10:00 UTC of each day):

    m01  01-10 DS 200, 02-10 DS 200, 03-10 FS 200, 05-10 DS 200, 06-20 AIR 200
         (silver on 03-10, gold on 06-20); redeems 300 at FS on 06-21
    m02  01-12 DS 100, 02-12 DS 100, 03-12 DS 100, 04-12 FS 100, 06-15 DS 100
         (+100 promotion; silver on 06-15); redeems 100 at DS on 06-16
    m03  01-05 DS 50, 02-05 DS 50, 03-05 FS 50, 03-20 FS 50
    m04  02-01 DS 25, 03-01 DS 25, 05-10 DS 25, 06-01 DS 25 (+25 promotion)
    m05  04-20 FS 40, 06-25 FS 40
    m06  01-20 DS 30, 02-20 DS 30
    m07  06-28 DS 40 (+40 promotion)
    m08  01-15 FS 10
    m09  05-05 AIR 5
    m10  03-25 DS 5

Spend 2,000 EUR in all (m01 1,000, m02 500, m03 200, m04 100, m05 80, m06
60, m07 40, m08 10, m09 5, m10 5)."""

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from api.embedded import drop_database, ensure_database, with_database
from api.migrate import upgrade
from ledger.commands import Burn
from ledger.database import create_engine
from ledger.expiry import RollingToQuarterEnd
from ledger.service import LedgerConfig, LedgerService
from members.registry import MemberInput, Members
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import EarnRuleInput, PromotionInput, TierInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY, Clock

ADMIN = "staff:insights-tests"
RULES_FROM = datetime(2024, 1, 1, tzinfo=UTC)
START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 7, 1, tzinfo=UTC)  # the window's end and the tests' as_of
CATEGORY = {"drugstore": "drugstore", "fuelstation": "fuel", "airline": "flight-economy"}
SHORT = {"DS": "drugstore", "FS": "fuelstation", "AIR": "airline"}

PURCHASES = {
    "m01": [("01-10", "DS", 200), ("02-10", "DS", 200), ("03-10", "FS", 200),
            ("05-10", "DS", 200), ("06-20", "AIR", 200)],
    "m02": [("01-12", "DS", 100), ("02-12", "DS", 100), ("03-12", "DS", 100),
            ("04-12", "FS", 100), ("06-15", "DS", 100)],
    "m03": [("01-05", "DS", 50), ("02-05", "DS", 50), ("03-05", "FS", 50), ("03-20", "FS", 50)],
    "m04": [("02-01", "DS", 25), ("03-01", "DS", 25), ("05-10", "DS", 25), ("06-01", "DS", 25)],
    "m05": [("04-20", "FS", 40), ("06-25", "FS", 40)],
    "m06": [("01-20", "DS", 30), ("02-20", "DS", 30)],
    "m07": [("06-28", "DS", 40)],
    "m08": [("01-15", "FS", 10)],
    "m09": [("05-05", "AIR", 5)],
    "m10": [("03-25", "DS", 5)],
}  # fmt: skip
BURNS = [("06-16", "m02", "drugstore", 100), ("06-21", "m01", "fuelstation", 300)]


def day(text: str) -> datetime:
    month, dom = (int(part) for part in text.split("-"))
    return datetime(2026, month, dom, 10, tzinfo=UTC)


@dataclass
class Programme10:
    url: str
    engine: object


async def fresh_database(server_url: str) -> tuple[str, str]:
    name = f"loyalty_insights_{uuid.uuid4().hex[:10]}"
    await ensure_database(server_url, name)
    url = with_database(server_url, name)
    await asyncio.to_thread(upgrade, url)
    return name, url


async def build(engine) -> None:
    clock = Clock()
    clock.now = datetime(2025, 12, 1, tzinfo=UTC)
    ledger = LedgerService(engine, LedgerConfig(expiry_policy=RollingToQuarterEnd(4)), clock=clock)
    programme = Programme(ledger)
    rules = Rulebook(ledger)
    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    members = Members(ledger, programme)
    for partner_id in CATEGORY:
        await registry.create_partner(PartnerInput(partner_id, partner_id.title()), ADMIN)
        await rules.create_earn_rule(
            partner_id,
            EarnRuleInput(RULES_FROM, "EUR", Decimal(1), qp_per_unit=Decimal(1)),
            ADMIN,
        )
    await rules.put_tier("silver", TierInput("Silver", 1, 500), ADMIN)
    await rules.put_tier("gold", TierInput("Gold", 2, 1000, expiry_protected=True), ADMIN)
    await rules.create_promotion(
        PromotionInput(
            "DS-DOUBLE",
            "double points on drugstore products in June",
            datetime(2026, 6, 1, tzinfo=UTC),
            END,
            multiplier=Decimal(2),
            partner_ids=["drugstore"],
            categories=["drugstore"],
        ),
        ADMIN,
    )
    for member_id in PURCHASES:
        await members.enrol(MemberInput(id=member_id), ADMIN)
    events = [
        (day(when), "earn", member_id, SHORT[partner], euros)
        for member_id, bought in PURCHASES.items()
        for when, partner, euros in bought
    ] + [
        (day(when), "burn", member_id, partner, points)
        for when, member_id, partner, points in BURNS
    ]
    for n, (at, what, member_id, partner_id, amount) in enumerate(sorted(events)):
        clock.now = at
        if what == "earn":
            await programme.earn_purchase(
                member_id,
                Purchase(
                    partner_id, at, "EUR", (PurchaseLine(amount * 100, CATEGORY[partner_id]),)
                ),
                f"P-{n:03d}",
            )
        else:
            await ledger.burn(Burn(member_id, partner_id, f"R-{n:03d}", amount))


@pytest.fixture(scope="package")
async def programme10(server_url):
    name, url = await fresh_database(server_url)
    engine = create_engine(url, pool_size=4)
    try:
        await build(engine)
        yield Programme10(url, engine)
    finally:
        await engine.dispose()
        await drop_database(server_url, name)
