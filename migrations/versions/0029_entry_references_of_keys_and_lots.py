"""The entries an idempotency key and a lot name are checked per statement,
as postings, claims, pending earnings and purchase records have been since
revision 0014, instead of by foreign keys into the partitioned journal.

A foreign key's check runs per row, a lookup (with a key-share lock) through
the partitioned journal: 0.08-0.12 ms of the server's time each (PostgreSQL 15,
2-core machine), on a single earning's stored result and twice on each lot it
makes, against 0.02-0.06 ms for the statement checks. They refuse the same
rows (SQLSTATE 23503) with one planned query per statement (migration 0028),
and the entries a lot names never change.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

# (table, column, its foreign key's name)
CHECKED = (
    ("idempotency_keys", "entry_id", "idempotency_keys_entry_id_fkey"),
    ("lots", "earn_entry_id", "lots_earn_entry_id_fkey"),
    ("lots", "source_entry_id", "lots_source_entry_id_fkey"),
)

UPGRADE = (
    "".join(
        f"""
ALTER TABLE {table} DROP CONSTRAINT {key};
CREATE TRIGGER {table}_{column}_exists AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_inserted_entries_exist('{column}');
"""
        for table, column, key in CHECKED
    )
    # A key's entry is set when its result is stored (an update): checked
    # then; the lots' entries never change.
    + """
CREATE TRIGGER idempotency_keys_stored_entry_exists AFTER UPDATE ON idempotency_keys
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_inserted_entries_exist('entry_id');
CREATE TRIGGER lots_entries_fixed BEFORE UPDATE OF earn_entry_id, source_entry_id ON lots
    FOR EACH ROW WHEN (OLD.earn_entry_id IS DISTINCT FROM NEW.earn_entry_id
                       OR OLD.source_entry_id IS DISTINCT FROM NEW.source_entry_id)
    EXECUTE FUNCTION refuse_entry_change();
"""
)

DOWNGRADE = """
DROP TRIGGER IF EXISTS lots_entries_fixed ON lots;
DROP TRIGGER IF EXISTS idempotency_keys_stored_entry_exists ON idempotency_keys;
""" + "".join(
    f"""
DROP TRIGGER IF EXISTS {table}_{column}_exists ON {table};
ALTER TABLE {table} ADD CONSTRAINT {key} FOREIGN KEY ({column}) REFERENCES journal_entries (id);
"""
    for table, column, key in CHECKED
)


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
