"""Ledger operations against the real PostgreSQL: balances and postings after
each kind of entry."""

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ledger.commands import (
    Adjust,
    Authorise,
    Burn,
    Capture,
    Earn,
    EarnLine,
    PostEntry,
    PostingInput,
    Reverse,
    Transfer,
    Void,
)
from ledger.errors import (
    CaptureExceedsHold,
    DuplicatePartnerReference,
    HoldExpired,
    HoldNotFound,
    HoldNotOpen,
    IdempotencyKeyReused,
    InsufficientPoints,
    InvalidAccount,
    InvalidAmount,
    NotReversible,
    ReasonRequired,
    ReversalExceedsOriginal,
    SameMember,
    UnbalancedEntry,
)
from ledger.idempotency import IdempotencyKey


async def test_earn_credits_available_and_debits_the_partner(
    ledger, new_member, new_partner, assert_clean
):
    member, partner = await new_member(), await new_partner()
    receipt = await ledger.earn(Earn.simple(member, partner, "r1", 120, 12))
    assert (receipt.balances.available, receipt.balances.qp) == (120, 12)
    entry = await ledger.entry(receipt.entry_id)
    assert {(p.account, p.asset, p.amount) for p in entry.postings} == {
        (f"member:{member}:available", "PTS", 120),
        (f"partner:{partner}:issued", "PTS", -120),
        (f"member:{member}:qp", "QP", 12),
        ("program:qp_source", "QP", -12),
    }
    issued = await ledger.account_balance(f"partner:{partner}:issued")
    assert issued.balances[0].balance == -120
    await assert_clean()


async def test_programme_funded_lines_debit_promotions(ledger, new_member, new_partner):
    member, partner = await new_member(), await new_partner()
    lines = (EarnLine(100), EarnLine(50, reason="promotion double-points", funder="program"))
    receipt = await ledger.earn(Earn(member, partner, "r1", lines))
    assert receipt.balances.available == 150
    entry = await ledger.entry(receipt.entry_id)
    assert ("program:promotions", -50) in {(p.account, p.amount) for p in entry.postings}
    assert entry.breakdown[1]["reason"] == "promotion double-points"


async def test_pending_points_are_released_after_the_return_window(
    timed_ledger, clock, new_member, new_partner, assert_clean
):
    member, partner = await new_member(), await new_partner()
    receipt = await timed_ledger.earn(
        Earn.simple(member, partner, "r1", 80, release_at=clock.now + timedelta(days=14))
    )
    assert (receipt.balances.available, receipt.balances.pending) == (0, 80)
    assert await timed_ledger.release_pending() == 0
    clock.advance(days=15)
    assert await timed_ledger.release_pending() >= 1
    balances = await timed_ledger.balances(member)
    assert (balances.available, balances.pending) == (80, 0)
    await assert_clean()


async def test_burn_cannot_overdraw(ledger, new_member, new_partner):
    member, partner = await new_member(), await new_partner()
    await ledger.earn(Earn.simple(member, partner, "r1", 10))
    with pytest.raises(InsufficientPoints) as error:
        await ledger.burn(Burn(member, partner, "b1", 11))
    assert error.value.extensions == {"available": 10, "requested": 11}
    receipt = await ledger.burn(Burn(member, partner, "b2", 10))
    assert receipt.balances.available == 0


async def test_hold_capture_partially_returns_the_rest(
    ledger, new_member, new_partner, assert_clean
):
    member, partner = await new_member(), await new_partner()
    await ledger.earn(Earn.simple(member, partner, "r1", 100))
    hold = await ledger.authorise(Authorise(member, partner, 60))
    assert (hold.balances.available, hold.balances.held) == (40, 60)
    captured = await ledger.capture(Capture(hold.hold.hold_id, partner, 45))
    assert (captured.balances.available, captured.balances.held) == (55, 0)
    assert captured.hold.status == "captured" and captured.hold.captured == 45
    redeemed = await ledger.account_balance(f"partner:{partner}:redeemed")
    assert redeemed.balances[0].balance == 45
    with pytest.raises(HoldNotOpen):
        await ledger.capture(Capture(hold.hold.hold_id, partner, 1))
    with pytest.raises(HoldNotOpen):
        await ledger.void(Void(hold.hold.hold_id, partner))
    await assert_clean()


async def test_capture_checks(ledger, new_member, new_partner):
    member, partner = await new_member(), await new_partner()
    await ledger.earn(Earn.simple(member, partner, "r1", 100))
    hold = await ledger.authorise(Authorise(member, partner, 30))
    with pytest.raises(CaptureExceedsHold):
        await ledger.capture(Capture(hold.hold.hold_id, partner, 31))
    with pytest.raises(HoldNotFound):  # another partner cannot see it
        await ledger.capture(Capture(hold.hold.hold_id, await new_partner(), 10))
    voided = await ledger.void(Void(hold.hold.hold_id, partner))
    assert (voided.balances.available, voided.balances.held) == (100, 0)


async def test_holds_expire(timed_ledger, clock, new_member, new_partner, assert_clean):
    member, partner = await new_member(), await new_partner()
    await timed_ledger.earn(Earn.simple(member, partner, "r1", 100))
    hold = await timed_ledger.authorise(Authorise(member, partner, 70, expires_in_seconds=60))
    clock.advance(seconds=61)
    with pytest.raises(HoldExpired):
        await timed_ledger.capture(Capture(hold.hold.hold_id, partner))
    assert await timed_ledger.expire_holds() >= 1
    assert (await timed_ledger.hold(hold.hold.hold_id)).status == "expired"
    balances = await timed_ledger.balances(member)
    assert (balances.available, balances.held) == (100, 0)
    await assert_clean()


async def test_transfer_moves_points_with_fresh_validity(
    timed_ledger, clock, new_member, new_partner, engine
):
    sender, receiver, partner = await new_member(), await new_member(), await new_partner()
    await timed_ledger.earn(Earn.simple(sender, partner, "r1", 100))
    clock.advance(days=400)
    receipt = await timed_ledger.transfer(Transfer(sender, receiver, 60))
    assert receipt.balances.available == 40
    assert (await timed_ledger.balances(receiver)).available == 60
    async with engine.connect() as conn:
        expiries = (
            await conn.execute(
                text("SELECT member_id, expires_at FROM lots WHERE member_id IN (:a, :b)"),
                {"a": sender, "b": receiver},
            )
        ).all()
    by_member = {m: e for m, e in expiries}
    assert by_member[receiver] > by_member[sender]  # the receiver's validity starts now
    with pytest.raises(SameMember):
        await timed_ledger.transfer(Transfer(sender, sender, 1))
    with pytest.raises(InsufficientPoints):
        await timed_ledger.transfer(Transfer(sender, receiver, 41))


async def test_adjustment_needs_a_reason_and_cannot_overdraw(ledger, new_member):
    member = await new_member()
    with pytest.raises(ReasonRequired):
        Adjust(member, 10, "  ")
    receipt = await ledger.adjust(Adjust(member, 25, "goodwill: late delivery"), "staff:alice")
    assert receipt.balances.available == 25
    entry = await ledger.entry(receipt.entry_id)
    assert (entry.kind, entry.reason, entry.posted_by) == (
        "adjust",
        "goodwill: late delivery",
        "staff:alice",
    )
    with pytest.raises(InsufficientPoints):
        await ledger.adjust(Adjust(member, -26, "correction"), "staff:alice")


async def test_generic_entries_stay_off_member_points_accounts(ledger, new_member, new_partner):
    member, partner = await new_member(), await new_partner()
    receipt = await ledger.post_entry(
        PostEntry(
            (
                PostingInput("program:promotions", "PTS", -500),
                PostingInput(f"partner:{partner}:issued", "PTS", 500),
            ),
            "prepaid block",
        ),
        "staff:alice",
    )
    assert (await ledger.entry(receipt.entry_id)).kind == "adjust"
    with pytest.raises(InvalidAccount):
        await ledger.post_entry(
            PostEntry(
                (
                    PostingInput(f"member:{member}:available", "PTS", 5),
                    PostingInput("program:adjustments", "PTS", -5),
                ),
                "sneaky",
            ),
            "staff:x",
        )
    with pytest.raises(UnbalancedEntry):
        await ledger.post_entry(
            PostEntry(
                (
                    PostingInput("program:promotions", "PTS", -5),
                    PostingInput("program:adjustments", "PTS", 4),
                ),
                "typo",
            ),
            "staff:x",
        )


async def test_amounts_are_positive_integers():
    with pytest.raises(InvalidAmount):
        Burn("m1", "p1", "b", 0)
    with pytest.raises(InvalidAmount):
        Earn.simple("m1", "p1", "r", -5)
    with pytest.raises(InvalidAmount):
        Burn("m1", "p1", "b", True)  # bool is no amount


async def test_partner_reference_is_unique_per_partner_forever(ledger, new_member, new_partner):
    member, partner, other = await new_member(), await new_partner(), await new_partner()
    await ledger.earn(Earn.simple(member, partner, "R-1", 10))
    with pytest.raises(DuplicatePartnerReference):
        await ledger.earn(Earn.simple(member, partner, "R-1", 10))
    await ledger.earn(Earn.simple(member, other, "R-1", 10))  # another partner may reuse it
    assert (await ledger.balances(member)).available == 20


async def test_idempotent_retry_returns_the_first_result_and_posts_once(
    ledger, new_member, new_partner, engine
):
    member, partner = await new_member(), await new_partner()
    key = IdempotencyKey(f"partner:{partner}", "k-1")
    first = await ledger.earn(Earn.simple(member, partner, "r1", 10), key)
    again = await ledger.earn(Earn.simple(member, partner, "r1", 10), key)
    assert again == first
    assert (await ledger.balances(member)).available == 10
    with pytest.raises(IdempotencyKeyReused):
        await ledger.earn(Earn.simple(member, partner, "r1", 11), key)
    # Keys are scoped to the caller.
    other = await ledger.burn(Burn(member, partner, "b1", 1), IdempotencyKey("partner:x", "k-1"))
    assert other.balances.available == 9


async def test_reversal_of_an_earning_within_pending(
    timed_ledger, clock, new_member, new_partner, assert_clean
):
    member, partner = await new_member(), await new_partner()
    earned = await timed_ledger.earn(
        Earn.simple(member, partner, "r1", 100, 10, release_at=clock.now + timedelta(days=30))
    )
    receipt = await timed_ledger.reverse(Reverse(earned.entry_id, 40), f"partner:{partner}")
    assert (receipt.balances.pending, receipt.balances.qp, receipt.balances.available) == (60, 6, 0)
    clock.advance(days=31)
    await timed_ledger.release_pending()
    assert (await timed_ledger.balances(member)).available == 60
    await timed_ledger.reverse(Reverse(earned.entry_id), f"partner:{partner}")
    balances = await timed_ledger.balances(member)
    assert (balances.available, balances.pending, balances.qp) == (0, 0, 0)
    with pytest.raises(ReversalExceedsOriginal):
        await timed_ledger.reverse(Reverse(earned.entry_id, 1), f"partner:{partner}")
    await assert_clean()


async def test_reversed_burn_restores_lots_with_their_original_expiry(
    timed_ledger, clock, new_member, new_partner, engine, assert_clean
):
    member, partner = await new_member(), await new_partner()
    await timed_ledger.earn(Earn.simple(member, partner, "r1", 50))
    clock.advance(days=100)
    await timed_ledger.earn(Earn.simple(member, partner, "r2", 50))
    burned = await timed_ledger.burn(Burn(member, partner, "b1", 70))
    refunded = await timed_ledger.reverse(Reverse(burned.entry_id, 30), f"partner:{partner}")
    assert refunded.balances.available == 60
    async with engine.connect() as conn:
        lots = (
            (
                await conn.execute(
                    text("SELECT remaining FROM lots WHERE member_id = :m ORDER BY expires_at"),
                    {"m": member},
                )
            )
            .scalars()
            .all()
        )
    # The burn took the older 50 and 20 of the newer; the refund refills the newer first.
    assert lots == [10, 50]
    await assert_clean()


async def test_refunded_points_past_their_expiry_are_expired_by_the_next_run(
    timed_ledger, clock, new_member, new_partner, assert_clean
):
    member, partner = await new_member(), await new_partner()
    await timed_ledger.earn(Earn.simple(member, partner, "r1", 50))
    burned = await timed_ledger.burn(Burn(member, partner, "b1", 50))
    clock.advance(days=365 * 4)
    refunded = await timed_ledger.reverse(Reverse(burned.entry_id), f"partner:{partner}")
    # Back in their lot, with its original (passed) expiry...
    assert refunded.balances.available == 50
    assert (await timed_ledger.member_balances(member)).expiring[0].points == 50
    # ...which the expiry run moves to breakage like any other expired lot.
    assert await timed_ledger.expire_points() >= 1
    assert (await timed_ledger.balances(member)).available == 0
    expiry = (await timed_ledger.history(member, kinds=("expire",))).entries[0]
    expired = await timed_ledger.entry(expiry.entry_id)
    assert ("program:expired", 50) in {(p.account, p.amount) for p in expired.postings}
    await assert_clean()


async def test_reversing_a_capture_returns_points_to_available(
    ledger, new_member, new_partner, assert_clean
):
    member, partner = await new_member(), await new_partner()
    await ledger.earn(Earn.simple(member, partner, "r1", 100))
    hold = await ledger.authorise(Authorise(member, partner, 80))
    captured = await ledger.capture(Capture(hold.hold.hold_id, partner, 50))
    receipt = await ledger.reverse(Reverse(captured.entry_id, 20), f"partner:{partner}")
    assert (receipt.balances.available, receipt.balances.held) == (70, 0)
    with pytest.raises(ReversalExceedsOriginal):
        await ledger.reverse(Reverse(captured.entry_id, 31), f"partner:{partner}")
    with pytest.raises(NotReversible):
        await ledger.reverse(Reverse(hold.entry_id), f"partner:{partner}")
    await assert_clean()


async def test_expired_lots_move_to_breakage(
    timed_ledger, clock, new_member, new_partner, assert_clean, engine
):
    member, partner = await new_member(), await new_partner()
    await timed_ledger.earn(Earn.simple(member, partner, "r1", 70))
    clock.advance(days=200)
    await timed_ledger.earn(Earn.simple(member, partner, "r2", 30))
    soon = await timed_ledger.member_balances(member, within_days=365 * 3)
    assert soon.expiring_total == 70
    # The list changes by time alone when the second lot comes into the window.
    async with engine.connect() as conn:
        second = (
            await conn.execute(
                text("SELECT expires_at FROM lots WHERE member_id = :m AND amount = 30"),
                {"m": member},
            )
        ).scalar_one()
    assert soon.expiring_changes_at == second - timedelta(days=365 * 3)
    assert (await timed_ledger.member_balances(member)).expiring_changes_at is not None
    clock.advance(days=365 * 3 - 100)
    assert await timed_ledger.expire_points() >= 1
    balances = await timed_ledger.balances(member)
    assert balances.available == 30
    assert (
        await timed_ledger.expire_points() == 0
        or (await timed_ledger.balances(member)).available == 30
    )
    await assert_clean()


async def test_history_is_newest_first_with_a_stable_cursor(ledger, new_member, new_partner):
    member, partner = await new_member(), await new_partner()
    ids = [
        (await ledger.earn(Earn.simple(member, partner, f"r{i}", 10 + i))).entry_id
        for i in range(5)
    ]
    page = await ledger.history(member, limit=2)
    assert [e.entry_id for e in page.entries] == ids[:-3:-1]
    await ledger.earn(Earn.simple(member, partner, "r-new", 1))  # arrives between pages
    second = await ledger.history(member, limit=2, cursor=page.next_cursor)
    assert [e.entry_id for e in second.entries] == [ids[2], ids[1]]
    last = await ledger.history(member, limit=2, cursor=second.next_cursor)
    assert [e.entry_id for e in last.entries] == [ids[0]] and last.next_cursor is None
    burns = await ledger.history(member, kinds=("burn",))
    assert burns.entries == ()


async def test_database_refuses_unbalanced_entries_and_edits(
    engine, ledger, new_member, new_partner
):
    receipt = await ledger.earn(Earn.simple(await new_member(), await new_partner(), "r1", 10))
    # Checked when the statement inserting an entry's postings ends.
    for postings, refusal in (
        ("(:e, 'program:adjustments', 'PTS', 5), (:e, 'program:expired', 'PTS', -4)", "balance"),
        ("(:e, 'program:adjustments', 'PTS', 5)", "fewer than two postings"),
    ):
        async with engine.connect() as conn:
            entry_id = (
                await conn.execute(
                    text(
                        "INSERT INTO journal_entries (kind, effective_at, posted_by, reason) "
                        "VALUES ('adjust', now(), 'test', 'test') RETURNING id"
                    )
                )
            ).scalar_one()
            with pytest.raises(DBAPIError, match=refusal):
                await conn.execute(
                    text(
                        f"INSERT INTO postings (entry_id, account, asset, amount) VALUES {postings}"
                    ),
                    {"e": entry_id},
                )
    # A posting added to an entry already posted unbalances it: refused too.
    async with engine.connect() as conn:
        with pytest.raises(DBAPIError, match="does not balance"):
            await conn.execute(
                text(
                    "INSERT INTO postings (entry_id, account, asset, amount) "
                    "VALUES (:e, 'program:expired', 'PTS', 3)"
                ),
                {"e": receipt.entry_id},
            )
    for statement in (
        "UPDATE postings SET amount = 1 WHERE entry_id = :e",
        "DELETE FROM journal_entries WHERE id = :e",
    ):
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="append-only"):
                await conn.execute(text(statement), {"e": receipt.entry_id})
    async with engine.connect() as conn:
        with pytest.raises(DBAPIError, match="check"):
            await conn.execute(
                text(
                    "INSERT INTO postings (entry_id, account, asset, amount) "
                    "VALUES (:e, 'program:expired', 'PTS', 0)"
                ),
                {"e": receipt.entry_id},
            )
