"""A return unwinds the tier it caused: every tier change records the
validity the member's status had before it (`previous_valid_until`), so a
return that takes back the QP of an upgrade (or a renewal) restores the
status and validity from before it.

Rows written before this revision have no previous validity (NULL).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE tier_changes ADD COLUMN previous_valid_until timestamptz;
"""

DOWNGRADE = r"""
ALTER TABLE tier_changes DROP COLUMN IF EXISTS previous_valid_until;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
