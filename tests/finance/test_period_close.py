"""Period close, on databases of this module's own (a close changes what every
later entry on its database may carry, so never on the shared worked month).
Every test stands alone: run alone, in any order, it passes.

Months are counted back from the database's clock: P3, P2, P1 are the three
months before the current one (M0). Entries booked in them are written with
raw SQL (a booking time in the past cannot be made otherwise), which is also
how the database's refusals are checked. Each database starts with anna's 70
points booked in P1 (`new_books`). Three states:

- `open_books`: nothing closed (module-scoped; its tests close nothing);
- `closed_books`: clara's 40 points booked in P2 and ben's purchase of P1
  reported before the close, then P3, P2 and P1 closed in order by the
  fixture (module-scoped; its tests only read what the closes recorded, are
  refused, or post into the open month M0, which no other test reads);
- the ordered scenario of closing, in ONE test on a database of its own:
  P3 first (the first close may name any month that is over), then P2 while
  a posting booked in it is in flight, then P1 (a double click is one close)
  with the reports' figures recorded.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from api.app import create_app
from api.auth import mint_token
from api.cli import main
from api.embedded import drop_database
from api.settings import Settings
from finance.close import PeriodClose, close_period, month_label, period_close
from finance.period import Period, stamp
from finance.rollforward import roll_forward
from finance.trial_balance import trial_balance
from ledger.commands import Adjust, Earn
from ledger.database import create_engine, sqlstate
from ledger.errors import PeriodClosed
from ledger.history import server_time
from ledger.service import LedgerService
from members.registry import MemberInput, Members, MergeInput
from partners.contracts import ContractInput
from partners.earning import Purchase, PurchaseLine
from partners.errors import InvalidRule
from partners.import_formats import ImportSource
from partners.imports import import_file
from partners.programme import Programme
from partners.receipts import PurchaseReceipt
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import EarnRuleInput, PromotionInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.api.conftest import MEMBER_SECRET, SECRET
from tests.conftest import TEST_SECRET_KEY
from tests.finance.conftest import fresh_database

ADMIN = "staff:close-tests"
PROBLEM = "application/problem+json"


def months_before(start: datetime, n: int) -> datetime:
    year, month = start.year, start.month - n
    while month < 1:
        year, month = year - 1, month + 12
    return datetime(year, month, 1, tzinfo=UTC)


class Books:
    def __init__(self, url, engine, now):
        self.url, self.engine = url, engine
        self.m0 = datetime(now.year, now.month, 1, tzinfo=UTC)
        self.p1, self.p2, self.p3 = (months_before(self.m0, n) for n in (1, 2, 3))
        self.ledger = LedgerService(engine)
        self.programme = Programme(self.ledger)
        self.raw: dict[str, int] = {}
        self.earned: dict[str, PurchaseReceipt] = {}

    def label(self, start: datetime) -> str:
        return month_label(start)


async def raw_entry(conn, at: datetime, serial: int, member: str, points: int) -> int:
    """An adjustment booked (and dated) at `at`, written with raw SQL."""
    entry_id = (
        await conn.execute(
            text("SELECT ledger_month_start(ledger_month_index(:at)) | :serial"),
            {"at": at, "serial": serial},
        )
    ).scalar_one()
    await conn.execute(
        text(
            "INSERT INTO journal_entries (id, kind, member_id, effective_at, created_at, "
            "posted_by, reason) VALUES (:id, 'adjust', :member, :at, :at, :by, 'raw')"
        ),
        {"id": entry_id, "member": member, "at": at, "by": ADMIN},
    )
    await conn.execute(
        text(
            "INSERT INTO postings (entry_id, account, asset, amount, member_id) VALUES "
            "(:id, :account, 'PTS', :points, :member), "
            "(:id, 'program:adjustments', 'PTS', -:points, NULL)"
        ),
        {
            "id": entry_id,
            "account": f"member:{member}:available",
            "points": points,
            "member": member,
        },
    )
    return entry_id


@asynccontextmanager
async def new_books(server_url: str) -> AsyncIterator[Books]:
    """A database of its own, nothing closed: a shop (45 days to report a
    purchase late) with double points in P1, anna, ben and clara, and anna's
    70 points booked in P1."""
    name, url = await fresh_database(server_url)
    engine = create_engine(url, pool_size=6)
    try:
        async with engine.connect() as conn:
            now = await server_time(conn)
        b = Books(url, engine, now)
        registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
        await registry.create_partner(
            PartnerInput("shop", "Shop", price_per_point=Decimal("0.01"), late_submission_days=45),
            ADMIN,
        )
        members = Members(b.ledger, b.programme)
        for member in ("anna", "ben", "clara"):
            await members.enrol(MemberInput(id=member), ADMIN)
        rules = Rulebook(b.ledger)
        await rules.create_earn_rule(
            "shop", EarnRuleInput(datetime(2024, 1, 1, tzinfo=UTC), "EUR", Decimal(1)), ADMIN
        )
        # Double points in P1 only: a late purchase from P1 booked in M0 must still get them.
        await rules.create_promotion(
            PromotionInput(
                "P1-DOUBLE",
                "double points in P1",
                b.p1,
                b.m0,
                multiplier=Decimal(2),
                partner_ids=["shop"],
                categories=["drugstore"],
                accepts_late_submissions=True,
            ),
            ADMIN,
        )
        async with engine.begin() as conn:
            for start in (b.p3, b.p2, b.p1):
                await conn.execute(
                    text(
                        "SELECT ledger_ensure_partitions(ledger_month_index(:t), "
                        "ledger_month_index(:t))"
                    ),
                    {"t": start},
                )
            b.raw["p1"] = await raw_entry(conn, b.p1 + timedelta(days=3), 1, "anna", 70)
        yield b
    finally:
        await engine.dispose()
        await drop_database(server_url, name)


def grocery(at: datetime) -> Purchase:
    return Purchase("shop", at, "EUR", (PurchaseLine(5000, "drugstore"),))


def late_in_p1(books: Books) -> datetime:
    """A purchase time in P1, two days before its end (reported now, in M0)."""
    return books.m0 - timedelta(days=2)


@pytest.fixture(scope="module")
async def open_books(server_url):
    async with new_books(server_url) as books:
        yield books


@pytest.fixture(scope="module")
async def closed_books(server_url):
    async with new_books(server_url) as books:
        books.earned["before"] = await books.programme.earn_purchase(
            "ben", grocery(late_in_p1(books)), "before-close"
        )
        async with books.engine.begin() as conn:
            books.raw["p2"] = await raw_entry(conn, books.p2 + timedelta(days=10), 1, "clara", 40)
        for start in (books.p3, books.p2, books.p1):
            await close_period(books.engine, books.label(start), ADMIN)
        yield books


@asynccontextmanager
async def serving(books: Books, redis_url: str, data_dir) -> AsyncIterator[tuple]:
    """The API on the books' database: (client, settings)."""
    settings = Settings(
        database_url=books.url,
        redis_url=redis_url,
        jwt_secret=SECRET,
        member_jwt_secret=MEMBER_SECRET,
        data_dir=data_dir,
        secret_key=TEST_SECRET_KEY,
    )
    async with AsyncTestClient(create_app(settings)) as client:
        yield client, settings


def auth(settings, *roles: str, subject: str = "fiona") -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(settings, subject, list(roles))}


def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"].endswith(f"/{code}"), body
    return body


async def entries(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT count(*) FROM journal_entries"))).scalar_one()


# -- before any close ---------------------------------------------------------------


async def test_a_late_purchase_before_the_close_keeps_its_purchase_time(open_books):
    at = late_in_p1(open_books)
    receipt = await open_books.programme.earn_purchase("ben", grocery(at), "before-close")
    assert receipt.earning.points == 100  # 50 base + 50 from P1's promotion
    async with open_books.engine.connect() as conn:
        effective = (
            await conn.execute(
                text("SELECT effective_at FROM journal_entries WHERE id = :id"),
                {"id": receipt.entry_id},
            )
        ).scalar_one()
    assert effective == at


async def test_refused_closes_change_nothing(open_books, redis_url, tmp_path):
    books = open_books
    before = await entries(books.engine)
    async with serving(books, redis_url, tmp_path) as (client, settings):
        finance = auth(settings, "finance")
        problem(
            await client.post(
                f"/v1/finance/periods/{books.label(books.m0)}/close", headers=finance
            ),
            422,
            "period-not-over",
        )
        # 9999-12 ends in year 10000 and 0000-01 starts in year 0: neither is a
        # datetime (they were 500s); fullwidth digits are no YYYY-MM.
        for bad in (
            "2026-13",
            "26-04",
            "2026-4",
            "9999-12",
            "0000-01",
            "\uff12\uff10\uff12\uff16-01",
        ):
            problem(
                await client.post(f"/v1/finance/periods/{bad}/close", headers=finance),
                422,
                "invalid-period",
            )
            problem(
                await client.get(f"/v1/finance/periods/{bad}", headers=finance),
                422,
                "invalid-period",
            )
        problem(
            await client.get(f"/v1/finance/periods/{books.label(books.p1)}", headers=finance),
            404,
            "period-not-closed",
        )
        # The finance role, not admin alone.
        problem(
            await client.post(
                f"/v1/finance/periods/{books.label(books.p3)}/close",
                headers=auth(settings, "admin"),
            ),
            403,
            "missing-role",
        )
        listed = (await client.get("/v1/finance/periods", headers=finance)).json()
    assert listed == {"closed_through": None, "next_period": None, "closes": []}
    assert await entries(books.engine) == before


# -- closing in order: the one ordered scenario ----------------------------------------


@pytest.fixture
async def fresh_books(server_url):
    async with new_books(server_url) as books:
        yield books


async def test_months_close_in_order_counting_postings_in_flight(fresh_books, redis_url, tmp_path):
    """P3, then P2 while a posting booked in it is in flight, then P1 with
    its figures: one scenario, each step on the state the one before made."""
    books = fresh_books
    async with serving(books, redis_url, tmp_path) as (client, settings):
        finance = auth(settings, "finance")
        await first_close_then_only_the_next_month(books, client, finance)
        await close_waits_for_a_posting_in_flight_and_counts_it(books)
        await close_records_the_reports_figures(books, client, finance)


async def first_close_then_only_the_next_month(books, client, finance) -> None:
    closed = await client.post(
        f"/v1/finance/periods/{books.label(books.p3)}/close", headers=finance
    )
    assert closed.status_code == 201, closed.text
    summary = closed.json()["summary"]
    assert summary["period_end"] == stamp(books.p2)
    assert summary["closed_by"] == "staff:fiona"
    assert summary["figures_recorded"] and summary["ties"] and summary["balanced"]
    body = problem(
        await client.post(f"/v1/finance/periods/{books.label(books.p1)}/close", headers=finance),
        409,
        "period-not-next",
    )
    assert body["next_period"] == books.label(books.p2)
    problem(
        await client.post(f"/v1/finance/periods/{books.label(books.p3)}/close", headers=finance),
        409,
        "period-already-closed",
    )
    # Before P3: closed implicitly by the first close.
    problem(
        await client.post(
            f"/v1/finance/periods/{books.label(months_before(books.p3, 1))}/close", headers=finance
        ),
        409,
        "period-already-closed",
    )


async def close_waits_for_a_posting_in_flight_and_counts_it(books) -> None:
    writer = await books.engine.connect()
    try:
        await writer.begin()
        in_flight = await raw_entry(writer, books.p2 + timedelta(days=10), 1, "clara", 40)
        closing = asyncio.create_task(close_period(books.engine, books.label(books.p2), ADMIN))
        await asyncio.sleep(1.0)
        assert not closing.done()  # waiting for the writer's lock
        await writer.commit()
        record = await asyncio.wait_for(closing, 30)
    finally:
        await writer.close()
    lines = {(line.account, line.asset): line.balance for line in record.trial_balance.lines}
    assert lines[("member:*:available", "PTS")] == 40  # clara's in-flight entry counted
    assert record.roll_forward.closing == 40 and record.roll_forward.ties
    # A posting after the close, booked in P2, is refused.
    with pytest.raises(DBAPIError) as refused:
        async with books.engine.begin() as conn:
            await raw_entry(conn, books.p2 + timedelta(days=11), 2, "clara", 5)
    assert sqlstate(refused.value) == "LF422"
    async with books.engine.connect() as conn:
        count = (
            await conn.execute(
                text("SELECT count(*) FROM journal_entries WHERE id = :id"), {"id": in_flight}
            )
        ).scalar_one()
    assert count == 1


async def close_records_the_reports_figures(books, client, finance) -> None:
    label = books.label(books.p1)
    # A double click: the second close waits for the first, finds its figures
    # still being recorded and is a duplicate, not a second 201.
    both = await asyncio.gather(
        *(close_period(books.engine, label, ADMIN) for _ in range(2)), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in both) == ["PeriodAlreadyClosed", "PeriodClose"]
    assert next(r for r in both if isinstance(r, PeriodClose)).summary.figures_recorded
    closed = await client.get(f"/v1/finance/periods/{label}", headers=finance)
    assert closed.status_code == 200, closed.text
    record = await period_close(books.engine, label)
    period = Period(books.p1, books.m0)
    tb, rf = await trial_balance(books.engine, books.m0), await roll_forward(books.engine, period)
    assert msgspec.to_builtins(record.trial_balance) == msgspec.to_builtins(tb)
    assert msgspec.to_builtins(record.roll_forward) == msgspec.to_builtins(rf)
    assert closed.json()["roll_forward"] == msgspec.to_builtins(rf)
    assert record.summary.closing_liability == rf.closing == 110  # clara 40 + anna 70
    assert [line.code for line in rf.lines] == ["adjusted-credit"]
    listed = (await client.get("/v1/finance/periods", headers=finance)).json()
    assert listed["closed_through"] == stamp(books.m0)
    assert listed["next_period"] == books.label(books.m0)
    assert [c["period"] for c in listed["closes"]] == [
        books.label(books.p1),
        books.label(books.p2),
        books.label(books.p3),
    ]
    problem(
        await client.post(f"/v1/finance/periods/{label}/close", headers=finance),
        409,
        "period-already-closed",
    )


# -- after P1 is closed: the database's refusals, late purchases, corrections ---------------


async def test_the_closes_recorded_their_figures(closed_books, redis_url, tmp_path):
    books = closed_books
    async with serving(books, redis_url, tmp_path) as (client, settings):
        got = await client.get(
            f"/v1/finance/periods/{books.label(books.p1)}", headers=auth(settings, "finance")
        )
    assert got.status_code == 200, got.text
    assert got.json()["summary"]["closing_liability"] == 110  # clara 40 + anna 70
    assert got.json()["summary"]["closed_by"] == ADMIN
    p2 = await period_close(books.engine, books.label(books.p2))
    assert p2.summary.closing_liability == 40 and p2.summary.ties


async def test_the_database_refuses_back_dated_rows_even_in_raw_sql(closed_books):
    books = closed_books
    back = books.p1 + timedelta(days=5)
    statements = [
        # an entry dated back (booked now)
        (
            "INSERT INTO journal_entries (kind, member_id, effective_at, posted_by, reason) "
            "VALUES ('adjust', 'anna', :back, 'staff:x', 'dated back')",
            {"back": back},
        ),
        # a posting added to an entry booked in the closed month
        (
            "INSERT INTO postings (entry_id, account, asset, amount) VALUES "
            "(:id, 'program:adjustments', 'PTS', 1), (:id, 'program:promotions', 'PTS', -1)",
            {"id": books.raw["p1"]},
        ),
    ]
    for sql, params in statements:
        with pytest.raises(DBAPIError) as refused:
            async with books.engine.begin() as conn:
                await conn.execute(text(sql), params)
        assert sqlstate(refused.value) == "LF422", str(refused.value)[:400]
    # booked in the closed month (dated now)
    with pytest.raises(DBAPIError) as refused:
        async with books.engine.begin() as conn:
            await raw_entry(conn, books.p1 + timedelta(days=6), 9, "anna", 1)
    assert sqlstate(refused.value) == "LF422"
    # Only QP may be dated there (0026), also when points come in a later
    # statement: the QP entry goes in, points added to it do not.
    with pytest.raises(DBAPIError) as refused:
        async with books.engine.begin() as conn:
            qp_only = text(
                "WITH e AS (INSERT INTO journal_entries (kind, member_id, effective_at, "
                "posted_by, reason) VALUES ('adjust', 'anna', :back, 'staff:x', "
                "'qp dated back') RETURNING id) INSERT INTO postings (entry_id, account, "
                "asset, amount, member_id) SELECT id, 'member:anna:qp', 'QP', 5, 'anna' "
                "FROM e UNION ALL SELECT id, 'program:qp_source', 'QP', -5, NULL FROM e "
                "RETURNING entry_id"
            )
            qp_entry = (await conn.execute(qp_only, {"back": back})).scalars().first()
            await conn.execute(text(statements[1][0]), {"id": qp_entry})
    assert sqlstate(refused.value) == "LF422" and "only status points" in str(refused.value)
    # The closes themselves are append-only.
    for sql in (
        "UPDATE period_closes SET closed_by = 'x'",
        "DELETE FROM period_close_figures",
        "TRUNCATE period_closes CASCADE",
    ):
        with pytest.raises(DBAPIError):
            async with books.engine.begin() as conn:
                await conn.execute(text(sql))
    record = await period_close(books.engine, books.label(books.p1))
    assert record.summary.closing_liability == 110


async def test_a_late_purchase_after_the_close_is_booked_at_the_boundary(closed_books):
    books = closed_books
    at = late_in_p1(books)
    # A process that has not learnt the boundary yet: the database refuses,
    # the call learns the boundary and runs again.
    ledger = LedgerService(books.engine)
    programme = Programme(ledger)
    assert ledger.closed_through is None
    receipt = await programme.earn_purchase("anna", grocery(at), "after-close")
    assert ledger.closed_through == books.m0
    before = books.earned["before"]  # ben's purchase of the same time, reported before the close
    assert receipt.earning.points == before.earning.points == 100
    assert receipt.earning == msgspec.structs.replace(before.earning, member_id="anna")
    async with books.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT e.effective_at, p.occurred_at FROM journal_entries e "
                    "JOIN partner_purchases p ON p.entry_id = e.id WHERE e.id = :id"
                ),
                {"id": receipt.entry_id},
            )
        ).one()
    assert row.effective_at == books.m0  # the first instant of the open period
    assert row.occurred_at == at  # the purchase keeps its time
    # The process now knows the boundary: no refusal on the next one.
    again = await programme.earn_purchase("anna", grocery(at), "after-close-2")
    assert again.earning.points == 100


async def test_late_purchases_in_a_process_new_to_the_close_are_all_booked_at_the_boundary(
    closed_books,
):
    """Several calls at once that each ran with no boundary known: the first
    refusal teaches the process the boundary, and every call refused runs
    again with it, however many learnt it before them; a file import too."""
    books = closed_books
    at = late_in_p1(books)
    members = [f"late-{n}" for n in range(12)]
    for member in members:
        await Members(books.ledger, books.programme).enrol(MemberInput(id=member), ADMIN)
    for _ in range(3):  # each time a process new to the boundary, twelve calls at once
        programme = Programme(LedgerService(books.engine))
        earned = await asyncio.gather(
            *(
                programme.earn_purchase(m, grocery(at), f"crossing-{uuid.uuid4().hex}")
                for m in members
            )
        )
        assert {receipt.earning.points for receipt in earned} == {100}
    # A partner that holds points back for returns and awards QP (a pending
    # earning and a QP movement per purchase), its file imported by a process
    # that has not learnt the boundary, in one lane and in two.
    registry = Registry(books.engine, SecretBox(TEST_SECRET_KEY))
    terms = PartnerInput("fuel", "Fuel", return_window_days=14, late_submission_days=45)
    await registry.create_partner(terms, ADMIN)
    rule = EarnRuleInput(
        datetime(2024, 1, 1, tzinfo=UTC), "EUR", Decimal(1), qp_per_unit=Decimal(1)
    )
    await Rulebook(books.ledger).create_earn_rule("fuel", rule, ADMIN)
    for n, member in enumerate(("anna", "ben", "clara")):
        await registry.issue_card(member, f"70000000000{n:05d}", ADMIN)
    header = "card_number,reference,occurred_at,currency,amount_minor,category\n"
    for lanes in (1, 2):
        rows = "".join(
            f"70000000000{n % 3:05d},file-{lanes}-{n},{at.isoformat()},EUR,5000,fuel\n"
            for n in range(30)
        )
        source = ImportSource.from_bytes(f"late-{lanes}.csv", (header + rows).encode())
        fresh = Programme(LedgerService(books.engine))  # a new `loyalty partner import`
        summary = await import_file(fresh, "fuel", source, actor=ADMIN, lanes=lanes)
        assert (summary.posted, summary.rejected) == (30, 0), str(msgspec.to_builtins(summary))
    async with books.engine.connect() as conn:
        booked = await conn.execute(
            text(
                "SELECT DISTINCT effective_at FROM journal_entries "
                "WHERE partner_reference LIKE 'crossing-%' OR partner_reference LIKE 'file-%'"
            )
        )
        booked = booked.scalars().all()
    assert booked == [books.m0]


async def test_back_dated_adjustment_refused_and_a_correction_goes_into_the_open_period(
    closed_books, redis_url, tmp_path
):
    books = closed_books
    before = await entries(books.engine)
    # A credit: raw SQL leaves the live balances as they were, so anna has none
    # of her P1 points to debit unless another test credited her.
    correction = {"member_id": "anna", "amount": 30, "reason": "P1 credit was 30 short"}
    async with serving(books, redis_url, tmp_path) as (client, settings):
        admin = auth(settings, "admin", subject="sam")
        body = problem(
            await client.post(
                "/v1/staff/adjustments",
                json={**correction, "effective_at": stamp(books.p1 + timedelta(days=3))},
                headers=admin,
            ),
            422,
            "period-closed",
        )
        assert body["closed_through"].startswith(stamp(books.m0)[:19])
        problem(
            await client.post(
                "/v1/staff/adjustments",
                json={**correction, "corrects_entry_id": 999_999_999},
                headers=admin,
            ),
            404,
            "entry-not-found",
        )
        for effective_at in (
            stamp(datetime.now(UTC) + timedelta(days=1)),
            "1990-01-01T00:00:00Z",
        ):
            problem(
                await client.post(
                    "/v1/staff/adjustments",
                    json={**correction, "effective_at": effective_at},
                    headers=admin,
                ),
                422,
                "invalid-effective-time",
            )
        assert await entries(books.engine) == before
        corrected = await client.post(
            "/v1/staff/adjustments",
            json={**correction, "corrects_entry_id": books.raw["p1"]},
            headers=admin,
        )
        assert corrected.status_code == 201, corrected.text
        entry_id = corrected.json()["entry_id"]
        shown = (await client.get(f"/v1/staff/entries/{entry_id}", headers=admin)).json()
    assert shown["breakdown"] == [{"corrects_entry_id": books.raw["p1"]}]
    assert shown["effective_at"] >= stamp(books.m0)[:19]
    # The closed month's recorded figures are unchanged; the correction is
    # in the open period's roll-forward.
    record = await period_close(books.engine, books.label(books.p1))
    assert record.summary.closing_liability == 110


async def test_the_ledger_refuses_an_adjustment_dated_in_a_closed_month(closed_books):
    books = closed_books
    with pytest.raises(PeriodClosed) as refused:
        await books.ledger.adjust(
            Adjust("ben", 5, "goodwill", effective_at=books.p1 + timedelta(days=1)), ADMIN
        )
    assert refused.value.extensions["closed_through"].startswith(stamp(books.m0)[:19])


# -- the command line -------------------------------------------------------------------


async def loyalty(books, tmp_path, *args: str):
    env = {
        "LOYALTY_DATABASE_URL": books.url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }
    # The command runs its own event loop: in a thread, beside the tests' loop.
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


async def test_cli_close_and_periods(closed_books, tmp_path):
    books = closed_books
    listed = await loyalty(books, tmp_path, "finance", "periods", "--json")
    assert listed.exit_code == 0, listed.output
    assert msgspec.json.decode(listed.output)["closed_through"] == stamp(books.m0)
    again = await loyalty(books, tmp_path, "finance", "close", "--period", books.label(books.p1))
    assert again.exit_code == 3 and "period-already-closed" in again.output
    bad = await loyalty(books, tmp_path, "finance", "close", "--period", "2026-13")
    assert bad.exit_code == 2 and "invalid-period" in bad.output
    unfinished = await loyalty(
        books, tmp_path, "finance", "close", "--period", books.label(books.m0)
    )
    assert unfinished.exit_code == 3 and "period-not-over" in unfinished.output
    shown = await loyalty(books, tmp_path, "finance", "periods", "--period", books.label(books.p1))
    assert shown.exit_code == 0 and "closing liability: 110 points" in shown.output
    missing = await loyalty(
        books, tmp_path, "finance", "periods", "--period", books.label(months_before(books.p3, 1))
    )
    assert missing.exit_code == 4 and "period-not-closed" in missing.output


async def test_a_contract_change_reaches_back_to_the_close_and_no_further(closed_books):
    """A contract may be corrected back in time (statements are reissued),
    but not into closed books: their figures never change."""
    books = closed_books
    registry = Registry(books.engine, SecretBox(TEST_SECRET_KEY))
    with pytest.raises(InvalidRule, match="closed") as refused:
        await registry.update_contract(
            "shop", ContractInput(books.m0 - timedelta(days=1), deposit_minor=1), ADMIN
        )
    assert refused.value.extensions["field"] == "effective_from"
    for far in (datetime(1999, 12, 31, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)):
        with pytest.raises(InvalidRule):
            await registry.update_contract("shop", ContractInput(far, deposit_minor=1), ADMIN)
    amended = await registry.update_contract(
        "shop", ContractInput(books.m0, late_submission_days=45), ADMIN
    )
    assert amended.effective_from == books.m0


async def test_a_merge_after_the_close_carries_qp_at_their_times(server_url):
    """A member merge moves the source's QP at the times they were earned (each
    tier period counts them where they fell), also from a closed month: an
    entry moving only QP may be dated there, booked now; one moving points
    may not."""
    async with new_books(server_url) as books:
        ledger = books.ledger
        in_p1 = late_in_p1(books)
        await ledger.earn(Earn.simple("ben", "shop", "qp-p1", 10, 25, effective_at=in_p1))
        for start in (books.p3, books.p2, books.p1):
            await close_period(books.engine, books.label(start), ADMIN)
        members = Members(ledger, books.programme)
        merged = await members.merge("ben", MergeInput("clara", "same person"), ADMIN)
        async with books.engine.connect() as conn:
            moved = (
                await conn.execute(
                    text(
                        "SELECT e.effective_at, e.created_at, p.amount FROM journal_entries e "
                        "JOIN postings p ON p.entry_id = e.id "
                        "WHERE e.id = ANY(:ids) AND p.account = :qp"
                    ),
                    {"ids": merged.entry_ids, "qp": "member:clara:qp"},
                )
            ).all()
        assert [(r.effective_at, r.amount) for r in moved] == [(in_p1, 25)]
        assert moved[0].created_at >= books.m0  # booked in the open period
        with pytest.raises(PeriodClosed):  # points still may not be dated there
            await ledger.adjust(Adjust("clara", 5, "goodwill", effective_at=in_p1), ADMIN)
        async with books.engine.connect() as conn:
            qp = (
                await conn.execute(
                    text(
                        "SELECT member_id, effective_at, sum(amount) FROM member_qp_movements "
                        "GROUP BY 1, 2 HAVING sum(amount) <> 0 ORDER BY 1"
                    )
                )
            ).all()
        assert [tuple(r) for r in qp] == [("clara", in_p1, 25)]  # ben's, at their time
