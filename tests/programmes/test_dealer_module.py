"""The producer's service module and its dealers (clubs/servicing.py, the
co-funded promotion of partners/rule_inputs.py): a service visit earns the
bonus once per product and interval; a dealer's promotion paid half by the
producer posts each share on its funder's `issued` account, the odd point
with the dealer, and each partner's settlement statement charges its share."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from clubs.errors import DealerNotAuthorised, ServiceVisitExists
from clubs.servicing import ProductInput, ServicePlanInput, Servicing, VisitInput
from finance.settlement import settle
from ledger.service import LedgerService
from partners.earning import EarnRule, Offer, Purchase, PurchaseLine, evaluate, split_share
from partners.errors import InvalidRule
from partners.programme import Programme
from partners.rule_inputs import EarnRuleInput, PromotionInput
from partners.rulebook import Rulebook


def at(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def servicing(engine, when: datetime) -> Servicing:
    return Servicing(LedgerService(engine, clock=lambda: when))


async def issued(ledger: LedgerService, partner_id: str) -> int:
    view = await ledger.account_balance(f"partner:{partner_id}:issued")
    return -sum(b.balance for b in view.balances if b.asset == "PTS")


@pytest.fixture
async def network(new_partner):
    producer = await new_partner("producer", price_per_point=Decimal("0.01"))
    dealer = await new_partner("dealer", price_per_point=Decimal("0.01"))
    other = await new_partner("garage", price_per_point=Decimal("0.01"))
    return producer, dealer, other


async def test_a_service_visit_earns_the_bonus_once_per_interval(
    engine, ledger, network, new_member, assert_clean
):
    producer, dealer, other = network
    member = await new_member()
    await servicing(engine, at("2024-01-01T00:00")).put_plan(
        producer, ServicePlanInput(12, 250, [dealer]), "staff:tests"
    )
    product = await servicing(engine, at("2024-05-02T10:00")).register(
        member, ProductInput(producer, "WVW-ZZZ-1K-Z4W-000123")
    )
    assert product.registered_at == at("2024-05-02T10:00")

    async def visit(reference: str, when: str, dealer_id: str = dealer):
        service = servicing(engine, at(when))
        return await service.visit(
            dealer_id,
            VisitInput(producer, "WVW-ZZZ-1K-Z4W-000123", reference, at(when)),
            f"partner:{dealer_id}",
        )

    first = await visit("JOB-1", "2024-11-20T09:00")
    assert (first.interval, first.bonus_points) == (1, 250)
    assert (first.interval_from, first.interval_to) == (
        at("2024-05-02T10:00"),
        at("2025-05-02T10:00"),
    )
    # Another visit in the same interval is recorded with no points.
    assert (await visit("JOB-2", "2025-04-30T09:00")).bonus_points == 0
    # The same report again: the stored answer.
    assert await visit("JOB-1", "2024-11-20T09:00") == first
    with pytest.raises(ServiceVisitExists):
        await visit("JOB-1", "2024-12-01T09:00")
    with pytest.raises(DealerNotAuthorised):
        await visit("G-1", "2025-06-01T09:00", other)
    second = await visit("JOB-3", "2025-06-01T09:00")
    assert (second.interval, second.bonus_points) == (2, 250)
    assert (await ledger.balances(member)).available == 500
    assert await issued(ledger, dealer) == 500 and await issued(ledger, producer) == 0
    await assert_clean()


async def test_a_producer_funded_dealer_promotion_is_split_on_the_settlement(
    engine, ledger, network, new_member, new_id
):
    producer, dealer, _ = network
    rules = Rulebook(ledger)
    await rules.create_earn_rule(
        dealer, EarnRuleInput(at("2020-01-01T00:00"), "EUR", Decimal(1)), "staff:tests"
    )
    code = new_id("SERVICE2X")
    await rules.create_promotion(
        PromotionInput(
            code,
            "Double points on servicing, half paid by the producer",
            at("2026-10-01T00:00"),
            at("2026-11-01T00:00"),
            funder="partner",
            multiplier=Decimal(2),
            partner_ids=[dealer],
            co_funder_id=producer,
            co_funder_share=Decimal("0.5"),
        ),
        "staff:tests",
    )
    member = await new_member()
    when = at("2026-10-14T15:30")
    purchase = Purchase(dealer, when, "EUR", (PurchaseLine(12_345, "general"),))
    receipt = await Programme(LedgerService(engine, clock=lambda: when)).earn_purchase(
        member, purchase, "INV-2026-0815"
    )
    lines = [(ln.kind, ln.amount, ln.funder) for ln in receipt.earning.lines]
    # 123 base points; the promotion's 123: 61 (half, rounded down) by the
    # producer, the other 62 (with the odd point) by the dealer.
    assert lines == [
        ("base", 123, "partner"),
        ("promotion", 62, "partner"),
        ("promotion", 61, f"partner:{producer}"),
    ]
    assert await issued(ledger, dealer) == 185 and await issued(ledger, producer) == 61

    dealer_statement = await settle(engine, dealer, "2026-10", "staff:tests")
    producer_statement = await settle(engine, producer, "2026-10", "staff:tests")
    assert [(ln.code, ln.points, ln.amount_minor) for ln in dealer_statement.lines] == [
        ("issued", 123, 123),
        ("promotions", 62, 62),
    ]
    assert [(ln.code, ln.points, ln.amount_minor) for ln in producer_statement.lines] == [
        ("promotions", 61, 61),
    ]
    assert (dealer_statement.net_minor, producer_statement.net_minor) == (185, 61)


async def test_a_co_funded_promotion_is_checked(ledger, network, new_id):
    producer, dealer, _ = network
    rules = Rulebook(ledger)

    def promotion(**changes) -> PromotionInput:
        terms = {
            "funder": "partner",
            "multiplier": Decimal(2),
            "partner_ids": [dealer],
            "co_funder_id": producer,
            "co_funder_share": Decimal("0.5"),
            **changes,
        }
        return PromotionInput(
            new_id("P"), "p", at("2026-01-01T00:00"), at("2026-02-01T00:00"), **terms
        )

    for changes, field in (
        ({"co_funder_share": Decimal(1)}, "co_funder_share"),
        ({"co_funder_share": None}, "co_funder_share"),
        ({"funder": "program", "partner_ids": []}, "co_funder_id"),
        ({"co_funder_id": dealer}, "co_funder_id"),
        ({"co_funder_id": "no-such-partner"}, "co_funder_id"),
        ({"clubs": ["no-such-club"]}, "clubs"),
    ):
        with pytest.raises(InvalidRule) as refused:
            await rules.create_promotion(promotion(**changes), "staff:tests")
        assert refused.value.extensions["field"] == field, changes


def test_the_engine_splits_a_co_funded_offer_and_checks_the_club():
    rule = EarnRule("dealer", 1, at("2020-01-01T00:00"), None, "EUR", Decimal(1))
    purchase = Purchase("dealer", at("2026-10-14T15:30"), "EUR", (PurchaseLine(10_199, "general"),))
    offer = Offer(
        "promotion",
        "SPLIT",
        "split",
        at("2026-10-01T00:00"),
        at("2026-11-01T00:00"),
        funder="partner",
        multiplier=Decimal(2),
        partner_ids=frozenset({"dealer"}),
        clubs=frozenset({"kochclub"}),
        co_funder="maker",
        co_funder_share=Decimal("0.3"),
    )
    plain = evaluate(purchase, rule, offers=[offer], clubs=frozenset({"other-club"}))
    assert [(ln.kind, ln.amount) for ln in plain.lines] == [("base", 101)]
    split = evaluate(purchase, rule, offers=[offer], clubs=frozenset({"kochclub", "other-club"}))
    # 101 promotion points: 30 (30.3 rounded down) by the maker, 71 by the dealer.
    assert [(ln.amount, ln.funder) for ln in split.lines if ln.kind == "promotion"] == [
        (71, "partner"),
        (30, "partner:maker"),
    ]
    assert split_share(1, Decimal("0.5")) == 0  # a single point stays with the dealer
