"""The coalition programme, PAYBACK style, as data, and its worked example.

A point is worth 1 euro cent: every partner's contract prices a point at
0.01 EUR, both what the partner pays for the points it awards and what it is
reimbursed for the points redeemed with it. Partners award from 1 point per
2 EUR (supermarket, fuel) to 1 point per EUR (drugstore); eCoupons multiply
points x2 to x50 and must be activated before the purchase; a member has two
cards on one account; points are redeemed at the tills (two-phase, the burn
rules below) or for an item of the reward catalogue, fulfilled by the
programme's reward shop (a partner: it is reimbursed for the points). Points
expire once a year: on 1 January, what is older than 36 months
(`AnnualCutoff(36)`, set for the lots this loader posts; a service running
the programme sets LOYALTY_EXPIRY_POLICY=annual:36).

`STORY` is the README's worked example: fixed dates from 2023 to November
2026, each step posted through the real services on a ledger whose clock is
the step's date. `load` enrols, registers, defines and plays the story once:
loading again finds the members and adds nothing.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ledger.commands import Authorise, Capture
from ledger.expiry import AnnualCutoff
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService
from members.registry import MemberInput, Members
from partners.batch import EarnItem, earn_batch
from partners.claims import ClaimInput, Claims
from partners.earning import Purchase, PurchaseLine
from partners.money import units
from partners.programme import Programme, PurchaseInput, PurchaseLineInput
from partners.registry import PartnerInput, Registry
from partners.rewards import RewardInput, Rewards
from partners.rule_inputs import BurnRuleInput, CouponInput, EarnRuleInput
from partners.rulebook import Rulebook
from programmes import story
from programmes.story import (
    ConfirmClaim,
    FileClaim,
    Outcome,
    ServicesPlayer,
    Step,
    at,
    refused,
    signed,
)

NAME = "coalition"
EXPIRY_POLICY = AnnualCutoff(36)
ADMIN = "staff:programme-coalition"
RULES_FROM = datetime(2023, 1, 1, tzinfo=UTC)
POINT = Decimal("0.01")  # EUR per point, both ways


# -- the programme --------------------------------------------------------------

PARTNERS = (
    PartnerInput("frischmarkt", "Frischmarkt (supermarket)", price_per_point=POINT,
                 redemption_value=POINT, credit_limit_minor=10_000_000),
    PartnerInput("tankhaus", "Tankhaus (fuel)", price_per_point=POINT, redemption_value=POINT,
                 credit_limit_minor=0, deposit_minor=500_000),
    PartnerInput("drogerie", "Drogerie Lind (drugstore)", price_per_point=POINT,
                 redemption_value=POINT, credit_limit_minor=5_000_000),
    PartnerInput("praemienshop", "Praemienshop (reward catalogue)", price_per_point=POINT,
                 redemption_value=POINT),
)  # fmt: skip

EARN_RULES = {
    "frischmarkt": EarnRuleInput(
        RULES_FROM, "EUR", Decimal("0.5"), excluded_categories=["tobacco", "vouchers", "deposit"]
    ),
    "tankhaus": EarnRuleInput(
        RULES_FROM, "EUR", Decimal("0.5"), excluded_categories=["tobacco", "deposit"]
    ),
    "drogerie": EarnRuleInput(
        RULES_FROM, "EUR", Decimal(1), excluded_categories=["books", "vouchers"]
    ),
}

# At the tills: 100 points pay 1 EUR, from 100 points, at most half the basket.
BURN_RULES = {
    partner: BurnRuleInput(
        RULES_FROM, "EUR", Decimal(100), min_points=100, step=1, max_basket_share=Decimal("0.5")
    )
    for partner in EARN_RULES
}

COUPONS = (
    CouponInput("FRISCH-2X", "Double points on your weekly shop", RULES_FROM,
                at("2027-12-31T00:00"), multiplier=Decimal(2), partner_ids=["frischmarkt"]),
    CouponInput("DROGERIE-10X", "10x points at Drogerie Lind", RULES_FROM,
                at("2027-12-31T00:00"), multiplier=Decimal(10), partner_ids=["drogerie"]),
    CouponInput("TANK-SHOP-50X", "50x points in the Tankhaus shop", RULES_FROM,
                at("2027-12-31T00:00"), multiplier=Decimal(50), partner_ids=["tankhaus"],
                categories=["shop"]),
)  # fmt: skip

# One account, two cards (PAYBACK issues two per account).
MEMBERS = {
    "lena": ("Lena", ("3083420000011", "3083420000012")),
    "jonas": ("Jonas", ("3083420000021",)),
}

REWARDS = (
    RewardInput("travel-mug", "Travel mug", 800, 5, "praemienshop"),
    RewardInput("espresso-set", "Espresso cups, set of two", 1000, 20, "praemienshop"),
    RewardInput("cinema-voucher", "Cinema voucher for two", 1500, 50, "praemienshop"),
)


# -- the story's steps ------------------------------------------------------------


@dataclass(frozen=True)
class Till:
    """A partner's till sends a purchase by card (euros in cents)."""

    card: str
    partner: str
    reference: str
    lines: tuple[tuple[int, str], ...]
    coupons: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchFile:
    """A partner sends its day's purchases as one batch."""

    partner: str
    items: tuple[Till, ...]


@dataclass(frozen=True)
class TillRedemption:
    """Points pay part of a basket at a partner's till: authorised by card
    (within the partner's burn rule), then captured with the purchase."""

    card: str
    partner: str
    reference: str
    basket_minor: int
    points: int


@dataclass(frozen=True)
class Activate:
    member: str
    coupon: str


@dataclass(frozen=True)
class OrderReward:
    member: str
    reward: str
    key: str  # the app's Idempotency-Key; later steps name the order by it


@dataclass(frozen=True)
class CancelOrder:
    member: str
    key: str


@dataclass(frozen=True)
class ShipOrder:
    key: str


Action = (
    Till
    | BatchFile
    | TillRedemption
    | Activate
    | OrderReward
    | CancelOrder
    | ShipOrder
    | FileClaim
    | ConfirmClaim
)


STORY = (
    Step(at("2023-03-04T10:15"), "Lena shops at Frischmarkt (card 1), 486.40 EUR",
         Till("3083420000011", "frischmarkt", "FM-230304-0815", ((48640, "groceries"),))),
    Step(at("2023-08-19T16:40"), "Lena at Drogerie Lind (card 2), 912.00 EUR",
         Till("3083420000012", "drogerie", "DL-230819-0042", ((91200, "drugstore"),))),
    Step(at("2023-11-18T08:05"), "Jonas fills up at Tankhaus, 92.00 EUR",
         Till("3083420000021", "tankhaus", "TH-231118-0007", ((9200, "fuel"),))),
    Step(at("2024-05-09T19:00"), "Lena activates the eCoupon DROGERIE-10X in the app",
         Activate("lena", "DROGERIE-10X")),
    Step(at("2024-05-10T11:30"), "Lena at Drogerie Lind (card 1) with DROGERIE-10X, 64.90 EUR",
         Till("3083420000011", "drogerie", "DL-240510-0311", ((6490, "drugstore"),),
              ("DROGERIE-10X",))),
    Step(at("2025-09-12T07:45"), "Lena activates TANK-SHOP-50X",
         Activate("lena", "TANK-SHOP-50X")),
    Step(at("2025-09-13T09:10"), "Lena at the Tankhaus till (card 1) with TANK-SHOP-50X: "
         "fuel 70.00 + shop 12.00 EUR",
         Till("3083420000011", "tankhaus", "TH-250913-0102",
              ((7000, "fuel"), (1200, "shop")), ("TANK-SHOP-50X",))),
    Step(at("2025-09-14T23:00"), "Tankhaus's batch names the same coupon again (card 2, "
         "shop 8.00 EUR)",
         BatchFile("tankhaus", (Till("3083420000012", "tankhaus", "TH-250914-0230",
                                     ((800, "shop"),), ("TANK-SHOP-50X",)),))),
    Step(at("2026-10-05T20:00"), "Lena orders the espresso set (1,000 points)",
         OrderReward("lena", "espresso-set", "lena-order-1")),
    Step(at("2026-10-06T08:30"), "Lena cancels it before it ships",
         CancelOrder("lena", "lena-order-1")),
    Step(at("2026-10-07T12:00"), "Lena orders the travel mug (800 points)",
         OrderReward("lena", "travel-mug", "lena-order-2")),
    Step(at("2026-10-09T15:00"), "The reward shop ships the mug",
         ShipOrder("lena-order-2")),
    Step(at("2026-11-02T18:20"), "Lena claims a Frischmarkt receipt of 20 October the "
         "partner never sent, 120.00 EUR",
         FileClaim("lena", ClaimInput("frischmarkt", "FM-261020-0117",
                                      at("2026-10-20T17:55"), 12000))),
    Step(at("2026-11-03T09:00"), "Staff confirm the claim",
         ConfirmClaim("frischmarkt", "FM-261020-0117")),
    Step(at("2026-11-14T17:30"), "Lena pays 2.00 EUR of 30.00 EUR at the Tankhaus till with "
         "points (card 2): authorised, then captured",
         TillRedemption("3083420000012", "tankhaus", "TH-261114-0331", 3000, 200)),
)  # fmt: skip

# The yearly expiry run that follows the story (README: `loyalty jobs run
# expire-points --as-of 2027-01-01T00:00:00Z`).
EXPIRY_RUN = at("2027-01-01T00:00")


def _key(name: str) -> IdempotencyKey:
    return IdempotencyKey(f"programme:{NAME}", name)


def _purchase(partner: str, when: datetime, lines: Sequence[tuple[int, str]]) -> Purchase:
    return Purchase(partner, when, "EUR", tuple(PurchaseLine(a, c) for a, c in lines))


class StoryPlayer(ServicesPlayer):
    """The story's steps through the real services."""

    def __init__(self, ledger: LedgerService, registry: Registry) -> None:
        super().__init__(ledger, registry)
        self.orders: dict[str, int] = {}

    async def act(self, ledger: LedgerService, when: datetime, action: Action) -> str:
        programme = Programme(ledger)
        rewards = Rewards(programme.ledger)
        claims = Claims(programme)
        match action:
            case Till():
                receipt = await programme.earn_purchase(
                    None,
                    _purchase(action.partner, when, action.lines),
                    action.reference,
                    coupon_codes=action.coupons,
                    idempotency=_key(action.reference),
                    card_number=action.card,
                )
                return signed(receipt.earning.points)
            case BatchFile():
                batch = await earn_batch(
                    programme,
                    action.partner,
                    [
                        EarnItem(
                            item.card,
                            item.reference,
                            PurchaseInput(
                                "EUR",
                                [PurchaseLineInput(a, c) for a, c in item.lines],
                                occurred_at=when,
                            ),
                            list(item.coupons),
                        )
                        for item in action.items
                    ],
                    _key(f"batch-{action.items[0].reference}"),
                )
                return "; ".join(
                    signed(o.receipt.earning.points) if o.receipt else refused(o.error.code)
                    for o in batch.outcomes
                )
            case TillRedemption():
                member = await self.registry.member_for_card(action.card)
                quote = await programme.redemption_quote(
                    member, action.partner, "EUR", action.basket_minor, action.points
                )
                held = await ledger.authorise(
                    Authorise(member, action.partner, quote.points, action.reference, 600),
                    _key(f"{action.reference}-authorise"),
                )
                await ledger.capture(
                    Capture(held.hold.hold_id, action.partner, None, f"{action.reference}-capture"),
                    _key(f"{action.reference}-capture"),
                )
                return f"{signed(-quote.points)} ({units(quote.value_minor, 'EUR')} EUR off)"
            case Activate():
                await programme.activate_coupon(action.member, action.coupon)
                return "activated"
            case OrderReward():
                order = await rewards.order(
                    action.member,
                    action.reward,
                    IdempotencyKey(f"member:{action.member}", action.key),
                )
                self.orders[action.key] = order.id
                return signed(-order.points)
            case CancelOrder():
                order = await rewards.cancel(
                    self.orders[action.key], f"member:{action.member}", member_id=action.member
                )
                return f"{signed(order.points)} (cancelled)"
            case ShipOrder():
                await rewards.ship(self.orders[action.key], ADMIN)
                return "shipped"
            case FileClaim() | ConfirmClaim():
                return await self.claim(claims, action, ADMIN)
        raise TypeError(f"not a step of the story: {action!r}")


async def define(ledger: LedgerService, registry: Registry) -> None:
    programme = Programme(ledger)
    members = Members(ledger, programme)
    for member_id, (name, _cards) in MEMBERS.items():
        await members.enrol(MemberInput(member_id, display_name=name), ADMIN)
    for partner in PARTNERS:
        await registry.create_partner(partner, ADMIN)
    for member_id, (_name, cards) in MEMBERS.items():
        for card in cards:
            await registry.issue_card(member_id, card, ADMIN)
    rules = Rulebook(ledger)
    for partner_id, rule in EARN_RULES.items():
        await rules.create_earn_rule(partner_id, rule, ADMIN)
    for partner_id, rule in BURN_RULES.items():
        await rules.create_burn_rule(partner_id, rule, ADMIN)
    for coupon in COUPONS:
        await rules.create_coupon(coupon, ADMIN)
        await rules.issue_coupon(coupon.code, list(MEMBERS), ADMIN)
    rewards = Rewards(ledger)
    for reward in REWARDS:
        await rewards.create(reward, ADMIN)


def programme_ledger(ledger: LedgerService) -> LedgerService:
    return story.programme_ledger(ledger, expiry_policy=EXPIRY_POLICY)


async def loaded(ledger: LedgerService) -> bool:
    return await story.exists(
        ledger, "SELECT 1 FROM rewards WHERE partner_id = :p LIMIT 1", p=REWARDS[0].partner_id
    )


async def available(ledger: LedgerService) -> dict[str, int]:
    return await story.members_available(ledger, MEMBERS)


async def load(ledger: LedgerService, registry: Registry) -> list[Outcome]:
    """Define the programme and play its story (nothing when it is loaded
    already); one outcome per step, with the balances after it."""
    return await story.load_once(
        programme_ledger(ledger), registry, loaded=loaded, define=define,
        player=StoryPlayer, story=STORY, members=MEMBERS,
    )  # fmt: skip
