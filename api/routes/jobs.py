"""Staff API (JWT, roles `admin` and `finance`): the scheduled jobs, each with
its interval and its last run as recorded in `job_runs` (operations/runs.py):
when it started and finished, what was due, done and left, the points moved,
the error, the as-of, whether it was a dry run and who ran it."""

import msgspec
from litestar import Request, Router, get

from api.auth import STAFF_ROLES, require_staff
from api.jobs_service import JOB_NAMES, intervals
from operations.runs import JobRun, RunLog


class JobStatus(msgspec.Struct):
    job: str
    interval_seconds: int  # between scheduled runs (LOYALTY_JOB_INTERVALS)
    last_run: JobRun | None  # None: never run; finished_at None: running, or died


class JobsView(msgspec.Struct):
    jobs: list[JobStatus]


@get("/jobs", summary="The scheduled jobs and each one's last run")
async def list_jobs(request: Request) -> JobsView:
    every = intervals(request.app.state.settings)
    latest = await RunLog(request.app.state.engine).latest(list(JOB_NAMES))
    return JobsView([JobStatus(name, every[name], latest.get(name)) for name in JOB_NAMES])


jobs_router = Router(
    path="/v1/staff",
    route_handlers=[list_jobs],
    guards=[require_staff(*STAFF_ROLES)],
    tags=["staff"],
    security=[{"bearer": []}],
)
