"""Job runs: one row per run of a scheduled job (operations/runs.py), written
when it starts and completed when it ends: what was due, done and left, the
points moved, the error, the instant it took for now when run as of another
time, whether it was a dry run, and who ran it (the command line or the
in-service scheduler, and which user or process). `GET /v1/staff/jobs` shows
each job's last run; the scheduler reads when a job last started.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE job_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job          text NOT NULL CHECK (job ~ '^[a-z][a-z-]{0,63}$'),
    ran_by       text NOT NULL CHECK (ran_by IN ('cli', 'scheduler')),
    runner       text NOT NULL,
    as_of        timestamptz,
    dry_run      boolean NOT NULL DEFAULT false,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    -- items due when the run started (null until counted), done, still due at the end
    due          bigint CHECK (due >= 0),
    processed    bigint NOT NULL DEFAULT 0 CHECK (processed >= 0),
    points       bigint,
    remaining    bigint CHECK (remaining >= 0),
    error        text,
    CHECK (finished_at IS NULL OR finished_at >= started_at),
    CHECK (NOT dry_run OR processed = 0)
);
-- A job's last run, and when it last started (the scheduler's question).
CREATE INDEX job_runs_latest ON job_runs (job, started_at DESC);
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS job_runs;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
