"""GET /v1/staff/jobs: every scheduled job with its interval and last run."""

from api.jobs_service import JOB_NAMES, service_jobs
from api.settings import Settings
from ledger.service import LedgerService
from operations.runner import JobRunner


async def test_staff_see_each_jobs_last_run(client, token, engine):
    # A dry run: recorded like any run, and it changes nothing in the shared
    # test database.
    runner = JobRunner(
        engine, service_jobs(Settings(), LedgerService(engine)), "cli", "cli:jobs-api-test"
    )
    report = await runner.run("expire-holds", dry_run=True)

    response = await client.get("/v1/staff/jobs", headers=token(roles=("finance",)))
    assert response.status_code == 200, response.text
    jobs = {job["job"]: job for job in response.json()["jobs"]}
    assert list(jobs) == list(JOB_NAMES)
    assert jobs["expire-holds"]["interval_seconds"] == 60
    last = jobs["expire-holds"]["last_run"]
    assert last["id"] == report.run_id
    assert (last["ran_by"], last["runner"], last["dry_run"]) == ("cli", "cli:jobs-api-test", True)
    assert (last["due"], last["processed"], last["remaining"]) == (report.due, 0, report.due)
    assert last["finished_at"] is not None and last["error"] is None

    assert (await client.get("/v1/staff/jobs")).status_code == 401
    member = await client.get("/v1/staff/jobs", headers=token("m-1", roles=("member",)))
    assert member.status_code in (401, 403)


async def test_the_jobs_route_declares_bearer_security_like_the_other_staff_routes(client):
    document = (await client.get("/docs/openapi.json")).json()
    operation = document["paths"]["/v1/staff/jobs"]["get"]
    assert operation.get("security") == [{"bearer": []}]
    # As every staff route does (Swagger's "Try it out" then sends the token).
    staff = document["paths"]["/v1/staff/members/{member_id}/balances"]["get"]
    assert staff.get("security") == operation["security"]
