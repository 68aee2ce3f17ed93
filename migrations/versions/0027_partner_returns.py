"""Partner returns as records of their own: one row per return, under the
partner's return reference, whether it took points back or not.

A return's reference is the partner's like any other, unique for ever among
its purchases and returns. Before, a return that took back no points (a
share of a purchase worth less than a point, or of a purchase that earned
nothing) posted no entry, so nothing held its reference: the same return
sent again under another idempotency key was applied twice, and its
reference could name a later purchase. Now the return's row claims the
reference first (a second return under it waits for the first, then is a
duplicate); the reversal it posts, if any, names the row's entry.

Returns before this revision have no row: those that took points back hold
their reference through their reversal entry (`partner_references`), which
is still checked.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE partner_returns (
    partner_id         text NOT NULL,
    return_reference   text NOT NULL,
    purchase_reference text NOT NULL,
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    entry_id           bigint,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, return_reference),
    FOREIGN KEY (partner_id, purchase_reference)
        REFERENCES partner_purchases (partner_id, partner_reference)
);
CREATE TRIGGER partner_returns_append_only BEFORE UPDATE OR DELETE ON partner_returns
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER partner_returns_entry_exists AFTER INSERT ON partner_returns
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_inserted_entries_exist('entry_id');
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS partner_returns;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
