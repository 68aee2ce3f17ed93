"""Operating the ledger: the scheduled jobs run to completion with progress,
dry runs and runs as of another time (runner.py), each run recorded in
`job_runs` (runs.py), the jobs themselves as the runner sees them (jobs.py),
and their schedule: an example crontab and the in-service scheduler
(schedule.py).

May import ledger and partners; never api (the API's own job, purging
idempotency keys, is handed in by api/jobs_service.py like any other job).
"""
