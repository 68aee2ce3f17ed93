"""Expiry policies."""

from datetime import UTC, datetime

import pytest

from ledger.expiry import AnnualCutoff, RollingToQuarterEnd, parse_policy


def test_rolling_36_months_to_quarter_end():
    policy = RollingToQuarterEnd(36)
    # Earned 15 May 2026: 36 months later is May 2029, whose quarter ends 30 June 2029.
    assert policy.expires_at(datetime(2026, 5, 15, 12, tzinfo=UTC)) == datetime(
        2029, 7, 1, tzinfo=UTC
    )
    # Earned on the last day of a quarter: still that quarter, 3 years on.
    assert policy.expires_at(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2030, 1, 1, tzinfo=UTC
    )


def test_annual_cutoff_expires_at_the_first_run_after_36_months():
    policy = AnnualCutoff(36)
    assert policy.expires_at(datetime(2023, 5, 10, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["rolling:0", "weekly:3", "rolling:x"])
def test_bad_policies_are_refused(text):
    with pytest.raises(ValueError):
        parse_policy(text)


def test_policy_round_trip():
    assert parse_policy("annual:24") == AnnualCutoff(24)
    assert parse_policy("rolling:36").describe() == "rolling:36"
