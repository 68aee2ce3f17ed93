"""Operating the service: Prometheus metrics (`/metrics`), request ids and
structured logs, through the app's HTTP interface; and the metrics of a real
`loyalty serve --workers 2`, which must count the requests of both workers.

The metrics of the test process are shared by every app it creates, so each
test compares a scrape taken before with one taken after."""

import asyncio
import dataclasses
import io
import json
import logging
import os
import random
import re
import shutil
import string
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from litestar import get
from litestar.testing import AsyncTestClient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from api.app import create_app
from api.logs import JsonFormatter, RequestContext, TextFormatter, enter_request, leave_request
from tests.api import test_partner_api
from tests.api.conftest import MEMBER_SECRET, SECRET, SECRET_KEY
from tests.api.served import free_port, loyalty, output, stop, wait_ready
from tests.api.test_partner_api import Shop, earn_body, post

shop = test_partner_api.shop  # the signed partner fixture, shared

REQUESTS = "loyalty_http_requests_total"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(exposition: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


async def scrape(client) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -- metrics ------------------------------------------------------------------------


async def test_requests_are_counted_by_route_template_and_status(client, token, new_member):
    first, second = await new_member(), await new_member()
    route = "/v1/staff/members/{member_id}/balances"
    before = await scrape(client)
    for member in (first, second):
        response = await client.get(f"/v1/staff/members/{member}/balances", headers=token())
        assert response.status_code == 200, response.text
    missing = await client.get("/v1/staff/members/nobody-enrolled/balances", headers=token())
    assert missing.status_code == 404
    assert (await client.get("/no/such/path")).status_code == 404
    after = await scrape(client)
    assert grew(before, after, REQUESTS, method="GET", route=route, status="200") == 2
    assert grew(before, after, REQUESTS, method="GET", route=route, status="404") == 1
    assert grew(before, after, REQUESTS, method="GET", route="unmatched", status="404") == 1
    latency = "loyalty_http_request_duration_seconds_count"
    assert grew(before, after, latency, method="GET", route=route, status="200") == 2
    assert grew(before, after, "loyalty_problems_total", type="member-not-found") == 1
    # Paths never become labels: no member id, no unknown path.
    labels = " ".join(str(key) for key in after)
    assert first not in labels and "nobody-enrolled" not in labels and "/no/such" not in labels


async def test_a_replayed_answer_the_entry_posted_and_the_points_issued(client, shop: Shop):
    body = earn_body(shop, f"OBS-{uuid.uuid4().hex[:8]}", 2500)
    before = await scrape(client)
    signed_at = time.time()
    first = await post(
        client,
        shop,
        "/v1/partner/earn",
        body,
        key="obs-replay",
        auth=shop.auth(clock=lambda: signed_at),
    )
    assert first.status_code == 201, first.text
    # A retry is signed anew: a second earlier than the first is another
    # signature (the same second would be a replayed signature, 401).
    retry = await post(
        client,
        shop,
        "/v1/partner/earn",
        body,
        key="obs-replay",
        auth=shop.auth(clock=lambda: signed_at - 1),
    )
    assert retry.status_code == 201 and retry.headers["idempotent-replayed"] == "true"
    after = await scrape(client)
    assert grew(before, after, "loyalty_idempotent_replays_total", route="/v1/partner/earn") == 1
    # Posted once: the replay counts no entry.
    assert grew(before, after, "loyalty_ledger_entries_posted_total", kind="earn") == 1
    points = first.json()["earning"]["points"]
    assert points == 25
    issued = "loyalty_ledger_points_issued"
    assert grew(before, after, issued, funder="partner") == points
    assert value(after, "loyalty_ledger_totals_up") == 1


async def test_signature_failures_are_counted_by_problem_type(client, shop: Shop):
    body = earn_body(shop, "OBS-FORGED", 1000)
    forged = dataclasses.replace(shop, secret="not-the-partner-secret")
    before = await scrape(client)
    refused = await post(client, shop, "/v1/partner/earn", body, auth=forged.auth())
    assert refused.json()["type"] == "/problems/signature-invalid"
    unsigned = await client.post(
        "/v1/partner/earn", json=body, headers={"Idempotency-Key": "obs-unsigned"}
    )
    assert unsigned.json()["type"] == "/problems/signature-missing"
    after = await scrape(client)
    failures = "loyalty_partner_signature_failures_total"
    assert grew(before, after, failures, type="signature-invalid") == 1
    assert grew(before, after, failures, type="signature-missing") == 1
    assert grew(before, after, "loyalty_problems_total", type="signature-invalid") == 1
    route = "/v1/partner/earn"
    assert grew(before, after, REQUESTS, method="POST", route=route, status="401") == 2


async def test_balance_reads_count_cache_hits_misses_and_bypass(
    client, api_settings, token, new_member
):
    member = await new_member()
    me = token(member, roles=("member",))
    before = await scrape(client)
    first = await client.get("/v1/me/balance", headers=me)
    second = await client.get("/v1/me/balance", headers=me)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    after = await scrape(client)
    reads = "loyalty_balance_cache_reads_total"
    assert grew(before, after, reads, result="miss") == 1
    assert grew(before, after, reads, result="hit") == 1
    without_redis = dataclasses.replace(api_settings, redis_url=None)
    async with AsyncTestClient(create_app(without_redis)) as uncached:
        assert (await uncached.get("/v1/me/balance", headers=me)).status_code == 200
        assert grew(after, await scrape(uncached), reads, result="bypass") == 1


async def test_pool_gauges_and_openmetrics(client, api_settings):
    samples = await scrape(client)
    size = api_settings.db_pool_size
    assert value(samples, "loyalty_db_pool_size", pool="primary") == size
    assert value(samples, "loyalty_db_pool_size", pool="token") == size
    assert ("loyalty_db_pool_connections", (("pool", "primary"), ("state", "checked_out"))) in (
        samples
    )
    openmetrics = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


async def test_each_jobs_last_run_is_scraped_from_the_run_records(client, engine):
    """Runs from the command line or any instance's scheduler alike: the last
    run that was not a dry run, per job."""
    job = "probe-" + "".join(random.choices(string.ascii_lowercase, k=10))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO job_runs (job, ran_by, runner, dry_run, started_at, finished_at, "
                "due, processed, remaining, error) VALUES "
                "(:job, 'cli', 'tests', false, now() - interval '1 hour', "
                " now() - interval '1 hour' + interval '4 seconds', 7, 7, 0, NULL), "
                "(:job, 'scheduler', 'tests', false, now() - interval '1 minute', "
                " now() - interval '1 minute' + interval '2 seconds', 5, 3, 2, 'boom'), "
                "(:job, 'cli', 'tests', true, now(), now(), 5, 0, 5, NULL)"
            ),
            {"job": job},
        )
    samples = await scrape(client)
    assert value(samples, "loyalty_ledger_totals_up") == 1
    assert value(samples, "loyalty_job_last_run_processed", job=job) == 3  # not the dry run
    assert value(samples, "loyalty_job_last_run_failed", job=job) == 1
    assert abs(value(samples, "loyalty_job_last_run_duration_seconds", job=job) - 2) < 0.01
    started = value(samples, "loyalty_job_last_run_started_timestamp_seconds", job=job)
    assert abs(started - (time.time() - 60)) < 30


async def test_metrics_can_be_turned_off(api_settings):
    settings = dataclasses.replace(api_settings, metrics_enabled=False)
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/metrics")).status_code == 404


# -- request ids ----------------------------------------------------------------------


async def test_a_request_id_sent_is_echoed_and_named_in_the_problem(client, token):
    sent = "trace-42.a:b_C"
    missing = await client.get(
        "/v1/staff/entries/999999999999", headers={**token(), "X-Request-Id": sent}
    )
    assert missing.status_code == 404
    assert missing.headers["x-request-id"] == sent
    assert missing.json()["request_id"] == sent


async def test_a_request_id_is_generated_when_none_or_an_unsafe_one_is_sent(client, token):
    seen = set()
    for sent in (None, "has space", "x" * 129, "semi;colon", "", "é".encode()):
        headers = token() if sent is None else {**token(), "X-Request-Id": sent}
        missing = await client.get("/v1/staff/entries/999999999999", headers=headers)
        generated = missing.headers["x-request-id"]
        assert GENERATED_ID.fullmatch(generated), (sent, generated)
        assert missing.json()["request_id"] == generated
        seen.add(generated)
    assert len(seen) == 6  # a fresh one each time
    ok = await client.get("/health/live", headers={"X-Request-Id": "probe-1"})
    assert ok.headers["x-request-id"] == "probe-1"  # on every answer, not only problems


# -- logs ---------------------------------------------------------------------------------


@pytest.fixture
def log_lines():
    """The lines the app's loggers write while the test runs, as the JSON
    formatter writes them: `log_lines()` parses each one."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("loyalty")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    def lines() -> tuple[str, list[dict]]:
        text = stream.getvalue()
        return text, [json.loads(line) for line in text.splitlines()]

    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_log_lines_are_json_with_the_request_and_no_secrets(
    client, shop: Shop, token, new_member, log_lines
):
    @get("/test-only/log", include_in_schema=False)
    async def logs_inside() -> dict:
        logging.getLogger("loyalty.test").warning("written while handling the request")
        return {}

    client.app.register(logs_inside)
    body = earn_body(shop, f"OBS-{uuid.uuid4().hex[:8]}", 1000)
    signed = await client.post(
        "/v1/partner/earn",
        json=body,
        headers={"Idempotency-Key": "obs-log", "X-Request-Id": "log-partner"},
        auth=shop.auth(),
    )
    assert signed.status_code == 201, signed.text
    signature = signed.request.headers["x-loyalty-signature"]
    member = await new_member()
    me = token(member, roles=("member",))
    refused = await client.get(
        "/v1/me/history?kind=bogus", headers={**me, "X-Request-Id": "log-member"}
    )
    assert refused.status_code == 422
    inside = await client.get("/test-only/log", headers={"X-Request-Id": "log-inside"})
    assert inside.status_code == 200
    text, lines = log_lines()

    def access(request_id: str) -> dict:
        (line,) = [
            ln
            for ln in lines
            if ln["logger"] == "loyalty.access" and ln.get("request_id") == request_id
        ]
        return line

    earn = access("log-partner")
    assert (earn["method"], earn["route"], earn["status"]) == ("POST", "/v1/partner/earn", 201)
    assert earn["partner_id"] == shop.partner_id and earn["level"] == "info"
    assert isinstance(earn["duration_ms"], float) and earn["timestamp"].endswith("+00:00")
    assert earn["message"] == "POST /v1/partner/earn 201"
    history = access("log-member")
    assert (history["status"], history["member_id"]) == (422, member)
    (written,) = [ln for ln in lines if ln["logger"] == "loyalty.test"]
    assert written["request_id"] == "log-inside" and written["route"] == "/test-only/log"
    assert written["level"] == "warning"
    for secret in (me["Authorization"].split()[1], signature, shop.secret, shop.key_id):
        assert secret not in text


def test_a_token_in_a_message_is_masked_and_text_lines_carry_the_request():
    scope = {"path_template": "/v1/me/balance", "state": {"member_id": "m-1"}}
    token = enter_request(RequestContext("rid-1", "GET", scope))
    try:
        record = logging.makeLogRecord(
            {
                "name": "loyalty.test",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "refused %s and Bearer abc.def",
                "args": ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",),
            }
        )
        line = json.loads(JsonFormatter().format(record))
        text = TextFormatter().format(record)
    finally:
        leave_request(token)
    assert line["message"] == "refused [masked] and Bearer [masked]"
    assert (line["request_id"], line["route"], line["member_id"]) == (
        "rid-1",
        "/v1/me/balance",
        "m-1",
    )
    assert "eyJ" not in text and "request_id=rid-1" in text and "member_id=m-1" in text


# -- several workers ----------------------------------------------------------------------


def counted_by(metrics_dir: Path, pid: int, route: str) -> float:
    """The requests to `route` one worker counted, from its own metric file."""
    path = metrics_dir / f"counter_{pid}.db"
    if not path.exists():
        return 0
    return sum(
        sample.value
        for metric in MultiProcessCollector.merge([str(path)])
        for sample in metric.samples
        if sample.name == REQUESTS and sample.labels.get("route") == route
    )


@pytest.fixture(scope="module")
async def two_workers(database_url, redis_url):
    """`loyalty serve --workers 2`, its metric files in a directory of the
    test's own (holding a stale file of an earlier run, which must go)."""
    tmp = Path(tempfile.mkdtemp(prefix="loyalty-metrics-test-"))
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left over by an earlier run")
    port, log = free_port(), tmp / "serve.log"
    process = loyalty(
        "serve",
        "--workers",
        "2",
        env={
            "LOYALTY_DATABASE_URL": database_url,
            "LOYALTY_REDIS_URL": redis_url,
            "LOYALTY_JWT_SECRET": SECRET,
            "LOYALTY_MEMBER_JWT_SECRET": MEMBER_SECRET,
            "LOYALTY_SECRET_KEY": SECRET_KEY,
            "LOYALTY_PORT": str(port),
            "LOYALTY_DATA_DIR": str(tmp / "data"),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
        log=log,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, process, log)
        for _ in range(100):
            workers = [
                child
                for child in psutil.Process(process.pid).children(recursive=True)
                if "spawn_main" in " ".join(child.cmdline())
            ]
            if len(workers) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(workers) == 2, output(log)
        yield base, metrics_dir, [worker.pid for worker in workers], log
    finally:
        stop(process)
        shutil.rmtree(tmp, ignore_errors=True)


async def test_the_metrics_count_the_requests_of_every_worker(two_workers):
    base, metrics_dir, pids, log = two_workers
    assert not (metrics_dir / "counter_1.db").exists()  # emptied before the workers started
    route, sent = "/health/live", 0
    # Each request on a connection of its own: the kernel hands connections to
    # either worker; go on until both have answered some.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:
        for _ in range(20):
            for _ in range(20):
                assert (await client.get(route)).status_code == 200
                sent += 1
            if all(counted_by(metrics_dir, pid, route) > 0 for pid in pids):
                break
        per_worker = {pid: counted_by(metrics_dir, pid, route) for pid in pids}
        assert all(count > 0 for count in per_worker.values()), per_worker
        scraped = parse((await client.get("/metrics")).text)
    assert value(scraped, REQUESTS, method="GET", route=route, status="200") == sent
    assert sum(per_worker.values()) == sent
    assert value(scraped, "loyalty_db_pool_size", pool="primary") == 2 * 10  # both pools
    # The workers' logs: JSON lines, one access line per request, none from uvicorn's
    # plain access log.
    text = output(log)
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    accessed = [ln for ln in lines if ln["logger"] == "loyalty.access" and ln.get("route") == route]
    assert len(accessed) == sent
    assert all(GENERATED_ID.fullmatch(ln["request_id"]) for ln in accessed)
    assert f'"GET {route} HTTP/1.1" 200' not in text


# -- hostile paths in the log, HEAD, killed workers ---------------------------------------

FORGED = "2026-11-30T22:00:00.000+00:00 CRITICAL loyalty.api database wiped"


@pytest.fixture
def text_log():
    """What the app's loggers write while the test runs, as the text formatter
    writes it (LOYALTY_LOG_FORMAT=text), and as the JSON one does."""
    streams = {"text": io.StringIO(), "json": io.StringIO()}
    handlers = [logging.StreamHandler(streams["text"]), logging.StreamHandler(streams["json"])]
    handlers[0].setFormatter(TextFormatter())
    handlers[1].setFormatter(JsonFormatter())
    logger = logging.getLogger("loyalty")
    level = logger.level
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield lambda: (streams["text"].getvalue(), streams["json"].getvalue())
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(level)


async def test_a_hostile_path_cannot_forge_a_log_line_or_name_a_member(
    client, token, new_member, text_log
):
    forged = await client.get(
        "/v1/staff/members/x%0A2026-11-30T22:00:00.000+00:00%20CRITICAL%20loyalty.api"
        "%20database%20wiped/balances",
        headers={"X-Request-Id": "forge-1"},
    )
    assert forged.status_code == 401
    ansi = await client.get(
        "/v1/staff/members/x%1B%5B2J/balances", headers={"X-Request-Id": "forge-2"}
    )
    assert ansi.status_code == 401
    member = await new_member()
    staff = await client.get(
        f"/v1/staff/members/{member}/balances", headers={**token(), "X-Request-Id": "forge-3"}
    )
    assert staff.status_code == 200, staff.text
    text, json_text = text_log()
    lines = text.splitlines()
    assert not any(line.startswith(FORGED) for line in lines), text
    assert "\x1b" not in text and "\x1b" not in json_text
    for request_id in ("forge-1", "forge-2"):
        (line,) = [ln for ln in lines if f"request_id={request_id}" in ln]
        assert "member_id=" not in line  # the caller proved nothing: no id it named
        assert "route=/v1/staff/members/{member_id}/balances" in line
    (line,) = [ln for ln in lines if "request_id=forge-3" in ln]
    assert f"member_id={member}" in line  # staff, authenticated: the member read
    records = [json.loads(ln) for ln in json_text.splitlines()]
    assert all(
        "member_id" not in r for r in records if r.get("request_id") in ("forge-1", "forge-2")
    )


def test_text_and_json_lines_escape_control_characters():
    scope = {"path_template": "/v1/x", "path_params": {"member_id": "a\nb"}, "state": {}}
    token = enter_request(RequestContext("rid\r2", "GET", scope))
    try:
        record = logging.makeLogRecord(
            {
                "name": "loyalty.api",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "database unavailable on GET %s",
                "args": (f"/v1/x\n{FORGED}\x1b[2J\x9b1m\x7f\u2028\t",),
            }
        )
        text = TextFormatter().format(record)
        line = JsonFormatter().format(record)
    finally:
        leave_request(token)
    assert len(text.splitlines()) == 1 and len(line.splitlines()) == 1
    assert "\\n" + FORGED + "\\x1b[2J\\x9b1m\\x7f\\u2028\\t" in text
    assert "request_id=rid\\r2" in text and "member_id" not in text
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", text + line)
    assert json.loads(line)["message"].endswith(f"\n{FORGED}\x1b[2J\x9b1m\x7f\u2028\t")


async def test_head_answers_the_probes_and_the_scrape(client):
    for path in ("/health/live", "/health/ready", "/metrics"):
        response = await client.head(path)
        assert response.status_code == 200, (path, response.status_code)
        assert response.content == b""
        assert response.headers["x-request-id"]
    assert (await client.head("/metrics")).headers["content-type"].startswith("text/plain")


def spawned_workers(supervisor: psutil.Process) -> set[int]:
    return {
        child.pid
        for child in supervisor.children(recursive=True)
        if child.is_running()
        and child.status() != psutil.STATUS_ZOMBIE
        and "spawn_main" in " ".join(child.cmdline())
    }


async def test_a_killed_workers_gauges_leave_the_sums(two_workers):
    """`kill -9` of one worker: it cannot say it stopped, so its gauge files
    stay behind; the next scrape finds it dead and leaves it out."""
    base, metrics_dir, pids, log = two_workers
    victim = psutil.Process(pids[0])
    supervisor = victim.parent()
    limits = httpx.Limits(max_keepalive_connections=0)

    async def until_gauges_of(client, workers) -> None:
        """Requests until every one of `workers` has written its pool gauges."""
        deadline = time.monotonic() + 60  # a new worker takes a while to start
        while time.monotonic() < deadline:
            if all((metrics_dir / f"gauge_livesum_{pid}.db").exists() for pid in workers):
                return
            assert (await client.get("/health/live")).status_code == 200
            await asyncio.sleep(0.02)
        raise AssertionError(f"no gauges from {workers}: {sorted(os.listdir(metrics_dir))}")

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:
        await until_gauges_of(client, pids)
        victim.kill()  # SIGKILL: no shutdown, no mark_process_dead
        victim.wait(10)
        for _ in range(300):  # uvicorn's supervisor starts a replacement
            now = spawned_workers(supervisor)
            if len(now) == 2 and pids[0] not in now:
                break
            await asyncio.sleep(0.1)
        assert len(now) == 2 and pids[0] not in now, (now, output(log))
        await until_gauges_of(client, now)
        assert (metrics_dir / f"gauge_livesum_{pids[0]}.db").exists()  # left behind
        scraped = parse((await client.get("/metrics")).text)
    assert value(scraped, "loyalty_db_pool_size", pool="primary") == 2 * 10
    assert not (metrics_dir / f"gauge_livesum_{pids[0]}.db").exists()
    assert (metrics_dir / f"counter_{pids[0]}.db").exists()  # what it counted stays counted
