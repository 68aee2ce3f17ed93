"""The member registry, and no write that names an unknown party.

`members` lists who the programme's members are (status, enrolment, the
little personal data it keeps), `member_events` what happened to each of
them and who did it. Every member id the ledger already knows is enrolled by
this migration, active, at the time of its first balance change.

The database refuses a write that names an unknown or no longer active
member, or an unregistered partner:
- a member's balance row (every posting on a member account changes it in the
  same transaction), a card and an issued coupon are checked by a trigger:
  unknown -> SQLSTATE LM404, closed or merged -> LM409 (the ledger turns both
  into domain errors);
- cards, coupons, lots, holds, pending points, tiers, promotion usage and
  partner purchases reference `members` by foreign key;
- a journal entry's partner and a partner account's first balance row are
  checked by triggers (LP404); rules reference `partners` by foreign key and
  promotions and coupons may only name registered partners. Hot tables get a
  trigger rather than a foreign key: a foreign key would share-lock the one
  partner row from every concurrent accrual. Neither members nor partners
  are ever deleted (a trigger refuses), so an existence check needs no lock.
Rows written before this revision that name unregistered partners are left
as they are (the partner constraints are NOT VALID for old rows).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE members (
    id           text PRIMARY KEY,
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed', 'merged')),
    enrolled_at  timestamptz NOT NULL DEFAULT now(),
    enrolled_by  text NOT NULL,
    closed_at    timestamptz,
    merged_into  text REFERENCES members (id),
    display_name text CHECK (length(display_name) <= 200),
    email        text CHECK (length(email) <= 254),
    erased_at    timestamptz,
    CHECK ((status = 'active') = (closed_at IS NULL)),
    CHECK ((status = 'merged') = (merged_into IS NOT NULL)),
    CHECK (merged_into <> id),
    CHECK (erased_at IS NULL OR (status <> 'active' AND display_name IS NULL AND email IS NULL))
);
CREATE INDEX members_id_prefix ON members (id text_pattern_ops);
CREATE INDEX members_email ON members (lower(email)) WHERE email IS NOT NULL;

INSERT INTO members (id, enrolled_at, enrolled_by)
SELECT member_id, min(since), 'migration:0007' FROM (
    SELECT member_id, min(updated_at) AS since FROM balances
        WHERE member_id IS NOT NULL GROUP BY member_id
    UNION ALL SELECT member_id, min(issued_at) FROM cards GROUP BY member_id
    UNION ALL SELECT member_id, min(issued_at) FROM member_coupons GROUP BY member_id
    UNION ALL SELECT member_id, min(qualified_at) FROM member_tiers GROUP BY member_id
    UNION ALL SELECT member_id, now() FROM promotion_usage GROUP BY member_id
) AS known GROUP BY member_id;

-- New ids follow the ledger's address rules; ids the ledger already held stay.
ALTER TABLE members ADD CONSTRAINT members_id_format
    CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$') NOT VALID;

CREATE TABLE member_events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id text NOT NULL REFERENCES members (id),
    event     text NOT NULL CHECK (event IN (
                  'enrolled', 'profile-changed', 'closed', 'merged-into', 'merged-from',
                  'erased')),
    actor     text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    entry_id  bigint REFERENCES journal_entries (id),
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX member_events_member ON member_events (member_id, id);

CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted: close or suspend instead', TG_TABLE_NAME
        USING ERRCODE = '42501';
END $$;
CREATE TRIGGER members_never_deleted BEFORE DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();
CREATE TRIGGER partners_never_deleted BEFORE DELETE ON partners
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

-- A member account changes only while its member is enrolled and active.
-- Volatile: after waiting for a member's row lock it sees the status as
-- committed by the transaction it waited for (a close or merge).
CREATE FUNCTION check_member_active() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    member_status text;
BEGIN
    SELECT status INTO member_status FROM members WHERE id = NEW.member_id;
    IF member_status IS NULL THEN
        RAISE EXCEPTION 'member % is not enrolled', NEW.member_id
            USING ERRCODE = 'LM404', DETAIL = NEW.member_id;
    ELSIF member_status <> 'active' THEN
        RAISE EXCEPTION 'member % is %', NEW.member_id, member_status
            USING ERRCODE = 'LM409', DETAIL = NEW.member_id, HINT = member_status;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER balances_member_active BEFORE INSERT OR UPDATE ON balances
    FOR EACH ROW WHEN (NEW.member_id IS NOT NULL) EXECUTE FUNCTION check_member_active();
CREATE TRIGGER cards_member_active BEFORE INSERT OR UPDATE OF member_id ON cards
    FOR EACH ROW EXECUTE FUNCTION check_member_active();
CREATE TRIGGER member_coupons_member_active BEFORE INSERT OR UPDATE OF member_id
    ON member_coupons FOR EACH ROW EXECUTE FUNCTION check_member_active();

CREATE FUNCTION check_partner_registered() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    partner text;
BEGIN
    IF TG_TABLE_NAME = 'balances' THEN
        partner := split_part(NEW.account, ':', 2);
    ELSE
        partner := NEW.partner_id;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM partners WHERE id = partner) THEN
        RAISE EXCEPTION 'partner % is not registered', partner
            USING ERRCODE = 'LP404', DETAIL = partner;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER journal_entries_partner_registered BEFORE INSERT ON journal_entries
    FOR EACH ROW WHEN (NEW.partner_id IS NOT NULL)
    EXECUTE FUNCTION check_partner_registered();
CREATE TRIGGER balances_partner_registered BEFORE INSERT ON balances
    FOR EACH ROW WHEN (NEW.account LIKE 'partner:%')
    EXECUTE FUNCTION check_partner_registered();

CREATE FUNCTION check_offer_partners() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unknown text;
BEGIN
    SELECT string_agg(p, ', ') INTO unknown FROM unnest(NEW.partner_ids) AS p
        WHERE NOT EXISTS (SELECT 1 FROM partners WHERE id = p);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'partners not registered: %', unknown
            USING ERRCODE = 'LP404', DETAIL = unknown;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER promotions_partners_registered BEFORE INSERT OR UPDATE OF partner_ids
    ON promotions FOR EACH ROW EXECUTE FUNCTION check_offer_partners();
CREATE TRIGGER coupons_partners_registered BEFORE INSERT OR UPDATE OF partner_ids
    ON coupons FOR EACH ROW EXECUTE FUNCTION check_offer_partners();

ALTER TABLE balances ADD CONSTRAINT balances_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id);
ALTER TABLE lots ADD CONSTRAINT lots_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id);
ALTER TABLE pending_points ADD CONSTRAINT pending_points_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id);
ALTER TABLE holds ADD CONSTRAINT holds_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id);
ALTER TABLE cards ADD CONSTRAINT cards_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id);
ALTER TABLE member_coupons ADD CONSTRAINT member_coupons_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id);
ALTER TABLE promotion_usage ADD CONSTRAINT promotion_usage_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id);
ALTER TABLE member_tiers ADD CONSTRAINT member_tiers_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id);
ALTER TABLE tier_changes ADD CONSTRAINT tier_changes_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id) NOT VALID;
ALTER TABLE partner_purchases ADD CONSTRAINT partner_purchases_member_fk
    FOREIGN KEY (member_id) REFERENCES members (id) NOT VALID;

ALTER TABLE earn_rules ADD CONSTRAINT earn_rules_partner_fk
    FOREIGN KEY (partner_id) REFERENCES partners (id) NOT VALID;
ALTER TABLE burn_rules ADD CONSTRAINT burn_rules_partner_fk
    FOREIGN KEY (partner_id) REFERENCES partners (id) NOT VALID;

-- Closing forfeits a balance; merging moves one member's points to another.
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check CHECK (kind IN (
    'earn', 'release', 'burn', 'hold', 'capture', 'void', 'transfer', 'reverse', 'adjust',
    'expire', 'forfeit', 'merge'));
"""

DOWNGRADE = r"""
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check CHECK (kind IN (
    'earn', 'release', 'burn', 'hold', 'capture', 'void', 'transfer', 'reverse', 'adjust',
    'expire')) NOT VALID;
ALTER TABLE burn_rules DROP CONSTRAINT IF EXISTS burn_rules_partner_fk;
ALTER TABLE earn_rules DROP CONSTRAINT IF EXISTS earn_rules_partner_fk;
ALTER TABLE partner_purchases DROP CONSTRAINT IF EXISTS partner_purchases_member_fk;
ALTER TABLE tier_changes DROP CONSTRAINT IF EXISTS tier_changes_member_fk;
ALTER TABLE member_tiers DROP CONSTRAINT IF EXISTS member_tiers_member_fk;
ALTER TABLE promotion_usage DROP CONSTRAINT IF EXISTS promotion_usage_member_fk;
ALTER TABLE member_coupons DROP CONSTRAINT IF EXISTS member_coupons_member_fk;
ALTER TABLE cards DROP CONSTRAINT IF EXISTS cards_member_fk;
ALTER TABLE holds DROP CONSTRAINT IF EXISTS holds_member_fk;
ALTER TABLE pending_points DROP CONSTRAINT IF EXISTS pending_points_member_fk;
ALTER TABLE lots DROP CONSTRAINT IF EXISTS lots_member_fk;
ALTER TABLE balances DROP CONSTRAINT IF EXISTS balances_member_fk;
DROP TRIGGER IF EXISTS coupons_partners_registered ON coupons;
DROP TRIGGER IF EXISTS promotions_partners_registered ON promotions;
DROP FUNCTION IF EXISTS check_offer_partners();
DROP TRIGGER IF EXISTS balances_partner_registered ON balances;
DROP TRIGGER IF EXISTS journal_entries_partner_registered ON journal_entries;
DROP FUNCTION IF EXISTS check_partner_registered();
DROP TRIGGER IF EXISTS member_coupons_member_active ON member_coupons;
DROP TRIGGER IF EXISTS cards_member_active ON cards;
DROP TRIGGER IF EXISTS balances_member_active ON balances;
DROP FUNCTION IF EXISTS check_member_active();
DROP TRIGGER IF EXISTS partners_never_deleted ON partners;
DROP TRIGGER IF EXISTS members_never_deleted ON members;
DROP FUNCTION IF EXISTS refuse_delete();
DROP TABLE IF EXISTS member_events;
DROP TABLE IF EXISTS members;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
