"""The export formats and the roll-forward's classification as plain
functions (no database): CSV bytes equal to `csv.writer`'s for awkward values,
an entry split across batches written once in JSON Lines, control totals
counted as written, and every counter posting of the ledger's entry kinds on
its line."""

import csv
import io
import json
from datetime import UTC, datetime

from finance.journal_export import COLUMNS, _CsvFormat, _JsonlFormat, _Tally
from finance.rollforward import build_lines, classify

T1 = datetime(2026, 4, 1, 9, 0, 0, 123, tzinfo=UTC)
T2 = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)


def row(entry, posting, account, asset, amount, reason=None, breakdown="[]"):
    return (
        entry,
        T1,
        T2,
        "adjust",
        "anna",
        None,
        None,
        None,
        None,
        "staff:fiona",
        reason,
        breakdown,
        posting,
        account,
        asset,
        amount,
    )


AWKWARD = [
    row(1, 10, "member:anna:available", "PTS", 5, 'a "quoted", reason\nover two lines'),
    row(1, 11, "program:adjustments", "PTS", -5, 'a "quoted", reason\nover two lines'),
    row(2, 12, "member:anna:qp", "QP", 3, "", '[{"reason": "x, y", "note": "é"}]'),
    row(2, 13, "program:qp_source", "QP", -3, "", '[{"reason": "x, y", "note": "é"}]'),
]


def test_csv_is_what_csv_writer_writes():
    form = _CsvFormat(_Tally())
    data = form.header() + form.rows(AWKWARD[:1]) + form.rows(AWKWARD[1:]) + form.end()
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in AWKWARD:
        writer.writerow(
            (
                r[0],
                "2026-04-01T09:00:00.000123Z",
                "2026-03-31T23:59:59.000000Z",
                *r[3:],
            )
        )
    assert data == expected.getvalue().encode()
    parsed = list(csv.DictReader(io.StringIO(data.decode())))
    assert parsed[0]["reason"] == 'a "quoted", reason\nover two lines'
    assert parsed[2]["reason"] == "" and parsed[2]["partner_id"] == ""
    assert json.loads(parsed[2]["breakdown"]) == [{"reason": "x, y", "note": "é"}]


def test_jsonl_writes_an_entry_split_across_batches_once():
    tally = _Tally()
    form = _JsonlFormat(tally)
    data = form.rows(AWKWARD[:1]) + form.rows(AWKWARD[1:3]) + form.rows(AWKWARD[3:]) + form.end()
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert [(e["entry_id"], len(e["postings"])) for e in lines] == [(1, 2), (2, 2)]
    assert lines[0]["reason"] == 'a "quoted", reason\nover two lines'
    assert (
        lines[0]["partner_id"] is None and lines[0]["created_at"] == "2026-04-01T09:00:00.000123Z"
    )
    assert lines[1]["breakdown"] == [{"reason": "x, y", "note": "é"}]
    totals = tally.totals
    assert (totals.entries, totals.postings, totals.first_entry_id, totals.last_entry_id) == (
        2,
        4,
        1,
        2,
    )
    assert {a: (t.postings, t.debits, t.credits) for a, t in totals.assets.items()} == {
        "PTS": (2, -5, 5),
        "QP": (2, -3, 3),
    }
    assert totals.balanced


def test_every_counter_posting_has_its_line():
    assert classify("earn", "partner:shop:issued", -1) == ("issued-partner", "shop")
    assert classify("earn", "program:promotions", -1) == ("issued-promotions", None)
    assert classify("reverse", "partner:shop:issued", 1) == ("returned-partner", "shop")
    assert classify("reverse", "program:promotions", 1) == ("returned-promotions", None)
    assert classify("burn", "partner:shop:redeemed", 1) == ("redeemed", "shop")
    assert classify("capture", "partner:shop:redeemed", 1) == ("redeemed", "shop")
    assert classify("reverse", "partner:shop:redeemed", -1) == ("refunded", "shop")
    assert classify("expire", "program:expired", 1) == ("expired", None)
    assert classify("forfeit", "program:expired", 1) == ("forfeited", None)
    assert classify("transfer", "program:adjustments", 1) == ("transfer-fees", None)
    assert classify("adjust", "program:adjustments", -1) == ("adjusted-credit", None)
    assert classify("adjust", "program:adjustments", 1) == ("adjusted-debit", None)
    # Anything the chart does not foresee is shown under its own name.
    assert classify("adjust", "partner:shop:issued", -1) == ("other", None)


def test_an_unforeseen_movement_is_a_line_of_its_own():
    lines = build_lines(
        [
            ("earn", "partner:shop:issued", -1, 1, "0.01", "0.01", "EUR", -100, 1),
            ("adjust", "partner:shop:issued", -1, 1, "0.01", "0.01", "EUR", -7, 1),
        ]
    )
    assert [(ln.code, ln.label, ln.points) for ln in lines] == [
        ("issued-partner", "issued, partner-funded", 100),
        ("other", "other: adjust against partner:shop:issued", 7),
    ]
    assert lines[0].money_minor == {"EUR": 100} and lines[1].money is None


def test_money_is_rounded_half_up_per_contract_version():
    (line,) = build_lines(
        [
            ("earn", "partner:shop:issued", -1, 1, "0.0125", "0", "EUR", -1, 1),
            ("earn", "partner:shop:issued", -1, 2, "0.0135", "0", "EUR", -3, 1),
        ]
    )
    # 1 x 0.0125 = 0.0125 EUR -> 0.01 (1 cent, half up on 1.25 cents);
    # 3 x 0.0135 = 0.0405 EUR -> 0.04 (4 cents).
    assert [(m.contract_version, m.points, m.minor) for m in line.money] == [(1, 1, 1), (2, 3, 4)]
    assert line.points == 4 and line.money_minor == {"EUR": 5}
