"""The worked month (tests/finance/conftest.py) closed from the ledger: the
trial balance at the opening, at the end and after, the roll-forward line by
line (points and money at the contracts' effective-dated rates), the
roll-forward tying out for every split of the month into two periods, and
point-in-time balances equal to the live balances table now; and the
README's tables of the month show these figures."""

from datetime import timedelta
from pathlib import Path

import pytest

from finance.errors import InvalidPeriod
from finance.period import Period, parse_instant
from finance.rollforward import roll_forward
from finance.trial_balance import balance_as_of, trial_balance
from ledger.history import (
    balances_as_of,
    live_balances,
    server_time,
    snapshot,
)
from partners.money import units


def lines_of(tb) -> list[tuple[str, str, int, int]]:
    return [(line.asset, line.account, line.accounts, line.balance) for line in tb.lines]


async def test_trial_balance_at_the_end_of_the_month(month):
    tb = await trial_balance(month.engine, month.end)
    assert lines_of(tb) == [
        ("PTS", "member:*:available", 3, 830),  # anna 865, ben 115, clara -150 (owes)
        ("PTS", "member:*:pending", 1, 0),
        ("PTS", "member:*:held", 2, 10),  # ben's open authorisation
        ("PTS", "partner:drugstore:issued", 1, -1300),  # 1,000 + 100 + 200 (the coupon)
        ("PTS", "partner:drugstore:redeemed", 1, 180),
        ("PTS", "partner:fuelstation:issued", 1, -300),  # 300 + 200 - 200 returned
        ("PTS", "partner:fuelstation:redeemed", 1, 400),
        ("PTS", "program:promotions", 1, -100),
        ("PTS", "program:expired", 1, 300),
        ("PTS", "program:adjustments", 1, -20),  # fee 5, goodwill -25
        ("QP", "member:*:qp", 1, 0),  # clara's 200 QP went back with her purchase
        ("QP", "program:qp_source", 1, 0),
    ]
    assert tb.totals == {"PTS": 0, "QP": 0} and tb.balanced


async def test_trial_balance_at_the_opening_and_after_the_month(month):
    opening = await trial_balance(month.engine, month.start)
    assert lines_of(opening) == [
        ("PTS", "member:*:available", 2, 1300),
        ("PTS", "partner:drugstore:issued", 1, -1000),
        ("PTS", "partner:fuelstation:issued", 1, -300),
    ]
    after = await trial_balance(month.engine, month.after)
    assert ("PTS", "member:*:available", 3, 840) in lines_of(after)
    assert ("PTS", "partner:drugstore:issued", 1, -1310) in lines_of(after)
    assert after.balanced
    # Nothing was booked before the first entry.
    first = await trial_balance(month.engine, month.start - timedelta(days=365))
    assert first.lines == [] and first.balanced


def rows_of(rf) -> list[tuple[str, str | None, int]]:
    return [(line.code, line.partner_id, line.points) for line in rf.lines]


async def test_the_roll_forward_of_the_month(month):
    rf = await roll_forward(month.engine, Period(month.start, month.end))
    assert rf.opening == 1300 and rf.opening_by_account == {
        "available": 1300,
        "pending": 0,
        "held": 0,
    }
    assert rows_of(rf) == [
        ("issued-partner", "drugstore", 300),  # 100 base + 200 from its coupon
        ("issued-partner", "fuelstation", 200),
        ("issued-promotions", None, 100),
        ("returned-partner", "fuelstation", -200),
        ("redeemed", "drugstore", -180),  # clara's 150, anna's capture of 30
        ("redeemed", "fuelstation", -400),
        ("expired", None, -300),
        ("transfer-fees", None, -5),
        ("adjusted-credit", None, 25),
    ]
    assert rf.movement == -460
    assert rf.closing_computed == rf.closing == 840 and rf.difference == 0
    assert rf.closing_by_account == {"available": 830, "pending": 0, "held": 10}
    assert rf.ties
    assert {c.kind: (c.member_side, c.lines, c.difference) for c in rf.checks} == {
        "earn": (600, 600, 0),  # anna 400, clara 200
        "burn": (-550, -550, 0),
        "capture": (-30, -30, 0),
        "hold": (0, 0, 0),  # available -> held: no line
        "void": (0, 0, 0),
        "release": (0, 0, 0),
        "reverse": (-200, -200, 0),
        "transfer": (-5, -5, 0),
        "adjust": (25, 25, 0),
        "expire": (-300, -300, 0),
    }


async def test_partner_lines_are_valued_at_the_contract_in_force(month):
    rf = await roll_forward(month.engine, Period(month.start, month.end))
    money = {
        (line.code, line.partner_id): [
            (m.contract_version, m.basis, str(m.rate), m.points, m.minor) for m in line.money
        ]
        for line in rf.lines
        if line.money is not None
    }
    assert money == {
        # 0.01 EUR per point issued, 300 points (the coupon's 200 too): 3.00 EUR.
        ("issued-partner", "drugstore"): [(1, "price_per_point", "0.01", 300, 300)],
        # Earned 04-03, before version 2 (04-06): 0.012.
        ("issued-partner", "fuelstation"): [(1, "price_per_point", "0.012", 200, 240)],
        # The return (04-10) is valued as the earning it reverses (04-03).
        ("returned-partner", "fuelstation"): [(1, "price_per_point", "0.012", -200, -240)],
        ("redeemed", "drugstore"): [(1, "redemption_value", "0.01", -180, -180)],
        # Redeemed 04-08, under version 2: 0.010 reimbursed per point.
        ("redeemed", "fuelstation"): [(2, "redemption_value", "0.010", -400, -400)],
    }
    programme_lines = {line.code for line in rf.lines if line.money is None}
    assert programme_lines == {"issued-promotions", "expired", "transfer-fees", "adjusted-credit"}
    assert rf.money == {"EUR": {"price_per_point": 300, "redemption_value": -580}}


async def test_the_roll_forward_ties_for_every_split_of_the_month(month):
    whole = await roll_forward(month.engine, Period(month.start, month.end))
    for mark in month.marks[:-1]:
        first = await roll_forward(month.engine, Period(month.start, mark))
        second = await roll_forward(month.engine, Period(mark, month.end))
        assert first.ties and second.ties
        assert second.opening == first.closing
        assert second.closing == whole.closing
        assert first.movement + second.movement == whole.movement
        # Every line of the month is the sum of its two halves.
        halves: dict = {}
        for line in first.lines + second.lines:
            key = (line.code, line.partner_id)
            halves[key] = halves.get(key, 0) + line.points
        assert {k: v for k, v in halves.items() if v} == {
            (line.code, line.partner_id): line.points for line in whole.lines
        }


async def test_a_period_after_the_month_has_its_own_lines(month):
    rf = await roll_forward(month.engine, Period(month.end, month.after))
    assert rf.opening == 840 and rows_of(rf) == [("issued-partner", "drugstore", 10)]
    assert rf.closing == 850 and rf.ties


async def test_one_account_as_of_instants(month):
    anna = "member:anna:available"
    at = {
        "opening": (await balance_as_of(month.engine, anna, month.start)).balances,
        "after the burn": (await balance_as_of(month.engine, anna, month.marks[3])).balances,
        "end": (await balance_as_of(month.engine, anna, month.end)).balances,
    }
    assert at == {
        "opening": {"PTS": 1000, "QP": 0},
        "after the burn": {"PTS": 600, "QP": 0},
        "end": {"PTS": 865, "QP": 0},
    }
    issued = await balance_as_of(month.engine, "partner:fuelstation:issued", month.end)
    assert issued.balances == {"PTS": -300, "QP": 0}


async def test_balances_as_of_now_equal_the_live_balances(month):
    async with snapshot(month.engine) as conn:
        now = await server_time(conn)
        point_in_time = {(a, asset): b async for a, asset, b in balances_as_of(conn, now)}
        live = await live_balances(conn)
    # The live table also has rows for accounts only ever locked (no postings).
    assert point_in_time == {k: v for k, v in live.items() if k in point_in_time}
    assert not {k: v for k, v in live.items() if k not in point_in_time and v}
    tb = await trial_balance(month.engine, now + timedelta(seconds=1))
    per_line: dict = {}
    for (account, asset), balance in live.items():
        line = f"member:*:{account.split(':')[2]}" if account.startswith("member:") else account
        per_line[(asset, line)] = per_line.get((asset, line), 0) + balance
    assert {(line.asset, line.account): line.balance for line in tb.lines} == {
        k: v for k, v in per_line.items() if k in {(ln.asset, ln.account) for ln in tb.lines}
    }


@pytest.mark.parametrize(
    ("start", "end", "parameter"),
    [
        ("2026-05-01", "2026-04-01", "to"),
        ("2026-04-01", "2026-04-01", "to"),
        ("2026-04-01", "2027-06-01", "to"),
        ("yesterday", "2026-04-01", "from"),
        ("2026-04-01", "2026-13-01", "to"),
        ("1999-12-31", "2000-01-02", "from"),
        ("", "2026-04-01", "from"),
    ],
)
def test_bad_periods_are_refused(start, end, parameter):
    with pytest.raises(InvalidPeriod) as refused:
        Period.parse(start, end)
    assert refused.value.extensions["parameter"] == parameter


def test_instants_are_dates_or_timestamps_in_utc():
    assert parse_instant("2026-04-01", "x").isoformat() == "2026-04-01T00:00:00+00:00"
    assert parse_instant("2026-04-01T12:00:00+02:00", "x").isoformat() == (
        "2026-04-01T10:00:00+00:00"
    )
    assert parse_instant("2026-04-01T12:00:00Z", "x").hour == 12
    assert parse_instant("2026-04-01 12:00", "x").isoformat() == "2026-04-01T12:00:00+00:00"


def readme_table(title: str) -> list[list[str]]:
    """The rows (cells) of the README's table whose header starts with `title`."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines = text[text.index(f"| {title}") :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


async def test_the_readme_shows_these_figures(month):
    rf = await roll_forward(month.engine, Period(month.start, month.end))
    rows = readme_table("roll-forward, April")
    assert rows[0][0] == "opening" and number(rows[0][1]) == rf.opening
    body = rows[1:-3]
    assert [number(r[1]) for r in body] == [line.points for line in rf.lines]
    for cells, line in zip(body, rf.lines, strict=True):
        if line.partner_id is not None:
            assert line.partner_id.replace("fuelstation", "fuel station") in cells[0]
        euros = cells[2].split(" ")[0]
        money = line.money_minor.get("EUR")
        assert (euros or None) == (None if money is None else str(units(money, "EUR")))
    assert [number(r[1]) for r in rows[-3:]] == [rf.closing_computed, rf.closing, rf.difference]

    tb = await trial_balance(month.engine, month.end)
    balances = {(line.account, line.asset): line.balance for line in tb.lines}
    for cells in readme_table("trial balance as of the month's end"):
        if cells[0] == "total":
            assert [number(c) for c in cells[2:]] == [tb.totals["PTS"], tb.totals["QP"]]
            continue
        accounts = accounts_of(cells[0])
        for asset, cell in zip(("PTS", "QP"), cells[2:], strict=True):
            if cell:
                values = [number(v) for v in cell.split(" / ")]
                found = [balances[(account, asset)] for account in accounts]
                assert found == values, cells


def accounts_of(cell: str) -> list[str]:
    """`partner:drugstore:issued` / `redeemed` (a note) -> both addresses."""
    first, *more = [part.strip(" `") for part in cell.split(" (")[0].split("/")]
    base = first.rsplit(":", 1)[0]
    return [first] + [f"{base}:{name}" for name in more]
