"""The airline programme, Miles & More style, as data, and its worked example.

Award miles by spend: 4 per EUR on every airline partner, 6 per EUR for
status holders on the core airline (a standing promotion x1.5 that names the
status tiers and the core airline, which funds it). Qualifying points (the
`QP` asset, never redeemable) per flight segment by cabin and route class
(`category_qp`). Status by calendar-year QP: Frequent Traveller 650, Senator
2,000, HON Circle 6,000; status, once reached, lasts until the end of
February of the year after next, and every status protects its holder's
miles from expiry. Miles last 36 months to the end of that quarter
(`rolling:36`); a lost status gives the protected miles a fresh 36 months
(the tier requalification job). A mile is worth 1 euro cent both ways.

Family pools (members/pools.py): two adults and five children, one pool per
member, only adults redeem, a pooled redemption spends the soonest-expiring
miles across the pool, and a member who leaves joins another pool after six
months. Retro claims (partners/claims.py) reach back 183 days (six months),
the ticket number as the claim's receipt. Transfers to another member start
a fresh validity; their fee of 1 cent per mile is money, charged by the app
before it asks for the transfer, so the ledger's transfer fee in miles is 0.

`STORY` is the README's worked example, each step posted through the real
services on a ledger whose clock is the step's date; `load` defines the
programme and plays the story once (loading again finds the members and
adds nothing). `SETTINGS` are the LOYALTY_* values a service running the
programme uses; the loader applies the same values to its own story.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ledger.commands import Transfer
from ledger.expiry import RollingToQuarterEnd
from ledger.idempotency import IdempotencyKey
from ledger.service import LedgerService, TransferRules
from members.pools import JoinInput, PooledRedemption, PoolInput, Pools
from members.registry import MemberInput, Members
from partners.claims import ClaimInput, ClaimLine, Claims
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import BurnRuleInput, EarnRuleInput, PromotionInput, TierInput
from partners.rulebook import Rulebook
from programmes import story
from programmes.story import (
    ConfirmClaim,
    FileClaim,
    Outcome,
    ServicesPlayer,
    Step,
    at,
    signed,
)

NAME = "airline"
EXPIRY_POLICY = RollingToQuarterEnd(36)
CLAIM_WINDOW_DAYS = 183  # six months, with the ticket number
TRANSFERS = TransferRules(min_points=1_000, fee_rate=Decimal(0), daily_limit=50_000)
SETTINGS = {
    "LOYALTY_EXPIRY_POLICY": EXPIRY_POLICY.describe(),
    "LOYALTY_TIER_PERIOD": "calendar",
    "LOYALTY_CLAIM_WINDOW_DAYS": str(CLAIM_WINDOW_DAYS),
    # The statement shows what expires this quarter and next.
    "LOYALTY_EXPIRING_VIEW": "quarters:2",
    "LOYALTY_TRANSFER_MIN_POINTS": str(TRANSFERS.min_points),
    "LOYALTY_TRANSFER_FEE_RATE": str(TRANSFERS.fee_rate),
    "LOYALTY_TRANSFER_DAILY_LIMIT": str(TRANSFERS.daily_limit),
}
ADMIN = "staff:programme-airline"
RULES_FROM = at("2022-01-01T00:00")
RULES_TO = at("2030-01-01T00:00")
MILE = Decimal("0.01")  # EUR per mile, both ways

# -- the programme --------------------------------------------------------------

CORE_AIRLINE = "hansair"
PARTNERS = (
    PartnerInput(CORE_AIRLINE, "Hansa Air (core airline)", price_per_point=MILE,
                 redemption_value=MILE),
    PartnerInput("transpacific", "TransPacific (partner airline)", price_per_point=MILE,
                 redemption_value=MILE),
)  # fmt: skip

# Qualifying points per segment, by cabin and route class.
SEGMENT_QP = {
    "flight-economy-continental": 20,
    "flight-business-continental": 40,
    "flight-economy-intercontinental": 50,
    "flight-premium-intercontinental": 100,
    "flight-business-intercontinental": 200,
    "flight-first-intercontinental": 300,
}
EARN_RULES = {
    partner.id: EarnRuleInput(RULES_FROM, "EUR", Decimal(4), category_qp=SEGMENT_QP)
    for partner in PARTNERS
}
# Award flights: 100 miles pay 1 EUR of the fare, from 1,000 miles.
BURN_RULES = {
    partner.id: BurnRuleInput(RULES_FROM, "EUR", Decimal(100), min_points=1_000)
    for partner in PARTNERS
}
TIERS = {
    "frequent-traveller": TierInput("Frequent Traveller", 1, 650, expiry_protected=True),
    "senator": TierInput("Senator", 2, 2_000, expiry_protected=True),
    "hon-circle": TierInput("HON Circle", 3, 6_000, expiry_protected=True),
}
# 6 miles per EUR for status holders on the core airline: 4 x 1.5.
STATUS_BONUS = PromotionInput(
    "STATUS-MILES",
    "Status holders earn 6 miles per EUR on Hansa Air",
    RULES_FROM,
    RULES_TO,
    funder="partner",
    multiplier=Decimal("1.5"),
    partner_ids=[CORE_AIRLINE],
    tiers=list(TIERS),
)

MEMBERS = {
    "petra": ("Petra Weber", "9920000000011"),
    "jonas": ("Jonas Weber", "9920000000021"),
    "mia": ("Mia Weber", "9920000000031"),
    "lukas": ("Lukas Brandt", "9920000000041"),
}


# -- the story's steps ------------------------------------------------------------


@dataclass(frozen=True)
class Flight:
    """The airline sends a flown ticket by card: one line per segment (fare in cents)."""

    card: str
    partner: str
    ticket: str
    segments: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class OpenPool:
    member: str
    name: str


@dataclass(frozen=True)
class JoinPool:
    """Staff add a member (with consent) to the pool `opener` opened."""

    opener: str
    member: str
    role: str


@dataclass(frozen=True)
class RedeemPool:
    member: str
    partner: str
    miles: int
    key: str  # the app's Idempotency-Key


@dataclass(frozen=True)
class LeavePool:
    member: str


@dataclass(frozen=True)
class SendMiles:
    sender: str
    receiver: str
    miles: int
    key: str


@dataclass(frozen=True)
class ExpiryRun:
    """The points-expiry job, run at the step's date."""


Action = (
    Flight
    | OpenPool
    | JoinPool
    | RedeemPool
    | LeavePool
    | FileClaim
    | ConfirmClaim
    | SendMiles
    | ExpiryRun
)


def _flight(member: str, partner: str, ticket: str, *segments: tuple[int, str]) -> Flight:
    return Flight(MEMBERS[member][1], partner, ticket, segments)


ECO_CONT, BUS_CONT = "flight-economy-continental", "flight-business-continental"
ECO_INTER, BUS_INTER = "flight-economy-intercontinental", "flight-business-intercontinental"

STORY = (
    Step(at("2022-10-14T07:10"), "Jonas flies Hansa Air FRA-LIS-FRA, economy, 2 x 149.00 EUR",
         _flight("jonas", CORE_AIRLINE, "220-2210140001", (14900, ECO_CONT), (14900, ECO_CONT))),
    Step(at("2022-11-20T18:30"), "Petra flies Hansa Air FRA-HAM-FRA, economy, 2 x 100.00 EUR",
         _flight("petra", CORE_AIRLINE, "220-2211200002", (10000, ECO_CONT), (10000, ECO_CONT))),
    Step(at("2022-12-03T09:00"), "Lukas flies Hansa Air FRA-MAD-FRA, economy, 2 x 62.50 EUR",
         _flight("lukas", CORE_AIRLINE, "220-2212030003", (6250, ECO_CONT), (6250, ECO_CONT))),
    Step(at("2024-02-10T06:45"), "Mia flies Hansa Air FRA-PMI-FRA, economy, 2 x 120.00 EUR",
         _flight("mia", CORE_AIRLINE, "220-2402100004", (12000, ECO_CONT), (12000, ECO_CONT))),
    Step(at("2025-03-12T13:20"), "Petra flies Hansa Air FRA-JFK-FRA, business, "
         "2 x 2,450.00 EUR",
         _flight("petra", CORE_AIRLINE, "220-2503120005", (245000, BUS_INTER),
                 (245000, BUS_INTER))),
    Step(at("2025-03-26T22:05"), "Petra flies Hansa Air FRA-SIN-FRA, business, "
         "2 x 1,800.00 EUR: 800 QP this year",
         _flight("petra", CORE_AIRLINE, "220-2503260006", (180000, BUS_INTER),
                 (180000, BUS_INTER))),
    Step(at("2025-04-08T07:30"), "Petra, Frequent Traveller, flies Hansa Air FRA-VIE-FRA, "
         "economy, 2 x 210.00 EUR: 6 miles per EUR",
         _flight("petra", CORE_AIRLINE, "220-2504080007", (21000, ECO_CONT), (21000, ECO_CONT))),
    Step(at("2025-04-20T10:00"), "Petra flies TransPacific SFO-HNL-SFO, economy, "
         "2 x 300.00 EUR: 4 per EUR off the core airline",
         _flight("petra", "transpacific", "781-2504200008", (30000, ECO_INTER),
                 (30000, ECO_INTER))),
    Step(at("2025-05-02T12:00"), "Petra opens the family pool Weber",
         OpenPool("petra", "Weber")),
    Step(at("2025-05-02T12:05"), "The service desk adds Jonas as an adult",
         JoinPool("petra", "jonas", "adult")),
    Step(at("2025-05-02T12:06"), "and Mia as a child", JoinPool("petra", "mia", "child")),
    Step(at("2025-06-10T19:00"), "Petra books an award flight on Hansa Air with 1,500 pooled "
         "miles",
         RedeemPool("petra", CORE_AIRLINE, 1_500, "weber-award-1")),
    Step(at("2025-06-11T08:00"), "Mia tries to redeem 500 pooled miles",
         RedeemPool("mia", CORE_AIRLINE, 500, "mia-award-1")),
    Step(at("2025-07-01T09:00"), "Jonas leaves the Weber pool", LeavePool("jonas")),
    Step(at("2025-08-05T17:00"), "Lukas opens the pool Brandt", OpenPool("lukas", "Brandt")),
    Step(at("2025-08-05T17:05"), "The desk tries to add Jonas to Brandt",
         JoinPool("lukas", "jonas", "adult")),
    Step(at("2025-09-30T21:15"), "Jonas claims his Hansa Air flight of 15 May, ticket "
         "220-2505150009, business, 2 x 450.00 EUR",
         FileClaim("jonas", ClaimInput(CORE_AIRLINE, "220-2505150009", at("2025-05-15T08:00"),
                                       90000, lines=[ClaimLine(45000, BUS_CONT),
                                                     ClaimLine(45000, BUS_CONT)]))),
    Step(at("2025-10-01T10:00"), "Staff confirm the claim",
         ConfirmClaim(CORE_AIRLINE, "220-2505150009")),
    Step(at("2026-01-01T00:00"), "The expiry run of 1 January 2026", ExpiryRun()),
    Step(at("2026-01-05T16:00"), "Petra sends Lukas 2,000 miles (20.00 EUR fee, paid in "
         "the app)",
         SendMiles("petra", "lukas", 2_000, "petra-transfer-1")),
    Step(at("2026-01-10T11:00"), "The desk adds Jonas to Brandt after his cool-off",
         JoinPool("lukas", "jonas", "adult")),
)  # fmt: skip


def _key(name: str) -> IdempotencyKey:
    return IdempotencyKey(f"programme:{NAME}", name)


class StoryPlayer(ServicesPlayer):
    """The story's steps through the real services."""

    def __init__(self, ledger: LedgerService, registry: Registry) -> None:
        super().__init__(ledger, registry)
        self.pools: dict[str, int] = {}  # opener -> pool id

    async def act(self, ledger: LedgerService, when: datetime, action: Action) -> str:
        programme = Programme(ledger)
        pools = Pools(ledger)
        claims = Claims(programme, CLAIM_WINDOW_DAYS)
        match action:
            case Flight():
                purchase = Purchase(
                    action.partner,
                    when,
                    "EUR",
                    tuple(PurchaseLine(a, c) for a, c in action.segments),
                )
                receipt = await programme.earn_purchase(
                    None,
                    purchase,
                    action.ticket,
                    idempotency=_key(action.ticket),
                    card_number=action.card,
                )
                result = f"{signed(receipt.earning.points)}, {receipt.earning.qualifying_points} QP"
                if receipt.new_tier is not None:
                    result += f", now {TIERS[receipt.new_tier].name}"
                return result
            case OpenPool():
                pool = await pools.open(
                    action.member, PoolInput(action.name), f"member:{action.member}"
                )
                self.pools[action.member] = pool.id
                return "pool opened"
            case JoinPool():
                pool = await pools.join(
                    self.pools[action.opener], JoinInput(action.member, action.role), ADMIN
                )
                return f"{len(pool.members)} in the pool"
            case RedeemPool():
                redemption = await pools.redeem(
                    action.member,
                    PooledRedemption(action.partner, action.miles),
                    IdempotencyKey(f"member:{action.member}", action.key),
                )
                return ", ".join(
                    f"{part.member_id} {signed(-part.amount)}" for part in redemption.parts
                )
            case LeavePool():
                left = await pools.leave(action.member, f"member:{action.member}")
                return f"left; may join again from {left.may_join_from.date().isoformat()}"
            case FileClaim() | ConfirmClaim():
                return await self.claim(claims, action, ADMIN)
            case SendMiles():
                await ledger.transfer(
                    Transfer(action.sender, action.receiver, action.miles), _key(action.key)
                )
                return f"{action.sender} {signed(-action.miles)}, {action.receiver} " + signed(
                    action.miles
                )
            case ExpiryRun():
                before = await available(ledger)
                await ledger.expire_points()
                after = await available(ledger)
                expired = [
                    f"{m} {signed(after[m] - before[m])}" for m in after if after[m] != before[m]
                ]
                return "expired: " + (", ".join(expired) or "nothing")
        raise TypeError(f"not a step of the story: {action!r}")


async def define(ledger: LedgerService, registry: Registry) -> None:
    members = Members(ledger, Programme(ledger))
    for member_id, (name, _card) in MEMBERS.items():
        await members.enrol(MemberInput(member_id, display_name=name), ADMIN)
    for partner in PARTNERS:
        await registry.create_partner(partner, ADMIN)
    for member_id, (_name, card) in MEMBERS.items():
        await registry.issue_card(member_id, card, ADMIN)
    rules = Rulebook(ledger)
    for code, tier in TIERS.items():
        await rules.put_tier(code, tier, ADMIN)
    for partner_id, rule in EARN_RULES.items():
        await rules.create_earn_rule(partner_id, rule, ADMIN)
    for partner_id, rule in BURN_RULES.items():
        await rules.create_burn_rule(partner_id, rule, ADMIN)
    await rules.create_promotion(STATUS_BONUS, ADMIN)


def programme_ledger(ledger: LedgerService) -> LedgerService:
    return story.programme_ledger(ledger, expiry_policy=EXPIRY_POLICY, transfers=TRANSFERS)


async def loaded(ledger: LedgerService) -> bool:
    return await story.exists(ledger, "SELECT 1 FROM partners WHERE id = :p", p=CORE_AIRLINE)


async def available(ledger: LedgerService) -> dict[str, int]:
    return await story.members_available(ledger, MEMBERS)


async def load(ledger: LedgerService, registry: Registry) -> list[Outcome]:
    """Define the programme and play its story (nothing when it is loaded
    already); one outcome per step, with the balances after it."""
    return await story.load_once(
        programme_ledger(ledger), registry, loaded=loaded, define=define,
        player=StoryPlayer, story=STORY, members=MEMBERS,
    )  # fmt: skip
