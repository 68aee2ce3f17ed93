"""The overview (the dashboard's KPI figures) on the ten-member programme
(conftest.py), against numbers worked out by hand: as a function, from
`GET /v1/insights/overview` and from `loyalty insights overview`."""

from datetime import UTC, datetime
from decimal import Decimal

from insights import overview
from insights.reading import read_only
from tests.insights import test_surfaces as surfaces

settings = surfaces.settings
client = surfaces.client

AS_OF = "2026-06-29"


async def test_overview_figures(programme10):
    async with read_only(programme10.engine) as conn:
        june = await overview.overview(conn, datetime(2026, 6, 29, tzinfo=UTC))
        mid_june = await overview.overview(conn, datetime(2026, 6, 16, 12, tzinfo=UTC))
    # Active from 05-30: m01 (06-20), m02 (06-15), m04 (06-01), m05 (06-25), m07 (06-28).
    assert (june.active_from, june.active_members) == ("2026-05-30T00:00:00.000000Z", 5)
    # June so far: m01 200 (airline), m02 100 + 100 promotion, m04 25 + 25, m05 40,
    # m07 40 + 40; redeemed m02 100 (06-16) and m01 300 (06-21).
    assert june.month_from == "2026-06-01T00:00:00.000000Z"
    assert (june.points_issued_this_month, june.points_redeemed_this_month) == (570, 400)
    # By 06-16 12:00: m04's 50 and m02's 200 issued, m02's 100 redeemed; active
    # since 05-17 12:00: m02 and m04.
    assert (mid_june.points_issued_this_month, mid_june.points_redeemed_this_month) == (250, 100)
    assert mid_june.active_members == 2
    # What members hold now, whatever as_of: 2,165 issued (2,000 + 165 promotion)
    # less 400 redeemed, all available (no return window), nothing expired yet.
    assert june.points_outstanding == mid_june.points_outstanding == 1_765
    assert june.points_outstanding_by_account == {"available": 1_765, "pending": 0, "held": 0}
    # Finance's breakage: no estimate, 400 redeemed and none expired in the
    # trailing 12 months -> a history rate of 1, no breakage. The contracts'
    # price_per_point is 0: partners paid nothing, so the money value is 0.
    assert (june.expected_redemption_rate, june.rate_method) == (Decimal(1), "history")
    assert june.breakage_rate == Decimal(0)
    assert june.money == [overview.MoneyValue("EUR", 0, 0, 0)]


async def test_overview_over_http_and_the_command_line(client, settings, programme10, tmp_path):
    path = "/v1/insights/overview"
    assert (await client.get(path, params={"as_of": AS_OF})).status_code == 401
    refused = await client.get(path, headers=surfaces.staff(settings))
    assert (refused.status_code, refused.json()["type"]) == (403, "/problems/missing-role")
    bad = await client.get(
        path, params={"as_of": "June"}, headers=surfaces.staff(settings, "finance")
    )
    assert (bad.status_code, bad.json()["type"]) == (422, "/problems/invalid-period")

    answer = await client.get(
        path, params={"as_of": AS_OF}, headers=surfaces.staff(settings, "admin")
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["active_members"], body["points_issued_this_month"]) == (5, 570)
    assert (body["points_outstanding"], body["breakage_rate"]) == (1_765, "0")

    result = await surfaces.loyalty(programme10, tmp_path, "overview", "--as-of", AS_OF, "--csv")
    assert result.exit_code == 0, result.output
    printed = {row["figure"]: row["value"] for row in surfaces.rows(result.output)}
    assert printed == {
        "active_members": "5",
        "points_issued_this_month": "570",
        "points_redeemed_this_month": "400",
        "points_outstanding": "1765",
        "points_available": "1765",
        "points_pending": "0",
        "points_held": "0",
        "expected_redemption_rate": "1",
        "breakage_rate": "0",
    }
    result = await surfaces.loyalty(programme10, tmp_path, "overview", "--as-of", "soon")
    assert (result.exit_code, result.output.count("\n")) == (2, 1)
