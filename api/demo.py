"""A small, believable demo programme, so a newcomer sees balances at once.

Three members (anna, ben, clara; anna with two cards); three tiers (base,
silver at 1,000 QP with x1.25, gold at 3,000 QP with x1.5); three partners: a
drugstore (1 point per 2 EUR, vouchers, tobacco and books excluded; billed
afterwards up to a 50,000 EUR credit limit; a 14-day return window in its
contract, as PAYBACK's partners have), a fuel station (1 point per 2 EUR,
shop x2, cap 500 per transaction; prepaid with a 2,500 EUR deposit) and an
airline (4 points per EUR, QP by cabin; no credit limit); a running
double-points promotion and a 10x coupon. Then purchases, a redemption, a
hold, a transfer and an adjustment. Anna's drugstore purchase was made (and
reported) 15 days ago: its points waited out the return window and are
available now; clara's from today wait in `pending`.
Loading it again posts nothing: a programme that already has the demo members
is left as it is."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ledger.commands import Adjust, Authorise, Burn, Transfer
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from ledger.views import Balances
from members.registry import MemberInput, Members
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import (
    BurnRuleInput,
    CouponInput,
    EarnRuleInput,
    PromotionInput,
    TierInput,
)
from partners.rulebook import Rulebook

MEMBERS = ("anna", "ben", "clara")
RULES_FROM = datetime(2024, 1, 1, tzinfo=UTC)
ADMIN = "staff:demo"
RETURN_WINDOW_DAYS = 14  # the drugstore's
# Longer ago than the return window: those points are available by now.
ANNA_DRUGSTORE_AGO = timedelta(days=RETURN_WINDOW_DAYS + 1)


def _key(name: str) -> IdempotencyKey:
    return IdempotencyKey("demo", name)


CARDS = {
    "anna": ("6001000000001", "6001000000011"),
    "ben": ("6001000000002",),
    "clara": ("6001000000003",),
}


async def load_demo(ledger: LedgerService, registry: Registry) -> list[tuple[Balances, str]]:
    programme = Programme(ledger)
    if not (await ledger.history(MEMBERS[0], limit=1)).entries:
        now = ledger.clock()
        await _enrol(Members(ledger, programme))
        await _register(registry)
        await _define_programme(Rulebook(ledger), now)
        await _post_demo(ledger, programme, now)
    return [
        (await ledger.balances(member), (await programme.tier_progress(member)).tier.code)
        for member in MEMBERS
    ]


async def _enrol(members: Members) -> None:
    for member in MEMBERS:
        await members.enrol(MemberInput(member, display_name=member.title()), ADMIN)


async def _register(registry: Registry) -> None:
    contracts = (
        PartnerInput(
            "drugstore",
            "Drugstore",
            return_window_days=RETURN_WINDOW_DAYS,
            price_per_point=Decimal("0.01"),
            redemption_value=Decimal("0.01"),
            credit_limit_minor=5_000_000,
        ),
        PartnerInput(
            "fuelstation",
            "Fuel station",
            price_per_point=Decimal("0.01"),
            redemption_value=Decimal("0.01"),
            credit_limit_minor=0,
            deposit_minor=250_000,
        ),
        PartnerInput(
            "skyline",
            "Skyline Airways",
            price_per_point=Decimal("0.008"),
            redemption_value=Decimal("0.01"),
        ),
    )
    for contract in contracts:
        await registry.create_partner(contract, ADMIN)
    for member, cards in CARDS.items():
        for card in cards:
            await registry.issue_card(member, card, ADMIN)


async def _define_programme(rules: Rulebook, now: datetime) -> None:
    await rules.put_tier(
        "silver", TierInput("Silver", 1, 1000, Decimal("1.25"), Decimal("0.05")), ADMIN
    )
    await rules.put_tier(
        "gold",
        TierInput("Gold", 2, 3000, Decimal("1.5"), Decimal("0.10"), expiry_protected=True),
        ADMIN,
    )
    await rules.create_earn_rule(
        "drugstore",
        EarnRuleInput(
            RULES_FROM,
            "EUR",
            Decimal("0.5"),
            category_multipliers={"groceries": Decimal(1)},
            excluded_categories=["vouchers", "tobacco", "books"],
        ),
        ADMIN,
    )
    await rules.create_earn_rule(
        "fuelstation",
        EarnRuleInput(
            RULES_FROM,
            "EUR",
            Decimal("0.5"),
            category_multipliers={"shop": Decimal(2)},
            excluded_categories=["deposit", "tobacco"],
            cap_per_transaction=500,
        ),
        ADMIN,
    )
    await rules.create_earn_rule(
        "skyline",
        EarnRuleInput(
            RULES_FROM,
            "EUR",
            Decimal(4),
            category_qp={
                "flight-economy": 20,
                "flight-premium": 40,
                "flight-business": 200,
                "flight-first": 300,
            },
        ),
        ADMIN,
    )
    for partner, share, minimum, step in (
        ("drugstore", "1", 100, 10),
        ("fuelstation", "0.5", 100, 10),
        ("skyline", "1", 1000, 100),
    ):
        await rules.create_burn_rule(
            partner,
            BurnRuleInput(
                RULES_FROM,
                "EUR",
                Decimal(100),
                min_points=minimum,
                step=step,
                max_basket_share=Decimal(share),
            ),
            ADMIN,
        )
    # From the first of the month of anna's drugstore purchase, so it counts.
    month = (now - ANNA_DRUGSTORE_AGO).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    await rules.create_promotion(
        PromotionInput(
            "DRUGSTORE-DOUBLE",
            "Double points on drugstore products",
            month,
            month + timedelta(days=62),
            multiplier=Decimal(2),
            partner_ids=["drugstore"],
            categories=["drugstore"],
            budget_points=50_000,
            per_member_limit=1_000,
        ),
        ADMIN,
    )
    await rules.create_coupon(
        CouponInput(
            "FUEL-SHOP-10X",
            "10x points in the station shop",
            month,
            month + timedelta(days=92),
            funder="partner",
            multiplier=Decimal(10),
            partner_ids=["fuelstation"],
            categories=["shop"],
        ),
        ADMIN,
    )
    await rules.issue_coupon("FUEL-SHOP-10X", ["anna", "ben"], ADMIN)


def _purchase(partner: str, at: datetime, *lines: tuple[int, str]) -> Purchase:
    return Purchase(partner, at, "EUR", tuple(PurchaseLine(a, c) for a, c in lines))


async def _post_demo(ledger: LedgerService, programme: Programme, now: datetime) -> None:
    earn = programme.earn_purchase
    # Anna's drugstore purchase 15 days ago, earned then (a ledger on that
    # day's clock): its points waited 14 days in `pending`, and the release
    # job, run now, has moved them to `available`. The contract's version 1
    # applies to it (the version in force before every version's date).
    then = now - ANNA_DRUGSTORE_AGO
    past = LedgerService(ledger.engine, ledger.config, clock=lambda: then)
    await Programme(past, programme.tier_period).earn_purchase(
        "anna",
        _purchase(
            "drugstore",
            then,
            (4599, "groceries"),
            (3000, "drugstore"),
            (2000, "vouchers"),
        ),
        "DS-1001",
        idempotency=_key("ds-1001"),
    )
    await ledger.release_pending()
    await programme.activate_coupon("anna", "FUEL-SHOP-10X")
    await earn(
        "anna",
        _purchase("fuelstation", now, (6000, "fuel"), (850, "shop")),
        "FS-2001",
        coupon_codes=("FUEL-SHOP-10X",),
        idempotency=_key("fs-2001"),
    )
    await earn(
        "ben",
        _purchase("skyline", now, *[(90000, "flight-business")] * 5),
        "SK-3001",
        idempotency=_key("sk-3001"),
    )
    await earn(
        "ben",
        _purchase("skyline", now, (19900, "flight-economy")),
        "SK-3002",
        idempotency=_key("sk-3002"),
    )
    # Today's purchase: the contract's 14-day return window keeps it pending.
    await earn(
        "clara",
        _purchase("drugstore", now, (2000, "groceries")),
        "DS-1002",
        idempotency=_key("ds-1002"),
    )
    await ledger.burn(Burn("anna", "fuelstation", "FS-2002", 40), _key("burn-1"))
    await ledger.authorise(
        Authorise("ben", "drugstore", 100, "DS-1003", expires_in_seconds=86400), _key("hold-1")
    )
    await ledger.transfer(Transfer("ben", "clara", 100), _key("transfer-1"))
    await ledger.adjust(Adjust("clara", 50, "welcome bonus"), ADMIN, _key("adjust-1"))
