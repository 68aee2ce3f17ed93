"""Property tests of the pure functions insights build on: Pareto shares
monotone and reaching 100 %, Gini in [0, 1), the Lorenz ranks the SQL picks
out, quintiles of equal size within one, cohort retention never above 100 %."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from insights import pareto, retention, rfm

totals = st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=300)


@given(totals, st.integers(min_value=2, max_value=50))
def test_pareto_shares_are_monotone_and_reach_the_whole(values, points):
    percents = (1, 5, 10, 20, 50, 100)
    summary = pareto.summarise(values, percents, points)
    d = pareto.distribution(summary, "spend", None, percents, points)
    shares = [t.share for t in d.top]
    assert shares == sorted(shares)
    assert shares[-1] == Decimal(1)
    assert all(Decimal(0) < s <= Decimal(1) for s in shares)
    curve = d.lorenz
    assert (curve[0].members, curve[0].value, curve[-1].members, curve[-1].value) == (0, 0, 1, 1)
    assert [p.value for p in curve] == sorted(p.value for p in curve)
    # The curve never lies above the diagonal (the poorest hold at most their share).
    assert all(p.value <= p.members + Decimal("0.0001") for p in curve)


@given(totals)
def test_gini_lies_in_zero_to_one(values):
    d = pareto.distribution(pareto.summarise(values, pareto.PERCENTS, 20), "spend")
    assert Decimal(0) <= d.gini < Decimal(1)
    if len(set(values)) == 1:
        assert d.gini == 0


@given(st.integers(min_value=1, max_value=2000), st.integers(min_value=2, max_value=100))
def test_the_sql_lorenz_predicate_picks_the_needed_ranks(n, k):
    # LORENZ_PREDICATE in integer arithmetic, as PostgreSQL evaluates it.
    picked = {r for r in range(1, n + 1) if n * (((n - r) * k + n - 1) // n) < (n - r + 1) * k}
    assert picked == {n - m for m in pareto.lorenz_counts(n, k) if m < n}


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=200))
def test_quintiles_have_equal_sizes_within_one(values):
    scores = rfm.quintiles(list(enumerate(values)))
    sizes = [list(scores.values()).count(s) for s in range(1, 6)]
    assert set(scores.values()) <= {1, 2, 3, 4, 5}
    assert max(sizes) - min(sizes) <= 1
    # Higher values never score lower.
    ordered = sorted(enumerate(values), key=lambda kv: (kv[1], kv[0]))
    assert [scores[key] for key, _ in ordered] == sorted(scores.values())


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
def test_every_score_has_a_segment(r, f, m):
    assert rfm.segment(r, f, m) in rfm.SEGMENTS


members = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=11),
        st.lists(st.integers(min_value=0, max_value=23), max_size=12),
    ),
    max_size=100,
)


@given(members, st.integers(min_value=0, max_value=12), st.integers(min_value=0, max_value=24))
def test_retention_never_exceeds_the_cohort(data, months_since, current):
    counts = retention.cohort_counts(data)
    rows = retention.retention_table(counts, list(range(12)), months_since, current)
    for row in rows:
        assert len(row.retention) == months_since + 1
        for value, active in zip(row.retention, row.active, strict=True):
            if value is not None:
                assert Decimal(0) <= value <= Decimal(1)
                assert active <= row.members
