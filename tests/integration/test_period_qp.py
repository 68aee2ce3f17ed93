"""A member's QP of a qualification period is read from their QP movements
(migration 0025) by effective time: the period's rows, whatever the member's
history before it. Through postings joined to their entries, as before, every
QP posting the member ever had was read (5.9 ms for 635 of them on demo data)."""

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from ledger.commands import Earn
from ledger.queries import qp_in_period
from partners.programme import Programme
from partners.tiers import period_bounds
from tests.plans import relations, rows_touched

EARLIER_EARNINGS = 120


async def test_the_period_qp_reads_the_periods_movements_alone(
    ledger, engine, programme_tiers, new_member, new_partner, new_id, assert_clean
):
    member, partner = await new_member(), await new_partner()
    start, end = period_bounds(datetime.now(UTC))
    for k in range(EARLIER_EARNINGS):  # three years before this one
        at = start - timedelta(days=3 * 365) + timedelta(days=9 * k, hours=k % 24)
        await ledger.earn(Earn.simple(member, partner, new_id("old"), 10, 50, effective_at=at))
    this_year = [start + timedelta(minutes=1), datetime.now(UTC) - timedelta(seconds=1)]
    for at in this_year:
        await ledger.earn(Earn.simple(member, partner, new_id("new"), 10, 7, effective_at=at))

    progress = await Programme(ledger).tier_progress(member)
    assert progress.qp_this_period == 14 and progress.tier.code == "base"

    async with engine.connect() as conn:
        # A table of a few pages is read whole, whatever the index; asked as
        # for the grown table, the plan shows what the index gives.
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        explained = await conn.execute(
            text("EXPLAIN (ANALYZE, FORMAT JSON) SELECT " + qp_in_period(":m", ":s", ":e")),
            {"m": member, "s": start, "e": end},
        )
        value = explained.scalar_one()
    plan = (json.loads(value) if isinstance(value, str) else value)[0]["Plan"]
    assert rows_touched(plan, {"member_qp_movements"}) == len(this_year)
    assert relations(plan) == {"member_qp_movements"}  # no posting, no entry
    await assert_clean()
