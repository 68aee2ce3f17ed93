"""Every entry balances per asset: checked once per INSERT statement over the
entries it touched (a transition table), instead of twice per posting row at
commit. The journal inserts all postings of a call in one statement, so an
entry is whole when its statement ends; a statement that leaves any entry it
touched with fewer than two postings or a non-zero sum per asset fails, and
its transaction with it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = r"""
DROP TRIGGER postings_balance_per_asset ON postings;

CREATE FUNCTION check_inserted_entries_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
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

CREATE TRIGGER postings_balance_per_asset AFTER INSERT ON postings
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_inserted_entries_balance();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS postings_balance_per_asset ON postings;
DROP FUNCTION IF EXISTS check_inserted_entries_balance();
CREATE CONSTRAINT TRIGGER postings_balance_per_asset
    AFTER INSERT ON postings DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_entry_balances();
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
