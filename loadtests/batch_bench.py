"""Batch earn benchmark: `python -m loadtests batch`.

A partner with an earn rule (1 point per EUR, QP per EUR, a 14-day return
window) sends batches of `--batch` purchases (default 1,000) for random card
holders; the figure is purchases earned per second, and rows written per
second (entries, postings, pending earnings, purchases). With `--clients N`,
N clients send the `--batches` batches between them at once, each for card
holders of its own (as a partner's stores would, or the lanes of a file
import): one batch's transaction then never waits for another's members.
The baseline, in the same run on the same server: `COPY` of the same number
of rows into empty tables of the ledger's shape (`LIKE ... INCLUDING ALL`:
columns, defaults, keys, checks and indexes, without the ledger's triggers and
foreign keys), as the jobs benchmarks' baseline; and, printed beside it, into
plain tables of columns only, the fastest way PostgreSQL takes rows in.
"""

import asyncio
import gc
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

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

ROWS_PER_EARNING = (
    6  # an entry, three postings (pending, QP, partner), a pending earning, a purchase
)

# The baseline's tables, twice: of the ledger's own shape (its columns,
# defaults, keys, checks and indexes; CREATE TABLE ... LIKE copies neither
# triggers nor foreign keys), the issue's baseline and the jobs benchmarks';
# and plain (columns only), the fastest way PostgreSQL takes rows in, printed
# beside it for reference.
COPIED = (
    (
        "journal_entries",
        (
            "id",
            "kind",
            "member_id",
            "partner_id",
            "partner_reference",
            "effective_at",
            "created_at",
            "posted_by",
            "breakdown",
        ),
        "id bigint, kind text, member_id text, partner_id text, partner_reference text, "
        "effective_at timestamptz, created_at timestamptz, posted_by text, breakdown jsonb",
    ),
    (
        "postings",
        ("entry_id", "account", "asset", "amount", "member_id"),
        "entry_id bigint, account text, asset text, amount bigint, member_id text",
    ),
    (
        "pending_points",
        ("earn_entry_id", "member_id", "amount", "remaining", "earned_at", "release_at"),
        "earn_entry_id bigint, member_id text, amount bigint, remaining bigint, "
        "earned_at timestamptz, release_at timestamptz",
    ),
    (
        "partner_purchases",
        (
            "partner_id",
            "partner_reference",
            "member_id",
            "entry_id",
            "currency",
            "total_minor",
            "occurred_at",
        ),
        "partner_id text, partner_reference text, member_id text, entry_id bigint, "
        "currency text, total_minor bigint, occurred_at timestamptz",
    ),
)


async def seed_partner(engine, ledger, partner: str, ids: list[str], card_prefix: str) -> list[str]:
    """Members enrolled with a card each, and a partner with a 14-day return
    window earning 1 point and 0.1 QP per EUR; returns the cards."""
    from loadtests.__main__ import enrol  # the module that runs us

    await enrol(engine, [], ids)
    registry = Registry(engine, SecretBox(Fernet.generate_key()))
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
    rate = earned / elapsed
    print(f"batch earn: {earned} purchases in {elapsed:.1f} s = {rate:,.0f} purchases/s")
    print(f"rows written: {rate * ROWS_PER_EARNING:,.0f}/s ({ROWS_PER_EARNING} per purchase)")

    (await copy_baseline(engine, earned, ids, partner)).report("batch", rate)
    check = await verify(engine)
    print("verify:", "clean" if check.clean else check.render())
    await engine.dispose()


@dataclass(frozen=True)
class CopyBaseline:
    """Rows per second of `COPY` of the same rows, into tables of the ledger's
    shape and into plain ones."""

    shaped: float
    plain: float

    def report(self, what: str, purchases_per_second: float) -> None:
        rows = purchases_per_second * ROWS_PER_EARNING
        print(
            f"baseline: COPY of the same rows into tables of the ledger's shape "
            f"{self.shaped:,.0f} rows/s, into plain tables {self.plain:,.0f} rows/s"
        )
        print(
            f"ratio {what} rows / COPY rows: {rows / self.shaped:.3f} "
            f"(to plain tables: {rows / self.plain:.3f})"
        )


async def copy_baseline(engine, n: int, ids: list[str], partner: str) -> CopyBaseline:
    """`COPY` of `n` earnings' rows (ROWS_PER_EARNING each, the shape the earn
    path writes) into tables made here (the bench's database is its own): the
    records are built before the clock starts, so only PostgreSQL's intake is
    timed."""
    members = len(ids)
    raw = await engine.raw_connection()
    try:
        driver = raw.driver_connection
        # A million earnings' rows into indexed tables take longer than the
        # service's statement limit (which the bench's engine carries).
        await driver.execute("SET statement_timeout = 0")
        # Entry ids of this month, as the ledger numbers them (the shaped
        # table keeps journal_entries' check of the booking month).
        first = await driver.fetchval("SELECT ledger_month_start(ledger_month_index(now()))")
        now = datetime.now(UTC)
        entries, postings, pending, purchases = [], [], [], []
        for i in range(n):
            member, entry = ids[i % members], first + i + 1
            entries.append((entry, "earn", member, partner, f"c-{i}", now, now, "bench", "[]"))
            postings += [
                (entry, f"member:{member}:pending", "PTS", 10, member),
                (entry, f"partner:{partner}:issued", "PTS", -10, None),
                (entry, f"member:{member}:qp", "QP", 1, member),
            ]
            pending.append((entry, member, 10, 10, now, now))
            purchases.append((partner, f"c-{i}", member, entry, "EUR", 1000, now))
        records = (entries, postings, pending, purchases)
        rates = []
        for shaped in (True, False):
            for table, _, plain_columns in COPIED:
                like = f"LIKE {table} INCLUDING ALL" if shaped else plain_columns
                await driver.execute(f"DROP TABLE IF EXISTS bench_{table}")
                await driver.execute(f"CREATE TABLE bench_{table} ({like})")
            started = time.perf_counter()
            for (table, columns, _), rows in zip(COPIED, records, strict=True):
                await driver.copy_records_to_table(f"bench_{table}", records=rows, columns=columns)
            rates.append(n * ROWS_PER_EARNING / (time.perf_counter() - started))
        for table, _, _ in COPIED:
            await driver.execute(f"DROP TABLE bench_{table}")
    finally:
        raw.close()
    return CopyBaseline(*rates)
