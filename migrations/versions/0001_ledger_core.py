"""Ledger core: journal, postings, slotted balances, lots, pending points, holds,
reversal tracking and idempotency keys, with database-level guards.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

from migrations import sql_statements

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE journal_entries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN (
                          'earn', 'release', 'burn', 'hold', 'capture', 'void',
                          'transfer', 'reverse', 'adjust', 'expire')),
    member_id         text,
    partner_id        text,
    partner_reference text,
    reverses_entry_id bigint REFERENCES journal_entries (id),
    hold_id           bigint,
    effective_at      timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    posted_by         text NOT NULL,
    reason            text,
    breakdown         jsonb NOT NULL DEFAULT '[]'::jsonb,
    CHECK (kind <> 'adjust' OR length(btrim(coalesce(reason, ''))) > 0),
    CHECK (partner_reference IS NULL OR partner_id IS NOT NULL)
);
-- A partner's own transaction reference is unique per partner, forever.
CREATE UNIQUE INDEX journal_entries_partner_reference
    ON journal_entries (partner_id, partner_reference) WHERE partner_reference IS NOT NULL;
CREATE INDEX journal_entries_reverses ON journal_entries (reverses_entry_id)
    WHERE reverses_entry_id IS NOT NULL;

CREATE TABLE postings (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id  bigint NOT NULL REFERENCES journal_entries (id),
    account   text NOT NULL CHECK (account ~ '^(member|partner|program):'),
    asset     text NOT NULL CHECK (asset IN ('PTS', 'QP')),
    amount    bigint NOT NULL CHECK (amount <> 0),
    member_id text
);
CREATE INDEX postings_entry ON postings (entry_id);
CREATE INDEX postings_account ON postings (account, asset);
CREATE INDEX postings_member_history ON postings (member_id, entry_id DESC)
    WHERE member_id IS NOT NULL;

-- Every entry has at least two postings and balances per asset. Checked at
-- commit (deferred) because postings of one entry arrive as several rows.
CREATE FUNCTION check_entry_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
    posting_count int;
BEGIN
    SELECT count(*) INTO posting_count FROM postings WHERE entry_id = NEW.entry_id;
    IF posting_count < 2 THEN
        RAISE EXCEPTION 'journal entry % has fewer than two postings', NEW.entry_id
            USING ERRCODE = '23514';
    END IF;
    SELECT string_agg(asset || '=' || total, ', ') INTO unbalanced FROM (
        SELECT asset, sum(amount) AS total FROM postings
        WHERE entry_id = NEW.entry_id GROUP BY asset HAVING sum(amount) <> 0) AS s;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance: %', NEW.entry_id, unbalanced
            USING ERRCODE = '23514';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER postings_balance_per_asset
    AFTER INSERT ON postings DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_entry_balances();

-- GoBD: no entry may be changed so that its original content is lost.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: corrections are new entries', TG_TABLE_NAME
        USING ERRCODE = '42501';
END $$;
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Balances per account and asset. Hot accounts (partner, programme) spread
-- over slots summed on read, so concurrent accruals do not queue on one row;
-- member accounts use slot 0 only, whose version orders their changes.
CREATE TABLE balances (
    account    text NOT NULL,
    asset      text NOT NULL CHECK (asset IN ('PTS', 'QP')),
    slot       smallint NOT NULL DEFAULT 0 CHECK (slot >= 0),
    balance    bigint NOT NULL DEFAULT 0,
    version    bigint NOT NULL DEFAULT 0,
    member_id  text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, asset, slot),
    CHECK (member_id IS NULL OR slot = 0)
);

-- Every credit to member:{id}:available is a lot; debits consume lots.
CREATE TABLE lots (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id       text NOT NULL,
    source_entry_id bigint NOT NULL REFERENCES journal_entries (id),
    earn_entry_id   bigint REFERENCES journal_entries (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    remaining       bigint NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    earned_at       timestamptz NOT NULL,
    expires_at      timestamptz,
    source          text NOT NULL
);
CREATE INDEX lots_open_by_member ON lots (member_id, expires_at, id) WHERE remaining > 0;
CREATE INDEX lots_open_by_expiry ON lots (expires_at) WHERE remaining > 0;
CREATE INDEX lots_by_earning ON lots (earn_entry_id) WHERE earn_entry_id IS NOT NULL;

-- Each change to a lot, with the entry that made it. A restoration names the
-- entry whose consumption it undoes (origin_entry_id).
CREATE TABLE lot_movements (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id        bigint NOT NULL REFERENCES journal_entries (id),
    lot_id          bigint NOT NULL REFERENCES lots (id),
    amount          bigint NOT NULL CHECK (amount <> 0),
    origin_entry_id bigint REFERENCES journal_entries (id)
);
CREATE INDEX lot_movements_entry ON lot_movements (entry_id);
CREATE INDEX lot_movements_origin ON lot_movements (origin_entry_id)
    WHERE origin_entry_id IS NOT NULL;
CREATE INDEX lot_movements_lot ON lot_movements (lot_id);

-- Points earned into member:{id}:pending, waiting for the return window.
CREATE TABLE pending_points (
    earn_entry_id     bigint PRIMARY KEY REFERENCES journal_entries (id),
    member_id         text NOT NULL,
    amount            bigint NOT NULL CHECK (amount > 0),
    remaining         bigint NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    earned_at         timestamptz NOT NULL,
    release_at        timestamptz NOT NULL,
    release_entry_id  bigint REFERENCES journal_entries (id)
);
CREATE INDEX pending_points_due ON pending_points (release_at)
    WHERE release_entry_id IS NULL AND remaining > 0;
CREATE INDEX pending_points_member ON pending_points (member_id)
    WHERE release_entry_id IS NULL AND remaining > 0;

-- Two-phase redemptions: authorise -> capture (full or partial) | void | expire.
CREATE TABLE holds (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id          text NOT NULL,
    partner_id         text NOT NULL,
    partner_reference  text,
    amount             bigint NOT NULL CHECK (amount > 0),
    captured           bigint NOT NULL DEFAULT 0 CHECK (captured >= 0 AND captured <= amount),
    status             text NOT NULL DEFAULT 'open'
                           CHECK (status IN ('open', 'captured', 'voided', 'expired')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    authorise_entry_id bigint NOT NULL REFERENCES journal_entries (id),
    resolved_at        timestamptz,
    CHECK ((status = 'open') = (resolved_at IS NULL))
);
CREATE INDEX holds_open_by_expiry ON holds (expires_at) WHERE status = 'open';
CREATE INDEX holds_by_member ON holds (member_id) WHERE status = 'open';

-- What has been reversed of an entry so far; the guard that a reversal never
-- returns more than the original.
CREATE TABLE entry_reversals (
    entry_id   bigint PRIMARY KEY REFERENCES journal_entries (id),
    reversible bigint NOT NULL CHECK (reversible > 0),
    reversed   bigint NOT NULL DEFAULT 0 CHECK (reversed >= 0 AND reversed <= reversible)
);

-- Idempotency: one row per caller and key, with the request fingerprint and
-- the first result.
CREATE TABLE idempotency_keys (
    caller      text NOT NULL,
    key         text NOT NULL,
    operation   text NOT NULL,
    fingerprint text NOT NULL,
    result      jsonb,
    entry_id    bigint REFERENCES journal_entries (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS idempotency_keys;
DROP TABLE IF EXISTS entry_reversals;
DROP TABLE IF EXISTS holds;
DROP TABLE IF EXISTS pending_points;
DROP TABLE IF EXISTS lot_movements;
DROP TABLE IF EXISTS lots;
DROP TABLE IF EXISTS balances;
DROP TABLE IF EXISTS postings;
DROP TABLE IF EXISTS journal_entries;
DROP FUNCTION IF EXISTS refuse_change();
DROP FUNCTION IF EXISTS check_entry_balances();
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
