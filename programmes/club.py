"""Clubs with a fee and a producer's dealer module, as data, and the worked
example.

Küchenwerk, a food brand, runs the Küchenwerk cooking club: 12.27 EUR a year
(money, recorded from the payment provider's reference, never points), 500
welcome points when a membership first becomes active, 300 points on each
anniversary a paid term covers, and double points in Küchenwerk's shop while
a paid term covers the purchase (the promotion KOCHCLUB-2X names the club;
Küchenwerk funds all of it). A lapsed membership earns plain points until
it is renewed.

Autowerk, a car maker, and its dealers Autohaus Nord and Autohaus Süd:
members register their cars (the vehicle number); a service visit at a
dealer earns 1,000 points once per car and 12-month service interval (paid
by the dealer that did the work), and Autowerk pays half of Autohaus Nord's
autumn check promotion (HERBST-CHECK-2X: double points, 50 % by Autowerk
rounded down, the odd point by the dealer). Each partner's settlement
statement charges its own share. A point is worth 1 euro cent both ways.

`STORY` is the README's worked example: fixed dates from September 2024 to
November 2026 (the statements are settled on the database's clock, which
is past October 2026), each step through the real services on a ledger whose clock
is the step's date. `load` defines the programme and plays the story once:
loading again finds the club and adds nothing.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from clubs.club_views import ClubInput, PaymentInput
from clubs.membership import Clubs
from clubs.servicing import ProductInput, ServicePlanInput, Servicing, VisitInput
from finance.settlement import settle
from ledger.expiry import RollingToQuarterEnd
from ledger.service import LedgerService
from members.registry import MemberInput, Members
from operations.jobs import ClubAnniversaryGifts, LapseClubMemberships
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import EarnRuleInput, PromotionInput
from partners.rulebook import Rulebook
from programmes import story
from programmes.story import Outcome, ServicesPlayer, Step, at, euros, signed

NAME = "club"
EXPIRY_POLICY = RollingToQuarterEnd(36)
ADMIN = "staff:programme-club"
RULES_FROM = at("2024-01-01T00:00")
POINT = Decimal("0.01")  # EUR per point, both ways

# -- the programme -----------------------------------------------------------------

PARTNERS = (
    PartnerInput("kuechenwerk", "Küchenwerk (food brand, club shop)", price_per_point=POINT,
                 redemption_value=POINT),
    PartnerInput("autowerk", "Autowerk (car maker)", price_per_point=POINT,
                 redemption_value=POINT),
    PartnerInput("autohaus-nord", "Autohaus Nord (Autowerk dealer)", price_per_point=POINT,
                 redemption_value=POINT),
    PartnerInput("autohaus-sued", "Autohaus Süd (Autowerk dealer)", price_per_point=POINT,
                 redemption_value=POINT),
)  # fmt: skip

EARN_RULES = {
    partner: EarnRuleInput(RULES_FROM, "EUR", Decimal(1))
    for partner in ("kuechenwerk", "autohaus-nord", "autohaus-sued")
}

CLUB = ClubInput(
    "kochclub",
    "Küchenwerk cooking club",
    "kuechenwerk",
    fee_minor=1227,
    currency="EUR",
    term_months=12,
    welcome_points=500,
    anniversary_points=300,
)

PROMOTIONS = (
    PromotionInput("KOCHCLUB-2X", "Double points for cooking club members", RULES_FROM,
                   at("2030-01-01T00:00"), funder="partner", multiplier=Decimal(2),
                   partner_ids=["kuechenwerk"], clubs=["kochclub"]),
    PromotionInput("HERBST-CHECK-2X", "Autumn check: double points, half paid by Autowerk",
                   at("2026-10-01T00:00"), at("2026-11-01T00:00"), funder="partner",
                   multiplier=Decimal(2), partner_ids=["autohaus-nord"],
                   co_funder_id="autowerk", co_funder_share=Decimal("0.5")),
)  # fmt: skip

SERVICE_PLAN = ServicePlanInput(12, 1_000, ["autohaus-nord", "autohaus-sued"])

MEMBERS = {"anna": "Anna", "ben": "Ben"}
CARDS = {"anna": "7310000000011", "ben": "7310000000021"}  # the shop's and dealers' tills read them
CAR = "WAW-1K-000815"


# -- the story's steps --------------------------------------------------------------


@dataclass(frozen=True)
class Join:
    member: str


@dataclass(frozen=True)
class PayFee:
    member: str
    reference: str  # the payment provider's


@dataclass(frozen=True)
class Buy:
    """The partner's till sends a purchase by the member's card (cents)."""

    member: str
    partner: str
    reference: str
    amount_minor: int


@dataclass(frozen=True)
class RunJob:
    name: str  # lapse-club-memberships | club-anniversary-gifts


@dataclass(frozen=True)
class RegisterCar:
    member: str


@dataclass(frozen=True)
class ServiceVisit:
    dealer: str
    reference: str


@dataclass(frozen=True)
class Settle:
    partner: str
    period: str


Action = Join | PayFee | Buy | RunJob | RegisterCar | ServiceVisit | Settle


STORY = (
    Step(at("2024-09-02T18:00"), "Anna joins the Küchenwerk cooking club", Join("anna")),
    Step(at("2024-09-03T09:30"), "Her 12.27 EUR fee arrives (payment PSP-7731)",
         PayFee("anna", "PSP-7731")),
    Step(at("2024-10-12T11:00"), "Anna buys in the Küchenwerk shop, 48.90 EUR",
         Buy("anna", "kuechenwerk", "KW-241012-01", 4890)),
    Step(at("2024-11-05T10:00"), "Ben registers his Autowerk car in the app",
         RegisterCar("ben")),
    Step(at("2025-04-22T08:30"), "Ben's inspection at Autohaus Süd (interval 1)",
         ServiceVisit("autohaus-sued", "AS-25-0422")),
    Step(at("2025-08-30T14:00"), "A repair at Autohaus Nord in the same interval",
         ServiceVisit("autohaus-nord", "AN-25-0830")),
    Step(at("2025-09-04T02:00"), "The lapse job: Anna's term ended 2025-09-03 unpaid",
         RunJob("lapse-club-memberships")),
    Step(at("2025-09-20T16:45"), "Anna buys in the Küchenwerk shop, 25.00 EUR",
         Buy("anna", "kuechenwerk", "KW-250920-07", 2500)),
    Step(at("2025-10-01T08:15"), "Anna renews: 12.27 EUR (payment PSP-9120)",
         PayFee("anna", "PSP-9120")),
    Step(at("2025-10-05T12:20"), "Anna buys in the Küchenwerk shop, 30.00 EUR",
         Buy("anna", "kuechenwerk", "KW-251005-03", 3000)),
    Step(at("2026-06-18T09:00"), "Ben's inspection at Autohaus Süd (interval 2)",
         ServiceVisit("autohaus-sued", "AS-26-0618")),
    Step(at("2026-09-04T03:00"), "The anniversary job (Anna's: 3 September)",
         RunJob("club-anniversary-gifts")),
    Step(at("2026-09-04T03:05"), "The anniversary job runs again",
         RunJob("club-anniversary-gifts")),
    Step(at("2026-10-14T15:30"), "Ben's autumn check at Autohaus Nord, 389.90 EUR",
         Buy("ben", "autohaus-nord", "AN-26-1014", 38990)),
    Step(at("2026-11-02T07:00"), "Finance settles October: Autohaus Nord",
         Settle("autohaus-nord", "2026-10")),
    Step(at("2026-11-02T07:05"), "Finance settles October: Autowerk",
         Settle("autowerk", "2026-10")),
)  # fmt: skip


class StoryPlayer(ServicesPlayer):
    """The story's steps through the real services."""

    async def act(self, ledger: LedgerService, when: datetime, action: Action) -> str:
        clubs, servicing = Clubs(ledger), Servicing(ledger)
        match action:
            case Join():
                return (await clubs.join(action.member, CLUB.code)).status.replace("_", " ")
            case PayFee():
                paid = await clubs.pay(
                    PaymentInput(
                        action.reference, CLUB.code, action.member, CLUB.fee_minor, CLUB.currency
                    ),
                    ADMIN,
                )
                welcome = f", {signed(paid.welcome_points)}" if paid.welcome_points else ""
                return f"active to {paid.term_ends_at.date().isoformat()}{welcome}"
            case Buy():
                purchase = Purchase(
                    action.partner, when, "EUR", (PurchaseLine(action.amount_minor, "general"),)
                )
                receipt = await Programme(ledger).earn_purchase(
                    None, purchase, action.reference, card_number=CARDS[action.member]
                )
                return signed(receipt.earning.points)
            case RunJob():
                job = (
                    LapseClubMemberships(ledger)
                    if action.name == LapseClubMemberships.name
                    else ClubAnniversaryGifts(ledger)
                )
                moved = 0

                def count(batch) -> None:
                    nonlocal moved
                    moved += batch.points

                done = await job.run(None, count)
                if not done:
                    return "nothing due"
                plural = "" if done == 1 else "s"
                if job.moves_points:
                    return f"{done} gift{plural}, {signed(moved)}"
                return f"{done} membership{plural} lapsed"
            case RegisterCar():
                await servicing.register(action.member, ProductInput("autowerk", CAR))
                return f"car {CAR} registered"
            case ServiceVisit():
                visit = await servicing.visit(
                    action.dealer,
                    VisitInput("autowerk", CAR, action.reference, when),
                    f"partner:{action.dealer}",
                )
                if visit.bonus_points:
                    return signed(visit.bonus_points)
                return f"+0 (interval {visit.interval} paid already)"
            case Settle():
                statement = await settle(ledger.engine, action.partner, action.period, ADMIN)
                return f"statement: owes {euros(statement.net_minor)}"
        raise TypeError(f"not a step of the story: {action!r}")


async def define(ledger: LedgerService, registry: Registry) -> None:
    members = Members(ledger, Programme(ledger))
    for member_id, name in MEMBERS.items():
        await members.enrol(MemberInput(member_id, display_name=name), ADMIN)
    for partner in PARTNERS:
        await registry.create_partner(partner, ADMIN)
    for member_id, card in CARDS.items():
        await registry.issue_card(member_id, card, ADMIN)
    rules = Rulebook(ledger)
    for partner_id, rule in EARN_RULES.items():
        await rules.create_earn_rule(partner_id, rule, ADMIN)
    await Clubs(ledger).create(CLUB, ADMIN)
    for promotion in PROMOTIONS:
        await rules.create_promotion(promotion, ADMIN)
    await Servicing(ledger).put_plan("autowerk", SERVICE_PLAN, ADMIN)


def programme_ledger(ledger: LedgerService) -> LedgerService:
    return story.programme_ledger(ledger, expiry_policy=EXPIRY_POLICY)


async def loaded(ledger: LedgerService) -> bool:
    return await story.exists(ledger, "SELECT 1 FROM clubs WHERE code = :c", c=CLUB.code)


async def available(ledger: LedgerService) -> dict[str, int]:
    return await story.members_available(ledger, MEMBERS)


async def load(ledger: LedgerService, registry: Registry) -> list[Outcome]:
    """Define the programme and play its story (nothing when it is loaded
    already); one outcome per step, with the balances after it."""
    return await story.load_once(
        programme_ledger(ledger), registry, loaded=loaded, define=define,
        player=StoryPlayer, story=STORY, members=MEMBERS,
    )  # fmt: skip
