"""The checks every posting pays per row become checks per statement: that
the members whose balances a statement writes are enrolled and active (and
their held and pending balances not below zero), that the partners its
journal entries name are registered, and that a lot movement names an
existing entry and lot.

Measured on the set-based paths (auto_explain, 1,000 members or purchases
per statement): the member check ran once per balance row and event (an
upsert fires the row trigger for its insert attempt and again for its
update), 2,700-2,900 calls and 33-37 ms of a 230 ms posting statement; the
partner check 14 ms for 1,000 entries; the two foreign keys of
`lot_movements`, each a lookup through a partitioned parent per row, 33 ms
of an expiry batch. One join of the statement's new rows (a transition
table) does each check whatever their number, with the same errors
(SQLSTATE LM404, LM409, LP404, 23503, 23514), so the services map them as
before.

The member check runs after the statement instead of before each row, and
before the check of held and pending balances, as the row triggers did (a
write to a closed member's accounts is refused as such). The ledger writes
at READ COMMITTED, so the check's query sees every status committed before
it runs, in particular the close or merge of a member whose balance row the
statement waited for: what the row trigger guaranteed.

Lot movements are append-only and lots are never deleted (row triggers
below), so a movement cannot lose its entry or lot later either: the rest of
what the foreign keys did is moot, as for the tables of 0014. Cards and
member coupons keep their row triggers (written a row at a time).

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- The balance rows a statement wrote (the transition table `written`): every
-- member they belong to is enrolled and active (the first that is not, in id
-- order, raises as check_member_active of 0007 does for one row), and no
-- member's held or pending balance went below zero (as the row trigger of
-- 0004 did). In that order, as the row triggers ran: a write to a closed or
-- merged member's accounts is refused as such, whatever it would do to them.
CREATE FUNCTION check_written_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    refused record;
    overdrawn record;
BEGIN
    SELECT w.member_id, m.status INTO refused
    FROM (SELECT DISTINCT member_id FROM written WHERE member_id IS NOT NULL) AS w
    LEFT JOIN members m ON m.id = w.member_id
    WHERE m.status IS DISTINCT FROM 'active'
    ORDER BY w.member_id LIMIT 1;
    IF FOUND AND refused.status IS NULL THEN
        RAISE EXCEPTION 'member % is not enrolled', refused.member_id
            USING ERRCODE = 'LM404', DETAIL = refused.member_id;
    ELSIF FOUND THEN
        RAISE EXCEPTION 'member % is %', refused.member_id, refused.status
            USING ERRCODE = 'LM409', DETAIL = refused.member_id, HINT = refused.status;
    END IF;
    SELECT w.account, w.balance INTO overdrawn FROM written w
    WHERE w.balance < 0 AND w.member_id IS NOT NULL
      AND split_part(w.account, ':', 3) IN ('held', 'pending')
    ORDER BY w.account LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% would go below zero (%)', overdrawn.account, overdrawn.balance
            USING ERRCODE = '23514';
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER balances_member_active ON balances;
DROP TRIGGER balances_held_pending_not_negative ON balances;
-- A transition table belongs to one event: one trigger for the rows an upsert
-- inserts, one for those it updates.
CREATE TRIGGER balances_checked_inserted AFTER INSERT ON balances
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION check_written_balances();
CREATE TRIGGER balances_checked_updated AFTER UPDATE ON balances
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION check_written_balances();

-- Every partner the statement's new entries name is registered.
CREATE FUNCTION check_inserted_partners_registered() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unknown text;
BEGIN
    SELECT i.partner_id INTO unknown FROM inserted i
    WHERE i.partner_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM partners p WHERE p.id = i.partner_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'partner % is not registered', unknown
            USING ERRCODE = 'LP404', DETAIL = unknown;
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER journal_entries_partner_registered ON journal_entries;
CREATE TRIGGER journal_entries_partners_registered AFTER INSERT ON journal_entries
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_inserted_partners_registered();

-- Every row the statement inserted names an existing row of another table
-- (TG_ARGV: the column, the table whose id it names).
CREATE FUNCTION check_inserted_references_exist() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    EXECUTE format(
        'SELECT n.%1$I FROM inserted n WHERE n.%1$I IS NOT NULL AND NOT EXISTS '
        '(SELECT 1 FROM %2$I r WHERE r.id = n.%1$I) LIMIT 1', TG_ARGV[0], TG_ARGV[1])
        INTO missing;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'insert on % names % %, which does not exist',
            TG_TABLE_NAME, TG_ARGV[1], missing USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END $$;
ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_entry_id_fkey;
ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_lot_id_fkey;
CREATE TRIGGER lot_movements_entry_exists AFTER INSERT ON lot_movements
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION check_inserted_references_exist('entry_id', 'journal_entries');
CREATE TRIGGER lot_movements_lot_exists AFTER INSERT ON lot_movements
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    EXECUTE FUNCTION check_inserted_references_exist('lot_id', 'lots');
CREATE TRIGGER lot_movements_append_only BEFORE UPDATE OR DELETE ON lot_movements
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER lots_never_deleted BEFORE DELETE ON lots
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS lots_never_deleted ON lots;
DROP TRIGGER IF EXISTS lot_movements_append_only ON lot_movements;
DROP TRIGGER IF EXISTS lot_movements_lot_exists ON lot_movements;
DROP TRIGGER IF EXISTS lot_movements_entry_exists ON lot_movements;
ALTER TABLE lot_movements ADD CONSTRAINT lot_movements_entry_id_fkey
    FOREIGN KEY (entry_id) REFERENCES journal_entries (id);
ALTER TABLE lot_movements ADD CONSTRAINT lot_movements_lot_id_fkey
    FOREIGN KEY (lot_id) REFERENCES lots (id);
DROP FUNCTION IF EXISTS check_inserted_references_exist();

DROP TRIGGER IF EXISTS journal_entries_partners_registered ON journal_entries;
CREATE TRIGGER journal_entries_partner_registered BEFORE INSERT ON journal_entries
    FOR EACH ROW WHEN (NEW.partner_id IS NOT NULL)
    EXECUTE FUNCTION check_partner_registered();
DROP FUNCTION IF EXISTS check_inserted_partners_registered();

DROP TRIGGER IF EXISTS balances_checked_updated ON balances;
DROP TRIGGER IF EXISTS balances_checked_inserted ON balances;
CREATE TRIGGER balances_member_active BEFORE INSERT OR UPDATE ON balances
    FOR EACH ROW WHEN (NEW.member_id IS NOT NULL) EXECUTE FUNCTION check_member_active();
CREATE TRIGGER balances_held_pending_not_negative AFTER INSERT OR UPDATE ON balances
    FOR EACH ROW WHEN (NEW.balance < 0 AND NEW.member_id IS NOT NULL
                       AND split_part(NEW.account, ':', 3) IN ('held', 'pending'))
    EXECUTE FUNCTION refuse_negative_member_balance();
DROP FUNCTION IF EXISTS check_written_balances();
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
