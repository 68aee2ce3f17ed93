"""One number that every change to the programme's definitions bumps: partner
contracts, earn rules, categories, tiers, promotions (not their budget
counters). API processes cache the definitions in memory and reread them
only when the number moves: an earning reads one number instead of six
tables, and sees an admin's change from the next statement on.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE definition_versions (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL DEFAULT 1
);
INSERT INTO definition_versions DEFAULT VALUES;

CREATE FUNCTION bump_definition_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE definition_versions SET version = version + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER partners_definition_version AFTER INSERT OR UPDATE OR DELETE ON partners
    FOR EACH STATEMENT EXECUTE FUNCTION bump_definition_version();
CREATE TRIGGER partner_contracts_definition_version
    AFTER INSERT OR UPDATE OR DELETE ON partner_contracts
    FOR EACH STATEMENT EXECUTE FUNCTION bump_definition_version();
CREATE TRIGGER earn_rules_definition_version AFTER INSERT OR UPDATE OR DELETE ON earn_rules
    FOR EACH STATEMENT EXECUTE FUNCTION bump_definition_version();
CREATE TRIGGER categories_definition_version AFTER INSERT OR UPDATE OR DELETE ON categories
    FOR EACH STATEMENT EXECUTE FUNCTION bump_definition_version();
CREATE TRIGGER tier_definitions_definition_version
    AFTER INSERT OR UPDATE OR DELETE ON tier_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION bump_definition_version();
-- Every column but the budget counter (which every paid earning moves).
CREATE TRIGGER promotions_definition_version AFTER INSERT OR DELETE OR UPDATE OF
    code, name, starts_at, ends_at, partner_ids, categories, tiers, multiplier, fixed_bonus,
    min_spend_minor, budget_points, per_member_limit, funder, exclusive, retired_at,
    accepts_late_submissions ON promotions
    FOR EACH STATEMENT EXECUTE FUNCTION bump_definition_version();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS promotions_definition_version ON promotions;
DROP TRIGGER IF EXISTS tier_definitions_definition_version ON tier_definitions;
DROP TRIGGER IF EXISTS categories_definition_version ON categories;
DROP TRIGGER IF EXISTS earn_rules_definition_version ON earn_rules;
DROP TRIGGER IF EXISTS partner_contracts_definition_version ON partner_contracts;
DROP TRIGGER IF EXISTS partners_definition_version ON partners;
DROP FUNCTION IF EXISTS bump_definition_version();
DROP TABLE IF EXISTS definition_versions;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
