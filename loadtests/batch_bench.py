"""Batch earn benchmark: `python -m loadtests batch`.

A partner with an earn rule (1 point per EUR, QP per EUR, a 14-day return
window) sends batches of `--batch` purchases (default 1,000) for random card
holders; the figure is purchases earned per second, and rows written per
second (entries, postings, pending earnings, purchases). With `--clients N`,
N clients send the `--batches` batches between them at once, each for card
holders of its own (as a partner's stores would, or the lanes of a file
import): one batch's transaction then never waits for another's members.
The baseline, in the same run on the same server: `COPY` of the same number
of rows of the same shape into plain tables without constraints or
triggers, the fastest way PostgreSQL takes rows in.
"""

import asyncio
import gc
import random
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from cryptography.fernet import Fernet
from sqlalchemy import text

from ledger.database import create_engine
from ledger.service import LedgerService
from ledger.verify import verify
from partners.batch import EarnItem, earn_batch
from partners.programme import Programme, PurchaseInput, PurchaseLineInput
from partners.registry import PartnerInput, Registry, SecretBox
from partners.rulebook import EarnRuleInput, Rulebook

ROWS_PER_EARNING = (
    6  # an entry, three postings (pending, QP, partner), a pending earning, a purchase
)

BASELINE = (
    "CREATE TABLE bench_entries (id bigint PRIMARY KEY, kind text, member_id text, "
    "partner_id text, partner_reference text, effective_at timestamptz, posted_by text, "
    "breakdown text)",
    "CREATE TABLE bench_postings (entry_id bigint, account text, asset text, amount bigint, "
    "member_id text)",
    "CREATE TABLE bench_pending (earn_entry_id bigint, member_id text, remaining bigint, "
    "release_at timestamptz)",
    "CREATE TABLE bench_purchases (partner_id text, partner_reference text, member_id text, "
    "entry_id bigint, total_minor bigint)",
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

    # Baseline: COPY of as many rows of the same shape into plain tables.
    copy_rate = await copy_baseline(engine, earned, ids, partner)
    print(f"baseline: COPY of the same rows      {copy_rate:,.0f} rows/s")
    print(f"ratio batch rows / COPY rows: {rate * ROWS_PER_EARNING / copy_rate:.3f}")
    check = await verify(engine)
    print("verify:", "clean" if check.clean else check.render())
    await engine.dispose()


async def copy_baseline(engine, n: int, ids: list[str], partner: str) -> float:
    """Rows per second of `COPY` of `n` earnings' rows (ROWS_PER_EARNING each, the
    shape the earn path writes) into plain tables without constraints or triggers,
    created here (the bench's database is its own)."""
    members = len(ids)
    raw = await engine.raw_connection()
    try:
        driver = raw.driver_connection
        for statement in BASELINE:
            await driver.execute(statement)
        now = datetime.now(UTC)
        started = time.perf_counter()
        await driver.copy_records_to_table(
            "bench_entries",
            records=[
                (i, "earn", ids[i % members], partner, f"c-{i}", now, "bench", "[]")
                for i in range(n)
            ],
        )
        postings = []
        for i in range(n):
            m = ids[i % members]
            postings += [
                (i, f"member:{m}:pending", "PTS", 10, m),
                (i, f"partner:{partner}:issued", "PTS", -10, None),
                (i, f"member:{m}:qp", "QP", 1, m),
            ]
        await driver.copy_records_to_table("bench_postings", records=postings)
        await driver.copy_records_to_table(
            "bench_pending", records=[(i, ids[i % members], 10, now) for i in range(n)]
        )
        await driver.copy_records_to_table(
            "bench_purchases",
            records=[(partner, f"c-{i}", ids[i % members], i, 1000) for i in range(n)],
        )
        copy_elapsed = time.perf_counter() - started
    finally:
        raw.close()
    return n * ROWS_PER_EARNING / copy_elapsed
