"""Lot allocation and proration: pure functions, no database."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.lots import ConsumedLot, OpenLot, allocate_debit, allocate_restore, prorate

JAN = datetime(2027, 1, 1, tzinfo=UTC)
APR = datetime(2027, 4, 1, tzinfo=UTC)


def test_debit_takes_earliest_expiry_first_and_never_expiring_last():
    lots = [OpenLot(1, 50, None), OpenLot(2, 30, APR), OpenLot(3, 40, JAN)]
    taken, debt = allocate_debit(lots, 80)
    assert taken == [(3, 40), (2, 30), (1, 10)]
    assert debt == 0


def test_debit_beyond_lots_reports_the_uncovered_part_as_debt():
    taken, debt = allocate_debit([OpenLot(1, 20, JAN)], 50)
    assert taken == [(1, 20)]
    assert debt == 30


def test_clawback_takes_the_returned_purchase_own_lot_first():
    lots = [OpenLot(1, 40, JAN, earn_entry_id=7), OpenLot(2, 60, APR, earn_entry_id=9)]
    taken, _ = allocate_debit(lots, 50, prefer_earning=9)
    assert taken == [(2, 50)]


def test_restore_refills_latest_expiry_first():
    consumed = [ConsumedLot(1, 40, JAN), ConsumedLot(2, 30, APR)]
    given_back, unplaced = allocate_restore(consumed, 50)
    assert given_back == [(2, 30), (1, 20)]
    assert unplaced == 0


def test_prorate_example():
    assert prorate([70, 30], 50, 100) == [35, 15]
    assert prorate([1, 1, 1], 2, 3) == [1, 1, 0]


@given(
    amounts=st.lists(st.integers(1, 10_000), min_size=1, max_size=6),
    data=st.data(),
)
def test_prorate_shares_sum_to_part_and_never_exceed_their_line(amounts, data):
    whole = sum(amounts)
    part = data.draw(st.integers(0, whole))
    shares = prorate(amounts, part, whole)
    assert sum(shares) == part
    assert all(0 <= share <= amount for share, amount in zip(shares, amounts, strict=True))


@given(
    lots=st.lists(st.integers(1, 500), min_size=0, max_size=8),
    amount=st.integers(0, 3000),
)
def test_debit_takes_exactly_what_lots_cover(lots, amount):
    open_lots = [OpenLot(i, r, JAN) for i, r in enumerate(lots)]
    taken, debt = allocate_debit(open_lots, amount)
    assert sum(t for _, t in taken) + debt == amount
    assert debt == max(0, amount - sum(lots))


def test_negative_amounts_are_refused():
    with pytest.raises(ValueError):
        allocate_debit([], -1)
    with pytest.raises(ValueError):
        prorate([10], 11, 10)
