"""Family pools (members/pools.py), and flight segments by cabin and route
class.

- Categories for flight segments by cabin and route class (continental or
  intercontinental), so an airline's earn rule gives qualifying points per
  segment by both (`category_qp`), as Miles & More's status counters do; the
  cabin-only categories of 0002 stay.
- `family_pools`: a family pool, whose members redeem their miles together
  (a name, who opened it, when).
- `pool_memberships`: who is or was in which pool, as an adult or a child;
  a membership ends once (`left_at`). One open membership per member (a
  partial unique index): a member is in one pool at most. The memberships
  that ended are kept: the latest one's `left_at` starts the member's
  cool-off before another pool may take them.
- `pool_redemptions` and `pool_redemption_parts`: a pooled redemption and
  the burn entry it posted for each member whose miles it spent. The pool
  has no balance of its own: its miles are its members' `available`
  accounts, and every movement is one of their journal entries.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

UPGRADE = r"""
INSERT INTO categories (code, name) VALUES
    ('flight-economy-continental', 'Flight segment, economy, continental'),
    ('flight-business-continental', 'Flight segment, business, continental'),
    ('flight-economy-intercontinental', 'Flight segment, economy, intercontinental'),
    ('flight-premium-intercontinental', 'Flight segment, premium economy, intercontinental'),
    ('flight-business-intercontinental', 'Flight segment, business, intercontinental'),
    ('flight-first-intercontinental', 'Flight segment, first, intercontinental');

CREATE TABLE family_pools (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE TRIGGER family_pools_never_deleted BEFORE DELETE ON family_pools
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

CREATE TABLE pool_memberships (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool_id    bigint NOT NULL REFERENCES family_pools (id),
    member_id  text NOT NULL REFERENCES members (id),
    role       text NOT NULL CHECK (role IN ('adult', 'child')),
    joined_at  timestamptz NOT NULL,
    added_by   text NOT NULL,
    left_at    timestamptz,
    CHECK (left_at IS NULL OR left_at >= joined_at)
);
CREATE UNIQUE INDEX pool_memberships_one_pool ON pool_memberships (member_id)
    WHERE left_at IS NULL;
CREATE INDEX pool_memberships_pool ON pool_memberships (pool_id) WHERE left_at IS NULL;
CREATE INDEX pool_memberships_history ON pool_memberships (member_id, left_at DESC);
-- A membership ends once; nothing else about it changes.
CREATE FUNCTION pool_membership_ends_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.left_at IS NOT NULL OR NEW.left_at IS NULL OR NEW.pool_id <> OLD.pool_id
       OR NEW.member_id <> OLD.member_id OR NEW.role <> OLD.role
       OR NEW.joined_at <> OLD.joined_at OR NEW.added_by <> OLD.added_by THEN
        RAISE EXCEPTION 'pool membership % ended already or changed', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER pool_memberships_end_once BEFORE UPDATE ON pool_memberships
    FOR EACH ROW EXECUTE FUNCTION pool_membership_ends_once();
CREATE TRIGGER pool_memberships_never_deleted BEFORE DELETE ON pool_memberships
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

CREATE TABLE pool_redemptions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool_id      bigint NOT NULL REFERENCES family_pools (id),
    member_id    text NOT NULL REFERENCES members (id),  -- the adult who redeemed
    partner_id   text NOT NULL REFERENCES partners (id),
    amount       bigint NOT NULL CHECK (amount > 0),
    redeemed_at  timestamptz NOT NULL
);
CREATE INDEX pool_redemptions_pool ON pool_redemptions (pool_id, id DESC);
CREATE TABLE pool_redemption_parts (
    redemption_id  bigint NOT NULL REFERENCES pool_redemptions (id),
    member_id      text NOT NULL REFERENCES members (id),
    entry_id       bigint NOT NULL UNIQUE,  -- no foreign key into the partitioned journal
    amount         bigint NOT NULL CHECK (amount > 0),
    PRIMARY KEY (redemption_id, member_id)
);
-- Each part's burn entry exists (checked per INSERT statement, as since 0014).
CREATE TRIGGER pool_redemption_parts_entry_exists AFTER INSERT ON pool_redemption_parts
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_inserted_entries_exist('entry_id');
CREATE TRIGGER pool_redemptions_never_deleted BEFORE DELETE ON pool_redemptions
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();
CREATE TRIGGER pool_redemption_parts_never_deleted BEFORE DELETE ON pool_redemption_parts
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS pool_redemption_parts;
DROP TABLE IF EXISTS pool_redemptions;
DROP TABLE IF EXISTS pool_memberships;
DROP FUNCTION IF EXISTS pool_membership_ends_once();
DROP TABLE IF EXISTS family_pools;
DELETE FROM categories WHERE code IN ('flight-economy-continental',
    'flight-business-continental', 'flight-economy-intercontinental',
    'flight-premium-intercontinental', 'flight-business-intercontinental',
    'flight-first-intercontinental');
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
