"""Database guards for what was kept by convention, and indexes for every
query on the write path.

Guards: member accounts hold only their asset (available/pending/held PTS,
qp QP); `held` and `pending` never go below zero; at commit, a member's open
lots add up to their available points (or to zero while in debt).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

GUARDS = r"""
ALTER TABLE balances ADD CONSTRAINT balances_member_asset CHECK (
    (member_id IS NULL) = (account NOT LIKE 'member:%')
    AND (member_id IS NULL OR (asset = 'QP') = (split_part(account, ':', 3) = 'qp')));
ALTER TABLE postings ADD CONSTRAINT postings_member_asset CHECK (
    (member_id IS NULL) = (account NOT LIKE 'member:%')
    AND (member_id IS NULL OR (asset = 'QP') = (split_part(account, ':', 3) = 'qp')));

-- A trigger, not a CHECK: a CHECK sees the row an upsert proposes (the bare
-- delta), before ON CONFLICT turns it into an update of the real balance.
CREATE FUNCTION refuse_negative_member_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% would go below zero (%)', NEW.account, NEW.balance
        USING ERRCODE = '23514';
END $$;
CREATE TRIGGER balances_held_pending_not_negative AFTER INSERT OR UPDATE ON balances
    FOR EACH ROW WHEN (NEW.balance < 0 AND NEW.member_id IS NOT NULL
                       AND split_part(NEW.account, ':', 3) IN ('held', 'pending'))
    EXECUTE FUNCTION refuse_negative_member_balance();

-- Checked at commit, with the balance as it is then (several postings of one
-- transaction may touch the row).
CREATE FUNCTION check_lots_match_available() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    available bigint;
    in_lots bigint;
BEGIN
    SELECT balance INTO available FROM balances
        WHERE account = NEW.account AND asset = 'PTS' AND slot = 0;
    SELECT coalesce(sum(remaining), 0) INTO in_lots FROM lots
        WHERE member_id = NEW.member_id AND remaining > 0;
    IF in_lots <> greatest(available, 0) THEN
        RAISE EXCEPTION 'member % has % available points but % in lots',
            NEW.member_id, available, in_lots USING ERRCODE = '23514';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER balances_lots_match_available
    AFTER INSERT OR UPDATE ON balances DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.member_id IS NOT NULL AND split_part(NEW.account, ':', 3) = 'available')
    EXECUTE FUNCTION check_lots_match_available();
"""

INDEXES = r"""
-- A member's balance rows together (balance versions, the balance token).
CREATE INDEX balances_member ON balances (member_id) WHERE member_id IS NOT NULL;
-- The transfer daily limit: today's transfers of the sender, not every posting
-- on their account since the beginning.
CREATE INDEX journal_entries_member_transfers ON journal_entries (member_id, effective_at)
    WHERE kind = 'transfer';
-- Requalification: the statuses that ran out.
CREATE INDEX member_tiers_valid_until ON member_tiers (valid_until);
"""

DOWNGRADE = r"""
DROP INDEX IF EXISTS member_tiers_valid_until;
DROP INDEX IF EXISTS journal_entries_member_transfers;
DROP INDEX IF EXISTS balances_member;
DROP TRIGGER IF EXISTS balances_lots_match_available ON balances;
DROP FUNCTION IF EXISTS check_lots_match_available();
DROP TRIGGER IF EXISTS balances_held_pending_not_negative ON balances;
DROP FUNCTION IF EXISTS refuse_negative_member_balance();
ALTER TABLE postings DROP CONSTRAINT IF EXISTS postings_member_asset;
ALTER TABLE balances DROP CONSTRAINT IF EXISTS balances_member_asset;
"""


def upgrade() -> None:
    for statement in sql_statements(GUARDS) + sql_statements(INDEXES):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
