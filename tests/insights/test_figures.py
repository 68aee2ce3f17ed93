"""Every figure on the ten-member programme (conftest.py), against numbers
worked out by hand, and the SQL against the pure reference functions."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from finance.period import Period
from insights import coalition, pareto, promotions, retention, rfm, tiers
from insights.reading import read_only
from tests.insights.conftest import END, START

D = Decimal
WINDOW = Period(START, END)
SPEND_EUR = {"m01": 1000, "m02": 500, "m03": 200, "m04": 100, "m05": 80, "m06": 60, "m07": 40,
             "m08": 10, "m09": 5, "m10": 5}  # fmt: skip


async def test_reads_are_read_only(programme10):
    async with read_only(programme10.engine) as conn:
        with pytest.raises(DBAPIError, match="read-only transaction"):
            await conn.execute(text("DELETE FROM signature_replays"))


async def test_pareto_of_spend_points_and_redemptions(programme10):
    async with read_only(programme10.engine) as conn:
        answer = await pareto.pareto(conn, WINDOW, "EUR")
    found = {(d.partner_id, d.metric): d for d in answer.distributions}
    spend = found[(None, "spend")]
    assert (spend.members, spend.total) == (10, 200_000)
    # The top 1 and 5 % are one member (m01, 1,000 of 2,000 EUR), the top 10 % too,
    # the top 20 % two (m01 and m02: 1,500).
    assert [(t.percent, t.members, t.share) for t in spend.top] == [
        (1, 1, D("0.5000")), (5, 1, D("0.5000")), (10, 1, D("0.5000")), (20, 2, D("0.7500")),
    ]  # fmt: skip
    # Gini: sum of (2i - n - 1) x over 5, 5, 10, 40, 60, 80, 100, 200, 500, 1,000
    # = 13,570; / (10 x 2,000) = 0.6785.
    assert spend.gini == D("0.6785")
    assert len(spend.lorenz) == 21
    assert (spend.lorenz[0].members, spend.lorenz[0].value) == (D(0), D(0))
    # The bottom half: 5 + 5 + 10 + 40 + 60 = 120 of 2,000.
    assert (spend.lorenz[10].members, spend.lorenz[10].value) == (D("0.5000"), D("0.0600"))
    assert (spend.lorenz[20].members, spend.lorenz[20].value) == (D(1), D(1))
    assert spend == pareto.distribution(
        pareto.summarise([euros * 100 for euros in SPEND_EUR.values()], pareto.PERCENTS, 20),
        "spend",
    )
    # Points issued: spend in points plus the promotion (m02 +100, m04 +25, m07 +40).
    issued = {**SPEND_EUR, "m02": 600, "m04": 125, "m07": 80}
    assert found[(None, "points_issued")] == pareto.distribution(
        pareto.summarise(issued.values(), pareto.PERCENTS, 20), "points_issued"
    )
    redemptions = found[(None, "redemptions")]  # m01 300, m02 100
    assert (redemptions.members, redemptions.total, redemptions.gini) == (2, 400, D("0.2500"))
    assert redemptions.top[0].share == D("0.7500")
    # Per partner: the airline's spenders are m01 (200) and m09 (5).
    airline = found[("airline", "spend")]
    assert (airline.members, airline.total, airline.top[-1].share) == (2, 20_500, D("0.9756"))
    assert [d.partner_id for d in answer.distributions[::3]] == [
        None, "airline", "drugstore", "fuelstation",
    ]  # fmt: skip

    async with read_only(programme10.engine) as conn:
        one = await pareto.pareto(conn, WINDOW, "EUR", partner_id="airline")
    assert [d for d in one.distributions] == [
        d for d in answer.distributions if d.partner_id == "airline"
    ]


async def test_rfm_scores_and_segments(programme10):
    async with read_only(programme10.engine) as conn:
        answer = await rfm.rfm(conn, WINDOW, "EUR")
    assert (answer.members, answer.spend) == (10, 200_000)
    segments = {s.segment: (s.members, s.spend) for s in answer.segments}
    assert segments == {
        "champions": (2, 150_000),  # m01, m02
        "loyal": (2, 18_000),  # m04, m05
        "potential_loyalists": (1, 500),  # m09
        "new": (1, 4_000),  # m07
        "cannot_lose": (1, 20_000),  # m03
        "at_risk": (1, 6_000),  # m06
        "hibernating": (1, 500),  # m10
        "lost": (1, 1_000),  # m08
    }
    for score in ("r", "f", "m"):  # quintiles of 2 members each
        counts = {}
        for cell in answer.cells:
            counts[getattr(cell, score)] = counts.get(getattr(cell, score), 0) + cell.members
        assert counts == {1: 2, 2: 2, 3: 2, 4: 2, 5: 2}

    async with read_only(programme10.engine) as conn:
        m03 = await rfm.member_insight(conn, "m03", WINDOW, "EUR")
        m07 = await rfm.member_insight(conn, "m07", WINDOW, "EUR")
    assert m03.rfm is not None
    assert (m03.rfm.r, m03.rfm.f, m03.rfm.m, m03.rfm.segment) == (2, 4, 4, "cannot_lose")
    assert (m03.rfm.recency_days, m03.rfm.frequency, m03.rfm.monetary) == (102, 4, 20_000)
    assert [(p.partner_id, p.purchases, p.spend) for p in m03.partners] == [
        ("drugstore", 2, 10_000), ("fuelstation", 2, 10_000),
    ]  # fmt: skip
    assert (m03.available, m03.expiring_within_90_days, m03.tier) == (200, 100, None)
    assert m07.rfm is not None and m07.rfm.segment == "new"


async def test_lost_members_churn_and_cohorts(programme10):
    async with read_only(programme10.engine) as conn:
        reference = retention.reference_window(None, None, END, 90)
        lost = await retention.lost_members(conn, reference, END, 90, "EUR")
        page = await retention.lost_members(conn, reference, END, 90, "EUR", limit=2, offset=2)
        first, end = retention.month_range("2026-01-01", "2026-07-01", END)
        figures = await retention.retention_figures(conn, first, end, END, 90, 6)
    # Active before 2026-04-02 (90 days before July 1st): m01, m02, m03, m04, m06,
    # m08, m10; of them m03, m06, m08 and m10 have not come back since.
    assert (lost.reference_members, lost.lost, lost.lost_share) == (7, 4, D("0.5714"))
    assert [
        (m.member_id, m.partners, m.purchases, m.spend, m.available, m.expiring_within_90_days)
        for m in lost.members
    ] == [
        ("m03", ["drugstore", "fuelstation"], 4, 20_000, 200, 100),
        ("m06", ["drugstore"], 2, 6_000, 60, 60),
        ("m08", ["fuelstation"], 1, 1_000, 10, 10),
        ("m10", ["drugstore"], 1, 500, 5, 0),
    ]
    assert lost.members[0].last_activity_at == datetime(2026, 3, 20, 10, tzinfo=UTC)
    assert lost.members[0].days_inactive == 102
    assert [m.member_id for m in page.members] == ["m08", "m10"]
    assert page.lost == 4

    churn = {m.month: (m.alive_at_start, m.churned, m.churn_rate) for m in figures.churn.months}
    assert churn["2026-04"] == (7, 1, D("0.1429"))  # m08 (last seen 01-15)
    assert churn["2026-05"] == (7, 1, D("0.1429"))  # m06 (02-20)
    assert churn["2026-06"] == (7, 2, D("0.2857"))  # m03 (03-20), m10 (03-25)
    cohorts = {c.cohort: (c.members, c.retention) for c in figures.cohorts.cohorts}
    assert cohorts["2026-01"] == (
        5, [D(1), D("0.8000"), D("0.6000"), D("0.2000"), D("0.2000"), D("0.4000"), None],
    )  # fmt: skip
    assert cohorts["2026-02"] == (
        1, [D(1), D(1), D(0), D(1), D(1), None, None],
    )  # fmt: skip
    assert cohorts["2026-06"][0] == 1  # m07


async def test_coalition(programme10):
    async with read_only(programme10.engine) as conn:
        answer = await coalition.coalition(conn, WINDOW, "EUR")
    assert answer.active_members == 10
    assert [(r.partners, r.members) for r in answer.reach] == [("1", 7), ("2", 2), ("3+", 1)]
    matrix = {(c.partner_id, c.also_at): (c.members, c.share) for c in answer.cross_shopping}
    assert matrix[("drugstore", "fuelstation")] == (3, D("0.4286"))
    assert matrix[("drugstore", "airline")] == (1, D("0.1429"))
    assert matrix[("fuelstation", "drugstore")] == (3, D("0.6000"))
    assert matrix[("fuelstation", "airline")] == (1, D("0.2000"))
    assert matrix[("airline", "drugstore")] == (1, D("0.5000"))
    assert matrix[("drugstore", "drugstore")] == (7, D(1))
    partners = {
        p.partner_id: (p.members, p.spend, p.points_issued, p.points_redeemed, p.net_points)
        for p in answer.partners
    }
    assert partners == {
        "drugstore": (7, 130_500, 1_470, 100, 1_370),
        "fuelstation": (5, 49_000, 490, 300, 190),
        "airline": (2, 20_500, 205, 0, 205),
    }


async def test_promotion_uplift(programme10):
    async with read_only(programme10.engine) as conn:
        answer = await promotions.promotions(conn, WINDOW, END, "EUR")
    (offer,) = answer.offers
    assert (offer.kind, offer.code, offer.members_reached) == ("promotion", "DS-DOUBLE", 3)
    assert offer.points_by_funder == {"program": 165}
    # m02, m04 and m07 spent 165 EUR at the drugstore in June; in the 30 days
    # before it (from May 2nd) m04 alone, 25 EUR: (165 - 25) / 25 = 5.6.
    assert (offer.spend_during, offer.spend_before, offer.uplift) == (16_500, 2_500, D("5.6000"))
    assert offer.before_from == datetime(2026, 5, 2, tzinfo=UTC)
    assert "uplift" in answer.method


async def test_tiers_and_expiry_outlook(programme10):
    async with read_only(programme10.engine) as conn:
        answer = await tiers.tiers(conn, WINDOW, END)
        outlook = await tiers.expiry_outlook(conn, END)
    assert [(c.tier, c.members) for c in answer.distribution] == [
        ("base", 8), ("silver", 1), ("gold", 1),
    ]  # fmt: skip
    assert [(m.month, m.upgrades, m.downgrades) for m in answer.movement] == [
        ("2026-03", 1, 0), ("2026-06", 2, 0),
    ]  # fmt: skip
    months = {m.month: (m.points, m.protected, m.members) for m in outlook.months}
    assert len(outlook.months) == 13
    assert months["overdue"] == (0, 0, 0)
    assert months["2026-07"] == (395, 100, 6)
    assert months["2026-10"] == (800, 400, 7)
    assert months["2027-01"] == (570, 200, 5)
    assert months["2026-08"] == (0, 0, 0)
