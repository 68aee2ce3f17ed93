"""The scheduled jobs as set operations: batches of due rows per transaction,
the same entries as one at a time (one `release` per earning, one `void` per
hold, one `expire` per member and run), and several runners sharing a run
without doing anything twice."""

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import text

from ledger.commands import Authorise, Burn, Earn, Reverse
from ledger.expiry import RollingToQuarterEnd
from ledger.service import LedgerConfig, LedgerService
from tests.conftest import Clock

pytestmark = pytest.mark.long  # tens of seconds: handed out first (tests/conftest.py)

OLD_LOTS = (100, 40, 25)  # points of the due lots a member may have
FRESH = 10  # every member's lot that is not due
PENDING = 7  # points per pending earning
HELD = 20  # points per hold
DEBT = 10  # what a member in debt owes (an earning returned after spending it)


@dataclass
class Member:
    id: str
    old: int  # due lots
    pending: int  # pending earnings
    holds: int  # holds that expire
    protected: bool
    debt: bool  # spent everything, then an earning was returned

    @property
    def old_points(self) -> int:
        return sum(OLD_LOTS[: self.old])

    @property
    def available(self) -> int:
        """After the jobs: releases repay a debt first (so their lots are smaller)."""
        if self.debt:
            return PENDING * self.pending - DEBT
        return FRESH + PENDING * self.pending + (self.old_points if self.protected else 0)

    @property
    def expires(self) -> bool:
        return bool(self.old) and not (self.protected or self.debt)


def small_batches(ledger: LedgerService, batch: int = 37) -> LedgerService:
    """Many batches on few rows."""
    ledger.job_batch = batch
    return ledger


async def populate(
    ledger: LedgerService, clock: Clock, engine, new_member, partner: str, count: int
) -> list[Member]:
    """`count` members: 0-3 due lots, a fresh lot, 0-3 pending earnings
    released in an hour, 0-2 holds expiring in a minute; every seventh member
    protected from expiry (gold, valid for years); every twelfth in debt
    (all spent, then an earning returned: its releases repay the debt first)."""
    ids = [await new_member("job") for _ in range(count)]
    members = [
        Member(
            m,
            old=i % 4,
            pending=(i // 4) % 4,
            holds=(i % 3) if i % 4 and i % 12 != 5 else 0,
            protected=i % 7 == 0,
            debt=i % 12 == 5,
        )
        for i, m in enumerate(ids)
    ]
    long_ago = clock.now - timedelta(days=4 * 365)

    async def fill(member: Member) -> None:
        for n, points in enumerate(OLD_LOTS[: member.old]):
            await ledger.earn(
                Earn.simple(member.id, partner, f"{member.id}-o{n}", points, effective_at=long_ago)
            )
        await ledger.earn(Earn.simple(member.id, partner, f"{member.id}-f", FRESH))
        if member.debt:
            owed = await ledger.earn(Earn.simple(member.id, partner, f"{member.id}-d", DEBT))
            spend = (await ledger.balances(member.id)).available
            await ledger.burn(Burn(member.id, partner, f"{member.id}-b", spend))
            await ledger.reverse(Reverse(owed.entry_id, reason="returned"), "staff:tests")
        for n in range(member.pending):
            await ledger.earn(
                Earn.simple(
                    member.id,
                    partner,
                    f"{member.id}-p{n}",
                    PENDING,
                    release_at=clock.now + timedelta(hours=1),
                )
            )
        for _ in range(member.holds):
            await ledger.authorise(Authorise(member.id, partner, HELD, expires_in_seconds=60))

    for start in range(0, len(members), 20):
        await asyncio.gather(*(fill(m) for m in members[start : start + 20]))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO member_tiers (member_id, tier_code, qualified_at, valid_until) "
                "SELECT m, 'gold', :now, :until FROM unnest(CAST(:members AS text[])) AS t(m)"
            ),
            {
                "members": [m.id for m in members if m.protected],
                "now": clock.now,
                "until": clock.now + timedelta(days=3 * 365),
            },
        )
    return members


async def job_entries(engine, members: list[Member]) -> dict[str, Counter]:
    """Per member: the job entries posted for it, by kind."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT member_id, kind, count(*) AS n FROM journal_entries "
                "WHERE member_id = ANY(CAST(:m AS text[])) AND posted_by LIKE 'job:%' "
                "GROUP BY member_id, kind"
            ),
            {"m": [m.id for m in members]},
        )
        found: dict[str, Counter] = {m.id: Counter() for m in members}
        for r in rows:
            found[r.member_id][r.kind] = r.n
    return found


async def check_outcome(ledger: LedgerService, engine, members: list[Member]) -> None:
    """Balances, entries and lots as if each job had gone one row at a time."""
    for m in members:
        balances = await ledger.balances(m.id)
        assert (balances.available, balances.pending, balances.held) == (m.available, 0, 0), m
    entries = await job_entries(engine, members)
    for m in members:
        expected = Counter(release=m.pending, void=m.holds)
        if m.expires:
            expected["expire"] = 1  # one entry per member and run, all its due lots
        assert entries[m.id] == expected, (m, entries[m.id])
    async with engine.connect() as conn:
        # Each expired lot was taken once, by one expire entry, for what it had left.
        expired = (
            await conn.execute(
                text(
                    "SELECT l.member_id, l.amount, sum(-lm.amount) AS taken, "
                    "count(*) AS movements FROM lot_movements lm "
                    "JOIN journal_entries e ON e.id = lm.entry_id JOIN lots l ON l.id = lm.lot_id "
                    "WHERE e.kind = 'expire' AND l.member_id = ANY(CAST(:m AS text[])) "
                    "GROUP BY l.id, l.member_id, l.amount"
                ),
                {"m": [m.id for m in members]},
            )
        ).all()
    assert all(r.movements == 1 and r.taken == r.amount for r in expired)
    by_member = Counter()
    for r in expired:
        by_member[r.member_id] += r.taken
    assert by_member == Counter({m.id: m.old_points for m in members if m.expires})


async def test_jobs_over_many_members_post_what_one_at_a_time_would(
    engine, clock, programme_tiers, new_member, new_partner, assert_clean
):
    ledger = small_batches(
        LedgerService(engine, LedgerConfig(expiry_policy=RollingToQuarterEnd(36)), clock=clock)
    )
    partner = await new_partner()
    members = await populate(ledger, clock, engine, new_member, partner, 300)
    clock.advance(hours=2)  # pending earnings and holds are due, the old lots long since

    # A limit is exact and a rerun resumes where it stopped.
    assert await ledger.release_pending(limit=5) == 5
    assert await ledger.release_pending(limit=100_000) >= sum(m.pending for m in members) - 5
    assert await ledger.release_pending() == 0
    assert await ledger.expire_holds(limit=3) == 3
    assert await ledger.expire_holds(limit=100_000) >= sum(m.holds for m in members) - 3
    assert await ledger.expire_holds() == 0
    due = sum(1 for m in members if m.expires)
    assert await ledger.expire_points(limit=4) == 4
    assert await ledger.expire_points(limit=100_000) >= due - 4
    assert await ledger.expire_points() == 0

    await check_outcome(ledger, engine, members)
    assert not ledger.retries
    await assert_clean()


async def test_two_runners_share_each_job_and_do_nothing_twice(
    engine, clock, programme_tiers, new_member, new_partner, assert_clean
):
    def runner() -> LedgerService:
        config = LedgerConfig(expiry_policy=RollingToQuarterEnd(36))
        ledger = small_batches(LedgerService(engine, config, clock=clock), batch=13)
        # One lane each: two runners of one lane are the sharing under test (a
        # runner's two lanes share the same way, and could leave the other
        # runner nothing to do on so few members).
        ledger.job_lanes = 1
        return ledger

    first, second = runner(), runner()
    partner = await new_partner()
    members = await populate(first, clock, engine, new_member, partner, 120)
    clock.advance(hours=2)

    released = await asyncio.gather(first.release_pending(100_000), second.release_pending(100_000))
    expired_holds = await asyncio.gather(first.expire_holds(100_000), second.expire_holds(100_000))
    expired = await asyncio.gather(first.expire_points(100_000), second.expire_points(100_000))
    # Both took part (the batches interleave), and together they did everything once.
    assert all(released) and all(expired_holds) and all(expired)
    assert sum(released) >= sum(m.pending for m in members)
    assert sum(expired_holds) >= sum(m.holds for m in members)
    assert sum(expired) >= sum(1 for m in members if m.expires)
    for job in (first.release_pending(), first.expire_holds(), first.expire_points()):
        assert await job == 0

    await check_outcome(first, engine, members)
    assert not (first.retries + second.retries)  # no deadlock, no lock timeout
    await assert_clean()
