"""Partner transaction files against the real PostgreSQL: CSV and JSON Lines
files post the right balances; duplicates, unknown and blocked cards and bad
lines go to the rejects with their line and reason while the good rows post
once; a file imported again answers its earlier summary; and an import whose
`loyalty partner import` process is killed with SIGKILL between two
checkpoints, started again, posts every row exactly once. In lanes (the
default four): a reference sent twice is decided in file order even when the
later row's lane would commit first, and an import failing in one lane goes
on from each lane's checkpoint."""

import asyncio
import csv
import io
import json
import os
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ledger.errors import RequestInFlight
from partners.errors import InvalidPurchase, PartnerNotFound
from partners.import_formats import ImportSource
from partners.imports import IMPORT_LANES, card_lane, import_file, stream_rejects
from partners.programme import Programme
from partners.registry import Registry
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.conftest import TEST_SECRET_KEY

ADMIN = "staff:tests"
FROM = datetime(2024, 1, 1, tzinfo=UTC)
HEADER = "card_number,reference,occurred_at,currency,amount_minor,category,sku,coupons\n"


def card_number() -> str:
    return "7" + str(uuid.uuid4().int)[:15]


async def shop_with_members(ledger, engine, new_partner, new_member, count: int):
    """A partner earning 1 point per EUR (groceries) and 2 per EUR
    (electronics), and `count` members with a card each."""
    partner = await new_partner()
    await Rulebook(ledger).create_earn_rule(
        partner,
        EarnRuleInput(FROM, "EUR", Decimal(1), category_multipliers={"electronics": Decimal(2)}),
        ADMIN,
    )
    registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
    holders = []
    for _ in range(count):
        member, card = await new_member(), card_number()
        await registry.issue_card(member, card, ADMIN)
        holders.append((member, card))
    return partner, holders, registry


def at(minutes: int = 0) -> str:
    return (datetime.now(UTC) - timedelta(hours=1, minutes=minutes)).isoformat()


async def entries_of(engine, partner: str) -> int:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT count(*) FROM journal_entries WHERE partner_id = :p"), {"p": partner}
            )
        ).scalar_one()


async def rejects_of(engine, import_id: int) -> list[tuple]:
    return [(r.line, r.reference, r.code) async for r in stream_rejects(engine, import_id)]


async def test_a_csv_file_posts_the_good_rows_once_and_reports_the_rest(
    ledger, engine, new_partner, new_member, assert_clean
):
    programme = Programme(ledger)
    shop, [(anna, a_card), (ben, b_card), (cleo, c_card)], registry = await shop_with_members(
        ledger, engine, new_partner, new_member, 3
    )
    await registry.block_card(cleo, c_card, ADMIN)
    earlier = await programme.earn_purchase(
        anna,
        (await _purchase(programme, shop, 1000)),
        "SENT-BY-API",
    )
    assert earlier.entry_id is not None
    when = at()
    rows = [
        f"{a_card},R-1,{when},EUR,1000,groceries,,",  # line 2: 10 points
        f"{b_card},R-2,{when},EUR,1000,groceries,SKU-1,",  # lines 3-4: one purchase,
        f"{b_card},R-2,{when},EUR,500,electronics,SKU-2,",  # 10 + 10 points
        f"{'9' * 16},R-3,{when},EUR,1000,groceries,,",  # line 5: unknown card
        f"{c_card},R-4,{when},EUR,1000,groceries,,",  # line 6: blocked card
        f"{a_card},R-5,{when},EUR,ten,groceries,,",  # line 7: not an amount
        f"{a_card},R-6,2026-01-01T10:00:00,EUR,1000,groceries,,",  # line 8: no UTC offset
        f"{a_card},R-7,{when}",  # line 9: too few values
        f"{a_card},SENT-BY-API,{when},EUR,1000,groceries,,",  # line 10: used before
        f"{a_card},R-1,{when},EUR,9900,groceries,,",  # line 11: used in this file
        "",  # a blank line: no row
        f"{a_card},R-8,{when},XXX,1000,groceries,,",  # line 13: unknown currency
        f"{b_card},R-9,{when},EUR,1000,groceries,,",  # line 14: 10 points
        f"{b_card},R-10,{when},EUR,100,groceries,,",  # line 15: 1 point
        f'{b_card},"R-11",{when},EUR,2000,"gro\x00ceries",,',  # line 16: a NUL character
    ]
    data = (HEADER + "\n".join(rows) + "\n").encode()

    summary = await import_file(
        programme, shop, ImportSource.from_bytes("day.csv", data), actor=ADMIN, chunk_size=4
    )

    assert (summary.rows, summary.purchases) == (14, 13)
    assert (summary.posted, summary.duplicates, summary.rejected) == (4, 2, 7)
    assert summary.points == 10 + 20 + 10 + 1 and summary.finished_at is not None
    assert (await ledger.balances(anna)).available == 10 + 10
    assert (await ledger.balances(ben)).available == 20 + 10 + 1
    assert (await ledger.balances(cleo)).available == 0
    assert await rejects_of(engine, summary.import_id) == [
        (5, "R-3", "card-not-found"),
        (6, "R-4", "card-blocked"),
        (7, "R-5", "invalid-purchase"),
        (8, "R-6", "invalid-purchase"),
        (9, None, "invalid-purchase"),
        (10, "SENT-BY-API", "duplicate-partner-reference"),
        (11, "R-1", "duplicate-partner-reference"),
        (13, "R-8", "unknown-currency"),
        (16, "R-11", "invalid-purchase"),
    ]
    details = {r.line: r.detail async for r in stream_rejects(engine, summary.import_id)}
    assert "amount_minor" in details[7] and "UTC offset" in details[8]
    assert "7 values" not in details[9] and "3 values" in details[9]
    assert "NUL" in details[16]

    again = await import_file(
        programme, shop, ImportSource.from_bytes("renamed.csv", data), actor=ADMIN
    )
    assert again.already_imported and again.import_id == summary.import_id
    assert (again.posted, again.rejected, again.points) == (4, 7, summary.points)
    assert await entries_of(engine, shop) == 4 + 1
    await assert_clean()


async def _purchase(programme, shop, amount):
    from partners.programme import PurchaseInput, PurchaseLineInput

    return PurchaseInput("EUR", [PurchaseLineInput(amount, "groceries")]).to_purchase(
        shop, programme.ledger.clock()
    )


async def test_a_json_lines_file_posts_purchases_of_several_lines(
    ledger, engine, new_partner, new_member, assert_clean
):
    programme = Programme(ledger)
    shop, [(anna, a_card), (ben, b_card)], _ = await shop_with_members(
        ledger, engine, new_partner, new_member, 2
    )
    when = at()

    def item(card, reference, *lines):
        purchase = {
            "currency": "EUR",
            "occurred_at": when,
            "lines": [{"amount_minor": a, "category": c} for a, c in lines],
        }
        return json.dumps({"card_number": card, "reference": reference, "purchase": purchase})

    lines = [
        item(a_card, "J-1", (1000, "groceries"), (1000, "electronics")),  # 10 + 20
        item(b_card, "J-2", (5000, "groceries")),  # 50
        "",
        '{"card_number": "1", "reference": "J-3", "extra": true}',  # line 4: unknown field
        "not json at all",  # line 5
        json.dumps(
            {
                "card_number": b_card,
                "reference": "J-6",
                "purchase": {
                    "currency": "EUR",
                    "lines": [{"amount_minor": 100, "category": "groceries"}],
                },
            }
        ),  # no time
        item(b_card, "J-2", (100, "groceries")),  # line 7: duplicate
        item(b_card, "J-8", (-5, "groceries")),  # line 8: a negative amount
        "[" * 5000,  # line 9: nested deeper than the decoder goes
        '{"reference": "J-10", "purchase": ' + '{"a": ' * 5000,  # line 10: so
        item(b_card, "J-11", (700, "groceries")),  # and the file goes on: 7
    ]
    data = ("\n".join(lines) + "\n").encode()

    summary = await import_file(
        programme, shop, ImportSource.from_bytes("day.jsonl", data), actor=ADMIN
    )

    assert (summary.rows, summary.posted, summary.duplicates, summary.rejected) == (10, 3, 1, 6)
    assert summary.points == 87
    assert (await ledger.balances(anna)).available == 30
    assert (await ledger.balances(ben)).available == 57
    assert await rejects_of(engine, summary.import_id) == [
        (4, "J-3", "invalid-purchase"),
        (5, None, "invalid-purchase"),
        (6, "J-6", "invalid-purchase"),
        (7, "J-2", "duplicate-partner-reference"),
        (8, "J-8", "invalid-purchase"),
        (9, None, "invalid-purchase"),
        (10, None, "invalid-purchase"),
    ]
    await assert_clean()


async def test_files_refused_whole_post_nothing(ledger, engine, new_partner, new_member):
    programme = Programme(ledger)
    shop, [(_, card)], _ = await shop_with_members(ledger, engine, new_partner, new_member, 1)
    row = f"{card},W-1,{at()},EUR,1000,groceries,,\n"
    wrong_header = ("card,reference,occurred_at,currency,amount_minor,category\n" + row).encode()
    with pytest.raises(InvalidPurchase, match="missing: card_number; unknown: card"):
        await import_file(
            programme, shop, ImportSource.from_bytes("a.csv", wrong_header), actor=ADMIN
        )
    with pytest.raises(InvalidPurchase, match="format"):
        await import_file(programme, shop, ImportSource.from_bytes("a.txt", b""), actor=ADMIN)
    good = (HEADER + row).encode()
    with pytest.raises(PartnerNotFound):
        await import_file(
            programme, "no-such-shop", ImportSource.from_bytes("a.csv", good), actor=ADMIN
        )

    # A second importer of the same file is refused while the first holds it.
    import hashlib

    sha = hashlib.sha256(good).hexdigest()
    async with engine.connect() as conn:
        await conn.execute(
            text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"),
            {"k": f"partner-import\n{shop}\n{sha}"},
        )
        with pytest.raises(RequestInFlight):
            await import_file(programme, shop, ImportSource.from_bytes("a.csv", good), actor=ADMIN)
        await conn.invalidate()
    assert await entries_of(engine, shop) == 0
    done = await import_file(programme, shop, ImportSource.from_bytes("a.csv", good), actor=ADMIN)
    assert (done.posted, done.runs) == (1, 1)


async def cards_for_lanes(registry, members: list[str], lanes: list[int]) -> list[str]:
    """A new card for each member, in the import lane given for it (of the
    import's default number of lanes)."""
    cards = []
    for member, lane in zip(members, lanes, strict=True):
        card = card_number()
        while card_lane(card, IMPORT_LANES) != lane:
            card = card_number()
        await registry.issue_card(member, card, ADMIN)
        cards.append(card)
    return cards


async def test_a_reference_sent_twice_is_decided_in_file_order_whatever_the_lanes(
    ledger, engine, new_partner, new_member, monkeypatch, assert_clean
):
    import partners.imports as imports

    programme = Programme(ledger)
    shop, _, registry = await shop_with_members(ledger, engine, new_partner, new_member, 0)
    anna, ben = await new_member(), await new_member()
    a_card, b_card = await cards_for_lanes(registry, [anna, ben], [0, 1])
    when = at()
    rows = []
    for n in range(3):  # each time, the later row is in the other lane, sent first
        rows += [
            f"{a_card},X-{n},{when},EUR,1000,groceries,,",  # anna's lane: posts 10
            f"{b_card},B-{n},{when},EUR,100,groceries,,",  # ben's lane: posts 1
            f"{b_card},X-{n},{when},EUR,5000,groceries,,",  # the duplicate
        ]
    data = (HEADER + "\n".join(rows) + "\n").encode()
    earn_batch = imports.earn_batch

    async def anna_late(programme, partner_id, items, **options):
        if any(item.card_number == a_card for item in items):
            await asyncio.sleep(0.3)  # her lane would commit after ben's
        return await earn_batch(programme, partner_id, items, **options)

    monkeypatch.setattr(imports, "earn_batch", anna_late)

    summary = await import_file(
        programme, shop, ImportSource.from_bytes("twice.csv", data), actor=ADMIN, chunk_size=3
    )

    assert (summary.posted, summary.duplicates, summary.rejected) == (6, 3, 0)
    assert (await ledger.balances(anna)).available == 3 * 10
    assert (await ledger.balances(ben)).available == 3 * 1
    assert await rejects_of(engine, summary.import_id) == [
        (4 + 3 * n, f"X-{n}", "duplicate-partner-reference") for n in range(3)
    ]
    await assert_clean()


async def test_an_import_failing_in_one_lane_goes_on_from_each_lanes_checkpoint(
    ledger, engine, new_partner, new_member, monkeypatch, assert_clean
):
    """One lane's transaction fails (the other lane is further on, or
    behind): started again, every purchase posts once, every reject is
    reported once, and the counts are the file's."""
    import partners.imports as imports

    programme = Programme(ledger)
    shop, _, registry = await shop_with_members(ledger, engine, new_partner, new_member, 0)
    members = [await new_member() for _ in range(4)]
    cards = await cards_for_lanes(registry, members, [0, 0, 1, 1])
    when, expected, rows = at(), dict.fromkeys(members, 0), []
    for i in range(40):
        member, card = members[i % 4], cards[i % 4]
        if i == 21:
            rows.append(f"{'9' * 16},L-{i},{when},EUR,1000,groceries,,")  # unknown card
            continue
        rows.append(f"{card},L-{i},{when},EUR,{100 * (i + 1)},groceries,,")
        expected[member] += i + 1
    data = (HEADER + "\n".join(rows) + "\n").encode()
    commit_chunk, calls = imports._commit_chunk, []

    async def failing(conn, import_id, lane, done, chunk, receipt):
        calls.append(lane)
        if len(calls) == 5:
            raise RuntimeError("the power went out")
        await commit_chunk(conn, import_id, lane, done, chunk, receipt)

    monkeypatch.setattr(imports, "_commit_chunk", failing)
    source = ImportSource.from_bytes("night.csv", data)
    with pytest.raises(RuntimeError, match="power"):
        await import_file(programme, shop, source, actor=ADMIN, chunk_size=3)
    async with engine.connect() as conn:
        stopped = (
            await conn.execute(
                text(
                    "SELECT rows_done, posted, lane_rows FROM partner_imports WHERE partner_id = :p"
                ),
                {"p": shop},
            )
        ).one()
    assert 0 < stopped.rows_done < 40 and sum(stopped.lane_rows) == stopped.rows_done
    assert await entries_of(engine, shop) == stopped.posted

    monkeypatch.setattr(imports, "_commit_chunk", commit_chunk)
    summary = await import_file(programme, shop, source, actor=ADMIN, chunk_size=3)

    assert summary.runs == 2
    assert (summary.rows, summary.posted, summary.duplicates, summary.rejected) == (40, 39, 0, 1)
    assert summary.points == sum(expected.values())
    assert await entries_of(engine, shop) == 39
    for member, points in expected.items():
        assert (await ledger.balances(member)).available == points
    assert await rejects_of(engine, summary.import_id) == [(23, "L-21", "card-not-found")]
    await assert_clean()


def loyalty_command() -> list[str]:
    script = Path(sys.executable).with_name("loyalty")
    return [str(script)] if script.exists() else [sys.executable, "-m", "api.cli"]


async def run_import(env, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *loyalty_command(),
        "partner",
        "import",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def test_an_import_killed_between_checkpoints_posts_every_row_once_when_started_again(
    ledger, engine, database_url, new_partner, new_member, tmp_path, assert_clean
):
    shop, _, registry = await shop_with_members(ledger, engine, new_partner, new_member, 0)
    members = [await new_member() for _ in range(5)]
    # Every lane of the import (its default four) holds chunks when it is killed.
    cards = await cards_for_lanes(registry, members, [0, 1, 2, 3, 1])
    holders = list(zip(members, cards, strict=True))
    when, expected, rows = at(), {m: 0 for m, _ in holders}, []
    for i in range(120):
        member, card = holders[i % len(holders)]
        if i == 70:
            rows.append(f"{'9' * 16},K-{i},{when},EUR,1000,groceries,,")  # unknown card
            continue
        rows.append(f"{card},K-{i},{when},EUR,{100 * (i + 1)},groceries,,")
        expected[member] += i + 1
    path = tmp_path / "night.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    env = {
        **os.environ,
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_DATA_DIR": str(tmp_path / "data"),
    }
    args = (str(path), "--partner", shop, "--chunk-size", "10", "--json")

    process = await asyncio.create_subprocess_exec(
        *loyalty_command(),
        "partner",
        "import",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    progress = "SELECT id, rows_done, posted FROM partner_imports WHERE partner_id = :p"
    async with engine.connect() as conn:
        for _ in range(3000):  # the first checkpoint
            row = (await conn.execute(text(progress), {"p": shop})).first()
            await conn.rollback()
            if row is not None and row.rows_done > 0:
                break
            assert process.returncode is None, (await process.communicate())[1].decode()
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("no checkpoint within 30 s")
        # Hold the import's row: the next chunk earns, then waits at its checkpoint
        # with its postings written and not committed; the importer dies there.
        await conn.execute(
            text("SELECT 1 FROM partner_imports WHERE id = :i FOR UPDATE"), {"i": row.id}
        )
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await conn.rollback()
    assert process.returncode == -signal.SIGKILL

    async with engine.connect() as conn:
        killed = (await conn.execute(text(progress), {"p": shop})).one()
    assert 0 < killed.rows_done < 120
    assert await entries_of(engine, shop) == killed.posted  # nothing of the lost chunk

    for _ in range(20):  # the killed session may hold its lock a moment longer
        code, out, err = await run_import(env, *args)
        if code != 3 or "request-in-flight" not in err:
            break
        await asyncio.sleep(0.5)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["runs"] == 2 and summary["import_id"] == killed.id
    assert (summary["rows"], summary["posted"], summary["rejected"]) == (120, 119, 1)
    assert summary["points"] == sum(expected.values())
    assert await entries_of(engine, shop) == 119
    for member, points in expected.items():
        assert (await ledger.balances(member)).available == points
    rejects = await asyncio.to_thread(Path(summary["rejects_file"]).read_text)
    assert list(csv.reader(io.StringIO(rejects))) == [
        ["line", "reference", "code", "detail"],
        ["72", "K-70", "card-not-found", "unknown card number"],
    ]

    code, out, err = await run_import(env, *args)
    assert code == 0 and "was imported before" in err
    assert json.loads(out)["already_imported"] is True
    assert await entries_of(engine, shop) == 119
    await assert_clean()
    verify = await asyncio.create_subprocess_exec(
        *loyalty_command(), "verify", env=env, stdout=asyncio.subprocess.PIPE
    )
    report, _ = await verify.communicate()
    assert verify.returncode == 0, report.decode()


def test_rows_are_read_with_their_lines_and_offsets():
    """A checkpoint (line, byte offset) taken after any purchase resumes at
    the next one, multi-line quoted values and purchases of several rows
    included."""
    from partners.import_formats import read_csv

    when = "2026-01-01T10:00:00+01:00"
    data = (
        HEADER
        + f"1,A,{when},EUR,1,g,,\n"
        + f'1,"B\nB",{when},EUR,1,g,,\n'
        + f"1,C,{when},EUR,1,g,,X1\n1,C,{when},EUR,2,h,,X1\n"
        + f"1,D,{when},EUR,1,g,,"
    ).encode()
    whole = list(read_csv(io.BytesIO(data)))
    assert [(p.line, p.reference, p.rows) for p in whole] == [
        (2, "A", 1),
        (3, "B\nB", 1),
        (5, "C", 2),
        (7, "D", 1),
    ]
    assert whole[2].item.coupons == ["X1"] and len(whole[2].item.purchase.lines) == 2
    for index, parsed in enumerate(whole):
        rest = list(read_csv(io.BytesIO(data), parsed.end_offset, parsed.end_line))
        assert [p.reference for p in rest] == [p.reference for p in whole[index + 1 :]]


_PIECES = st.sampled_from(
    [b",", b'"', b"\n", b"\r\n", b"\r", b"\x00", b"\xff", b"R-1", b"R-2", b"12", b"EUR", b"g", b" "]
)


@settings(max_examples=300, deadline=None)
@given(body=st.lists(_PIECES, max_size=60).map(b"".join), jsonl=st.booleans())
def test_any_bytes_read_as_purchases_or_rejects_and_resume_alike(body, jsonl):
    """Whatever the bytes, reading never fails but on a CSV header; every
    purchase is read or carries a reason; reading on from any checkpoint
    gives the same purchases as reading the whole."""
    from partners.import_formats import read_csv, read_jsonl

    header = b"" if jsonl else HEADER.encode()
    data = header + body
    read = read_jsonl if jsonl else read_csv
    whole = list(read(io.BytesIO(data)))
    ends = [p.end_offset for p in whole]
    assert ends == sorted(ends) and all(e <= len(data) for e in ends)
    for parsed in whole:
        assert (parsed.item is None) == (parsed.error is not None)
        assert parsed.line <= parsed.end_line
    for index, parsed in enumerate(whole):
        rest = list(read(io.BytesIO(data), parsed.end_offset, parsed.end_line))
        assert [(p.line, p.reference, p.error) for p in rest] == [
            (p.line, p.reference, p.error) for p in whole[index + 1 :]
        ]
