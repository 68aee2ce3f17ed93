"""Prometheus metrics: what `GET /metrics` exposes, and how the numbers get
there from every worker process.

Recorded as things happen (api/observability.py for the HTTP ones):

- `loyalty_http_requests_total{method,route,status}` and
  `loyalty_http_request_duration_seconds{method,route,status}`: `route` is the
  route template (`/v1/partner/cards/{card_number}/balance`), never the
  raw path, and `unmatched` for a path no route serves, so scanners cannot
  grow the series without bound; `method` is one of the HTTP methods or
  `other`. `loyalty_http_requests_in_progress`.
- `loyalty_idempotent_replays_total{route}`: answers replayed for a retried
  `Idempotency-Key` (the `Idempotent-Replayed: true` header).
- `loyalty_partner_signature_failures_total{type}` (`signature-invalid`,
  `signature-replayed`, ...) and `loyalty_problems_total{type}`: problem
  responses by type (api/problems.py notes the type on the request; it is
  counted when an answer of status 400 or more goes out).
- `loyalty_balance_cache_reads_total{result}`: `hit`, `miss`, or `bypass`
  (no Redis configured, or Redis failed on that read) (api/cache.py).
- `loyalty_ledger_entries_posted_total{kind}`: journal entries the API's
  operations posted (`MeteredLedger`: counted as each transaction commits,
  from what the journal posted in it; a replayed result counts nothing).
- `loyalty_db_pool_connections{pool,state}` (`checked_out`, `idle`) and
  `loyalty_db_pool_size{pool}` for the pools `primary`, `token` (the balance
  cache's check) and `replica`: read from SQLAlchemy's pool at every scrape and
  after every request, and summed over the live workers.

Read from the book of record at scrape time (one statement: the balance rows
of every partner's `issued` and `redeemed` accounts and two programme
accounts, by primary key), so they include what jobs and other instances
posted: `loyalty_ledger_points_issued{funder}` (points awarded, net of
returns: `partner` from the partners' `issued` accounts, `program` from
`program:promotions`), `loyalty_ledger_points_redeemed` (the partners'
`redeemed` accounts) and `loyalty_ledger_points_expired` (`program:expired`:
expiry and forfeits); and each job's last run that was not a dry run, from
`job_runs` (a second statement; runs from the command line and from any
instance's scheduler alike): `loyalty_job_last_run_started_timestamp_seconds`,
`..._duration_seconds` (once finished), `..._processed` and `..._failed`, by
job. `loyalty_ledger_totals_up` is 0 when these reads failed.

Several workers (`loyalty serve --workers N`): prometheus-client's
multiprocess mode. The serving process points PROMETHEUS_MULTIPROC_DIR at a
fresh directory before the workers start (`multiprocess_directory`); each
worker writes its values to files there and a scrape, whichever worker
answers it, adds up the files of all of them, so nothing a worker counted is
lost, including what a worker that has since exited counted. The metric
objects are made on first use, never at import, so a directory is emptied
before any file of this run exists in it. A worker's gauges (requests in
progress, the pools) leave the sums when it stops: on a clean shutdown it
says so itself (`process_stopped`), and a worker that was killed (`kill -9`,
the OOM killer) is found dead at the next scrape, from the process ids in the
names of the live-gauge files, and its gauge files go (`sweep_dead_workers`).

/metrics has no authentication: serve it to the monitoring network only (it
tells the traffic, its failures and the programme's points liability), or
turn it off with `LOYALTY_METRICS_ENABLED=0`. No label holds an id, a raw
path or any other value a caller chose."""

import asyncio
import collections
import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.service import LedgerService

log = logging.getLogger("loyalty.metrics")

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a path no route serves
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOTALS_TIMEOUT_SECONDS = 2.0
WARN_EVERY_SECONDS = 60.0


class Metrics:
    """This process's metric objects (one set per process: prometheus-client
    registers each name once)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "loyalty_http_requests_total",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
        )
        self.latency = Histogram(
            "loyalty_http_request_duration_seconds",
            "Time from receiving a request to the last byte of its answer",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
        )
        self.in_progress = Gauge(
            "loyalty_http_requests_in_progress",
            "HTTP requests being answered",
            multiprocess_mode="livesum",
        )
        self.replays = Counter(
            "loyalty_idempotent_replays_total",
            "Stored answers replayed for a retried Idempotency-Key",
            ["route"],
        )
        self.signature_failures = Counter(
            "loyalty_partner_signature_failures_total",
            "Partner requests refused by the signature check, by problem type",
            ["type"],
        )
        self.problems = Counter(
            "loyalty_problems_total", "Problem responses, by problem type", ["type"]
        )
        self.cache_reads = Counter(
            "loyalty_balance_cache_reads_total",
            "Balance reads: hit (served from Redis), miss (built from PostgreSQL), "
            "bypass (no Redis configured, or Redis failed on the read)",
            ["result"],
        )
        self.entries = Counter(
            "loyalty_ledger_entries_posted_total",
            "Journal entries posted by the API's operations, by kind",
            ["kind"],
        )
        self.pool_connections = Gauge(
            "loyalty_db_pool_connections",
            "Database connections held by the pools, by state",
            ["pool", "state"],
            multiprocess_mode="livesum",
        )
        self.pool_size = Gauge(
            "loyalty_db_pool_size",
            "Configured size of the database pools (each may open as many again)",
            ["pool"],
            multiprocess_mode="livesum",
        )


@functools.cache
def metrics() -> Metrics:
    # No `_created` series: scrapers do not need them, and they double the output.
    disable_created_metrics()
    return Metrics()


def multiprocess() -> bool:
    """Whether values go to files shared by the workers (decided by the
    serving process before this one started)."""
    return bool(os.environ.get(MULTIPROC_VARIABLE))


# -- the serving process --------------------------------------------------------


@contextlib.contextmanager
def multiprocess_directory(workers: int) -> Iterator[Path | None]:
    """For `loyalty serve`: with several workers, a fresh directory for their
    metric files in PROMETHEUS_MULTIPROC_DIR (removed afterwards); one the
    operator named there is emptied of an earlier run's files and kept. One
    worker and nothing named: values stay in the process."""
    named = os.environ.get(MULTIPROC_VARIABLE)
    if named:
        directory = Path(named)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # counts of a run that has ended
            stale.unlink()
        yield directory
        return
    if workers <= 1:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="loyalty-metrics-"))
    os.environ[MULTIPROC_VARIABLE] = str(directory)  # inherited by the workers
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_VARIABLE, None)
        shutil.rmtree(directory, ignore_errors=True)


def process_stopped() -> None:
    """A worker shutting down: its gauges stop counting in the sums (its
    counters stay: what it counted happened)."""
    if multiprocess():
        from prometheus_client import multiprocess as shared

        shared.mark_process_dead(os.getpid())


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user has the id: alive
        return True
    return True


def sweep_dead_workers(directory: str | Path | None = None) -> list[int]:
    """Take the live gauges of workers that no longer exist out of the sums
    (`mark_process_dead` for each): a worker killed without shutting down
    leaves its files behind. The ids of the processes found dead."""
    from prometheus_client import multiprocess as shared

    directory = directory or os.environ.get(MULTIPROC_VARIABLE)
    if not directory:
        return []
    pids = set()
    try:
        for name in os.listdir(directory):
            if match := _LIVE_GAUGE_FILE.fullmatch(name):
                pids.add(int(match.group(1)))
    except OSError:
        return []
    dead = sorted(pid for pid in pids if pid != os.getpid() and not pid_alive(pid))
    for pid in dead:
        try:
            shared.mark_process_dead(pid, str(directory))
        except OSError:  # another worker's scrape removed it first
            pass
    return dead


# -- recording --------------------------------------------------------------------


def request_labels(method: str, route: str | None, status: int) -> tuple[str, str, str]:
    return (method if method in METHODS else "other", route or UNMATCHED, str(status))


_last_pools: dict[str, tuple[int, int, int]] = {}


def observe_pools(state) -> None:
    """The pools' current use, as this worker sees it (written only when it
    changed: with several workers a write goes to a shared file)."""
    pools: dict[str, AsyncEngine | None] = {
        "primary": getattr(state, "engine", None),
        "token": getattr(getattr(state, "cache", None), "engine", None),
        "replica": getattr(getattr(state, "replica", None), "engine", None),
    }
    m = metrics()
    for name, engine in pools.items():
        if engine is None:
            continue
        pool = engine.pool
        size, out, idle = pool.size(), pool.checkedout(), pool.checkedin()
        if _last_pools.get(name) == (size, out, idle):
            continue
        _last_pools[name] = (size, out, idle)
        m.pool_connections.labels(name, "checked_out").set(out)
        m.pool_connections.labels(name, "idle").set(idle)
        m.pool_size.labels(name).set(size)


class MeteredLedger(LedgerService):
    """The ledger service of the API: every entry a transaction of its posted
    is counted by kind once that transaction has committed (a failed or
    rolled-back one counts nothing, a retried one once, a replayed answer
    nothing), whichever operation of the API posted it: earnings, redemptions,
    reward orders, claims, club fees (the scheduler's jobs have a ledger of
    their own, counted by `loyalty_job_*`)."""

    def committed(self, kinds) -> None:
        entries = metrics().entries
        for kind, count in collections.Counter(kinds).items():  # a batch posts a thousand
            entries.labels(kind).inc(count)


# -- exposition -------------------------------------------------------------------

_TOTALS = text(
    # `\\:` keeps SQLAlchemy from reading `:issued` as a bind parameter.
    "SELECT a.measure, coalesce(sum(b.balance), 0) AS points FROM ("
    "  SELECT 'partner:' || id || '\\:issued' AS account, 'issued_partner' AS measure "
    "  FROM partners"
    "  UNION ALL SELECT 'partner:' || id || '\\:redeemed', 'redeemed' FROM partners"
    "  UNION ALL VALUES ('program:promotions', 'issued_program'),"
    "                   ('program:expired', 'expired')"
    ") AS a LEFT JOIN balances b ON b.account = a.account AND b.asset = 'PTS' "
    "GROUP BY a.measure"
)
# Each job's last run that was not a dry run (job_runs, migration 0012): from
# the command line, the scheduler of any instance, on any host.
_LAST_JOB_RUNS = text(
    "SELECT DISTINCT ON (job) job, extract(epoch FROM started_at) AS started, "
    "extract(epoch FROM finished_at - started_at) AS seconds, processed, "
    "error IS NOT NULL AS failed FROM job_runs WHERE NOT dry_run "
    "ORDER BY job, started_at DESC"
)
_warned_at = float("-inf")


class ScrapeReads(NamedTuple):
    """What a scrape reads from the database: points issued, redeemed and
    expired from the balance rows, and each job's last run."""

    totals: dict[str, int]
    job_runs: list


async def ledger_totals(engine: AsyncEngine) -> ScrapeReads | None:
    """The scrape's reads (None when the database did not answer in time)."""
    global _warned_at
    try:
        async with asyncio.timeout(TOTALS_TIMEOUT_SECONDS), engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = (await autocommit.execute(_TOTALS)).all()
            runs = (await autocommit.execute(_LAST_JOB_RUNS)).all()
    except Exception as error:  # a scrape must answer whatever the database does
        now = time.monotonic()
        if now - _warned_at >= WARN_EVERY_SECONDS:
            _warned_at = now
            log.warning("ledger totals unavailable for /metrics: %s", type(error).__name__)
        return None
    return ScrapeReads({row.measure: int(row.points) for row in rows}, runs)


def _job_families(runs: list) -> Iterator[Metric]:
    started = GaugeMetricFamily(
        "loyalty_job_last_run_started_timestamp_seconds",
        "When each job's last run started (Unix time)",
        labels=["job"],
    )
    seconds = GaugeMetricFamily(
        "loyalty_job_last_run_duration_seconds",
        "How long each job's last finished run took",
        labels=["job"],
    )
    processed = GaugeMetricFamily(
        "loyalty_job_last_run_processed", "Items each job's last run processed", labels=["job"]
    )
    failed = GaugeMetricFamily(
        "loyalty_job_last_run_failed",
        "1 when each job's last run ended in an error",
        labels=["job"],
    )
    for run in runs:
        started.add_metric([run.job], float(run.started))
        if run.seconds is not None:
            seconds.add_metric([run.job], float(run.seconds))
        processed.add_metric([run.job], int(run.processed))
        failed.add_metric([run.job], 1 if run.failed else 0)
    yield from (started, seconds, processed, failed)


def _totals_families(reads: ScrapeReads | None) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "loyalty_ledger_totals_up",
        "1 when the ledger totals and job runs below were read at this scrape",
    )
    up.add_metric([], 0 if reads is None else 1)
    yield up
    if reads is None:
        return
    yield from _job_families(reads.job_runs)
    totals = reads.totals
    issued = GaugeMetricFamily(
        "loyalty_ledger_points_issued",
        "Points awarded, net of returns, by who pays for them",
        labels=["funder"],
    )
    # Awarding points debits the funder's account: its balance is minus the points.
    issued.add_metric(["partner"], -totals.get("issued_partner", 0))
    issued.add_metric(["program"], -totals.get("issued_program", 0))
    yield issued
    redeemed = GaugeMetricFamily(
        "loyalty_ledger_points_redeemed", "Points redeemed at partners, net of refunds"
    )
    redeemed.add_metric([], totals.get("redeemed", 0))
    yield redeemed
    expired = GaugeMetricFamily(
        "loyalty_ledger_points_expired", "Points expired or forfeited (program:expired)"
    )
    expired.add_metric([], totals.get("expired", 0))
    yield expired


class _Scrape:
    """What one scrape exposes: the recorded metrics (this process's, or all
    workers' files) and the totals read for it."""

    def __init__(self, sources: Iterable, totals: ScrapeReads | None) -> None:
        self.sources = sources
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()
        yield from _totals_families(self.totals)


async def exposition(state, accept: str | None) -> tuple[bytes, str]:
    """The body and content type of a scrape (Prometheus text, or OpenMetrics
    when the scraper asks for it)."""
    metrics()  # the families exist (at zero) from the first scrape on
    observe_pools(state)
    totals = await ledger_totals(state.engine)
    if multiprocess():
        from prometheus_client.multiprocess import MultiProcessCollector

        sweep_dead_workers()
        sources = [MultiProcessCollector(None)]
    else:
        sources = [REGISTRY]
    encoder, content_type = choose_encoder(accept or "")
    return encoder(_Scrape(sources, totals)), content_type
