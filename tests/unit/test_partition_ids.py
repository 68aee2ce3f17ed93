"""Month ids (ledger/partitions.py): the month an instant falls in (UTC), the
id range of a month, and back from an id to its month."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.partitions import (
    LEGACY_END,
    booked_before,
    booked_in,
    month_begins,
    month_index,
    month_label,
    month_of_id,
    month_start,
)

# From month 1 on: month 0 (January 2000) would share the legacy ids' range;
# nothing is booked before the partitioning came (2026).
instants = st.datetimes(
    min_value=datetime(2000, 2, 1), max_value=datetime(2600, 12, 31), timezones=st.just(UTC)
)


@given(instants, st.integers(min_value=0, max_value=2**40 - 1))
def test_an_id_made_at_an_instant_names_its_month(moment, sequence):
    month = month_index(moment)
    row_id = month_start(month) | sequence
    assert month_of_id(row_id) == month
    assert month_start(month) <= row_id < month_start(month + 1)
    assert month_begins(month) <= moment < month_begins(month + 1)
    assert row_id < 2**53  # exact as a JSON number


def test_months_are_counted_in_utc_from_january_2000():
    assert month_index(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert month_index(datetime(2026, 11, 30, 23, 59, tzinfo=UTC)) == 322
    # 1 December 00:30 in UTC is still 30 November in New York: UTC decides.
    new_york = timezone(timedelta(hours=-5))
    assert month_index(datetime(2026, 11, 30, 19, 30, tzinfo=new_york)) == 323
    assert month_label(322) == "2026_11" and month_label(323) == "2026_12"
    assert month_begins(323) == datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        month_index(datetime(2026, 11, 30))


def test_legacy_ids_have_no_month():
    assert month_of_id(1) is None and month_of_id(LEGACY_END - 1) is None
    assert month_of_id(LEGACY_END) == 1
    assert month_start(1) == LEGACY_END


def test_window_conditions_bound_the_column_by_both_ends():
    assert booked_in("e.id", ":a", ":b") == (
        "e.id >= ledger_ids_from(:a) AND e.id < ledger_ids_before(:b)"
    )
    assert booked_before("p.entry_id", ":b") == "p.entry_id < ledger_ids_before(:b)"
