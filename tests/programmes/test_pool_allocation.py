"""The family pool's allocation (members/pooling.py): a pooled redemption
takes the pool's soonest-expiring miles first, never more than a member
has, and exactly the amount when the pool has it."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from members.pooling import (
    PoolLot,
    PoolRules,
    add_months,
    allocate_pooled,
    has_room,
    may_join_from,
    shares,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
MEMBERS = ("anna", "ben", "carl", "dora")


@st.composite
def pools(draw):
    lots = []
    for lot_id in range(draw(st.integers(0, 12))):
        expiry = draw(st.one_of(st.none(), st.integers(0, 20)))
        lots.append(
            PoolLot(
                draw(st.sampled_from(MEMBERS)),
                lot_id + 1,
                draw(st.integers(1, 500)),
                None if expiry is None else START + timedelta(days=91 * expiry),
            )
        )
    held = {m: sum(lot.remaining for lot in lots if lot.member_id == m) for m in MEMBERS}
    # A member's available balance is what their lots hold, or less (a debt).
    spendable = {m: draw(st.integers(-50, held[m])) for m in MEMBERS}
    return lots, spendable


def _order(lot):
    return (lot.expires_at is None, lot.expires_at or START, lot.lot_id)


@given(pools(), st.integers(0, 3000))
def test_takes_the_soonest_expiring_miles_never_more_than_a_member_has(pool, amount):
    lots, spendable = pool
    takes, short = allocate_pooled(lots, spendable, amount)
    by_id = {lot.lot_id: lot for lot in lots}
    taken = sum(t.amount for t in takes)
    coverable = sum(
        min(max(spendable[m], 0), sum(lot.remaining for lot in lots if lot.member_id == m))
        for m in MEMBERS
    )
    assert taken + short == amount
    assert short == max(amount - coverable, 0)
    for member, part in shares(takes).items():
        assert 0 < part <= max(spendable[member], 0)
    for take in takes:
        assert 0 < take.amount <= by_id[take.lot_id].remaining
        assert take.member_id == by_id[take.lot_id].member_id
    # Soonest expiry first: a lot left untouched (with its member still able
    # to give) never expires before a lot that was taken from.
    given_by = shares(takes)
    for lot in lots:
        untouched = all(t.lot_id != lot.lot_id for t in takes)
        can_give = given_by.get(lot.member_id, 0) < max(spendable[lot.member_id], 0)
        if untouched and can_give:
            assert all(_order(by_id[t.lot_id]) < _order(lot) for t in takes)


def test_a_pool_redemption_spans_members_by_expiry():
    jan, apr, jul = (datetime(2027, m, 1, tzinfo=UTC) for m in (1, 4, 7))
    lots = [
        PoolLot("anna", 1, 300, apr),
        PoolLot("anna", 2, 500, jul),
        PoolLot("ben", 3, 400, jan),
        PoolLot("carl", 4, 100, None),
    ]
    takes, short = allocate_pooled(lots, {"anna": 800, "ben": 400, "carl": 100}, 600)
    assert short == 0
    assert [(t.member_id, t.lot_id, t.amount) for t in takes] == [("ben", 3, 400), ("anna", 1, 200)]
    assert shares(takes) == {"anna": 200, "ben": 400}


def test_room_for_two_adults_and_five_children():
    rules = PoolRules()
    assert has_room(["adult"], "adult", rules)
    assert not has_room(["adult", "adult"], "adult", rules)
    assert has_room(["adult", "adult"] + ["child"] * 4, "child", rules)
    assert not has_room(["adult"] + ["child"] * 5, "child", rules)


def test_the_cool_off_ends_six_calendar_months_after_leaving():
    assert may_join_from(None, PoolRules()) is None
    left = datetime(2026, 8, 31, 9, 30, tzinfo=UTC)
    assert may_join_from(left, PoolRules()) == datetime(2027, 2, 28, 9, 30, tzinfo=UTC)
    assert add_months(datetime(2026, 3, 15, tzinfo=UTC), 6) == datetime(2026, 9, 15, tzinfo=UTC)
