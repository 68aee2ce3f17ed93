"""The statement triggers of the partitioned ledger tables (journal_entries,
postings, lots, lot_movements) on each of their partitions too.

PostgreSQL fires a statement-level trigger only on the table a statement
names: an INSERT written against a partition (`INSERT INTO postings_2026_12
...`, by hand or by a script) skipped every statement check of its parent
(an entry's postings balance per asset, the entries and lots they name
exist, the closed periods, the registered partners) and the QP movements'
record; `loyalty verify` found the damage after the commit. Each partition
now carries a copy of its parent's statement triggers, made with the
partition (`ledger_ensure_partitions`); a statement against the parent fires
the parent's alone, one against a partition that partition's alone: the
same checks either way, once.

A later migration that adds a statement trigger to one of these parents
calls `ledger_partition_statement_triggers` for its partitions (the
partitions test checks that every partition carries them all).

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-02
"""

from alembic import op

from migrations import sql_statements

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None

_PARENTS = "ARRAY['journal_entries', 'postings', 'lots', 'lot_movements']"

# Revision 0013's body, but for the line marked.
_ENSURE = r"""
CREATE OR REPLACE FUNCTION ledger_ensure_partitions(first_month int, last_month int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    m int;
    parent text;
    part text;
    made int := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('ledger_ensure_partitions', 0));
    FOR m IN first_month .. last_month LOOP
        FOREACH parent IN ARRAY ARRAY['journal_entries', 'postings', 'lots', 'lot_movements']
        LOOP
            part := parent || '_' || ledger_month_label(m);
            CONTINUE WHEN EXISTS (
                SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = parent::regclass AND c.relname = part);
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING CONSTRAINTS)', part, parent);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                parent, part, ledger_month_start(m), ledger_month_start(m + 1));
            {statement_triggers}
            made := made + 1;
        END LOOP;
    END LOOP;
    RETURN made;
END $$;
"""

UPGRADE = (
    r"""
-- The parent's statement triggers (AFTER ... FOR EACH STATEMENT, the
-- transition table included) on one of its partitions, each under its
-- parent's name; those the partition has already are left as they are.
CREATE FUNCTION ledger_partition_statement_triggers(parent regclass, part regclass)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t record;
    parent_name text;
    part_name text;
    copied text;
BEGIN
    SELECT format('%I.%I', n.nspname, c.relname) INTO parent_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = parent;
    SELECT format('%I.%I', n.nspname, c.relname) INTO part_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = part;
    FOR t IN
        SELECT tg.tgname, pg_get_triggerdef(tg.oid) AS definition FROM pg_trigger tg
        WHERE tg.tgrelid = parent AND NOT tg.tgisinternal AND tg.tgtype & 1 = 0
    LOOP
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pg_trigger x WHERE x.tgrelid = part AND x.tgname = t.tgname);
        copied := replace(t.definition, ' ON ' || parent_name || ' ', ' ON ' || part_name || ' ');
        IF copied = t.definition THEN
            RAISE EXCEPTION 'trigger % of % does not name its table as %',
                t.tgname, parent, parent_name;
        END IF;
        EXECUTE copied;
    END LOOP;
END $$;
"""
    + _ENSURE.format(
        statement_triggers="PERFORM ledger_partition_statement_triggers(parent::regclass, "
        "part::regclass);"
    )
    + rf"""
SELECT ledger_partition_statement_triggers(i.inhparent, i.inhrelid)
FROM pg_inherits i WHERE i.inhparent::regclass::text = ANY({_PARENTS});
"""
)

DOWNGRADE = (
    rf"""
DO $$
DECLARE
    p record;
    t record;
BEGIN
    FOR p IN SELECT i.inhparent, i.inhrelid FROM pg_inherits i
             WHERE i.inhparent::regclass::text = ANY({_PARENTS})
    LOOP
        FOR t IN SELECT tg.tgname FROM pg_trigger tg
                 WHERE tg.tgrelid = p.inhparent AND NOT tg.tgisinternal AND tg.tgtype & 1 = 0
        LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', t.tgname, p.inhrelid::regclass);
        END LOOP;
    END LOOP;
END $$;
"""
    + _ENSURE.format(statement_triggers="")
    + r"""
DROP FUNCTION ledger_partition_statement_triggers(regclass, regclass);
"""
)


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
