"""A worked month on a database of its own (the trial balance sums the whole
ledger, so no other test's entries may be in it), built once for the finance
tests through the real services: the registry, rulebook, programme and
ledger, with a clock the tests move.

The story (effective times; booking times are the real ones, captured from
the database's clock after each step as `marks`):

before the month  ben earns 300 at the fuel station (2026-01-20; those points
                  expire on 2026-04-01), anna 1,000 at the drugstore (03-25);
                  the drugstore's eCoupon DRUGSTORE-3X (3x points on
                  drugstore products in April, funded by the drugstore) is
                  issued to anna
   --- start ---
04-01  anna activates the coupon in the app (no entry)
04-02  anna buys 100.00 EUR of drugstore products and shows the coupon:
       100 points from the drugstore (base), 100 from the programme's
       DRUGSTORE-DOUBLE promotion (x2: +100) and 200 from the coupon (x3:
       +200, charged to the drugstore): 400, pending for the drugstore's
       14-day return window
04-03  clara buys 200.00 EUR of fuel: 200 points (and 200 QP)
04-05  the expiry job: ben's 300 points expire
04-08  anna redeems 400 points at the fuel station
04-09  clara redeems 150 points at the drugstore
04-10  the fuel station takes back clara's whole purchase: 200 points
       clawed back after she spent 150 of them (she owes 150)
04-12  anna sends ben 100 points; the 5 % fee (5 points) goes to
       program:adjustments
04-15  staff credit ben 25 points (goodwill)
04-17  the release job: anna's 400 pending points become available
04-20  anna authorises 50 points at the drugstore, which captures 30
04-25  ben authorises 10 points at the fuel station (still open at the end)
   --- end ---
05-02  anna earns 10 more at the drugstore (after the period)

The fuel station's contract changes on 2026-04-06: 0.012 -> 0.015 EUR per
point issued, 0.009 -> 0.010 EUR reimbursed per point redeemed; the
drugstore's is 0.01 both ways.

By hand, at the end of the month:

  anna   1,000 - 400 burnt - 105 sent (100 + 5 fee) + 400 released - 30 captured = 865
  ben        300 - 300 expired + 100 received + 25 goodwill - 10 held             = 115 (+10 held)
  clara      200 - 150 burnt - 200 returned                                       = -150
  liability  865 + 115 - 150 available + 0 pending + 10 held                       = 840

  partner:drugstore:issued    -1,000 - 100 base - 200 coupon       = -1,300
  partner:drugstore:redeemed      150 clara + 30 anna's capture    =    180
  partner:fuelstation:issued     -300 - 200 + 200 returned         =   -300
  partner:fuelstation:redeemed                                     =    400
  program:promotions / expired / adjustments (5 fee - 25)  = -100 / 300 / -20
  PTS: 840 - 1,300 + 180 - 300 + 400 - 100 + 300 - 20 = 0

  roll-forward: 1,300 opening + 300 issued by the drugstore (100 + 200
  coupon) + 200 by the fuel station + 100 promotions - 200 returned - 180
  - 400 redeemed - 300 expired - 5 fee + 25 goodwill = 1,300 - 460 = 840;
  in EUR: drugstore 300 x 0.01 = 3.00, fuel station 200 x 0.012 = 2.40
  (and -2.40 returned), redeemed 180 x 0.01 = 1.80 and 400 x 0.010 = 4.00

  the drugstore's April statement: issued 100 x 0.01 = 1.00 and the coupon's
  200 x 0.01 = 2.00 (promotion points charged to the partner) owed by the
  drugstore, 180 x 0.01 = 1.80 redeemed owed to it: net 3.00 - 1.80 = 1.20
  (the drugstore pays the programme); the programme's 100 promotion points
  and ben's open authorisation are not on it
"""

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from api.embedded import drop_database, ensure_database, with_database
from api.migrate import upgrade
from ledger.commands import Adjust, Authorise, Burn, Capture, Earn, Transfer
from ledger.database import create_engine
from ledger.expiry import RollingToQuarterEnd
from ledger.history import server_time
from ledger.service import LedgerConfig, LedgerService, TransferRules
from members.registry import MemberInput, Members
from partners.contracts import ContractInput
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import CouponInput, EarnRuleInput, PromotionInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY, Clock

ADMIN = "staff:finance-tests"
RULES_FROM = datetime(2024, 1, 1, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, tzinfo=UTC)


def config() -> LedgerConfig:
    # Points expire after one month, to the end of that quarter: what is
    # earned in January expires on April 1st.
    return LedgerConfig(
        expiry_policy=RollingToQuarterEnd(1),
        transfers=TransferRules(min_points=1, fee_rate=Decimal("0.05")),
    )


@dataclass
class Month:
    url: str
    engine: object
    start: datetime  # booking time before the month's first entry
    end: datetime  # booking time after its last
    after: datetime  # after the entry that follows the month
    marks: list[datetime] = field(default_factory=list)  # after each step of the month
    entries: dict[str, int] = field(default_factory=dict)


async def fresh_database(server_url: str) -> tuple[str, str]:
    name = f"loyalty_finance_{uuid.uuid4().hex[:10]}"
    await ensure_database(server_url, name)
    url = with_database(server_url, name)
    await asyncio.to_thread(upgrade, url)
    return name, url


async def build_month(engine, url: str) -> Month:
    clock = Clock()
    clock.now = datetime(2026, 1, 20, 10, tzinfo=UTC)
    ledger = LedgerService(engine, config(), clock=clock)
    programme = Programme(ledger)
    rules = Rulebook(ledger)
    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    members = Members(ledger, programme)

    await registry.create_partner(
        PartnerInput(
            "drugstore",
            "Drugstore",
            return_window_days=14,
            price_per_point=Decimal("0.01"),
            redemption_value=Decimal("0.01"),
        ),
        ADMIN,
    )
    await registry.create_partner(
        PartnerInput(
            "fuelstation",
            "Fuel station",
            price_per_point=Decimal("0.012"),
            redemption_value=Decimal("0.009"),
        ),
        ADMIN,
    )
    await registry.update_contract(
        "fuelstation",
        ContractInput(
            datetime(2026, 4, 6, tzinfo=UTC),
            price_per_point=Decimal("0.015"),
            redemption_value=Decimal("0.010"),
        ),
        ADMIN,
    )
    for member in ("anna", "ben", "clara"):
        await members.enrol(MemberInput(id=member), ADMIN)
    await rules.create_earn_rule("drugstore", EarnRuleInput(RULES_FROM, "EUR", Decimal(1)), ADMIN)
    await rules.create_earn_rule(
        "fuelstation", EarnRuleInput(RULES_FROM, "EUR", Decimal(1), qp_per_unit=Decimal(1)), ADMIN
    )
    await rules.create_promotion(
        PromotionInput(
            "DRUGSTORE-DOUBLE",
            "double points on drugstore products",
            APRIL,
            APRIL + timedelta(days=30),
            multiplier=Decimal(2),
            partner_ids=["drugstore"],
            categories=["drugstore"],
        ),
        ADMIN,
    )
    # The drugstore's own eCoupon, issued to anna: it pays for the points.
    await rules.create_coupon(
        CouponInput(
            "DRUGSTORE-3X",
            "3x points on drugstore products, paid by the drugstore",
            APRIL,
            APRIL + timedelta(days=30),
            funder="partner",
            multiplier=Decimal(3),
            partner_ids=["drugstore"],
            categories=["drugstore"],
        ),
        ADMIN,
    )
    await rules.issue_coupon("DRUGSTORE-3X", ["anna"], ADMIN)

    async def now() -> datetime:
        async with engine.connect() as conn:
            return await server_time(conn)

    def on(day: int, month: int = 4) -> None:
        clock.now = datetime(2026, month, day, 10, tzinfo=UTC)

    entries: dict[str, int] = {}
    # Before the month: the opening balances.
    entries["ben-earn"] = (
        await ledger.earn(Earn.simple("ben", "fuelstation", "FS-0120", 300))
    ).entry_id
    on(25, 3)
    entries["anna-earn"] = (
        await ledger.earn(Earn.simple("anna", "drugstore", "DS-0325", 1000))
    ).entry_id
    start = await now()
    marks: list[datetime] = []

    async def step() -> None:
        marks.append(await now())

    on(1)
    await programme.activate_coupon("anna", "DRUGSTORE-3X")  # in the app, before shopping
    on(2)
    receipt = await programme.earn_purchase(
        "anna",
        Purchase("drugstore", clock.now, "EUR", (PurchaseLine(10000, "drugstore"),)),
        "DS-0402",
        coupon_codes=("DRUGSTORE-3X",),
    )
    assert [(ln.kind, ln.funder, ln.amount) for ln in receipt.earning.lines] == [
        ("base", "partner", 100),
        ("promotion", "program", 100),
        ("coupon", "partner", 200),
    ]
    assert [(c.code, c.status) for c in await programme.coupons("anna")] == [
        ("DRUGSTORE-3X", "used")
    ]
    entries["anna-promo-earn"] = receipt.entry_id
    await step()
    on(3)
    receipt = await programme.earn_purchase(
        "clara",
        Purchase("fuelstation", clock.now, "EUR", (PurchaseLine(20000, "fuel"),)),
        "FS-0403",
    )
    entries["clara-earn"] = receipt.entry_id
    await step()
    on(5)
    assert await ledger.expire_points() == 1
    await step()
    on(8)
    entries["anna-burn"] = (
        await ledger.burn(Burn("anna", "fuelstation", "FS-R-0408", 400))
    ).entry_id
    await step()
    on(9)
    entries["clara-burn"] = (
        await ledger.burn(Burn("clara", "drugstore", "DS-R-0409", 150))
    ).entry_id
    await step()
    on(10)
    returned = await programme.return_purchase("fuelstation", "FS-0403", "FS-RET-0410", 20000)
    assert returned.balances.available == -150
    entries["clara-return"] = returned.entry_id
    await step()
    on(12)
    entries["transfer"] = (await ledger.transfer(Transfer("anna", "ben", 100))).entry_id
    await step()
    on(15)
    entries["adjust"] = (
        await ledger.adjust(Adjust("ben", 25, "goodwill: late delivery"), "staff:fiona")
    ).entry_id
    await step()
    on(17)
    assert await ledger.release_pending() == 1
    await step()
    on(20)
    hold = await ledger.authorise(Authorise("anna", "drugstore", 50, "DS-H-0420"))
    await step()
    entries["capture"] = (
        await ledger.capture(Capture(hold.hold.hold_id, "drugstore", 30, "DS-C-0420"))
    ).entry_id
    await step()
    on(25)
    await ledger.authorise(
        Authorise("ben", "fuelstation", 10, "FS-H-0425", expires_in_seconds=30 * 86400)
    )
    await step()
    end = await now()
    on(2, 5)
    entries["after"] = (await ledger.earn(Earn.simple("anna", "drugstore", "DS-0502", 10))).entry_id
    after = await now()

    assert (await ledger.balances("anna")).available == 875  # 865 + 10 after the month
    assert (await ledger.balances("ben")).held == 10
    return Month(url, engine, start, end, after, marks, entries)


@pytest.fixture(scope="package")
async def month(server_url):
    name, url = await fresh_database(server_url)
    engine = create_engine(url, pool_size=4)
    try:
        yield await build_month(engine, url)
    finally:
        await engine.dispose()
        await drop_database(server_url, name)
