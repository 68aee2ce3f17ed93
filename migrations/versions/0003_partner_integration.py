"""Partner integration: the partner registry and contracts, API keys (secrets
encrypted at rest), cards, purchases as partners report them, stored partner
responses for idempotency, and the replay fallback for signatures.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

from migrations import sql_statements

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE partners (
    id                     text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name                   text NOT NULL,
    status                 text NOT NULL DEFAULT 'active'
                           CHECK (status IN ('active', 'suspended')),
    currency               text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    return_window_days     int NOT NULL DEFAULT 0 CHECK (return_window_days BETWEEN 0 AND 365),
    price_per_point        numeric NOT NULL DEFAULT 0 CHECK (price_per_point >= 0),
    redemption_value       numeric NOT NULL DEFAULT 0 CHECK (redemption_value >= 0),
    credit_limit_minor     bigint CHECK (credit_limit_minor >= 0),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- At most two active keys per partner (rotation with overlap); revocation is at once.
CREATE TABLE partner_keys (
    key_id           text PRIMARY KEY,
    partner_id       text NOT NULL REFERENCES partners (id),
    secret_encrypted text NOT NULL,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text NOT NULL,
    revoked_at       timestamptz,
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX partner_keys_active ON partner_keys (partner_id) WHERE status = 'active';

CREATE TABLE cards (
    card_number text PRIMARY KEY CHECK (card_number ~ '^[0-9]{8,19}$'),
    member_id   text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    issued_at   timestamptz NOT NULL DEFAULT now(),
    blocked_at  timestamptz,
    CHECK ((status = 'blocked') = (blocked_at IS NOT NULL))
);
CREATE INDEX cards_member ON cards (member_id);

-- A purchase as the partner reported it: what later returns are measured against.
CREATE TABLE partner_purchases (
    partner_id        text NOT NULL,
    partner_reference text NOT NULL,
    member_id         text NOT NULL,
    entry_id          bigint REFERENCES journal_entries (id),
    currency          text NOT NULL,
    total_minor       bigint NOT NULL CHECK (total_minor >= 0),
    returned_minor    bigint NOT NULL DEFAULT 0
                      CHECK (returned_minor >= 0 AND returned_minor <= total_minor),
    occurred_at       timestamptz NOT NULL,
    PRIMARY KEY (partner_id, partner_reference)
);

-- Partner calls by idempotency key: in flight, then the stored response.
CREATE TABLE partner_requests (
    partner_id      text NOT NULL,
    idempotency_key text NOT NULL,
    fingerprint     text NOT NULL,
    status          text NOT NULL CHECK (status IN ('in_flight', 'done')),
    response_status int,
    response_body   bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, idempotency_key)
);
CREATE INDEX partner_requests_created ON partner_requests (created_at);

-- Signatures seen, for when Redis (the replay cache) is unreachable.
CREATE TABLE signature_replays (
    signature  text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX signature_replays_expiry ON signature_replays (expires_at);
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS signature_replays;
DROP TABLE IF EXISTS partner_requests;
DROP TABLE IF EXISTS partner_purchases;
DROP TABLE IF EXISTS cards;
DROP TABLE IF EXISTS partner_keys;
DROP TABLE IF EXISTS partners;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
