"""Batch earning against the real PostgreSQL: the same purchases earned one by
one at one partner and as one batch at an identical partner post the same
postings, line for line (rules, category multipliers, tier bonus after an
upgrade inside the batch, a budgeted promotion running out, caps, the
pending window); a batch with duplicate references, unknown and blocked
cards and bad lines posts the good items once and reports the rest."""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, text

from members.registry import CloseInput, Members
from partners.batch import MAX_BATCH_ITEMS, EarnItem, earn_batch
from partners.errors import InvalidPurchase, InvalidRule
from partners.programme import MAX_LINE_MINOR, Programme, PurchaseInput, PurchaseLineInput
from partners.registry import Registry
from partners.rule_inputs import EarnRuleInput, PromotionInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY

ADMIN = "staff:tests"
FROM = datetime(2024, 1, 1, tzinfo=UTC)
CATEGORIES = ("groceries", "electronics", "vouchers", "drugstore")


def card_number() -> str:
    return "8" + str(uuid.uuid4().int)[:15]


async def twin_partners(ledger, new_partner, new_id, budget: int) -> tuple[str, str]:
    """Two partners with the same contract, rule and (own) budgeted promotion."""
    rules, now = Rulebook(ledger), datetime.now(UTC)
    partners = []
    for _ in range(2):
        partner = await new_partner(return_window_days=7)
        await rules.create_earn_rule(
            partner,
            EarnRuleInput(
                FROM,
                "EUR",
                Decimal("0.5"),
                category_multipliers={"electronics": Decimal(2)},
                excluded_categories=["vouchers"],
                qp_per_unit=Decimal(1),
                cap_per_transaction=400,
            ),
            ADMIN,
        )
        await rules.create_promotion(
            PromotionInput(
                new_id("TWIN").upper(),
                "double drugstore",
                now - timedelta(days=1),
                now + timedelta(days=1),
                multiplier=Decimal(2),
                partner_ids=[partner],
                categories=["drugstore"],
                budget_points=budget,
            ),
            ADMIN,
        )
        partners.append(partner)
    return partners[0], partners[1]


async def members_with_cards(engine, new_member, count: int) -> list[tuple[str, str]]:
    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    holders = []
    for _ in range(count):
        member, card = await new_member(), card_number()
        await registry.issue_card(member, card, ADMIN)
        holders.append((member, card))
    return holders


async def postings_of(engine, entry_id: int | None, names: dict[str, str]) -> list[tuple]:
    """An entry's postings with party ids replaced by their role in the test."""
    if entry_id is None:
        return []
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT account, asset, amount FROM postings WHERE entry_id = :e ORDER BY id"),
            {"e": entry_id},
        )
        result = []
        for r in rows:
            account = r.account
            for real, role in names.items():
                account = account.replace(f":{real}:", f":{role}:")
            result.append((account, r.asset, r.amount))
        return sorted(result)


purchases = st.lists(
    st.tuples(
        st.integers(0, 3),  # which member
        st.lists(
            st.tuples(st.integers(0, 120_000), st.sampled_from(CATEGORIES)), min_size=1, max_size=3
        ),
    ),
    min_size=1,
    max_size=12,
)


# Every example enrols its own members and partners, so the function-scoped
# fixtures (factories) are safe to share between examples.
@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(basket=purchases)
async def test_a_batch_posts_what_the_same_purchases_earn_one_by_one(
    basket, ledger, engine, new_member, new_partner, new_id, programme_tiers
):
    programme = Programme(ledger)
    single, batched = await twin_partners(ledger, new_partner, new_id, budget=150)
    one_by_one = await members_with_cards(engine, new_member, 4)
    together = await members_with_cards(engine, new_member, 4)
    items = [
        EarnItem(
            card_number=together[who][1],
            reference=f"B-{index}",
            purchase=PurchaseInput("EUR", [PurchaseLineInput(a, c) for a, c in lines]),
        )
        for index, (who, lines) in enumerate(basket)
    ]
    expected = []
    for index, (who, _lines) in enumerate(basket):
        member = one_by_one[who][0]
        purchase = items[index].purchase.to_purchase(single, datetime.now(UTC))
        receipt = await programme.earn_purchase(member, purchase, f"S-{index}")
        names = {single: "shop", member: f"m{who}"}
        expected.append(
            (
                [(ln.amount, ln.kind, ln.asset, ln.funder) for ln in receipt.earning.lines],
                receipt.new_tier,
                await postings_of(engine, receipt.entry_id, names),
            )
        )

    batch = await earn_batch(programme, batched, items)

    assert (batch.posted, batch.duplicates, batch.rejected) == (len(items), 0, 0)
    got = []
    for (who, _), outcome in zip(basket, batch.outcomes, strict=True):
        receipt = outcome.receipt
        names = {batched: "shop", together[who][0]: f"m{who}"}
        got.append(
            (
                [(ln.amount, ln.kind, ln.asset, ln.funder) for ln in receipt.earning.lines],
                receipt.new_tier,
                await postings_of(engine, receipt.entry_id, names),
            )
        )
    assert got == expected
    for (member_a, _), (member_b, _) in zip(one_by_one, together, strict=True):
        a, b = await ledger.balances(member_a), await ledger.balances(member_b)
        assert (a.available, a.pending, a.qp) == (b.available, b.pending, b.qp)


async def test_bad_items_are_reported_and_the_good_ones_post_once(
    ledger, engine, new_member, new_partner, new_id, assert_clean
):
    programme = Programme(ledger)
    partner, _ = await twin_partners(ledger, new_partner, new_id, budget=10_000)
    (member, card), (blocked_member, blocked_card) = await members_with_cards(engine, new_member, 2)
    await Registry(engine, SecretBox(TEST_SECRET_KEY)).block_card(
        blocked_member, blocked_card, ADMIN
    )
    groceries = PurchaseInput("EUR", [PurchaseLineInput(2000, "groceries")])
    await earn_batch(programme, partner, [EarnItem(card, "OLD-1", groceries)])

    def item(reference, card=card, purchase=groceries, coupons=()):
        return EarnItem(card, reference, purchase, list(coupons))

    items = [
        item("N-1"),
        item("OLD-1"),  # used by an earlier call
        item("N-2"),
        item("N-2"),  # twice in this batch: the second is the duplicate
        item("N-3", card="9999999999999999"),
        item("N-4", card=blocked_card),
        item("N-5", purchase=PurchaseInput("EUR", [PurchaseLineInput(-5, "groceries")])),
        item("N-6", purchase=PurchaseInput("XXX", [PurchaseLineInput(500, "groceries")])),
        item("N-7", coupons=["NO-SUCH-COUPON"]),
        item("x" * 65),
        item("N-8"),
    ]
    batch = await earn_batch(programme, partner, items)
    codes = [o.error.code if o.error else "posted" for o in batch.outcomes]
    assert codes == [
        "posted",
        "duplicate-partner-reference",
        "posted",
        "duplicate-partner-reference",
        "card-not-found",
        "card-blocked",
        "invalid-purchase",
        "unknown-currency",
        "coupon-not-found",
        "invalid-purchase",
        "posted",
    ]
    assert (batch.posted, batch.duplicates, batch.rejected, batch.points) == (3, 2, 6, 30)
    assert (await ledger.balances(member)).pending == 40  # OLD-1 and the three posted
    async with engine.connect() as conn:
        purchases = (
            await conn.execute(
                text("SELECT count(*) FROM partner_purchases WHERE partner_id = :p"),
                {"p": partner},
            )
        ).scalar_one()
    assert purchases == 4
    with pytest.raises(InvalidPurchase):
        await earn_batch(programme, partner, [])
    with pytest.raises(InvalidPurchase):
        await earn_batch(programme, partner, [item(f"M-{i}") for i in range(MAX_BATCH_ITEMS + 1)])
    await assert_clean()


async def test_a_batch_costs_the_same_statements_whatever_its_size(
    ledger, engine, new_member, new_partner, new_id, programme_tiers
):
    """Set-based: ten purchases of five members cost as many statements as
    one purchase (tier upgrades, budgets and pending points included)."""
    programme = Programme(ledger)
    partner, _ = await twin_partners(ledger, new_partner, new_id, budget=10_000)
    holders = await members_with_cards(engine, new_member, 7)

    def items(prefix: str, count: int, who: list) -> list[EarnItem]:
        return [
            EarnItem(
                who[i % len(who)][1],
                f"{prefix}-{i}",
                PurchaseInput(
                    "EUR",
                    [
                        PurchaseLineInput(120_000, "drugstore"),
                        PurchaseLineInput(900, "electronics"),
                    ],
                ),
            )
            for i in range(count)
        ]

    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    await earn_batch(programme, partner, items("WARM", 1, holders[6:]))  # definitions cached
    counts = []
    for prefix, count, who in (("ONE", 1, holders[5:6]), ("TEN", 10, holders[:5])):
        statements.clear()
        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            batch = await earn_batch(programme, partner, items(prefix, count, who))
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", record)
        assert batch.posted == count
        assert any(o.receipt.new_tier for o in batch.outcomes)  # upgrades booked too
        counts.append(len(statements))
    assert counts[0] == counts[1], counts


async def test_a_closed_members_card_is_refused_alone_where_no_budget_runs(
    ledger, engine, new_member, new_partner, assert_clean
):
    """At a partner without a budgeted promotion the opening statement takes
    the card holders' locks too: only the active ones (the database refuses
    any account change of a closed member), so a closed member's card is
    refused alone and the rest of the batch posts."""
    programme = Programme(ledger)
    partner = await new_partner(return_window_days=0)
    await Rulebook(ledger).create_earn_rule(
        partner, EarnRuleInput(FROM, "EUR", Decimal("0.5")), ADMIN
    )
    (member, card), (leaver, leavers_card) = await members_with_cards(engine, new_member, 2)
    groceries = PurchaseInput("EUR", [PurchaseLineInput(2000, "groceries")])
    await earn_batch(programme, partner, [EarnItem(card, "WARM", groceries)])
    await Members(ledger, programme).close(leaver, CloseInput("moving away"), ADMIN)
    batch = await earn_batch(
        programme,
        partner,
        [EarnItem(card, "A", groceries), EarnItem(leavers_card, "B", groceries)],
    )
    assert [o.error.code if o.error else "posted" for o in batch.outcomes] == [
        "posted",
        "card-blocked",
    ]
    assert (await ledger.balances(member)).available == 20
    await assert_clean()


async def test_an_earning_beyond_what_a_posting_carries_is_refused_alone(
    ledger, engine, new_member, new_partner, new_id, assert_clean
):
    """Rates and bonuses are bounded, yet the highest rate, the highest
    multiplier and the largest purchase line together earn more than a
    posting may carry (10^12 points): that purchase is refused
    (`invalid-amount`), the others of its batch post; a fixed bonus beyond
    ten million points is refused when the offer is made."""
    rules, now = Rulebook(ledger), datetime.now(UTC)
    partner = await new_partner()
    await rules.create_earn_rule(partner, EarnRuleInput(FROM, "EUR", Decimal(10_000)), ADMIN)
    window = (now - timedelta(days=1), now + timedelta(days=1))
    for category in ("electronics", "drugstore"):
        await rules.create_promotion(
            PromotionInput(
                new_id("HUGE").upper(),
                f"x100 on {category}",
                *window,
                multiplier=Decimal(100),
                partner_ids=[partner],
                categories=[category],
            ),
            ADMIN,
        )
    with pytest.raises(InvalidRule, match="fixed_bonus"):
        await rules.create_promotion(
            PromotionInput(new_id("BONUS").upper(), "too much", *window, fixed_bonus=10**7 + 1),
            ADMIN,
        )
    ((member, card),) = await members_with_cards(engine, new_member, 1)
    small = PurchaseInput("EUR", [PurchaseLineInput(1_000, "groceries")])
    huge = PurchaseInput("EUR", [PurchaseLineInput(MAX_LINE_MINOR, "electronics")])
    # Each of its earning lines within the bound (the two promotions' 0.594
    # and the base's 0.012 of 10^12), their sum beyond it: a full return of
    # it could not be posted in one.
    lines = PurchaseInput(
        "EUR",
        [PurchaseLineInput(60_000_000, "electronics"), PurchaseLineInput(60_000_000, "drugstore")],
    )
    batch = await earn_batch(
        Programme(ledger),
        partner,
        [
            EarnItem(card, "S-1", small),
            EarnItem(card, "H-1", huge),
            EarnItem(card, "H-2", lines),
            EarnItem(card, "S-2", small),
        ],
    )
    codes = [o.error.code if o.error else "posted" for o in batch.outcomes]
    assert codes == ["posted", "invalid-amount", "invalid-amount", "posted"]
    assert (await ledger.balances(member)).available == 2 * 100_000
    await assert_clean()
