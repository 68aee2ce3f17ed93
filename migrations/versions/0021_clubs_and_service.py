"""Paid clubs and the producer's service module (clubs/), and the two
promotion conditions they need.

- `clubs`: a brand's club: the brand partner (it is paid the fee and funds
  the club's points), the annual fee in minor units and its currency, the
  term in months, the welcome and anniversary points.
- `club_memberships`: one row per member and club, with the status the
  member sees (pending_payment, active, lapsed, cancelled) and its dates.
- `club_payments`: the fees paid, money and not points: one row per payment
  reference (unique forever), each paying one term [term_starts_at,
  term_ends_at). Append-only. A member holds the club's benefits at an
  instant exactly when a paid term covers it.
- `club_gifts`: the anniversary gift of (membership, year), once.
- `service_plans`: a producer's service bonus (points per service interval)
  and the dealers that may report visits.
- `member_products`: the products (vehicle or serial numbers) members
  registered, one holder per (producer, product).
- `service_visits`: a dealer's visit report (unique per dealer and its
  reference); the bonus entry at most once per product and interval.
- `promotions.clubs`: a promotion that pays only to members of one of these
  clubs at the purchase time; `promotions.co_funder_id` and
  `co_funder_share`: another partner (a producer) pays that share of a
  partner-funded promotion's points.

The entries these rows name are not foreign keys into the partitioned
journal (as since 0014): they are written in the transaction that posts them.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE clubs (
    code                text PRIMARY KEY CHECK (code ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    name                text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    partner_id          text NOT NULL REFERENCES partners (id),
    fee_minor           bigint NOT NULL CHECK (fee_minor > 0),
    currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    term_months         integer NOT NULL CHECK (term_months BETWEEN 1 AND 120),
    welcome_points      bigint NOT NULL DEFAULT 0 CHECK (welcome_points >= 0),
    anniversary_points  bigint NOT NULL DEFAULT 0 CHECK (anniversary_points >= 0),
    created_by          text NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE TRIGGER clubs_never_deleted BEFORE DELETE ON clubs
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

CREATE TABLE club_memberships (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    club_code             text NOT NULL REFERENCES clubs (code),
    member_id             text NOT NULL REFERENCES members (id),
    status                text NOT NULL
        CHECK (status IN ('pending_payment', 'active', 'lapsed', 'cancelled')),
    joined_at             timestamptz NOT NULL,
    started_at            timestamptz,
    paid_until            timestamptz,
    cancel_requested_at   timestamptz,
    ended_at              timestamptz,
    welcome_entry_id      bigint,
    UNIQUE (club_code, member_id),
    CHECK (status = 'pending_payment' OR status = 'cancelled' OR paid_until IS NOT NULL)
);
CREATE INDEX club_memberships_member ON club_memberships (member_id);
CREATE INDEX club_memberships_running ON club_memberships (paid_until) WHERE status = 'active';
CREATE TRIGGER club_memberships_never_deleted BEFORE DELETE ON club_memberships
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

CREATE TABLE club_payments (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_reference  text NOT NULL UNIQUE CHECK (length(payment_reference) BETWEEN 1 AND 64),
    membership_id      bigint NOT NULL REFERENCES club_memberships (id),
    club_code          text NOT NULL REFERENCES clubs (code),
    member_id          text NOT NULL REFERENCES members (id),
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    currency           text NOT NULL,
    paid_at            timestamptz NOT NULL,
    term_starts_at     timestamptz NOT NULL,
    term_ends_at       timestamptz NOT NULL CHECK (term_ends_at > term_starts_at),
    renewal            boolean NOT NULL,
    welcome_points     bigint NOT NULL CHECK (welcome_points >= 0),
    recorded_by        text NOT NULL
);
CREATE INDEX club_payments_terms ON club_payments (member_id, club_code, term_ends_at);
CREATE TRIGGER club_payments_append_only BEFORE UPDATE OR DELETE ON club_payments
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TABLE club_gifts (
    membership_id  bigint NOT NULL REFERENCES club_memberships (id),
    year           integer NOT NULL,
    anniversary    timestamptz NOT NULL,
    entry_id       bigint NOT NULL,
    PRIMARY KEY (membership_id, year)
);
CREATE TRIGGER club_gifts_append_only BEFORE UPDATE OR DELETE ON club_gifts
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TABLE service_plans (
    producer_id      text PRIMARY KEY REFERENCES partners (id),
    interval_months  integer NOT NULL CHECK (interval_months BETWEEN 1 AND 120),
    bonus_points     bigint NOT NULL CHECK (bonus_points > 0),
    dealer_ids       text[] NOT NULL DEFAULT '{}',
    updated_by       text NOT NULL,
    updated_at       timestamptz NOT NULL
);

CREATE TABLE member_products (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id      text NOT NULL REFERENCES members (id),
    producer_id    text NOT NULL REFERENCES service_plans (producer_id),
    product_id     text NOT NULL CHECK (product_id ~ '^[A-Za-z0-9-]{1,40}$'),
    registered_at  timestamptz NOT NULL,
    UNIQUE (producer_id, product_id)
);
CREATE INDEX member_products_member ON member_products (member_id);
CREATE TRIGGER member_products_never_deleted BEFORE DELETE ON member_products
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();

CREATE TABLE service_visits (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product         bigint NOT NULL REFERENCES member_products (id),
    dealer_id       text NOT NULL REFERENCES partners (id),
    reference       text NOT NULL CHECK (length(reference) BETWEEN 1 AND 64),
    visited_at      timestamptz NOT NULL,
    interval_index  integer NOT NULL CHECK (interval_index >= 0),
    entry_id        bigint,
    bonus_points    bigint NOT NULL CHECK (bonus_points >= 0),
    recorded_by     text NOT NULL,
    recorded_at     timestamptz NOT NULL,
    UNIQUE (dealer_id, reference)
);
CREATE UNIQUE INDEX service_visits_bonus_once ON service_visits (product, interval_index)
    WHERE entry_id IS NOT NULL;
CREATE TRIGGER service_visits_append_only BEFORE UPDATE OR DELETE ON service_visits
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

ALTER TABLE promotions
    ADD COLUMN clubs text[] NOT NULL DEFAULT '{}',
    ADD COLUMN co_funder_id text REFERENCES partners (id),
    ADD COLUMN co_funder_share numeric CHECK (co_funder_share > 0 AND co_funder_share < 1),
    ADD CONSTRAINT promotions_co_funding
        CHECK ((co_funder_id IS NULL) = (co_funder_share IS NULL));
"""

DOWNGRADE = r"""
ALTER TABLE promotions DROP CONSTRAINT IF EXISTS promotions_co_funding,
    DROP COLUMN IF EXISTS co_funder_share, DROP COLUMN IF EXISTS co_funder_id,
    DROP COLUMN IF EXISTS clubs;
DROP TABLE IF EXISTS service_visits;
DROP TABLE IF EXISTS member_products;
DROP TABLE IF EXISTS service_plans;
DROP TABLE IF EXISTS club_gifts;
DROP TABLE IF EXISTS club_payments;
DROP TABLE IF EXISTS club_memberships;
DROP TABLE IF EXISTS clubs;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
