"""Insights query times on the generated demo: `python -m loadtests insights`.

Generates the demo (simulation/, `--members` over `--months` up to now) into
the benchmark's fresh database and says how long that took, then reads each
insights figure as the API does (its default window, one read-only snapshot
on the insights engine, the answer encoded as JSON) three times and prints
the median, with its ratio to a baseline measured in the same run: a bare
scan of the purchases, `SELECT count(*), sum(total_minor) FROM
partner_purchases`. The issue's target is each figure under a second on
20,000 members."""

import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from api.progress import progress_for
from insights import coalition, pareto, promotions, retention, rfm, tiers
from insights.reading import create_insights_engine, instant, read_only, window
from ledger.database import create_engine
from ledger.verify import verify
from partners.registry import Registry
from partners.signing_keys import SecretBox
from simulation.loader import generate
from simulation.model import DemoConfig

REPEATS = 3
BASELINE = "SELECT count(*), sum(total_minor) FROM partner_purchases"
TARGET_SECONDS = 1.0


def figures(member_id: str) -> dict[str, Callable]:
    """Each figure with the API's defaults (api/routes/insights.py)."""

    def now():
        return instant(None, "as_of")

    def lost(conn):
        moment = now()
        days = retention.DEFAULT_INACTIVE_DAYS
        return retention.lost_members(
            conn, retention.reference_window(None, None, moment, days), moment, days, "EUR"
        )

    def cohorts(conn):
        moment = now()
        first, last = retention.month_range(None, None, moment)
        return retention.retention_figures(conn, first, last, moment)

    found = {
        "pareto": lambda conn: pareto.pareto(conn, window(None, None), "EUR"),
        "rfm": lambda conn: rfm.rfm(conn, window(None, None), "EUR"),
        "member": lambda conn: rfm.member_insight(conn, member_id, window(None, None), "EUR"),
        "lost-members": lost,
        "retention": cohorts,
        "coalition": lambda conn: coalition.coalition(conn, window(None, None), "EUR"),
        "promotions": lambda conn: promotions.promotions(
            conn, window(None, None, now()), now(), "EUR"
        ),
        "tiers": lambda conn: tiers.tiers(conn, window(None, None), now()),
        "expiry-outlook": lambda conn: tiers.expiry_outlook(conn, now()),
    }
    try:
        from insights import overview
    except ImportError:  # the dashboard's KPI figure is not there yet
        return found
    return {"overview": lambda conn: overview.overview(conn, now()), **found}


async def timed(engine, read: Callable[[object], Awaitable[object]]) -> float:
    """Seconds for one figure: the snapshot, its statements and the JSON."""
    started = time.perf_counter()
    async with read_only(engine) as conn:
        answer = await read(conn)
    msgspec.json.encode(answer)
    return time.perf_counter() - started


async def bench_insights(url: str, members: int, months: int, seed: int) -> None:
    engine = create_engine(url, pool_size=2)
    config = DemoConfig(
        end=datetime.now(UTC).replace(microsecond=0), members=members, months=months, seed=seed
    )
    print(f"generating the demo: {members:,} members over {months} months (seed {seed})")
    try:
        summary = await generate(
            engine,
            Registry(engine, SecretBox(Fernet.generate_key())),
            config,
            progress=progress_for(sys.stderr),
        )
        for label, value in summary.lines():
            print(f"  {label + ':':<30}{value}")
        check = await verify(engine)
        print("verify:", "clean" if check.clean else check.render())
    finally:
        await engine.dispose()
    await report_figures(url)


async def report_figures(url: str) -> None:
    """The table: each figure's median time and its ratio to the baseline."""
    reader = create_insights_engine(url)
    try:
        async with reader.connect() as conn:
            top = (
                await conn.execute(
                    text(
                        "SELECT member_id FROM partner_purchases GROUP BY member_id "
                        "ORDER BY sum(total_minor) DESC, member_id LIMIT 1"
                    )
                )
            ).scalar_one()

        async def baseline(conn):
            return list((await conn.execute(text(BASELINE))).one())

        await timed(reader, baseline)  # warm-up: connections, the table in the cache
        base = statistics.median([await timed(reader, baseline) for _ in range(REPEATS)])
        print(f"\n{'figure':<16}{'median ms':>10}{'ratio':>8}   (median of {REPEATS})")
        print(f"{'baseline scan':<16}{base * 1000:>10.1f}{1:>8.1f}")
        slow = []
        for name, read in figures(top).items():
            try:
                times = [await timed(reader, read) for _ in range(REPEATS)]
            except DBAPIError as error:  # the API's statement time limit, most likely
                print(f"{name:<16}{'failed':>10}   {type(error.orig).__name__}: {error.orig}")
                slow.append(name)
                continue
            median = statistics.median(times)
            print(f"{name:<16}{median * 1000:>10.1f}{median / base:>8.1f}")
            if median >= TARGET_SECONDS:
                slow.append(name)
        print(
            f"over {TARGET_SECONDS:.0f} s: {', '.join(slow)}"
            if slow
            else f"every figure under {TARGET_SECONDS:.0f} s"
        )
    finally:
        await reader.dispose()
