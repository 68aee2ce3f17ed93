"""Breakage reads the journal once: the movements up to a period and those of
the period, merged, are valued as the movements of the whole span would be
(each line and contract version rounded once, not once per window)."""

from decimal import Decimal

from finance.rollforward import build_lines, merge_movements

# (kind, account, sign, version, price_per_point, redemption_value, currency, amount, postings)
EARLIER = [
    ("earn", "partner:fuel:issued", -1, 1, Decimal("0.012"), Decimal("0.009"), "EUR", -125, 1),
    ("burn", "partner:fuel:redeemed", 1, 1, Decimal("0.012"), Decimal("0.009"), "EUR", 40, 1),
]
LATER = [
    ("earn", "partner:fuel:issued", -1, 1, Decimal("0.012"), Decimal("0.009"), "EUR", -125, 1),
    ("expire", "program:expired", 1, None, None, None, None, 30, 2),
]


def test_two_windows_merged_are_valued_as_one():
    merged = build_lines(merge_movements(EARLIER, LATER))
    issued = next(line for line in merged if line.code == "issued-partner")
    # 250 points at 0.012 EUR: 300 minor units, valued once over both windows.
    assert (issued.points, issued.postings) == (250, 2)
    assert [(part.points, part.minor) for part in issued.money] == [(250, 300)]
    assert {line.code: line.points for line in merged} == {
        "issued-partner": 250,
        "redeemed": -40,
        "expired": -30,
    }


def test_rounding_happens_once_over_the_span():
    # 1 point at 0.015 EUR is 1.5 minor units: two windows rounded apart give 2 + 2,
    # the span rounded once gives 3.
    one = [("earn", "partner:fuel:issued", -1, 2, Decimal("0.015"), Decimal("0.01"), "EUR", -1, 1)]
    merged = build_lines(merge_movements(one, one))
    (issued,) = [line for line in merged if line.code == "issued-partner"]
    assert [(part.points, part.minor) for part in issued.money] == [(2, 3)]
    apart = sum(part.minor for part in build_lines(one)[0].money) * 2
    assert apart == 4


def test_a_span_takes_exactly_the_windows_inside_it():
    # Breakage cuts the journal at every instant a figure starts or ends; each
    # figure's span is the union of the windows between its two instants.
    from datetime import UTC, datetime

    from finance.breakage import _span

    bounds = [datetime(2025, month, 1, tzinfo=UTC) for month in (1, 4, 7, 10)]
    windows = [
        [("expire", "program:expired", 1, None, None, None, None, 10, 1)],
        [("expire", "program:expired", 1, None, None, None, None, 200, 1)],
        [("expire", "program:expired", 1, None, None, None, None, 3000, 1)],
    ]

    def expired(start, end):
        lines = build_lines(_span(windows, bounds, start, end))
        return sum(-line.points for line in lines)

    assert expired(bounds[0], bounds[3]) == 3210
    assert expired(bounds[1], bounds[3]) == 3200
    assert expired(bounds[0], bounds[2]) == 210
    assert expired(bounds[1], bounds[2]) == 200
    assert expired(bounds[2], bounds[2]) == 0
