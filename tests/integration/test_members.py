"""The member registry against the real PostgreSQL: enrolment, search, no
write for an unknown or closed member (or an unregistered partner), closing
with forfeit or refusal, merging two accounts of one person (lots keep their
expiry, pending points release to the survivor, QP stay in their period, the
higher tier wins, a later return takes back from the survivor), erasure."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from ledger.commands import Adjust, Authorise, Earn, Transfer, Void
from ledger.errors import (
    InvalidAccount,
    MemberAccountsNotSettled,
    MemberNotActive,
    MemberNotFound,
    PartnerNotFound,
    SameMember,
)
from members.errors import InvalidMember, MemberExists, MemberStillActive
from members.registry import CloseInput, MemberInput, Members, MergeInput, ProfileInput
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme
from partners.registry import Registry
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY

ADMIN = "staff:tests"
FROM = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def members(ledger) -> Members:
    return Members(ledger, Programme(ledger))


@pytest.fixture
def registry(engine) -> Registry:
    return Registry(engine, SecretBox(TEST_SECRET_KEY))


def card_number() -> str:
    return "6001" + str(uuid.uuid4().int)[:12]


async def rows(engine, sql: str, **params) -> list:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).all()


async def expired_total(engine) -> int:
    (row,) = await rows(
        engine,
        "SELECT coalesce(sum(balance), 0) AS b FROM balances WHERE account = 'program:expired'",
    )
    return row.b


async def test_enrol_find_and_update_a_member(members, new_id):
    member_id = new_id()
    enrolled = await members.enrol(MemberInput(member_id, "Ana", "ana@example.org"), ADMIN)
    assert (enrolled.id, enrolled.status, enrolled.email) == (
        member_id,
        "active",
        "ana@example.org",
    )
    with pytest.raises(MemberExists):
        await members.enrol(MemberInput(member_id), ADMIN)
    with pytest.raises(InvalidMember):
        await members.enrol(MemberInput(new_id(), email="not-an-address"), ADMIN)
    with pytest.raises(InvalidAccount):
        await members.enrol(MemberInput("has:colon"), ADMIN)
    numbered = await members.enrol(MemberInput(), ADMIN)
    assert numbered.id.startswith("M") and len(numbered.id) == 12

    assert (await members.search(email="ANA@example.org")).members[0].id == member_id
    changed = await members.update_profile(member_id, ProfileInput(display_name="Ana B."), ADMIN)
    assert (changed.display_name, changed.email) == ("Ana B.", None)
    events = await members.events(member_id)
    assert [e.event for e in events] == ["enrolled", "profile-changed"]
    assert events[1].detail == {"fields": ["display_name", "email"]}  # names, never values


async def test_search_pages_by_prefix_card_and_status(members, registry, new_id):
    prefix = new_id("s")
    ids = [f"{prefix}-{i}" for i in range(5)]
    for member_id in ids:
        await members.enrol(MemberInput(member_id), ADMIN)
    first = await members.search(prefix=prefix, limit=2)
    second = await members.search(prefix=prefix, limit=2, after=first.next_cursor)
    third = await members.search(prefix=prefix, limit=2, after=second.next_cursor)
    assert [m.id for p in (first, second, third) for m in p.members] == ids
    assert third.next_cursor is None
    card = card_number()
    await registry.issue_card(ids[3], card, ADMIN)
    assert [m.id for m in (await members.search(card=card)).members] == [ids[3]]
    await members.close(ids[0], CloseInput("test"), ADMIN)
    closed = await members.search(prefix=prefix, status="closed")
    assert [m.id for m in closed.members] == [ids[0]]
    assert (await members.search(prefix=prefix + "%")).members == []  # LIKE wildcards are literal


async def test_no_write_names_an_unknown_member_or_partner(
    ledger, registry, new_id, new_member, new_partner, engine
):
    partner, member, ghost = await new_partner(), await new_member(), new_id()
    attempts = [
        ledger.adjust(Adjust(ghost, 500, "goodwill"), ADMIN),
        ledger.earn(Earn.simple(ghost, partner, new_id("r"), 100)),
        ledger.earn(Earn.simple(member, new_id("p"), new_id("r"), 100)),
    ]
    for attempt, error in zip(
        attempts, (MemberNotFound, MemberNotFound, PartnerNotFound), strict=True
    ):
        with pytest.raises(error):
            await attempt
    await ledger.adjust(Adjust(member, 100, "goodwill"), ADMIN)
    with pytest.raises(MemberNotFound):
        await ledger.transfer(Transfer(member, ghost, 50))
    with pytest.raises(MemberNotFound):
        await registry.issue_card(ghost, "6001999900001111", ADMIN)
    assert (
        await rows(
            engine,
            "SELECT 1 FROM balances WHERE member_id = :g UNION ALL "
            "SELECT 1 FROM journal_entries WHERE member_id = :g UNION ALL "
            "SELECT 1 FROM cards WHERE member_id = :g",
            g=ghost,
        )
        == []
    )
    assert (await ledger.balances(member)).available == 100  # the transfer took nothing


async def test_closing_refuses_points_left_unless_they_are_forfeited(
    ledger, members, registry, new_member, new_partner, new_id, engine, assert_clean
):
    partner, member = await new_partner(), await new_member()
    await ledger.earn(Earn.simple(member, partner, new_id("r"), 300))
    await ledger.earn(
        Earn.simple(
            member, partner, new_id("r"), 200, release_at=datetime.now(UTC) + timedelta(days=14)
        )
    )
    await registry.issue_card(member, card_number(), ADMIN)
    with pytest.raises(MemberAccountsNotSettled):
        await members.close(member, CloseInput("asked by the member"), ADMIN)
    assert (await members.member(member)).status == "active"

    expired_before = await expired_total(engine)
    closure = await members.close(member, CloseInput("asked by the member", "forfeit"), ADMIN)
    assert closure.member.status == "closed" and closure.forfeit_entry_id is not None
    balances = await ledger.balances(member)
    assert (balances.available, balances.pending) == (0, 0)
    assert await expired_total(engine) - expired_before == 500
    entry = await ledger.entry(closure.forfeit_entry_id)
    assert entry.kind == "forfeit"
    assert all(c["status"] == "blocked" for c in await registry.cards(member))
    # The release job finds nothing of a closed member's; nothing posts to it any more.
    assert (
        await rows(
            engine,
            "SELECT 1 FROM pending_points WHERE member_id = :m AND release_entry_id IS NULL",
            m=member,
        )
        == []
    )
    with pytest.raises(MemberNotActive):
        await ledger.earn(Earn.simple(member, partner, new_id("r"), 10))
    with pytest.raises(MemberNotActive):
        await members.close(member, CloseInput("again"), ADMIN)
    await assert_clean()


async def test_closing_is_refused_while_points_are_held(
    ledger, members, new_member, new_partner, new_id
):
    partner, member = await new_partner(), await new_member()
    await ledger.earn(Earn.simple(member, partner, new_id("r"), 300))
    await ledger.authorise(Authorise(member, partner, 100))
    with pytest.raises(MemberAccountsNotSettled, match="held"):
        await members.close(member, CloseInput("moving", "forfeit"), ADMIN)
    assert (await ledger.balances(member)).available == 200


async def test_earnings_racing_a_close_are_either_forfeited_or_refused(
    ledger, members, new_member, new_partner, new_id, engine, assert_clean
):
    partner, member = await new_partner(), await new_member()
    await ledger.earn(Earn.simple(member, partner, new_id("r"), 100))
    expired_before = await expired_total(engine)

    async def earn(i: int):
        try:
            await ledger.earn(Earn.simple(member, partner, f"race-{member}-{i}", 10))
            return "earned"
        except MemberNotActive:
            return "refused"

    results = await asyncio.gather(
        *(earn(i) for i in range(10)),
        members.close(member, CloseInput("race", "forfeit"), ADMIN),
        *(earn(i) for i in range(10, 20)),
    )
    earned = results[:10].count("earned") + results[11:].count("earned")
    assert earned + results[:10].count("refused") + results[11:].count("refused") == 20
    assert (await ledger.balances(member)).available == 0
    assert await expired_total(engine) - expired_before == 100 + 10 * earned
    await assert_clean()


@pytest.fixture
async def shop(ledger, new_partner):
    """A registered partner with a 14-day return window, 1 point and 1 QP per EUR."""
    partner = await new_partner(return_window_days=14)
    await Rulebook(ledger).create_earn_rule(
        partner, EarnRuleInput(FROM, "EUR", Decimal(1), qp_per_unit=Decimal(1)), ADMIN
    )
    return partner


def buy(partner: str, minor: int, at: datetime | None = None) -> Purchase:
    return Purchase(partner, at or datetime.now(UTC), "EUR", (PurchaseLine(minor, "groceries"),))


async def test_merging_moves_everything_of_one_person_to_the_other(
    ledger, members, registry, shop, programme_tiers, new_member, new_id, engine, assert_clean
):
    programme = Programme(ledger)
    source, target = await new_member(), await new_member()
    # source: 1,200 QP (silver) and 1,200 points pending from one purchase,
    # 350 points available in lots of two different expiries.
    await programme.earn_purchase(source, buy(shop, 120_000), new_id("R"))
    await ledger.earn(Earn.simple(source, shop, new_id("R"), 250))
    long_ago = datetime.now(UTC) - timedelta(days=200)
    await ledger.earn(Earn.simple(source, shop, new_id("R"), 100, effective_at=long_ago))
    assert (await programme.tier_progress(source)).tier.code == "silver"
    await ledger.adjust(Adjust(target, 40, "welcome"), ADMIN)
    card = card_number()
    await registry.issue_card(source, card, ADMIN)
    before = await ledger.balances(source)
    source_lots = await rows(
        engine,
        "SELECT remaining, expires_at FROM lots WHERE member_id = :m AND remaining > 0 "
        "ORDER BY expires_at, remaining",
        m=source,
    )

    merger = await members.merge(source, MergeInput(target, "one person, two cards"), ADMIN)

    assert merger.source.status == "merged" and merger.source.merged_into == target
    after = await ledger.balances(target)
    assert (after.available, after.pending, after.qp) == (
        before.available + 40,
        before.pending,
        before.qp,
    )
    gone = await ledger.balances(source)
    assert (gone.available, gone.pending, gone.qp) == (0, 0, 0)
    target_lots = await rows(
        engine,
        "SELECT remaining, expires_at FROM lots WHERE member_id = :m AND remaining > 0 "
        "AND source <> 'adjust' ORDER BY expires_at, remaining",
        m=target,
    )
    assert [tuple(r) for r in target_lots] == [tuple(r) for r in source_lots]
    assert (await programme.tier_progress(target)).tier.code == "silver"
    assert (await programme.tier_progress(source)).tier.code == "base"
    assert [c["card_number"] for c in await registry.cards(target)] == [card]
    # The pending earning is the survivor's now: released to it when its window passes.
    waiting = await rows(
        engine,
        "SELECT member_id FROM pending_points WHERE member_id IN (:s, :t) "
        "AND release_entry_id IS NULL",
        s=source,
        t=target,
    )
    assert [r.member_id for r in waiting] == [target]
    assert [e.event for e in await members.events(target)][-1] == "merged-from"
    assert [e.event for e in await members.events(source)][-1] == "merged-into"

    with pytest.raises(MemberNotActive):
        await ledger.adjust(Adjust(source, 1, "too late"), ADMIN)
    with pytest.raises(SameMember):
        await members.merge(target, MergeInput(target, "self"), ADMIN)
    await assert_clean()


async def test_a_return_after_a_merge_takes_back_from_the_survivor(
    ledger, members, shop, programme_tiers, new_member, new_id, assert_clean
):
    programme = Programme(ledger)
    source, target = await new_member(), await new_member()
    reference = new_id("R")
    await programme.earn_purchase(source, buy(shop, 50_000), reference)  # 500 pending, 500 QP
    await members.merge(source, MergeInput(target, "duplicate account"), ADMIN)
    receipt = await programme.return_purchase(shop, reference, new_id("RET"), 20_000)
    assert receipt.points_reversed == 200
    survivor = await ledger.balances(target)
    assert (survivor.pending, survivor.qp) == (300, 300)
    await assert_clean()


async def test_merging_is_refused_for_closed_members_and_open_holds(
    ledger, members, new_member, new_partner, new_id
):
    partner, source, target = await new_partner(), await new_member(), await new_member()
    await ledger.earn(Earn.simple(source, partner, new_id("r"), 100))
    hold = await ledger.authorise(Authorise(source, partner, 30))
    with pytest.raises(MemberAccountsNotSettled):
        await members.merge(source, MergeInput(target, "dup"), ADMIN)
    await ledger.void(Void(hold.hold.hold_id, partner))
    closed = await new_member()
    await members.close(closed, CloseInput("gone"), ADMIN)
    with pytest.raises(MemberNotActive):
        await members.merge(source, MergeInput(closed, "dup"), ADMIN)
    with pytest.raises(MemberNotFound):
        await members.merge(source, MergeInput(new_id(), "dup"), ADMIN)


async def test_erasure_keeps_the_journal_and_forgets_the_person(
    ledger, members, new_id, new_partner, engine
):
    partner, member_id = await new_partner(), new_id()
    await members.enrol(MemberInput(member_id, "Bea", "bea@example.org"), ADMIN)
    await ledger.earn(Earn.simple(member_id, partner, new_id("r"), 100))
    with pytest.raises(MemberStillActive):
        await members.erase(member_id, ADMIN)
    await members.close(member_id, CloseInput("right to erasure", "forfeit"), ADMIN)
    erased = await members.erase(member_id, ADMIN)
    assert (erased.display_name, erased.email, erased.status) == (None, None, "closed")
    assert erased.erased_at is not None
    assert await rows(engine, "SELECT 1 FROM members WHERE email = 'bea@example.org'") == []
    history = await ledger.history(member_id)
    assert [e.kind for e in history.entries] == ["forfeit", "earn"]
    events = await members.events(member_id)
    assert "bea" not in str([e.detail for e in events]).lower()


async def test_merged_qp_keep_the_times_they_were_earned_at(
    ledger, members, new_member, new_partner, new_id, engine
):
    """A rolling tier period may start in the middle of a day: QP move dated at
    their own times (and in UTC whatever the server's zone), not per day."""
    partner, source, target = await new_partner(), await new_member(), await new_member()
    morning = datetime(2025, 6, 1, 8, tzinfo=UTC)
    evening = datetime(2025, 6, 1, 20, tzinfo=UTC)
    for at, qp in ((morning, 900), (evening, 100)):
        await ledger.earn(Earn.simple(source, partner, new_id("r"), 10, qp, effective_at=at))
    merger = await members.merge(source, MergeInput(target, "same person"), ADMIN)
    moved = await rows(
        engine,
        "SELECT e.effective_at, p.amount FROM journal_entries e JOIN postings p "
        "ON p.entry_id = e.id WHERE e.id = ANY(:ids) AND p.account = :qp ORDER BY 1",
        ids=merger.entry_ids,
        qp=f"member:{target}:qp",
    )
    assert [(r.effective_at, r.amount) for r in moved] == [(morning, 900), (evening, 100)]
