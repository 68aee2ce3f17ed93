"""Programme rules: categories, versioned earn and burn rules per partner,
promotions with budgets, coupons, tier definitions, member tiers with their
history, and an audit trail of every rule change.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op

from migrations import sql_statements

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE categories (
    code text PRIMARY KEY CHECK (code ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    name text NOT NULL
);
INSERT INTO categories (code, name) VALUES
    ('groceries', 'Groceries'), ('drugstore', 'Drugstore and health'),
    ('fuel', 'Fuel'), ('car-wash', 'Car wash'), ('shop', 'Station shop'),
    ('electronics', 'Electronics'), ('fashion', 'Fashion'), ('home', 'Home and garden'),
    ('vouchers', 'Vouchers and gift cards'), ('tobacco', 'Tobacco'),
    ('books', 'Books (fixed price)'), ('deposit', 'Bottle deposit'),
    ('flight-economy', 'Flight, economy'), ('flight-premium', 'Flight, premium economy'),
    ('flight-business', 'Flight, business'), ('flight-first', 'Flight, first'),
    ('general', 'General merchandise');

-- Versioned earn rules: the rule in force at the purchase time applies (the
-- highest version whose validity window holds it, unless retired).
CREATE TABLE earn_rules (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_id           text NOT NULL,
    version              int NOT NULL CHECK (version > 0),
    valid_from           timestamptz NOT NULL,
    valid_to             timestamptz,
    currency             text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    points_per_unit      numeric NOT NULL CHECK (points_per_unit >= 0),
    rounding             text NOT NULL DEFAULT 'floor' CHECK (rounding IN ('floor', 'half_up')),
    category_multipliers jsonb NOT NULL DEFAULT '{}'::jsonb,
    excluded_categories  text[] NOT NULL DEFAULT '{}',
    qp_per_unit          numeric NOT NULL DEFAULT 0 CHECK (qp_per_unit >= 0),
    category_qp          jsonb NOT NULL DEFAULT '{}'::jsonb,
    min_spend_minor      bigint NOT NULL DEFAULT 0 CHECK (min_spend_minor >= 0),
    cap_per_transaction  bigint CHECK (cap_per_transaction > 0),
    cap_per_period       bigint CHECK (cap_per_period > 0),
    cap_period           text CHECK (cap_period IN ('day', 'month', 'year')),
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    retired_at           timestamptz,
    UNIQUE (partner_id, version),
    CHECK (valid_to IS NULL OR valid_to > valid_from),
    CHECK ((cap_per_period IS NULL) = (cap_period IS NULL))
);

CREATE TABLE burn_rules (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_id       text NOT NULL,
    version          int NOT NULL CHECK (version > 0),
    valid_from       timestamptz NOT NULL,
    valid_to         timestamptz,
    currency         text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    points_per_unit  numeric NOT NULL CHECK (points_per_unit > 0),
    min_points       bigint NOT NULL DEFAULT 1 CHECK (min_points > 0),
    step             bigint NOT NULL DEFAULT 1 CHECK (step > 0),
    max_basket_share numeric NOT NULL DEFAULT 1
                     CHECK (max_basket_share > 0 AND max_basket_share <= 1),
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    retired_at       timestamptz,
    UNIQUE (partner_id, version),
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);

CREATE TABLE promotions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code             text NOT NULL UNIQUE,
    name             text NOT NULL,
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    partner_ids      text[] NOT NULL DEFAULT '{}',
    categories       text[] NOT NULL DEFAULT '{}',
    tiers            text[] NOT NULL DEFAULT '{}',
    multiplier       numeric CHECK (multiplier > 1),
    fixed_bonus      bigint CHECK (fixed_bonus > 0),
    min_spend_minor  bigint NOT NULL DEFAULT 0 CHECK (min_spend_minor >= 0),
    budget_points    bigint CHECK (budget_points > 0),
    budget_used      bigint NOT NULL DEFAULT 0,
    per_member_limit bigint CHECK (per_member_limit > 0),
    funder           text NOT NULL CHECK (funder IN ('partner', 'program')),
    exclusive        boolean NOT NULL DEFAULT false,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    retired_at       timestamptz,
    CHECK (ends_at > starts_at),
    CHECK ((multiplier IS NULL) <> (fixed_bonus IS NULL)),
    CHECK (budget_points IS NULL OR (budget_used >= 0 AND budget_used <= budget_points))
);

CREATE TABLE promotion_usage (
    promotion_id bigint NOT NULL REFERENCES promotions (id),
    member_id    text NOT NULL,
    points       bigint NOT NULL CHECK (points >= 0),
    PRIMARY KEY (promotion_id, member_id)
);

CREATE TABLE coupons (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code             text NOT NULL UNIQUE,
    name             text NOT NULL,
    valid_from       timestamptz NOT NULL,
    valid_to         timestamptz NOT NULL,
    partner_ids      text[] NOT NULL DEFAULT '{}',
    categories       text[] NOT NULL DEFAULT '{}',
    multiplier       numeric CHECK (multiplier > 1),
    fixed_bonus      bigint CHECK (fixed_bonus > 0),
    min_basket_minor bigint NOT NULL DEFAULT 0 CHECK (min_basket_minor >= 0),
    funder           text NOT NULL CHECK (funder IN ('partner', 'program')),
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    retired_at       timestamptz,
    CHECK (valid_to > valid_from),
    CHECK ((multiplier IS NULL) <> (fixed_bonus IS NULL))
);

-- A coupon issued to a member: activated before use, used once across every channel.
CREATE TABLE member_coupons (
    coupon_id     bigint NOT NULL REFERENCES coupons (id),
    member_id     text NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    activated_at  timestamptz,
    used_at       timestamptz,
    used_entry_id bigint REFERENCES journal_entries (id),
    PRIMARY KEY (member_id, coupon_id),
    CHECK (used_at IS NULL OR activated_at IS NOT NULL)
);

CREATE TABLE tier_definitions (
    code             text PRIMARY KEY CHECK (code ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    name             text NOT NULL,
    rank             int NOT NULL CHECK (rank >= 0),
    qp_threshold     bigint NOT NULL CHECK (qp_threshold >= 0),
    earn_multiplier  numeric NOT NULL DEFAULT 1 CHECK (earn_multiplier >= 1),
    burn_discount    numeric NOT NULL DEFAULT 0 CHECK (burn_discount >= 0 AND burn_discount < 1),
    expiry_protected boolean NOT NULL DEFAULT false,
    created_by       text NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    retired_at       timestamptz
);
CREATE UNIQUE INDEX tier_definitions_rank ON tier_definitions (rank) WHERE retired_at IS NULL;

CREATE TABLE member_tiers (
    member_id    text PRIMARY KEY,
    tier_code    text NOT NULL REFERENCES tier_definitions (code),
    qualified_at timestamptz NOT NULL,
    valid_until  timestamptz
);

CREATE TABLE tier_changes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id  text NOT NULL,
    from_tier  text,
    to_tier    text NOT NULL,
    reason     text NOT NULL,
    changed_at timestamptz NOT NULL,
    entry_id   bigint REFERENCES journal_entries (id)
);
CREATE INDEX tier_changes_member ON tier_changes (member_id, id);

CREATE TABLE rule_audit (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity    text NOT NULL,
    entity_id text NOT NULL,
    action    text NOT NULL,
    actor     text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    before    jsonb,
    after     jsonb
);
CREATE INDEX rule_audit_entity ON rule_audit (entity, entity_id, id);

-- Caps per member and period, and QP per qualification period, read earnings by member.
CREATE INDEX journal_entries_member_earnings ON journal_entries (member_id, effective_at)
    WHERE kind = 'earn';
"""

DOWNGRADE = r"""
DROP INDEX IF EXISTS journal_entries_member_earnings;
DROP TABLE IF EXISTS rule_audit;
DROP TABLE IF EXISTS tier_changes;
DROP TABLE IF EXISTS member_tiers;
DROP TABLE IF EXISTS tier_definitions;
DROP TABLE IF EXISTS member_coupons;
DROP TABLE IF EXISTS coupons;
DROP TABLE IF EXISTS promotion_usage;
DROP TABLE IF EXISTS promotions;
DROP TABLE IF EXISTS burn_rules;
DROP TABLE IF EXISTS earn_rules;
DROP TABLE IF EXISTS categories;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
