"""Period close: finance closes a month; afterwards no journal entry may be
dated (effective_at) or booked (created_at) before the end of a closed month.

- `period_closes`: one row per closed month (its [start, end) in UTC, when and
  by whom it was closed). The boundary, "closed through", is the latest
  `period_end`. Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE.
- `period_close_figures`: the trial balance as of the month's end and the
  month's roll-forward (finance/trial_balance.py, finance/rollforward.py, JSON)
  with a summary, written once per close, right after it (the close's lock is
  held for milliseconds, never while the figures are read: once the close
  committed, nothing can be booked before its end any more, so the figures of
  the month no longer change). Append-only too.
- `journal_entries`: a statement-level trigger over the inserted rows (one
  query per INSERT statement, not per row; migration 0014's pattern) refuses
  any entry with `effective_at` or `created_at` before the boundary, SQLSTATE
  LF422 with the boundary in DETAIL (ledger/database.py turns it into
  `PeriodClosed`). `postings`: the same for postings added to an entry booked
  before the boundary (entry ids encode the booking month, migration 0013, so
  this needs no join).

The ledger writes at READ COMMITTED, so each statement's trigger sees the
latest committed close; the close takes SHARE on `journal_entries`, which
waits for every in-flight writer (finance/close.py).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE period_closes (
    period text PRIMARY KEY CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL UNIQUE,
    closed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    closed_by text NOT NULL CHECK (length(closed_by) BETWEEN 1 AND 200),
    CHECK (period_start < period_end),
    CHECK (closed_at >= period_end)
);

CREATE TABLE period_close_figures (
    period text PRIMARY KEY REFERENCES period_closes (period),
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    trial_balance jsonb NOT NULL,
    roll_forward jsonb NOT NULL,
    balanced boolean NOT NULL,
    ties boolean NOT NULL,
    closing_liability bigint NOT NULL
);

CREATE TRIGGER period_closes_append_only BEFORE UPDATE OR DELETE ON period_closes
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER period_closes_no_truncate BEFORE TRUNCATE ON period_closes
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER period_close_figures_append_only BEFORE UPDATE OR DELETE ON period_close_figures
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER period_close_figures_no_truncate BEFORE TRUNCATE ON period_close_figures
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The end of the latest closed month (NULL: nothing closed).
CREATE FUNCTION ledger_closed_through() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT max(period_end) FROM period_closes
$$;

CREATE FUNCTION ledger_period_closed(boundary timestamptz, what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the books are closed through %: %', boundary, what
        USING ERRCODE = 'LF422',
              DETAIL = to_char(boundary AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
END $$;

-- No entry dated or booked before the boundary (one query per statement).
CREATE FUNCTION refuse_entries_before_close() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    boundary timestamptz;
    first_effective timestamptz;
    first_booked timestamptz;
BEGIN
    SELECT max(period_end) INTO boundary FROM period_closes;
    IF boundary IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT min(effective_at), min(created_at) INTO first_effective, first_booked FROM inserted;
    IF first_effective < boundary OR first_booked < boundary THEN
        PERFORM ledger_period_closed(boundary, format(
            'an entry effective at %s, booked at %s, may not go into a closed period',
            first_effective, first_booked));
    END IF;
    RETURN NULL;
END $$;

-- No posting added to an entry booked before the boundary: an entry's id
-- carries its booking month (0013) and the boundary is a month's start.
CREATE FUNCTION refuse_postings_before_close() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    boundary timestamptz;
    first_entry bigint;
BEGIN
    SELECT max(period_end) INTO boundary FROM period_closes;
    IF boundary IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT min(entry_id) INTO first_entry FROM inserted;
    IF first_entry < ledger_month_start(ledger_month_index(boundary)) THEN
        PERFORM ledger_period_closed(boundary, format(
            'entry %s was booked in a closed period: it takes no more postings', first_entry));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER journal_entries_closed_periods AFTER INSERT ON journal_entries
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_entries_before_close();
CREATE TRIGGER postings_closed_periods AFTER INSERT ON postings
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_postings_before_close();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS postings_closed_periods ON postings;
DROP TRIGGER IF EXISTS journal_entries_closed_periods ON journal_entries;
DROP FUNCTION IF EXISTS refuse_postings_before_close();
DROP FUNCTION IF EXISTS refuse_entries_before_close();
DROP FUNCTION IF EXISTS ledger_period_closed(timestamptz, text);
DROP FUNCTION IF EXISTS ledger_closed_through();
DROP TABLE IF EXISTS period_close_figures;
DROP TABLE IF EXISTS period_closes;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
