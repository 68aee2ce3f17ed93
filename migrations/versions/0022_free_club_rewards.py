"""Free access to a reward for club members (partners/rewards.py).

- `rewards.free_for_clubs`: the clubs (codes) whose members order the item
  without points; empty: everyone pays its points price.
- `reward_orders.free_club`: the club whose paid term made an order free. A
  free order has 0 points and no entry (a zero-amount entry cannot be
  posted), so `order_entry_id` may be empty exactly then, and cancelling it
  returns the stock with no entry either.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE rewards ADD COLUMN free_for_clubs text[] NOT NULL DEFAULT '{}';

ALTER TABLE reward_orders ADD COLUMN free_club text REFERENCES clubs (code);
ALTER TABLE reward_orders ALTER COLUMN order_entry_id DROP NOT NULL;
ALTER TABLE reward_orders DROP CONSTRAINT reward_orders_points_check;
ALTER TABLE reward_orders DROP CONSTRAINT reward_orders_check1;
ALTER TABLE reward_orders ADD CONSTRAINT reward_orders_paid_or_free CHECK (
    (free_club IS NULL AND points > 0 AND order_entry_id IS NOT NULL)
    OR (free_club IS NOT NULL AND points = 0 AND order_entry_id IS NULL));
ALTER TABLE reward_orders ADD CONSTRAINT reward_orders_cancelled_entry CHECK (
    (cancel_entry_id IS NULL OR status = 'cancelled')
    AND (status <> 'cancelled' OR free_club IS NOT NULL OR cancel_entry_id IS NOT NULL));

-- As in 0019, with IS DISTINCT FROM: a free order has no entry.
CREATE OR REPLACE FUNCTION reward_order_resolved_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'ordered' OR NEW.member_id <> OLD.member_id
       OR NEW.reward_id <> OLD.reward_id OR NEW.points <> OLD.points
       OR NEW.order_entry_id IS DISTINCT FROM OLD.order_entry_id
       OR NEW.free_club IS DISTINCT FROM OLD.free_club THEN
        RAISE EXCEPTION 'reward order % is % already', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
"""

DOWNGRADE = r"""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM reward_orders WHERE free_club IS NOT NULL) THEN
        RAISE EXCEPTION 'cannot downgrade below 0022: free club orders exist';
    END IF;
END $$;
CREATE OR REPLACE FUNCTION reward_order_resolved_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'ordered' OR NEW.member_id <> OLD.member_id
       OR NEW.reward_id <> OLD.reward_id OR NEW.points <> OLD.points
       OR NEW.order_entry_id <> OLD.order_entry_id THEN
        RAISE EXCEPTION 'reward order % is % already', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
ALTER TABLE reward_orders DROP CONSTRAINT reward_orders_cancelled_entry;
ALTER TABLE reward_orders DROP CONSTRAINT reward_orders_paid_or_free;
ALTER TABLE reward_orders ADD CONSTRAINT reward_orders_check1
    CHECK ((status = 'cancelled') = (cancel_entry_id IS NOT NULL));
ALTER TABLE reward_orders ADD CONSTRAINT reward_orders_points_check CHECK (points > 0);
ALTER TABLE reward_orders ALTER COLUMN order_entry_id SET NOT NULL;
ALTER TABLE reward_orders DROP COLUMN free_club;
ALTER TABLE rewards DROP COLUMN free_for_clubs;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
