"""Breakage (IFRS 15): the expected redemption rates finance sets
(finance/breakage.py), append-only and effective-dated. An estimate is in
force from `effective_from` (its insert's transaction time unless a later
instant is given) until a later one takes over; it can never start before it
was recorded, so the figures of a period already reported never change, and
rows are never updated or deleted (a new estimate replaces an old one).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE breakage_estimates (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the share of the points issued expected to be redeemed, in (0, 1]
    rate            numeric(7, 6) NOT NULL CHECK (rate > 0 AND rate <= 1),
    effective_from  timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    set_by          text NOT NULL CHECK (length(set_by) BETWEEN 1 AND 200),
    reason          text NOT NULL CHECK (length(btrim(reason)) BETWEEN 1 AND 500)
);
-- The estimate in force at an instant: the latest that started by then.
CREATE INDEX breakage_estimates_in_force ON breakage_estimates (effective_from DESC, id DESC);
-- No back-dating, whoever writes the row (raw SQL included): the record time
-- is the transaction's, and the estimate starts then or later.
CREATE FUNCTION breakage_estimate_not_backdated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_at := now();
    IF NEW.effective_from IS NULL THEN
        NEW.effective_from := now();
    END IF;
    IF NEW.effective_from < now() THEN
        RAISE EXCEPTION 'a breakage estimate cannot start before it is recorded (% < %)',
            NEW.effective_from, now() USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER breakage_estimates_not_backdated BEFORE INSERT ON breakage_estimates
    FOR EACH ROW EXECUTE FUNCTION breakage_estimate_not_backdated();
CREATE TRIGGER breakage_estimates_append_only BEFORE UPDATE OR DELETE ON breakage_estimates
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS breakage_estimates;
DROP FUNCTION IF EXISTS breakage_estimate_not_backdated();
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
