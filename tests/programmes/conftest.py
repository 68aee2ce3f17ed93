"""The API fixtures (an app on the test database, token minting) for the
programmes' tests; members with points and a partner with an earn rule."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ledger.commands import Adjust
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from tests.api.conftest import api_settings, client, token  # noqa: F401 (fixtures)

RULES_FROM = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture
def funded_member(new_member, ledger):
    """`await funded_member(points)`: a new member with that many available points."""

    async def make(points: int) -> str:
        member_id = await new_member()
        await ledger.adjust(Adjust(member_id, points, "start"), "staff:tests")
        return member_id

    return make


@pytest.fixture
async def shop(new_partner, ledger):
    """A partner earning 1 point per 2 EUR (no return window), ids of tests' own."""
    partner_id = await new_partner("shop", price_per_point=Decimal("0.01"))
    await Rulebook(ledger).create_earn_rule(
        partner_id, EarnRuleInput(RULES_FROM, "EUR", Decimal("0.5")), "staff:tests"
    )
    return partner_id
