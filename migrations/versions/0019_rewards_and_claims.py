"""The reward catalogue and missing-points claims (partners/rewards.py,
partners/claims.py), and the `reward` entry kind.

- `rewards`: an item of the catalogue (points price, stock, the partner that
  fulfils it and is reimbursed for the points). Stock never goes below zero
  (a CHECK, besides the conditional decrement that takes it).
- `reward_orders`: a member's order, the `reward` entry that spent its points
  and, once cancelled, the `reverse` entry that gave them back. An order is
  shipped or cancelled once (the transitions are checked here too).
- `points_claims`: a purchase a member says the partner did not send. One
  open claim per partner receipt; the partner's own later send of the
  receipt for the same member settles it (a trigger on `partner_purchases`),
  so a claim is booked once whoever books the receipt first.

The entries these rows name are not foreign keys into the partitioned
journal (as since 0014 and 0016): an order's entry is checked per INSERT
statement; a cancellation's and a claim's entry are written in the
transaction that posts it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

KINDS = (
    "'earn', 'release', 'burn', 'hold', 'capture', 'void', 'transfer', 'reverse', 'adjust', "
    "'expire', 'forfeit', 'merge'"
)

UPGRADE = rf"""
-- The legacy partition keeps a local copy of the check (migration 0013
-- attached it with its own): replaced on the parent and there alike.
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries_legacy DROP CONSTRAINT IF EXISTS journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check
    CHECK (kind IN ({KINDS}, 'reward'));

CREATE TABLE rewards (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.\-]{{0,63}}$'),
    name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    points      bigint NOT NULL CHECK (points > 0 AND points <= 1000000000000),
    stock       bigint NOT NULL CHECK (stock >= 0),
    partner_id  text NOT NULL REFERENCES partners (id),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER rewards_never_deleted BEFORE DELETE ON rewards
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

CREATE TABLE reward_orders (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id        text NOT NULL REFERENCES members (id),
    reward_id        text NOT NULL REFERENCES rewards (id),
    points           bigint NOT NULL CHECK (points > 0),
    status           text NOT NULL DEFAULT 'ordered'
                     CHECK (status IN ('ordered', 'shipped', 'cancelled')),
    order_entry_id   bigint NOT NULL UNIQUE,
    cancel_entry_id  bigint UNIQUE,
    ordered_at       timestamptz NOT NULL,
    resolved_at      timestamptz,
    resolved_by      text,
    CHECK ((status = 'ordered') = (resolved_at IS NULL)),
    CHECK ((status = 'cancelled') = (cancel_entry_id IS NOT NULL))
);
CREATE INDEX reward_orders_member ON reward_orders (member_id, id DESC);
CREATE TRIGGER reward_orders_entry_exists AFTER INSERT ON reward_orders
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_inserted_entries_exist('order_entry_id');
CREATE FUNCTION reward_order_resolved_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'ordered' OR NEW.member_id <> OLD.member_id
       OR NEW.reward_id <> OLD.reward_id OR NEW.points <> OLD.points
       OR NEW.order_entry_id <> OLD.order_entry_id THEN
        RAISE EXCEPTION 'reward order % is % already', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER reward_orders_resolved_once BEFORE UPDATE ON reward_orders
    FOR EACH ROW EXECUTE FUNCTION reward_order_resolved_once();
CREATE TRIGGER reward_orders_never_deleted BEFORE DELETE ON reward_orders
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

CREATE TABLE points_claims (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id    text NOT NULL REFERENCES members (id),
    partner_id   text NOT NULL REFERENCES partners (id),
    receipt      text NOT NULL CHECK (length(receipt) BETWEEN 1 AND 64),
    occurred_at  timestamptz NOT NULL,
    currency     text NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    lines        jsonb NOT NULL,  -- as the member sent them ([]: one line, category general)
    expected_points bigint NOT NULL CHECK (expected_points >= 0),  -- quoted when filed
    coupons      text[] NOT NULL DEFAULT '{{}}',
    status       text NOT NULL DEFAULT 'open'
                 CHECK (status IN ('open', 'confirmed', 'settled', 'rejected')),
    filed_at     timestamptz NOT NULL,
    resolved_at  timestamptz,
    resolved_by  text,
    reason       text,
    entry_id     bigint,
    points       bigint,
    CHECK ((status = 'open') = (resolved_at IS NULL)),
    CHECK (status <> 'rejected' OR length(btrim(reason)) BETWEEN 1 AND 500)
);
CREATE UNIQUE INDEX points_claims_one_open ON points_claims (partner_id, receipt)
    WHERE status = 'open';
CREATE INDEX points_claims_member ON points_claims (member_id, id DESC);
CREATE INDEX points_claims_open ON points_claims (filed_at, id) WHERE status = 'open';
CREATE TRIGGER points_claims_never_deleted BEFORE DELETE ON points_claims
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

-- The partner sent the claimed receipt itself (for the same member): the
-- claim is settled by that send, whose entry it names. A confirmation's own
-- earning passes here too and then records itself as the confirmation. Once
-- per statement (a batch of purchases is one join), not once per row.
CREATE FUNCTION settle_claims_by_purchases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE points_claims c
       SET status = 'settled', resolved_at = now(), resolved_by = 'partner:' || n.partner_id,
           entry_id = n.entry_id
      FROM inserted n
     WHERE c.status = 'open' AND c.partner_id = n.partner_id
       AND c.receipt = n.partner_reference AND c.member_id = n.member_id;
    RETURN NULL;
END $$;
CREATE TRIGGER partner_purchases_settle_claims AFTER INSERT ON partner_purchases
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION settle_claims_by_purchases();
"""

DOWNGRADE = rf"""
-- The journal is immutable: once a `reward` entry is posted, the old check
-- can never hold again, so there is no way back below this revision.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM journal_entries WHERE kind = 'reward') THEN
        RAISE EXCEPTION 'cannot downgrade below 0019: the journal holds reward entries';
    END IF;
END $$;
DROP TRIGGER IF EXISTS partner_purchases_settle_claims ON partner_purchases;
DROP FUNCTION IF EXISTS settle_claims_by_purchases();
DROP TABLE IF EXISTS points_claims;
DROP TABLE IF EXISTS reward_orders;
DROP FUNCTION IF EXISTS reward_order_resolved_once();
DROP TABLE IF EXISTS rewards;
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries_legacy DROP CONSTRAINT IF EXISTS journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check
    CHECK (kind IN ({KINDS}));
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
