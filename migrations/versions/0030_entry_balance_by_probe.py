"""The statement check that every entry a statement posted to balances per
asset reads each entry's postings along the postings' key, one probe per
entry, whatever the statistics say.

As a join of the touched entries with `postings`, a statement of 1,000 entries
(a batch, a file chunk) was planned as a hash of every posting of the month
once the statistics lagged behind a growing partition: 0.4 s per statement at
1.5 million postings (PostgreSQL 15, 2-core machine), the larger part of a
file import's time past a few hundred thousand rows, and growing with the
month. A LATERAL subquery that aggregates cannot be turned into that join.
Same check, same errors.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

_HEAD = r"""
CREATE OR REPLACE FUNCTION check_inserted_entries_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
"""

_RAISE = r"""
    IF bad.entry_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF bad.postings < 2 THEN
        RAISE EXCEPTION 'journal entry % has fewer than two postings', bad.entry_id
            USING ERRCODE = '23514';
    END IF;
    RAISE EXCEPTION 'journal entry % does not balance: %', bad.entry_id, bad.unbalanced
        USING ERRCODE = '23514';
END $$;
"""

UPGRADE = (
    _HEAD
    + r"""
    SELECT t.entry_id, s.postings, s.unbalanced INTO bad
    FROM (SELECT DISTINCT entry_id FROM inserted) AS t,
    LATERAL (
        SELECT sum(a.n) AS postings,
               string_agg(CASE WHEN a.total <> 0 THEN a.asset || '=' || a.total END, ', ')
                   AS unbalanced
        FROM (SELECT p.asset, sum(p.amount) AS total, count(*) AS n
              FROM postings p WHERE p.entry_id = t.entry_id GROUP BY p.asset) AS a
    ) AS s
    WHERE s.postings < 2 OR s.unbalanced IS NOT NULL LIMIT 1;
"""
    + _RAISE
)

# Revision 0010's body.
DOWNGRADE = (
    _HEAD
    + r"""
    WITH touched AS (SELECT DISTINCT entry_id FROM inserted),
    per_asset AS (
        SELECT p.entry_id, p.asset, sum(p.amount) AS total, count(*) AS n
        FROM postings p JOIN touched USING (entry_id) GROUP BY p.entry_id, p.asset),
    per_entry AS (
        SELECT entry_id, sum(n) AS postings,
               string_agg(CASE WHEN total <> 0 THEN asset || '=' || total END, ', ')
                   AS unbalanced
        FROM per_asset GROUP BY entry_id)
    SELECT entry_id, postings, unbalanced INTO bad FROM per_entry
    WHERE postings < 2 OR unbalanced IS NOT NULL LIMIT 1;
"""
    + _RAISE
)


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
