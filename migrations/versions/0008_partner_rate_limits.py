"""A partner's request rate is a term of its contract: a supermarket chain's
tills send thousands of calls a second at peak, a corner shop a few.
NULL: the service's default (`LOYALTY_PARTNER_RATE_LIMIT`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE partner_contracts ADD COLUMN requests_per_second int
    CHECK (requests_per_second BETWEEN 1 AND 1000000);
"""

DOWNGRADE = r"""
ALTER TABLE partner_contracts DROP COLUMN IF EXISTS requests_per_second;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
