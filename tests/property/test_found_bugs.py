"""The bugs the property tests found, reduced to minimal reproductions and
kept as regression tests (the state machine reaches them only now and then):

- a calendar year whose QP went negative (a purchase returned in the year after
  it was made) crashed tier evaluation: IndexError in `tier_for`, so the
  member's next purchase failed;
- points given back to an expiry-protected (gold) member by a void or a refund
  went to program:expired at once when the lot they came from was past its
  expiry, although the expiry run keeps such members' points;
- requalification read the year before last when it ran on 1 January, and
  crashed on 29 February (`datetime.replace(year=...)`)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from api.settings import Settings
from ledger.commands import Authorise, Burn, Earn, Reverse, Void
from ledger.service import LedgerService
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from tests.property.shop import ADMIN


@pytest.fixture
async def shop(engine, clock, programme_tiers, new_partner):
    """A partner earning 1 point and 1 QP per EUR, the production ledger on a
    test clock, and a way to buy there."""
    ledger = LedgerService(engine, Settings().ledger_config(), clock=clock)
    programme = Programme(ledger)
    partner = await new_partner("shop")
    await Rulebook(ledger).create_earn_rule(
        partner,
        EarnRuleInput(datetime(2020, 1, 1, tzinfo=UTC), "EUR", Decimal(1), qp_per_unit=Decimal(1)),
        ADMIN,
    )

    async def buy(member: str, eur: int, reference: str):
        purchase = Purchase(partner, clock.now, "EUR", (PurchaseLine(eur * 100, "groceries"),))
        return await programme.earn_purchase(member, purchase, reference)

    return partner, ledger, programme, buy


async def test_a_return_in_the_next_year_does_not_break_the_next_purchase(shop, clock, new_member):
    partner, _, programme, buy = shop
    member = await new_member()
    clock.now = datetime(2026, 12, 20, 12, tzinfo=UTC)
    await buy(member, 100, "P-1")  # 100 points, 100 QP in 2026
    clock.now = datetime(2027, 1, 10, 12, tzinfo=UTC)
    await programme.return_purchase(partner, "P-1", "R-1", 10_000)  # 2027's QP: -100
    receipt = await buy(member, 50, "P-2")  # 2027's QP: -50 (was an IndexError in tier_for)
    assert receipt.earning.points == 50 and receipt.earning.tier == "base"


async def test_protected_members_keep_points_given_back_after_their_lots_expiry(
    shop, clock, new_member
):
    partner, ledger, _, buy = shop
    member = await new_member()
    clock.now = datetime(2026, 5, 10, tzinfo=UTC)
    assert (await buy(member, 3000, "G-1")).new_tier == "gold"  # lot expires 2029-07-01
    clock.now = datetime(2028, 5, 10, tzinfo=UTC)
    await buy(member, 3000, "G-2")  # gold renewed to 2030-03-01
    clock.now = datetime(2029, 9, 1, tzinfo=UTC)
    await ledger.expire_points()  # gold: nothing expires
    before = (await ledger.balances(member)).available
    hold = await ledger.authorise(Authorise(member, partner, 100))
    voided = await ledger.void(Void(hold.hold.hold_id, partner))
    burn = await ledger.burn(Burn(member, partner, "B-1", 200))
    refunded = await ledger.reverse(Reverse(burn.entry_id, partner_id=partner), ADMIN)
    # They were 100 and then 200 points gone to program:expired.
    assert (voided.balances.available, refunded.balances.available) == (before, before)


async def test_requalification_on_1_january_uses_the_last_complete_year(shop, clock, new_member):
    _, _, programme, buy = shop
    member = await new_member()
    clock.now = datetime(2029, 6, 1, tzinfo=UTC)
    assert (await buy(member, 3000, "A-1")).new_tier == "gold"  # status to 2031-03-01
    clock.now = datetime(2030, 6, 1, tzinfo=UTC)
    await buy(member, 2000, "A-2")  # 2,000 QP in 2030; none in 2031
    clock.now = datetime(2032, 1, 1, 6, tzinfo=UTC)  # the job's first run since 2031-03-01
    await programme.requalify_tiers()
    # 2031, the last complete year, earned nothing (2030, now - 366 days, was read).
    assert (await programme.tier_progress(member)).tier.code == "base"


async def test_requalification_on_29_february_does_not_crash(shop, clock, new_member):
    partner, ledger, programme, buy = shop
    member = await new_member()
    clock.now = datetime(2029, 6, 1, tzinfo=UTC)
    assert (await buy(member, 1000, "B-1")).new_tier == "silver"  # status to 2031-03-01
    clock.now = datetime(2031, 6, 1, tzinfo=UTC)
    await ledger.earn(Earn.simple(member, partner, "B-2", 10, 1200))  # QP, no tier check
    clock.now = datetime(2032, 2, 29, 6, tzinfo=UTC)
    await programme.requalify_tiers()  # was ValueError: day is out of range for month
    assert (await programme.tier_progress(member)).tier.code == "silver"
