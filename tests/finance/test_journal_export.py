"""The journal export of the worked month through `loyalty finance
export-journal`: the CSV and JSON Lines contents against the postings, the
control totals against the postings' sums, the SHA-256 file checked by
`sha256sum -c`, and bad periods refused in one line (exit code 2)."""

import asyncio
import csv
import io
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from api.cli import main
from finance.journal_export import COLUMNS
from finance.period import stamp
from tests.conftest import TEST_SECRET_KEY


async def loyalty(month, tmp_path, *args: str):
    env = {
        "LOYALTY_DATABASE_URL": month.url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }
    # The command runs its own event loop: in a thread, beside the tests' loop.
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


async def export(month, tmp_path, fmt: str, start=None, end=None):
    path = tmp_path / f"journal.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = await loyalty(
        month,
        tmp_path,
        "finance",
        "export-journal",
        "--from",
        stamp(start or month.start),
        "--to",
        stamp(end or month.end),
        "--format",
        fmt,
        "--output",
        str(path),
    )
    assert result.exit_code == 0, result.output
    return path


async def window_postings(month, start, end) -> list[dict]:
    """The window's postings as the database has them, in the export's order."""
    async with month.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT e.id, e.kind, e.member_id, e.partner_id, e.partner_reference, "
                "e.reverses_entry_id, e.posted_by, e.reason, e.effective_at, e.created_at, "
                "e.breakdown, p.id AS posting_id, p.account, p.asset, p.amount "
                "FROM journal_entries e JOIN postings p ON p.entry_id = e.id "
                "WHERE e.created_at >= :s AND e.created_at < :e ORDER BY e.id, p.id"
            ),
            {"s": start, "e": end},
        )
        return [r._asdict() for r in rows]


async def sha256sum_check(directory, checksum_file: str) -> tuple[int, bytes]:
    """`sha256sum -c FILE.sha256` in the file's directory, as an auditor runs it."""
    process = await asyncio.create_subprocess_exec(
        "sha256sum", "-c", checksum_file, cwd=directory, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await process.communicate()
    return process.returncode, output


def opt(value) -> str:
    return "" if value is None else str(value)


async def test_csv_export_of_the_month(month, tmp_path):
    path = await export(month, tmp_path, "csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    expected = await window_postings(month, month.start, month.end)
    assert len(rows) == len(expected) == 35
    assert list(rows[0]) == list(COLUMNS)
    for row, db in zip(rows, expected, strict=True):
        assert (int(row["entry_id"]), row["kind"], int(row["posting_id"])) == (
            db["id"],
            db["kind"],
            db["posting_id"],
        )
        assert (row["account"], row["asset"], int(row["amount"])) == (
            db["account"],
            db["asset"],
            db["amount"],
        )
        assert row["member_id"] == opt(db["member_id"])
        assert row["partner_id"] == opt(db["partner_id"])
        assert row["partner_reference"] == opt(db["partner_reference"])
        assert row["reverses_entry_id"] == opt(db["reverses_entry_id"])
        assert (row["posted_by"], row["reason"]) == (db["posted_by"], opt(db["reason"]))
        assert row["created_at"] == stamp(db["created_at"])
        assert row["effective_at"] == stamp(db["effective_at"])
        assert json.loads(row["breakdown"]) == db["breakdown"]
    # Clara's return, as an auditor reads it: the reversal names the earning.
    returned = [r for r in rows if r["entry_id"] == str(month.entries["clara-return"])]
    assert {(r["account"], int(r["amount"])) for r in returned} == {
        ("member:clara:available", -200),
        ("partner:fuelstation:issued", 200),
        ("member:clara:qp", -200),
        ("program:qp_source", 200),
    }
    assert returned[0]["reverses_entry_id"] == str(month.entries["clara-earn"])
    assert returned[0]["effective_at"].startswith("2026-04-10T10:00:00")
    promo = [r for r in rows if r["entry_id"] == str(month.entries["anna-promo-earn"])]
    assert [
        (line["kind"], line["funder"], line["amount"]) for line in json.loads(promo[0]["breakdown"])
    ] == [("base", "partner", 100), ("promotion", "program", 100), ("coupon", "partner", 200)]
    assert str(month.entries["after"]) not in {r["entry_id"] for r in rows}


async def test_control_totals_and_checksum(month, tmp_path):
    path = await export(month, tmp_path, "csv")
    totals = json.loads((tmp_path / "journal.csv.totals.json").read_text())
    expected = await window_postings(month, month.start, month.end)
    sums: dict = {}
    for p in expected:
        per = sums.setdefault(p["asset"], {"postings": 0, "debits": 0, "credits": 0})
        per["postings"] += 1
        per["debits" if p["amount"] < 0 else "credits"] += p["amount"]
    assert totals["entries"] == len({p["id"] for p in expected}) == 13
    assert totals["postings"] == 35
    assert totals["assets"] == sums
    assert totals["assets"]["PTS"]["debits"] == -totals["assets"]["PTS"]["credits"] == -2290
    assert totals["assets"]["QP"] == {"postings": 4, "debits": -400, "credits": 400}
    assert (totals["first_entry_id"], totals["last_entry_id"]) == (
        min(p["id"] for p in expected),
        max(p["id"] for p in expected),
    )
    assert (totals["period_from"], totals["period_to"]) == (stamp(month.start), stamp(month.end))
    assert totals["period_time"] == "created_at" and totals["format"] == "csv"
    assert totals["bytes"] == path.stat().st_size
    # The auditor's check: the file is the one the checksum names.
    assert (tmp_path / "journal.csv.sha256").read_text() == f"{totals['sha256']}  journal.csv\n"
    if shutil.which("sha256sum"):
        code, output = await sha256sum_check(tmp_path, "journal.csv.sha256")
        assert code == 0 and b"journal.csv: OK" in output
        path.write_bytes(path.read_bytes().replace(b"anna", b"anne"))
        code, _ = await sha256sum_check(tmp_path, "journal.csv.sha256")
        assert code != 0


async def test_jsonl_export_of_the_month(month, tmp_path):
    path = await export(month, tmp_path, "jsonl")
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    expected = await window_postings(month, month.start, month.end)
    assert [e["entry_id"] for e in entries] == sorted({p["id"] for p in expected})
    assert sum(len(e["postings"]) for e in entries) == 35
    by_id = {e["entry_id"]: e for e in entries}
    transfer = by_id[month.entries["transfer"]]
    assert transfer["kind"] == "transfer" and transfer["member_id"] == "anna"
    assert transfer["breakdown"] == [{"amount": 100, "fee": 5, "to": "ben"}]
    assert [(p["account"], p["amount"]) for p in transfer["postings"]] == [
        ("member:anna:available", -105),
        ("member:ben:available", 100),
        ("program:adjustments", 5),
    ]
    adjustment = by_id[month.entries["adjust"]]
    assert (adjustment["posted_by"], adjustment["reason"]) == (
        "staff:fiona",
        "goodwill: late delivery",
    )
    assert adjustment["partner_id"] is None
    for entry in entries:  # every entry balances per asset
        per_asset: dict = {}
        for p in entry["postings"]:
            per_asset[p["asset"]] = per_asset.get(p["asset"], 0) + p["amount"]
        assert not any(per_asset.values()), entry
    totals = json.loads((tmp_path / "journal.jsonl.totals.json").read_text())
    csv_path = await export(month, tmp_path, "csv")
    csv_totals = json.loads((tmp_path / "journal.csv.totals.json").read_text())
    assert {k: v for k, v in totals.items() if k not in ("format", "file", "bytes", "sha256")} == {
        k: v
        for k, v in csv_totals.items()
        if k not in ("format", "file", "bytes", "sha256", "generated_at")
    } | {"generated_at": totals["generated_at"]}
    assert csv_path.stat().st_size != path.stat().st_size


async def test_a_period_split_in_two_exports_every_entry_once(month, tmp_path):
    middle = month.marks[4]
    first = await export(month, tmp_path / "a", "csv", month.start, middle)
    second = await export(month, tmp_path / "b", "csv", middle, month.end)
    ids = [r["posting_id"] for f in (first, second) for r in csv.DictReader(f.open())]
    whole = await export(month, tmp_path / "c", "csv")
    assert ids == [r["posting_id"] for r in csv.DictReader(whole.open())]


async def test_an_empty_period_is_a_header_and_zero_totals(month, tmp_path):
    before = month.start - timedelta(days=30)
    path = await export(month, tmp_path, "csv", before, before + timedelta(days=1))
    assert path.read_text() == ",".join(COLUMNS) + "\n"
    totals = json.loads((tmp_path / "journal.csv.totals.json").read_text())
    assert (totals["entries"], totals["postings"], totals["assets"]) == (0, 0, {})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-05-01", "--to", "2026-04-01"], "invalid-period: to: must be after"),
        (["--from", "2026-04-01", "--to", "2028-04-01"], "invalid-period: to: a period is at"),
        (["--from", "April", "--to", "2026-05-01"], "invalid-period: from: not a date"),
        (
            ["--from", "2026-04-01", "--to", "2026-05-01", "--format", "xml"],
            "invalid-export-format",
        ),
    ],
)
async def test_bad_input_is_one_line_and_exit_code_2(month, tmp_path, args, message):
    out = tmp_path / "never.csv"
    result = await loyalty(
        month, tmp_path, "finance", "export-journal", *args, "--output", str(out)
    )
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not out.exists()


async def test_an_output_that_is_not_a_regular_file_is_refused_before_anything(month, tmp_path):
    """A pipe, a link or a device at --output would be replaced by the file
    (or block the write): refused, exit 2, one line, nothing touched."""
    fifo, target = tmp_path / "pipe.csv", tmp_path / "kept.csv"
    os.mkfifo(fifo)
    target.write_text("mine\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    period = ["--from", stamp(month.start), "--to", stamp(month.end)]
    for out in (fifo, link, Path("/dev/null")):
        result = await loyalty(
            month, tmp_path, "finance", "export-journal", *period, "--output", str(out)
        )
        assert result.exit_code == 2, result.output
        assert "is not a regular file" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert fifo.is_fifo() and link.is_symlink() and target.read_text() == "mine\n"
    assert not (tmp_path / "link.csv.sha256").exists()
    # The same for what the export writes beside the file.
    for beside in ("out.csv.partial", "out.csv.sha256", "out.csv.totals.json"):
        (tmp_path / beside).symlink_to(target)
        result = await loyalty(
            month, tmp_path, "finance", "export-journal", *period, "--output",
            str(tmp_path / "out.csv"),
        )  # fmt: skip
        assert result.exit_code == 2 and beside in result.output, result.output
        (tmp_path / beside).unlink()
    assert target.read_text() == "mine\n" and not (tmp_path / "out.csv").exists()


async def test_cli_trial_balance_and_roll_forward(month, tmp_path):
    tb = await loyalty(month, tmp_path, "finance", "trial-balance", "--as-of", stamp(month.end))
    assert tb.exit_code == 0, tb.output
    assert "member:*:available" in tb.output and "balanced: yes" in tb.output
    as_json = await loyalty(
        month, tmp_path, "finance", "trial-balance", "--as-of", stamp(month.end), "--json"
    )
    assert json.loads(as_json.output)["totals"] == {"PTS": 0, "QP": 0}
    rf = await loyalty(
        month, tmp_path, "finance", "roll-forward", "--from", stamp(month.start), "--to",
        stamp(month.end),
    )  # fmt: skip
    assert rf.exit_code == 0, rf.output
    assert "ties out: yes" in rf.output and "EUR" in rf.output
    lines = {line.split()[0] for line in rf.output.splitlines() if line.strip()}
    assert {"opening", "=", "ties"} <= lines
    one = await loyalty(
        month, tmp_path, "finance", "balances", "member:clara:available", "--as-of",
        stamp(month.end),
    )  # fmt: skip
    assert one.exit_code == 0 and "member:clara:available  PTS  -150" in one.output
    every = await loyalty(
        month, tmp_path, "finance", "balances", "--as-of", stamp(month.end), "--json"
    )
    balances = [json.loads(line) for line in every.output.splitlines()]
    assert {"account": "program:expired", "asset": "PTS", "balance": 300} in balances
    assert sum(b["balance"] for b in balances if b["asset"] == "PTS") == 0


@pytest.mark.parametrize(
    ("account", "message"),
    [
        ("member:nobody:available", "member-not-found: no enrolled member 'nobody'"),
        ("member:ANNA:available", "member-not-found: no enrolled member 'ANNA'"),
        ("partner:nobody:redeemed", "partner-not-found: no registered partner 'nobody'"),
    ],
)
async def test_cli_balances_of_an_unknown_owner_exit_4(month, tmp_path, account, message):
    result = await loyalty(month, tmp_path, "finance", "balances", account)
    assert result.exit_code == 4, result.output
    assert len(result.output.strip().splitlines()) == 1 and message in result.output
    programme = await loyalty(month, tmp_path, "finance", "balances", "program:adjustments")
    assert programme.exit_code == 0 and "program:adjustments  PTS" in programme.output
