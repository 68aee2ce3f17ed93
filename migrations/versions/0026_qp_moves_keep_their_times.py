"""Status points keep their times across a close: an entry that moves only QP
(a member merge carries the source's QP to the target at the times they were
earned, so that each tier period counts them where they fell) may be
effective in a closed period. It is booked now, like every entry, so no
closed period's figures change (periods count entries by booking time, and
QP carry no money); an entry moving points (PTS) is still refused there.

Before, a merge of a member with QP earned before the last close was refused
as a whole (`period-closed`): merging stopped working after the first close.

The postings check follows: points (any asset but QP) added to an entry
dated in a closed month are refused also when a later statement adds them
(raw SQL; the journal posts an entry with all its postings in one statement,
which the entries' check sees whole). One index probe per entry of the
statement's non-QP postings, once any month is closed.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION refuse_entries_before_close() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF first_booked < boundary THEN
        PERFORM ledger_period_closed(boundary, format(
            'an entry booked at %s may not go into a closed period', first_booked));
    END IF;
    IF first_effective < boundary THEN
        -- Dated back: only an entry whose postings (inserted by the same
        -- statement, the journal's one posting statement) are all QP.
        SELECT min(i.effective_at) INTO first_effective FROM inserted i
        WHERE i.effective_at < boundary AND (
            NOT EXISTS (SELECT 1 FROM postings p WHERE p.entry_id = i.id)
            OR EXISTS (SELECT 1 FROM postings p WHERE p.entry_id = i.id AND p.asset <> 'QP'));
        IF first_effective IS NOT NULL THEN
            PERFORM ledger_period_closed(boundary, format(
                'an entry effective at %s, booked at %s, may not go into a closed period',
                first_effective, first_booked));
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION refuse_postings_before_close() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    boundary timestamptz;
    first_entry bigint;
    dated_back bigint;
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
    -- A probe per entry (LATERAL ... LIMIT 1), whatever the planner guesses
    -- of the transition table.
    SELECT i.entry_id INTO dated_back
    FROM (SELECT DISTINCT entry_id FROM inserted WHERE asset <> 'QP') AS i
    CROSS JOIN LATERAL (SELECT 1 FROM journal_entries e WHERE e.id = i.entry_id
                        AND e.effective_at < boundary LIMIT 1) AS hit
    LIMIT 1;
    IF dated_back IS NOT NULL THEN
        PERFORM ledger_period_closed(boundary, format(
            'entry %s is dated in a closed period: only status points (QP) go there',
            dated_back));
    END IF;
    RETURN NULL;
END $$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION refuse_postings_before_close() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION refuse_entries_before_close() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
