"""Expiry notices (partners/expiry_notice.py): with LOYALTY_EXPIRING_VIEW=
quarters:2, as the airline programme runs, a member's balance view shows what
expires this calendar quarter and next, grouped by quarter, and nothing
beyond; the default (days:90) view is as before."""

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.settings import Settings, SettingsError
from ledger.commands import Earn
from ledger.views import ExpiringPoints
from partners.expiry_notice import ExpiringWindow, QuarterExpiring, parse_window
from programmes import airline


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_this_quarter_and_next_grouped_by_quarter():
    window = parse_window("quarters:2")
    now = at("2025-11-14T09:00")
    assert window.end(now) == at("2026-04-01T00:00")
    assert window.next_change(now) == at("2026-01-01T00:00")
    assert window.within_days(now) == 138  # to 1 April, rounded up
    expiring = [
        ExpiringPoints(at("2025-10-01T00:00"), 5),  # overdue: the job has not run yet
        ExpiringPoints(at("2026-01-01T00:00"), 492),  # valid through 31 December
        ExpiringPoints(at("2026-04-01T00:00"), 960),
    ]
    assert window.by_quarter(expiring, now) == (
        QuarterExpiring("2025-Q4", "2025-12-31", 497),
        QuarterExpiring("2026-Q1", "2026-03-31", 960),
    )
    assert (
        parse_window("days:90") == ExpiringWindow() and ExpiringWindow().by_quarter([], now) == ()
    )
    for wrong in ("quarters:0", "quarters:9", "days:x", "weeks:2", "days:3661"):
        with pytest.raises(ValueError):
            parse_window(wrong)
    with pytest.raises(SettingsError, match="LOYALTY_EXPIRING_VIEW"):
        Settings.from_env({"LOYALTY_EXPIRING_VIEW": "quarters:12"})
    assert airline.SETTINGS["LOYALTY_EXPIRING_VIEW"] == "quarters:2"


async def test_the_balance_shows_this_quarter_and_next(
    api_settings, token, ledger, new_member, new_partner, new_id
):
    member, partner = await new_member(), await new_partner("air")
    now = datetime.now(UTC)
    quarter = 3 * ((now.month - 1) // 3) + 1
    # Earned 36 months before this quarter, the next, and the one after:
    # expiring at the end of this quarter, of the next, and later (not shown).
    for quarters_on, points in ((0, 100), (1, 200), (2, 400)):
        year, month = divmod((now.year - 3) * 12 + quarter - 1 + 3 * quarters_on, 12)
        earned = datetime(year, month + 1, 15, tzinfo=UTC)
        await ledger.earn(Earn.simple(member, partner, new_id("t"), points, effective_at=earned))
    settings = replace(api_settings, expiring_view=airline.SETTINGS["LOYALTY_EXPIRING_VIEW"])
    member_token = token(member, roles=("member",))
    async with AsyncTestClient(create_app(settings)) as client:
        view = (await client.get("/v1/me/balance", headers=member_token)).json()
    this, following = ExpiringWindow(quarters=2).by_quarter([], now)
    assert view["available"] == 700
    assert [e["points"] for e in view["expiring"]] == [100, 200]
    assert view["expiring_by_quarter"] == [
        {"quarter": this.quarter, "last_day": this.last_day, "points": 100},
        {"quarter": following.quarter, "last_day": following.last_day, "points": 200},
    ]
    # The default view (another member: the cache holds the first one's view).
    other = await new_member()
    await ledger.earn(Earn.simple(other, partner, new_id("t"), 100, effective_at=earned))
    async with AsyncTestClient(create_app(api_settings)) as client:
        default = (
            await client.get("/v1/me/balance", headers=token(other, roles=("member",)))
        ).json()
    assert default["expiring_by_quarter"] == [] and default["expiring_within_days"] == 90
