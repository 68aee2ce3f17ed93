"""File import benchmark: `python -m loadtests import [--rows N] [--members M]`.

A partner set up as in the batch benchmark (1 point per EUR, QP per EUR, a
14-day return window, so each purchase writes the same rows) and `--members`
card holders; a CSV file of `--rows` purchases (default 1,000,000) is written
and imported by the real command, `loyalty partner import`, in a process of
its own. The figures: purchases per second (the whole command, hashing the
file included), rows written per second, the ratio to the `COPY` baseline of
the batch benchmark (`copy_baseline`) measured in the same run on the same
server, and the importing process's peak RSS (`ru_maxrss`, from `wait4`;
the target is under 300 MB whatever the file's size). Then `verify`; the
caller drops the database.
"""

import json
import os
import random
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledger.database import create_engine
from ledger.service import LedgerService
from ledger.verify import verify
from loadtests.batch_bench import copy_baseline, last_entry_id, seed_partner
from loadtests.commands import loyalty, run_measured

PARTNER = "bench-import"
HEADER = "card_number,reference,occurred_at,currency,amount_minor,category\n"


def write_file(path: Path, rows: int, cards: list[str]) -> None:
    run = uuid.uuid4().hex[:6]
    when = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    with path.open("w") as out:
        out.write(HEADER)
        for start in range(0, rows, 10_000):
            out.write(
                "".join(
                    f"{random.choice(cards)},{run}-{i},{when},EUR,"
                    f"{random.randrange(100, 20_000)},groceries\n"
                    for i in range(start, min(rows, start + 10_000))
                )
            )


async def bench_import(
    url: str, rows: int, members: int, chunk_size: int, lanes: int | None = None
) -> None:
    engine = create_engine(url, pool_size=4)
    ledger = LedgerService(engine)
    ids = [f"i{i}" for i in range(members)]
    cards = await seed_partner(engine, ledger, PARTNER, ids, "8")
    before = await last_entry_id(engine)

    with tempfile.TemporaryDirectory(prefix="loyalty-import-bench-") as tmp:
        path = Path(tmp) / "transactions.csv"
        write_file(path, rows, cards)
        size = path.stat().st_size
        print(
            f"file import benchmark: {rows:,} rows ({size / 1e6:,.1f} MB), {members:,} members, "
            f"chunks of {chunk_size}, {lanes or 'the default'} lanes; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        env = {**os.environ, "LOYALTY_DATABASE_URL": url, "LOYALTY_DATA_DIR": tmp}
        command = [*loyalty(), "partner", "import", str(path), "--partner", PARTNER]
        command += ["--chunk-size", str(chunk_size), "--json"]
        if lanes is not None:
            command += ["--lanes", str(lanes)]
        output, elapsed, usage = run_measured(command, env, Path(tmp) / "out.json")
    summary = json.loads(output)
    posted = summary["posted"]
    rate = posted / elapsed
    print(
        f"import: {summary['rows']:,} rows, {posted:,} posted, {summary['rejected']:,} rejected, "
        f"{summary['points']:,} points in {elapsed:,.1f} s = {rate:,.0f} purchases/s"
    )
    peak = usage.ru_maxrss / 1024  # kilobytes on Linux
    print(f"peak RSS of the importing process: {peak:,.0f} MB (target: under 300 MB)")

    (await copy_baseline(engine, PARTNER, before)).report("import", posted, elapsed)
    check = await verify(engine)
    print("verify:", "clean" if check.clean else check.render())
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    await engine.dispose()
