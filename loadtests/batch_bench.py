"""Batch earn benchmark: `python -m loadtests batch`.

A partner with an earn rule (1 point per EUR, QP per EUR, a 14-day return
window) sends batches of `--batch` purchases (default 1,000) for random card
holders; the figure is purchases earned per second, and rows written per
second (entries, postings, pending earnings, lots, purchases: counted in the
database after the run). With `--clients N`, N clients send the `--batches`
batches between them at once, each for card holders of its own (as a
partner's stores would, or the lanes of a file import): one batch's
transaction then never waits for another's members.
The baseline, in the same run on the same server: `COPY` of the very rows
the run wrote (read out to binary files first) into empty tables of the
ledger's shape (`LIKE ... INCLUDING ALL`: columns, defaults, keys, checks
and indexes, without the ledger's triggers and foreign keys), as the jobs
benchmarks' baseline; and, printed beside it, into plain tables of columns
only, the fastest way PostgreSQL takes rows in. The ratio is the COPY's time
over the run's: rows per second against rows per second of the same rows.
"""

import asyncio
import gc
import json
import random
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import text

from ledger.database import create_engine
from ledger.service import LedgerService
from ledger.verify import verify
from partners.batch import EarnItem, earn_batch
from partners.programme import Programme, PurchaseInput, PurchaseLineInput
from partners.registry import PartnerInput, Registry
from partners.rule_inputs import EarnRuleInput
from partners.rulebook import Rulebook
from partners.signing_keys import SecretBox

BATCH_PATH = "/v1/partner/earnings/batch"
COPY_TIMEOUT = 3600.0  # seconds: a million purchases' rows take minutes

# The tables an earning writes that the baseline copies: the entries, their
# postings, the pending earnings (lots to be, the partner having a return
# window) and lots, and the purchases as reported. Each names the run's rows
# of it, given the partner ($1) and the last entry id before the run ($2).
COPIED = (
    ("journal_entries", "partner_id = $1 AND id > $2"),
    (
        "postings",
        "entry_id IN (SELECT id FROM journal_entries WHERE partner_id = $1 AND id > $2)",
    ),
    (
        "pending_points",
        "earn_entry_id IN (SELECT id FROM journal_entries WHERE partner_id = $1 AND id > $2)",
    ),
    (
        "lots",
        "source_entry_id IN (SELECT id FROM journal_entries WHERE partner_id = $1 AND id > $2)",
    ),
    ("partner_purchases", "partner_id = $1 AND entry_id > $2"),
)


async def seed_partner(
    engine, ledger, partner: str, ids: list[str], card_prefix: str, box: SecretBox | None = None
) -> list[str]:
    """Members enrolled with a card each, and a partner with a 14-day return
    window earning 1 point and 0.1 QP per EUR (its keys kept in `box`);
    returns the cards."""
    from loadtests.__main__ import enrol  # the module that runs us

    await enrol(engine, [], ids)
    registry = Registry(engine, box or SecretBox(Fernet.generate_key()))
    await registry.create_partner(PartnerInput(partner, partner, return_window_days=14), "bench")
    await Rulebook(ledger).create_earn_rule(
        partner,
        EarnRuleInput(
            datetime(2024, 1, 1, tzinfo=UTC), "EUR", Decimal(1), qp_per_unit=Decimal("0.1")
        ),
        "bench",
    )
    cards = [f"{card_prefix}{i:015d}" for i in range(len(ids))]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO cards (card_number, member_id) "
                "SELECT unnest(CAST(:c AS text[])), unnest(CAST(:m AS text[]))"
            ),
            {"c": cards, "m": ids},
        )
    return cards


async def bench_batch(url: str, members: int, batch: int, batches: int, clients: int = 1) -> None:
    engine = create_engine(url, pool_size=max(4, clients + 1))
    ledger = LedgerService(engine)
    programme = Programme(ledger)
    partner = "bench-batch"
    ids = [f"b{i}" for i in range(members)]
    cards = await seed_partner(engine, ledger, partner, ids, "9")
    run = uuid.uuid4().hex[:6]
    references = iter(range(10**9))

    def items(client: int = 0) -> list[EarnItem]:
        own = cards[client::clients]
        return [
            EarnItem(
                random.choice(own),
                f"{run}-{next(references)}",
                PurchaseInput(
                    "EUR", [PurchaseLineInput(random.randrange(100, 20_000), "groceries")]
                ),
            )
            for _ in range(batch)
        ]

    print(
        f"batch earn benchmark: {members} members, {batches} batches of {batch}, "
        f"{clients} client(s) at once"
    )
    await earn_batch(programme, partner, items())  # warm-up
    before = await last_entry_id(engine)
    work = [[items(c) for _ in range(c, batches, clients)] for c in range(clients)]
    # The batches the partners will send are theirs, not the service's: out of
    # the collector's sight, as the startup heap of a server worker is
    # (api/app.py `freeze_startup_heap`); else every full collection would walk
    # all of them, which a server never holds at once.
    gc.collect()
    gc.freeze()
    earned = 0

    async def client(own: list[list[EarnItem]]) -> None:
        nonlocal earned
        for sent in own:
            receipt = await earn_batch(programme, partner, sent)
            earned += receipt.posted  # after the await: the clients interleave

    started = time.perf_counter()
    await asyncio.gather(*(client(own) for own in work))
    elapsed = time.perf_counter() - started
    print(
        f"batch earn: {earned} purchases in {elapsed:.1f} s = {earned / elapsed:,.0f} purchases/s"
    )
    (await copy_baseline(engine, partner, before)).report("batch", earned, elapsed)
    check = await verify(engine)
    print("verify:", "clean" if check.clean else check.render())
    await engine.dispose()


async def bench_http_batch(
    url: str, members: int, batch: int, batches: int, clients: int, workers: int | None
) -> None:
    """The batch earn endpoint: `loyalty serve` with its defaults (one worker,
    or `--workers N`), `clients` partner clients sending the `batches` signed
    batches between them on keep-alive connections, signed before the clock
    starts; the purchases posted are counted in the database."""
    from loadtests.http_bench import Clients, Service, Signer

    secret_key = Fernet.generate_key().decode()
    engine = create_engine(url, pool_size=2)
    partner = "bench-batch"
    ids = [f"b{i}" for i in range(members)]
    box = SecretBox(secret_key)
    cards = await seed_partner(engine, LedgerService(engine), partner, ids, "9", box)
    key = await Registry(engine, box).create_key(partner, "bench")
    tmp = Path(tempfile.mkdtemp(prefix="loyalty-batch-bench-"))
    service = Service(url, secret_key, workers, tmp)
    try:
        await service.wait_ready()
        signer = Signer(key.key_id, key.secret, service.port, cards)
        references = iter(range(10**9))

        def signed(number: int, client: int = 0) -> bytes:
            own = cards[client::clients]  # each client its own card holders, as in bench_batch
            items = [
                {
                    "card_number": random.choice(own),
                    "reference": f"{signer.run}-{next(references)}",
                    "purchase": {
                        "currency": "EUR",
                        "lines": [
                            {"amount_minor": random.randrange(100, 20_000), "category": "groceries"}
                        ],
                    },
                }
                for _ in range(batch)
            ]
            body = json.dumps({"items": items}, separators=(",", ":")).encode()
            return signer.request(BATCH_PATH, body, f"{signer.run}-batch-{number}")

        print(
            f"batch earn endpoint benchmark: `loyalty serve` with "
            f"{workers or 'the default number of'} worker(s), {members} members, {batches} "
            f"signed batches of {batch}, {clients} client(s) at once"
        )
        connections = Clients(service.port, clients)
        await connections.open()
        await connections.send(signed(0))  # warm-up
        before = await last_entry_id(engine)
        work = [signed(n, (n - 1) % clients) for n in range(1, batches + 1)]
        connections.statuses.clear()
        await connections.open()

        async def client(own: list[bytes]) -> None:
            for request in own:
                await connections.send(request)

        started = time.perf_counter()
        await asyncio.gather(*(client(work[c::clients]) for c in range(clients)))
        elapsed = time.perf_counter() - started
        await connections.close()
    finally:
        service.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    async with engine.connect() as conn:
        earned = (
            await conn.execute(
                text("SELECT count(*) FROM journal_entries WHERE partner_id = :p AND id > :i"),
                {"p": partner, "i": before},
            )
        ).scalar()
    print(
        f"batch earn endpoint: {earned} purchases in {elapsed:.1f} s = "
        f"{earned / elapsed:,.0f} purchases/s; answers {dict(connections.statuses)}"
    )
    (await copy_baseline(engine, partner, before)).report("batch", earned, elapsed)
    check = await verify(engine)
    print("verify:", "clean" if check.clean else check.render())
    await engine.dispose()


async def last_entry_id(engine) -> int:
    """The last entry id posted so far: the run's rows are those after it."""
    async with engine.connect() as conn:
        last = await conn.execute(text("SELECT coalesce(max(id), 0) FROM journal_entries"))
        return last.scalar()


@dataclass(frozen=True)
class CopyBaseline:
    """`COPY` of the very rows a run wrote, into tables of the ledger's shape
    and into plain ones: how many rows, and the seconds each took."""

    rows: int
    shaped_seconds: float
    plain_seconds: float

    def report(self, what: str, purchases: int, seconds: float) -> None:
        print(
            f"rows written: {self.rows / seconds:,.0f}/s ({self.rows:,} rows of entries, "
            f"postings, pending earnings, lots and purchases: {self.rows / purchases:.2f} "
            "per purchase)"
        )
        print(
            f"baseline: COPY of the same rows into tables of the ledger's shape "
            f"{self.rows / self.shaped_seconds:,.0f} rows/s, into plain tables "
            f"{self.rows / self.plain_seconds:,.0f} rows/s"
        )
        print(
            f"ratio {what} rows / COPY rows: {self.shaped_seconds / seconds:.3f} "
            f"(to plain tables: {self.plain_seconds / seconds:.3f})"
        )


async def copy_baseline(engine, partner: str, after_entry: int) -> CopyBaseline:
    """`COPY` of the rows the run wrote (`COPIED`: the partner's entries after
    `after_entry`, their postings, pending earnings and lots, the purchases)
    into empty tables made here (the bench's database is its own), timed
    alone: the rows are read out to binary files before the clock starts, so
    only PostgreSQL's intake is measured."""
    raw = await engine.raw_connection()
    try:
        driver = raw.driver_connection
        # A million earnings' rows into indexed tables take longer than the
        # service's statement and command limits (which the bench's engine carries).
        await driver.execute("SET statement_timeout = 0")
        with tempfile.TemporaryDirectory(prefix="loyalty-copy-baseline-") as tmp:
            files, counted = [], 0
            for table, run_rows in COPIED:
                path = Path(tmp) / f"{table}.copy"
                status = await driver.copy_from_query(
                    f"SELECT * FROM {table} WHERE {run_rows}",
                    partner,
                    after_entry,
                    output=str(path),
                    format="binary",
                    timeout=COPY_TIMEOUT,
                )
                counted += int(status.split()[-1])
                files.append((table, path))
            # A batch run's COPY takes a second or two, which the machine's
            # noise moves by tens of percent: the median of three (one alone
            # past 3,000,000 rows, a minute and more).
            repeats = 3 if counted < 3_000_000 else 1
            seconds = []
            for shaped in (True, False):
                timings = []
                for _ in range(repeats):
                    for table, _ in COPIED:
                        await driver.execute(f"DROP TABLE IF EXISTS bench_{table}")
                        await driver.execute(
                            f"CREATE TABLE bench_{table} (LIKE {table} INCLUDING ALL)"
                            if shaped
                            else f"CREATE TABLE bench_{table} (LIKE {table})"
                        )
                    started = time.perf_counter()
                    for table, path in files:
                        await driver.copy_to_table(
                            f"bench_{table}",
                            source=str(path),
                            format="binary",
                            timeout=COPY_TIMEOUT,
                        )
                    timings.append(time.perf_counter() - started)
                seconds.append(statistics.median(timings))
            for table, _ in COPIED:
                await driver.execute(f"DROP TABLE bench_{table}")
    finally:
        raw.close()
    return CopyBaseline(counted, *seconds)
