"""Partner transaction files: one row per file a partner's transactions came
in (identified by partner and the file's SHA-256), with its checkpoint (the
data rows, file line and byte offset committed so far) and running counts,
updated in the same transaction as each chunk's postings; and the rows that
were refused, with the reason, so a resumed import reports every reject once.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE partner_imports (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_id   text NOT NULL REFERENCES partners (id),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    file_name    text NOT NULL,
    format       text NOT NULL CHECK (format IN ('csv', 'jsonl')),
    size_bytes   bigint NOT NULL CHECK (size_bytes >= 0),
    started_by   text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    runs         int NOT NULL DEFAULT 1 CHECK (runs > 0),
    -- the checkpoint: everything before it is committed, nothing after it
    rows_done    bigint NOT NULL DEFAULT 0 CHECK (rows_done >= 0),
    line_done    bigint NOT NULL DEFAULT 0 CHECK (line_done >= 0),
    offset_done  bigint NOT NULL DEFAULT 0 CHECK (offset_done BETWEEN 0 AND size_bytes),
    purchases    bigint NOT NULL DEFAULT 0 CHECK (purchases >= 0),
    posted       bigint NOT NULL DEFAULT 0 CHECK (posted >= 0),
    duplicates   bigint NOT NULL DEFAULT 0 CHECK (duplicates >= 0),
    rejected     bigint NOT NULL DEFAULT 0 CHECK (rejected >= 0),
    points       bigint NOT NULL DEFAULT 0,
    CHECK (posted + duplicates + rejected = purchases),
    UNIQUE (partner_id, sha256)
);

CREATE TABLE partner_import_rejects (
    import_id  bigint NOT NULL REFERENCES partner_imports (id) ON DELETE CASCADE,
    line       bigint NOT NULL CHECK (line > 0),
    reference  text,
    code       text NOT NULL,
    detail     text NOT NULL,
    PRIMARY KEY (import_id, line)
);
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS partner_import_rejects;
DROP TABLE IF EXISTS partner_imports;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
