"""Partner file reconciliation on a database of its own (built once for the
module; each test uses partners of its own, so no test's runs or repairs
change another's figures): a file with every kind of mismatch and its
totals, a partner mapping with other columns, `;`, DD.MM.YYYY dates and
decimal commas, the repair through the earn path posting each missing row
once even when run twice (balances and journal checked), rows the earn path
refuses, the API's status codes and problem types, the CLI, and the stored
run read back."""

import asyncio
import hashlib
import io
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import jwt
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from api.app import create_app
from api.cli import main
from api.embedded import drop_database, ensure_database, with_database
from api.migrate import upgrade
from api.routes.finance_reconciliation import MAX_UPLOAD_BYTES
from api.settings import Settings
from finance.errors import (
    InvalidPeriod,
    InvalidReconciliationMapping,
    ReconciliationFileInvalid,
    ReconciliationNotFound,
)
from finance.period import Period
from finance.reconciliation import reconcile
from finance.reconciliation_files import (
    FileRow,
    LedgerPurchase,
    Mapping,
    check_mapping,
    classify,
)
from finance.reconciliation_mappings import set_mapping
from finance.reconciliation_repair import repair
from finance.reconciliation_runs import (
    get_reconciliation,
    list_reconciliations,
    reconciliation_items,
)
from ledger.database import create_engine
from ledger.errors import PartnerNotFound
from ledger.service import LedgerConfig, LedgerService
from members.registry import MemberInput, Members
from partners.earning import Purchase, PurchaseLine
from partners.programme import Programme
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox
from tests.api.conftest import MEMBER_SECRET, SECRET
from tests.conftest import TEST_SECRET_KEY

ADMIN = "staff:reconciliation-tests"
ANNA, BEN, CLARA = "4000000000000001", "4000000000000002", "4000000000000003"
UNKNOWN_CARD = "4999999999999999"
# Purchases three days ago (inside the contracts' 30-day submission window).
DAY0 = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=3)
D0, D1 = DAY0.date().isoformat(), (DAY0 + timedelta(days=1)).date().isoformat()


@dataclass
class World:
    url: str
    engine: object
    ledger: LedgerService
    programme: Programme
    registry: Registry
    rules: Rulebook

    async def partner(self, name: str) -> str:
        """A partner of the test's own: 1 point per EUR, points available at once."""
        partner_id = f"{name}-{uuid.uuid4().hex[:6]}"
        await self.registry.create_partner(PartnerInput(partner_id, name.title()), ADMIN)
        await self.rules.create_earn_rule(
            partner_id, EarnRuleInput(datetime(2024, 1, 1, tzinfo=UTC), "EUR", Decimal(1)), ADMIN
        )
        return partner_id

    async def buy(self, partner_id: str, card: str, reference: str, cents: int, at=DAY0):
        purchase = Purchase(partner_id, at, "EUR", (PurchaseLine(cents, "general"),))
        return await self.programme.earn_purchase(None, purchase, reference, card_number=card)


@pytest.fixture(scope="module")
async def world(server_url):
    name = f"loyalty_recon_{uuid.uuid4().hex[:10]}"
    await ensure_database(server_url, name)
    url = with_database(server_url, name)
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url, pool_size=4)
    try:
        ledger = LedgerService(engine, LedgerConfig())
        programme = Programme(ledger)
        members = Members(ledger, programme)
        registry = Registry(engine, SecretBox(TEST_SECRET_KEY))
        for member, card in (("anna", ANNA), ("ben", BEN), ("clara", CLARA)):
            await members.enrol(MemberInput(id=member), ADMIN)
            await registry.issue_card(member, card, ADMIN)
        yield World(url, engine, ledger, programme, registry, Rulebook(ledger))
    finally:
        await engine.dispose()
        await drop_database(server_url, name)


def csv_file(*lines: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode())


async def grocer_with_purchases(world: World) -> str:
    grocer = await world.partner("grocer")
    for card, reference, cents, at in (
        (ANNA, "G-1", 5000, DAY0),
        (ANNA, "G-2", 2000, DAY0),
        (BEN, "G-3", 3000, DAY0),
        (BEN, "G-4", 1000, DAY0),
        (CLARA, "G-5", 4000, DAY0),
        (CLARA, "G-6", 1500, DAY0 + timedelta(hours=5)),  # not in the file
        (CLARA, "G-OLD", 500, DAY0 - timedelta(days=10)),  # outside the file's range
    ):
        await world.buy(grocer, card, reference, cents, at)
    return grocer


GROCER_FILE = (
    "reference,card,date,amount,points",
    f"G-1,{ANNA},{D0},50.00,50",  # matched
    f"G-2,{ANNA},{D0},25.00,20",  # amount differs
    f"G-3,{BEN},{D0},30.00,33",  # points differ
    f"G-4,{BEN},{D1},10.00,10",  # date differs
    f"G-5,{ANNA},{D0},40.00,40",  # card differs (anna's, the purchase is clara's)
    f"G-7,{ANNA},{D1},12.34,12",  # missing in the ledger
    "",
    f"G-8,{UNKNOWN_CARD},{D1},8.00,8",  # missing in the ledger, a card nobody holds
    f"G-9,{ANNA},yesterday,1.00,1",  # unreadable: the date
    f"G-10,{ANNA},{D0},12.5x,1",  # unreadable: the amount
    f"G-1,{ANNA},{D0},50.00,50",  # duplicate
)


async def all_items(engine, run_id: int, cls: str | None = None) -> list:
    items, cursor = [], None
    while True:
        page = await reconciliation_items(engine, run_id, cls, 3, cursor)
        items += page.items
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor


async def test_a_file_with_every_kind_of_mismatch(world):
    grocer = await grocer_with_purchases(world)
    run = await reconcile(world.engine, grocer, csv_file(*GROCER_FILE), "nov.csv", actor=ADMIN)

    counts = {cls: t.count for cls, t in run.totals.items()}
    assert counts == {
        "matched": 1,
        "differing": 4,
        "missing-in-ledger": 2,
        "missing-at-partner": 1,
        "unreadable": 2,
        "duplicate": 1,
    }
    assert run.rows == 10  # the blank line is no row
    assert run.differing_fields == {"amount": 1, "points": 1, "date": 1, "card": 1}
    t = run.totals
    assert (t["matched"].file_amount_minor, t["matched"].file_points) == (5000, 50)
    assert (t["matched"].ledger_amount_minor, t["matched"].ledger_points) == (5000, 50)
    assert (t["differing"].file_amount_minor, t["differing"].file_points) == (10500, 103)
    assert (t["differing"].ledger_amount_minor, t["differing"].ledger_points) == (10000, 100)
    assert (t["missing-in-ledger"].file_amount_minor, t["missing-in-ledger"].file_points) == (
        2034,
        20,
    )
    assert t["missing-in-ledger"].ledger_amount_minor == 0
    assert (t["missing-at-partner"].ledger_amount_minor, t["missing-at-partner"].ledger_points) == (
        1500,
        15,
    )
    # The range is the file's first to last day, whole UTC days: G-OLD is outside.
    assert run.range_source == "file"
    assert run.range_from == datetime.fromisoformat(D0 + "T00:00:00+00:00")
    assert run.range_to == datetime.fromisoformat(D1 + "T00:00:00+00:00") + timedelta(days=1)

    items = await all_items(world.engine, run.reconciliation_id)
    by_line = {i.line: i for i in items if i.line is not None}
    assert by_line[2].cls == "matched" and by_line[2].entry_id is not None
    assert (by_line[3].cls, by_line[3].differing) == ("differing", ["amount"])
    assert (by_line[3].file_amount_minor, by_line[3].ledger_amount_minor) == (2500, 2000)
    assert (by_line[4].differing, by_line[4].file_points, by_line[4].ledger_points) == (
        ["points"],
        33,
        30,
    )
    assert by_line[5].differing == ["date"]
    assert by_line[6].differing == ["card"]
    assert (by_line[6].file_member_id, by_line[6].ledger_member_id) == ("anna", "clara")
    assert by_line[7].cls == "missing-in-ledger" and by_line[7].file_member_id == "anna"
    assert by_line[9].cls == "missing-in-ledger" and by_line[9].file_member_id is None
    assert by_line[10].cls == "unreadable" and "date" in by_line[10].detail
    assert by_line[11].cls == "unreadable" and "amount" in by_line[11].detail
    assert by_line[12].cls == "duplicate" and "line 2" in by_line[12].detail
    (missing,) = [i for i in items if i.cls == "missing-at-partner"]
    assert (missing.reference, missing.line, missing.ledger_member_id) == ("G-6", None, "clara")
    # Items come in order, file rows first, and pages follow the cursor.
    assert [i.item_id for i in items] == list(range(1, len(items) + 1))
    assert [
        i.reference for i in await all_items(world.engine, run.reconciliation_id, "differing")
    ] == [
        "G-2",
        "G-3",
        "G-4",
        "G-5",
    ]

    # An explicit range reaches back to G-OLD.
    wider = await reconcile(
        world.engine,
        grocer,
        csv_file(*GROCER_FILE),
        "nov.csv",
        actor=ADMIN,
        period=(wider_period := Period.parse((DAY0 - timedelta(days=20)).date().isoformat(), D1)),
    )
    assert wider.range_source == "given"
    assert wider.totals["missing-at-partner"].count == 2

    # One mistyped year would make the file's range decades long (every
    # purchase of the partner missing-at-partner): refused, nothing stored.
    async with world.engine.connect() as conn:
        runs = (await conn.execute(text("SELECT count(*) FROM reconciliations"))).scalar_one()
    typo = [*GROCER_FILE, f"G-11,{ANNA},2062-11-28,50.00,50"]
    with pytest.raises(InvalidPeriod, match="give from and to"):
        await reconcile(world.engine, grocer, csv_file(*typo), "typo.csv", actor=ADMIN)
    async with world.engine.connect() as conn:
        assert (
            await conn.execute(text("SELECT count(*) FROM reconciliations"))
        ).scalar_one() == runs
    given = await reconcile(
        world.engine, grocer, csv_file(*typo), "typo.csv", actor=ADMIN, period=wider_period
    )
    assert given.totals["missing-at-partner"].count == 2


async def test_the_stored_run_reads_back_and_is_append_only(world):
    grocer = await grocer_with_purchases(world)
    data = ("\n".join(GROCER_FILE) + "\n").encode()
    run = await reconcile(world.engine, grocer, io.BytesIO(data), "nov.csv", actor=ADMIN)
    again = await get_reconciliation(world.engine, run.reconciliation_id)
    assert again == run

    assert (run.sha256, run.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))
    assert run.created_by == ADMIN and run.mapping == Mapping()
    runs, _ = await list_reconciliations(world.engine, grocer)
    assert [r.reconciliation_id for r in runs] == [run.reconciliation_id]
    async with world.engine.begin() as conn:
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(
                text(
                    "UPDATE reconciliation_items SET class = 'matched' WHERE reconciliation_id = :i"
                ),
                {"i": run.reconciliation_id},
            )
    with pytest.raises(ReconciliationNotFound):
        await get_reconciliation(world.engine, 10**12)
    with pytest.raises(PartnerNotFound):
        await reconcile(world.engine, "nobody", csv_file(*GROCER_FILE), "x.csv", actor=ADMIN)


async def test_a_mapping_with_other_columns_semicolons_german_dates_and_decimal_commas(world):
    kiosk = await world.partner("kiosk")
    await world.buy(kiosk, ANNA, "K-1", 750)
    await world.buy(kiosk, BEN, "K-2", 1999)
    await set_mapping(
        world.engine,
        kiosk,
        Mapping(
            reference_column="Beleg",
            card_column="Karte",
            date_column="Datum",
            amount_column="Umsatz",
            points_column="Punkte",
            delimiter=";",
            date_format="DD.MM.YYYY",
            decimal_separator=",",
        ),
        ADMIN,
    )
    german = DAY0.strftime("%d.%m.%Y")
    run = await reconcile(
        world.engine,
        kiosk,
        csv_file(
            "Filiale;Beleg;Karte;Datum;Umsatz;Punkte",
            f"Nord;K-1;{ANNA};{german};7,50;7",
            f"Süd;K-2;{BEN};{german};19,99;19",
            f"Süd;K-3;{BEN};{DAY0:%Y-%m-%d};1,00;1",  # an ISO date: unreadable here
            f"Süd;K-4;{BEN};{german};1.00;1",  # a decimal point: unreadable here
        ),
        "kiosk.csv",
        actor=ADMIN,
    )
    assert {c: t.count for c, t in run.totals.items() if t.count} == {
        "matched": 2,
        "unreadable": 2,
    }
    assert run.totals["matched"].file_amount_minor == 750 + 1999
    assert run.mapping.delimiter == ";"
    # The header must name the mapped columns: the default file is refused, naming them.
    with pytest.raises(ReconciliationFileInvalid) as refused:
        await reconcile(world.engine, kiosk, csv_file(*GROCER_FILE), "x.csv", actor=ADMIN)
    assert refused.value.extensions["missing"] == ["Beleg", "Karte", "Datum", "Umsatz", "Punkte"]


def test_mappings_that_cannot_be_used_are_refused():
    for bad in (
        Mapping(date_format="DD.MM"),
        Mapping(date_format="DD.MM.YYYY%"),
        Mapping(delimiter=";;"),
        Mapping(amount_format="cents"),
        Mapping(decimal_separator=",", delimiter=","),
        Mapping(card_column="Reference"),
        Mapping(encoding="latin-9"),
        Mapping(points_basis="programme"),
    ):
        with pytest.raises(InvalidReconciliationMapping):
            check_mapping(bad)
    check_mapping(Mapping(date_format="YYYY-MM-DD hh:mm:ss", amount_format="minor"))


def test_classification_is_a_plain_function():
    purchase = LedgerPurchase("R", "anna", DAY0, "EUR", 1000, 20, 10, 1)
    row = FileRow(2, "R", ANNA, DAY0.date(), None, 1000, 20)
    assert classify(row, purchase, "anna", "EUR") == ("matched", ())
    assert classify(row, purchase, "anna", "EUR", "partner") == ("differing", ("points",))
    assert classify(row, purchase, "anna", "USD") == ("differing", ("amount",))
    timed = FileRow(2, "R", ANNA, DAY0.date(), DAY0 + timedelta(minutes=1), 1000, 20)
    assert classify(timed, purchase, None, "EUR") == ("differing", ("date", "card"))
    assert classify(row, None, "anna", "EUR") == ("missing-in-ledger", ())


async def entries_with_reference(world: World, partner_id: str, reference: str) -> int:
    async with world.engine.connect() as conn:
        return (
            await conn.execute(
                text(
                    "SELECT count(*) FROM journal_entries WHERE partner_id = :p "
                    "AND partner_reference = :r"
                ),
                {"p": partner_id, "r": reference},
            )
        ).scalar_one()


async def test_the_repair_posts_each_missing_row_once_even_when_run_twice(world):
    bakery = await world.partner("bakery")
    await world.buy(bakery, BEN, "B-0", 300)
    old = (DAY0 - timedelta(days=100)).date().isoformat()
    run = await reconcile(
        world.engine,
        bakery,
        csv_file(
            "reference,card,date,amount,points",
            f"B-0,{BEN},{D0},3.00,3",
            f"B-1,{ANNA},{DAY0.isoformat()},9.99,10",  # the earn path gives 9 (floor)
            f"B-2,{UNKNOWN_CARD},{D0},5.00,5",  # refused: no such card
            f"B-3,{CLARA},{old},4.00,4",  # refused: outside the submission window
        ),
        "bakery.csv",
        actor=ADMIN,
    )
    assert run.totals["missing-in-ledger"].count == 3
    before = (await world.ledger.balances("anna")).available

    first = await repair(world.programme, run.reconciliation_id, "staff:fiona")
    assert (first.posted, first.already_posted, first.refused) == (1, 0, 2)
    assert (first.points, first.file_points) == (9, 10)  # the ledger's rules decide
    outcome = {o.reference: o for o in first.outcomes}
    assert outcome["B-1"].outcome == "posted" and outcome["B-1"].entry_id is not None
    assert (outcome["B-2"].outcome, outcome["B-2"].code) == ("refused", "card-not-found")
    assert (outcome["B-3"].outcome, outcome["B-3"].code) == (
        "refused",
        "purchase-time-outside-window",
    )
    assert (await world.ledger.balances("anna")).available == before + 9

    second = await repair(world.programme, run.reconciliation_id, "staff:fiona")
    assert (second.posted, second.already_posted, second.refused) == (0, 1, 2)
    again = {o.reference: o for o in second.outcomes}
    assert again["B-1"].outcome == "already-posted"
    assert again["B-1"].entry_id == outcome["B-1"].entry_id
    assert (await world.ledger.balances("anna")).available == before + 9
    assert await entries_with_reference(world, bakery, "B-1") == 1
    for refused in ("B-2", "B-3"):
        assert await entries_with_reference(world, bakery, refused) == 0

    # Both repairs are stored with the run; the run itself is unchanged.
    stored = await get_reconciliation(world.engine, run.reconciliation_id)
    assert [(r.posted, r.already_posted, r.refused) for r in stored.repairs] == [
        (1, 0, 2),
        (0, 1, 2),
    ]
    assert stored.totals == run.totals
    # The purchase posted by the repair matches when the file is reconciled again.
    rerun = await reconcile(
        world.engine,
        bakery,
        csv_file("reference,card,date,amount,points", f"B-1,{ANNA},{D0},9.99,9"),
        "b.csv",
        actor=ADMIN,
    )
    assert rerun.totals["matched"].count == 1


# -- the API -------------------------------------------------------------------------


@pytest.fixture
async def client(world, redis_url, tmp_path):
    settings = Settings(
        database_url=world.url,
        redis_url=redis_url,
        jwt_secret=SECRET,
        member_jwt_secret=MEMBER_SECRET,
        data_dir=tmp_path,
        secret_key=TEST_SECRET_KEY,
    )
    async with AsyncTestClient(create_app(settings)) as client:
        client.auth_for = lambda *roles: _token(settings, roles)
        yield client


def _token(settings: Settings, roles) -> dict[str, str]:
    keys = settings.token_keys("staff")
    now = int(time.time())
    claims = {
        "sub": "fiona",
        "roles": list(roles),
        "iss": keys.issuer,
        "aud": keys.audience,
        "iat": now,
        "exp": now + 300,
    }
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


CSV = {"Content-Type": "text/csv"}


async def test_the_api(world, client):
    finance, admin = client.auth_for("finance"), client.auth_for("admin")
    grocer = await grocer_with_purchases(world)
    body = ("\n".join(GROCER_FILE) + "\n").encode()

    made = await client.post(
        "/v1/finance/reconciliations",
        params={"partner_id": grocer, "name": "nov.csv"},
        content=body,
        headers={**finance, **CSV},
    )
    assert made.status_code == 201, made.text
    run = made.json()
    assert run["totals"]["differing"]["count"] == 4
    assert run["totals"]["missing-in-ledger"]["file_amount_minor"] == 2034
    run_id = run["reconciliation_id"]

    read = await client.get(f"/v1/finance/reconciliations/{run_id}", headers=finance)
    assert read.status_code == 200 and read.json() == run
    listed = await client.get(
        "/v1/finance/reconciliations", params={"partner_id": grocer}, headers=finance
    )
    assert [r["reconciliation_id"] for r in listed.json()["runs"]] == [run_id]
    page = await client.get(
        f"/v1/finance/reconciliations/{run_id}/items",
        params={"class": "differing", "limit": 3},
        headers=finance,
    )
    assert page.status_code == 200
    first = page.json()
    assert [i["reference"] for i in first["items"]] == ["G-2", "G-3", "G-4"]
    rest = await client.get(
        f"/v1/finance/reconciliations/{run_id}/items",
        params={"class": "differing", "limit": 3, "cursor": first["next_cursor"]},
        headers=finance,
    )
    assert [i["reference"] for i in rest.json()["items"]] == ["G-5"]
    assert rest.json()["next_cursor"] is None
    assert rest.json()["items"][0]["class"] == "differing"

    fixed = await client.post(f"/v1/finance/reconciliations/{run_id}/repair", headers=finance)
    assert fixed.status_code == 201, fixed.text
    assert (fixed.json()["posted"], fixed.json()["refused"]) == (1, 1)
    again = await client.post(f"/v1/finance/reconciliations/{run_id}/repair", headers=finance)
    assert (again.json()["posted"], again.json()["already_posted"]) == (0, 1)
    assert await entries_with_reference(world, grocer, "G-7") == 1

    # Problems.
    async def problem(response, status: int, code: str) -> dict:
        assert response.status_code == status, response.text
        assert response.json()["type"] == f"/problems/{code}"
        return response.json()

    await problem(
        await client.post(
            "/v1/finance/reconciliations",
            params={"partner_id": "nobody"},
            content=body,
            headers={**finance, **CSV},
        ),
        404,
        "partner-not-found",
    )
    missing = await problem(
        await client.post(
            "/v1/finance/reconciliations",
            params={"partner_id": grocer},
            content=b"ref,card,date,amount\nG-1,1,2026-01-01,1\n",
            headers={**finance, **CSV},
        ),
        422,
        "reconciliation-file-invalid",
    )
    assert missing["missing"] == ["reference", "points"]
    runs_after, _ = await list_reconciliations(world.engine, grocer)
    assert len(runs_after) == 1  # a refused file stores nothing
    await problem(
        await client.post(
            "/v1/finance/reconciliations",
            params={"partner_id": grocer},
            content=body,
            headers={**admin, **CSV},
        ),
        403,
        "missing-role",
    )
    assert (
        await client.post(
            "/v1/finance/reconciliations", params={"partner_id": grocer}, content=body, headers=CSV
        )
    ).status_code == 401
    assert (
        await client.post(
            "/v1/finance/reconciliations",
            params={"partner_id": grocer},
            content=body,
            headers={**finance, "Content-Type": "application/json"},
        )
    ).status_code == 415
    await problem(
        await client.post(
            "/v1/finance/reconciliations",
            params={"partner_id": grocer},
            content=b"x" * (MAX_UPLOAD_BYTES + 1),
            headers={**finance, **CSV},
        ),
        413,
        "payload-too-large",
    )
    await problem(
        await client.post(
            "/v1/finance/reconciliations",
            params={"partner_id": grocer, "from": D1, "to": D0},
            content=body,
            headers={**finance, **CSV},
        ),
        422,
        "invalid-period",
    )
    await problem(
        await client.get(f"/v1/finance/reconciliations/{10**12}", headers=finance),
        404,
        "reconciliation-not-found",
    )
    await problem(
        await client.post(f"/v1/finance/reconciliations/{10**12}/repair", headers=finance),
        404,
        "reconciliation-not-found",
    )
    await problem(
        await client.get(
            f"/v1/finance/reconciliations/{run_id}/items", params={"class": "odd"}, headers=finance
        ),
        422,
        "invalid-query-parameter",
    )
    await problem(
        await client.get(
            f"/v1/finance/reconciliations/{run_id}/items", params={"cursor": "x"}, headers=finance
        ),
        400,
        "invalid-cursor",
    )


async def test_the_mapping_over_the_api(world, client):
    finance, admin = client.auth_for("finance"), client.auth_for("admin")
    kiosk = await world.partner("kiosk")
    path = f"/v1/finance/reconciliation-mappings/{kiosk}"
    shown = await client.get(path, headers=finance)
    assert shown.status_code == 200
    assert shown.json()["stored"] is False and shown.json()["mapping"]["delimiter"] == ","
    stored = await client.put(
        path, json={"delimiter": ";", "date_format": "DD.MM.YYYY"}, headers=admin
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["stored"] is True and stored.json()["updated_by"] == "staff:fiona"
    assert (await client.get(path, headers=finance)).json()["mapping"][
        "date_format"
    ] == "DD.MM.YYYY"
    for bad, code in (
        ({"date_format": "someday"}, "invalid-reconciliation-mapping"),
        ({"default_category": "nonsense"}, "invalid-reconciliation-mapping"),
        ({"delimiter": 1}, "validation-error"),
        ({"colour": "red"}, "validation-error"),
    ):
        refused = await client.put(path, json=bad, headers=finance)
        assert refused.json()["type"] == f"/problems/{code}", refused.text
        assert refused.status_code in (400, 422)
    assert (await client.get(path, headers=finance)).json()["mapping"]["delimiter"] == ";"
    unknown = await client.put(
        "/v1/finance/reconciliation-mappings/nobody", json={}, headers=finance
    )
    assert unknown.status_code == 404 and unknown.json()["type"] == "/problems/partner-not-found"
    member = client.auth_for("member")
    assert (await client.get(path, headers=member)).status_code == 403


# -- the CLI ---------------------------------------------------------------------------


async def loyalty(world: World, tmp_path, *args: str):
    env = {
        "LOYALTY_DATABASE_URL": world.url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }
    # The command runs its own event loop: in a thread, beside the tests' loop.
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


async def test_the_cli(world, tmp_path):
    grocer = await grocer_with_purchases(world)
    path = tmp_path / "nov.csv"
    path.write_text("\n".join(GROCER_FILE) + "\n")

    async def cli(*args):
        return await loyalty(world, tmp_path, "finance", *args)

    done = await cli("reconcile", "--partner", grocer, str(path), "--json")
    assert done.exit_code == 0, done.output
    run = json.loads(done.output)
    assert run["totals"]["missing-at-partner"]["count"] == 1
    assert run["differing_fields"] == {"amount": 1, "points": 1, "date": 1, "card": 1}
    run_id = str(run["reconciliation_id"])

    shown = await cli("reconciliation", run_id)
    assert shown.exit_code == 0, shown.output
    assert "G-6" in shown.output and "differs in amount" in shown.output
    listed = await cli("reconciliations", "--partner", grocer)
    assert listed.exit_code == 0 and "nov.csv" in listed.output

    fixed = await cli("reconcile-repair", run_id)
    assert fixed.exit_code == 0, fixed.output
    assert "1 posted" in fixed.output and "card-not-found" in fixed.output
    twice = await cli("reconcile-repair", run_id)
    assert "0 posted" in twice.output and "1 already posted" in twice.output
    assert await entries_with_reference(world, grocer, "G-7") == 1

    bad = tmp_path / "bad.csv"
    bad.write_text("ref;card\n1;2\n")
    refused = await cli("reconcile", "--partner", grocer, str(bad))
    assert refused.exit_code == 2 and "reconciliation-file-invalid" in refused.output
    unknown = await cli("reconcile", "--partner", "nobody", str(path))
    assert unknown.exit_code == 4 and "partner-not-found" in unknown.output
    period = await cli("reconcile", "--partner", grocer, str(path), "--from", D0)
    assert period.exit_code == 2 and "invalid-period" in period.output
    mapping = await cli("reconcile-mapping", "--partner", grocer, "--date-format", "DD/MM")
    assert mapping.exit_code == 2 and "invalid-reconciliation-mapping" in mapping.output
    no_run = await cli("reconciliation", str(10**12))
    assert no_run.exit_code == 4 and "reconciliation-not-found" in no_run.output
    runs, _ = await list_reconciliations(world.engine, grocer)
    assert len(runs) == 1  # the refused commands stored nothing
