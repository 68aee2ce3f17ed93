"""Brand clubs with a fee (clubs/): the fee paid makes the membership active
and posts the welcome bonus once; the club's multiplier pays on single and
batch earnings only while a paid term covers the purchase; the lapse job
ends the status, a renewal restores the benefit; the anniversary gift is
given once per membership and year; payment references are idempotent."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text

from clubs.club_views import ClubInput, PaymentInput
from clubs.errors import (
    FeeMismatch,
    MembershipCancelled,
    MembershipExists,
    PaymentReferenceReused,
    RenewalTooEarly,
)
from clubs.membership import Clubs
from clubs.terms import next_term, service_interval
from ledger.service import LedgerService
from operations.jobs import ClubAnniversaryGifts, LapseClubMemberships
from partners.batch import EarnItem, earn_batch
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme, PurchaseInput, PurchaseLineInput
from partners.registry import Registry
from partners.rule_inputs import EarnRuleInput, PromotionInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY

START = datetime(2025, 3, 10, 9, tzinfo=UTC)


def at(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class Story:
    """A brand (1 point per EUR), its club (12.27 EUR a year, 500 welcome
    points, 300 on each anniversary) and a x3 promotion for club members."""

    def __init__(self, engine, brand: str, club: str, member: str, card: str) -> None:
        self.engine = engine
        self.brand, self.club, self.member, self.card = brand, club, member, card
        self.refs = 0

    def ledger(self, when: datetime) -> LedgerService:
        return LedgerService(self.engine, clock=lambda: when)

    def clubs(self, when: datetime) -> Clubs:
        return Clubs(self.ledger(when))

    async def pay(self, when: datetime, reference: str, amount: int = 1227):
        payment = PaymentInput(reference, self.club, self.member, amount, "EUR")
        return await self.clubs(when).pay(payment, "staff:tests")

    async def earn(self, when: datetime, euros: int) -> int:
        self.refs += 1
        purchase = Purchase(self.brand, when, "EUR", (PurchaseLine(euros * 100, "groceries"),))
        receipt = await Programme(self.ledger(when)).earn_purchase(
            self.member, purchase, f"till-{self.refs}"
        )
        return receipt.earning.points

    async def earn_in_batch(self, when: datetime, euros: int) -> int:
        self.refs += 1
        batch = await earn_batch(
            Programme(self.ledger(when)),
            self.brand,
            [
                EarnItem(
                    self.card,
                    f"batch-{self.refs}",
                    PurchaseInput("EUR", [PurchaseLineInput(euros * 100, "groceries")], when),
                )
            ],
        )
        (outcome,) = batch.outcomes
        return outcome.receipt.earning.points

    async def status(self, when: datetime) -> str:
        (membership,) = await self.clubs(when).memberships(self.member)
        return membership.status


@pytest.fixture
async def story(engine, ledger, new_partner, new_member, new_id) -> Story:
    brand = await new_partner("brand", price_per_point=Decimal("0.01"))
    member = await new_member()
    rules = Rulebook(ledger)
    await rules.create_earn_rule(
        brand, EarnRuleInput(at("2020-01-01T00:00"), "EUR", Decimal(1)), "staff:tests"
    )
    club = new_id("club")
    await Clubs(ledger).create(
        ClubInput(club, "Cooking studio", brand, 1227, "EUR", 12, 500, 300), "staff:tests"
    )
    await rules.create_promotion(
        PromotionInput(
            new_id("CLUB3X"),
            "x3 for club members",
            at("2020-01-01T00:00"),
            at("2030-01-01T00:00"),
            funder="partner",
            multiplier=Decimal(3),
            partner_ids=[brand],
            clubs=[club],
        ),
        "staff:tests",
    )
    card = str(uuid.uuid4().int)[:16]
    await Registry(engine, SecretBox(TEST_SECRET_KEY)).issue_card(member, card, "staff:tests")
    return Story(engine, brand, club, member, card)


async def test_the_fee_paid_activates_the_membership_and_the_welcome_bonus_once(story, ledger):
    await story.clubs(START).join(story.member, story.club)
    assert await story.status(START) == "pending_payment"
    # Pending payment: no benefit yet.
    assert await story.earn(START, 10) == 10

    paid = await story.pay(START, "psp-1")
    assert (paid.term_starts_at, paid.term_ends_at) == (START, at("2026-03-10T09:00"))
    assert (paid.renewal, paid.welcome_points) == (False, 500)
    assert await story.status(START) == "active"
    # The same payment again: the stored answer, nothing posted twice.
    assert await story.pay(START, "psp-1") == paid
    with pytest.raises(PaymentReferenceReused):
        await story.pay(START, "psp-1", amount=1000)
    with pytest.raises(FeeMismatch):
        await story.pay(START, "psp-2", amount=1000)
    # One renewal may be paid ahead, not two.
    renewal = await story.pay(at("2025-04-01T00:00"), "psp-3")
    assert (renewal.term_starts_at, renewal.term_ends_at, renewal.welcome_points) == (
        at("2026-03-10T09:00"),
        at("2027-03-10T09:00"),
        0,
    )
    with pytest.raises(RenewalTooEarly):
        await story.pay(at("2025-04-02T00:00"), "psp-4")
    with pytest.raises(MembershipExists):
        await story.clubs(START).join(story.member, story.club)

    assert (await ledger.balances(story.member)).available == 10 + 500
    async with story.engine.connect() as conn:
        money = (
            await conn.execute(
                text("SELECT sum(amount_minor) FROM club_payments WHERE member_id = :m"),
                {"m": story.member},
            )
        ).scalar_one()
        welcome = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM postings WHERE account = :a AND member_id IS NULL "
                    "AND entry_id IN (SELECT id FROM journal_entries WHERE member_id = :m "
                    "AND partner_reference LIKE 'club-%-welcome')"
                ),
                {"a": f"partner:{story.brand}:issued", "m": story.member},
            )
        ).scalar_one()
    assert (money, welcome) == (2 * 1227, 1)  # fees are money, not points


async def test_the_benefit_holds_on_single_and_batch_earns_only_while_paid(story):
    await story.clubs(START).join(story.member, story.club)
    await story.pay(START, "psp-a")
    during = at("2025-06-01T12:00")
    assert await story.earn(during, 20) == 60
    assert await story.earn_in_batch(during, 20) == 60

    # The term ended (2026-03-10): plain points, even before the lapse job runs.
    after = at("2026-04-01T12:00")
    assert await story.earn(after, 20) == 20
    assert await story.earn_in_batch(after, 20) == 20
    assert await story.status(after) == "active"

    lapse = LapseClubMemberships(story.ledger(after))
    assert (await lapse.due(None)).items >= 1
    assert await lapse.run(None, lambda batch: None) >= 1
    assert await story.status(after) == "lapsed"
    assert await lapse.run(None, lambda batch: None) == 0  # idempotent

    # Renewal after the lapse: a new term from the payment, no second welcome.
    renewal = await story.pay(at("2026-04-02T08:00"), "psp-b")
    assert (renewal.renewal, renewal.welcome_points) == (True, 0)
    assert renewal.term_starts_at == at("2026-04-02T08:00")
    assert await story.status(at("2026-04-02T08:00")) == "active"
    assert await story.earn(at("2026-04-03T12:00"), 20) == 60
    assert await story.earn_in_batch(at("2026-04-03T12:00"), 20) == 60
    # A purchase dated in the gap still earns plain points.
    assert await story.earn(at("2026-04-01T18:00"), 20) == 20


async def test_a_cancellation_keeps_the_paid_term_then_ends(story):
    clubs = story.clubs(START)
    await clubs.join(story.member, story.club)
    await story.pay(START, "psp-c")
    (view,) = [await clubs.cancel(story.member, story.club)]
    assert (view.status, view.cancels_at) == ("active", at("2026-03-10T09:00"))
    with pytest.raises(MembershipCancelled):
        await story.pay(at("2025-05-01T00:00"), "psp-d")
    assert await story.earn(at("2025-05-01T00:00"), 10) == 30
    end = at("2026-03-10T09:00")
    await LapseClubMemberships(story.ledger(end)).run(None, lambda batch: None)
    assert await story.status(end) == "cancelled"
    # Joining again waits for a payment; the welcome bonus is not paid twice.
    rejoined = await story.clubs(end).join(story.member, story.club)
    assert rejoined.status == "pending_payment"
    assert (await story.pay(at("2026-03-11T00:00"), "psp-e")).welcome_points == 0


async def test_the_anniversary_gift_is_given_once_per_year(story, ledger):
    await story.clubs(START).join(story.member, story.club)
    await story.pay(START, "psp-f")
    await story.pay(at("2026-02-01T00:00"), "psp-g")
    before = (await ledger.balances(story.member)).available
    jobs = [ClubAnniversaryGifts(story.ledger(at("2026-03-12T00:00"))) for _ in range(2)]
    # Not before the first anniversary.
    early = ClubAnniversaryGifts(story.ledger(at("2026-03-09T00:00")))
    assert await early.run(None, lambda batch: None) == 0

    first = await jobs[0].run(None, lambda batch: None)
    again = await jobs[1].run(None, lambda batch: None)
    assert again == 0 and first >= 1
    assert (await ledger.balances(story.member)).available == before + 300
    async with story.engine.connect() as conn:
        gifts = (
            await conn.execute(
                text(
                    "SELECT g.year FROM club_gifts g JOIN club_memberships m "
                    "ON m.id = g.membership_id WHERE m.member_id = :m"
                ),
                {"m": story.member},
            )
        ).scalars()
        assert list(gifts) == [2026]


def test_the_term_a_payment_buys():
    now = at("2025-01-31T10:00")
    first = next_term("pending_payment", None, False, now, 12)
    assert (first.starts_at, first.ends_at, first.renewal) == (now, at("2026-01-31T10:00"), False)
    # A renewal starts where the running term ends (month ends kept short).
    renewal = next_term("active", at("2025-02-28T10:00"), False, now, 1)
    assert (renewal.starts_at, renewal.ends_at) == (at("2025-02-28T10:00"), at("2025-03-28T10:00"))
    lapsed = next_term("lapsed", at("2024-12-01T00:00"), False, now, 12)
    assert (lapsed.starts_at, lapsed.renewal) == (now, True)
    with pytest.raises(MembershipCancelled):
        next_term("active", at("2025-06-01T00:00"), True, now, 12)


def test_the_service_interval_of_a_visit():
    registered = at("2024-05-31T12:00")
    assert service_interval(registered, at("2024-05-31T12:00"), 12) == 0
    assert service_interval(registered, at("2025-05-31T11:59"), 12) == 0
    assert service_interval(registered, at("2025-05-31T12:00"), 12) == 1
    assert service_interval(registered, at("2027-01-15T00:00"), 12) == 2
    assert service_interval(registered, at("2024-07-30T00:00"), 2) == 0
    assert service_interval(registered, at("2024-07-31T12:00"), 2) == 1
