"""Partner settlement statements: numbered, immutable statement runs per partner
and month (finance/settlement.py).

- `settlement_statements`: one row per statement run, its header, lines and
  totals as issued; a reissue is a new row naming the one it `supersedes`
  (unique: a statement is superseded at most once), so a supersession is a
  row of its own and nothing is ever updated.
- `settlement_coverage`: which (partner, month) settles each journal entry,
  written set-based by the first run of that month; its key (partner, entry)
  makes every entry settled exactly once, whenever it arrives.
- `settlement_statement_entries`: the entries behind each statement's lines,
  as that statement valued them (contract version and rate), so a statement's
  traceability never changes when a contract is corrected later.

All three are append-only (the journal's `refuse_change` trigger from 0001,
also on TRUNCATE). Entry ids are not foreign keys into the partitioned
journal: they are selected from it in the same statement that writes them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from alembic import op

from migrations import sql_statements

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE settlement_statements (
    number                 text PRIMARY KEY CHECK (number ~ '^ST-'),
    partner_id             text NOT NULL REFERENCES partners (id),
    partner_name           text NOT NULL,
    period                 date NOT NULL CHECK (extract(day FROM period) = 1),
    issue                  int NOT NULL CHECK (issue > 0),
    supersedes             text UNIQUE REFERENCES settlement_statements (number),
    currency               text NOT NULL,
    issued_at              timestamptz NOT NULL,
    issued_by              text NOT NULL,
    reason                 text,
    entries                bigint NOT NULL CHECK (entries >= 0),
    owed_by_partner_minor  bigint NOT NULL,
    owed_to_partner_minor  bigint NOT NULL,
    net_minor              bigint NOT NULL,
    lines                  jsonb NOT NULL,
    UNIQUE (partner_id, period, issue),
    CHECK ((issue = 1) = (supersedes IS NULL)),
    CHECK (net_minor = owed_by_partner_minor - owed_to_partner_minor)
);

CREATE TABLE settlement_coverage (
    partner_id  text NOT NULL,
    entry_id    bigint NOT NULL,
    period      date NOT NULL,
    statement   text NOT NULL REFERENCES settlement_statements (number)
                DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (partner_id, entry_id)
);
CREATE INDEX settlement_coverage_period ON settlement_coverage (partner_id, period);

CREATE TABLE settlement_statement_entries (
    statement          text NOT NULL REFERENCES settlement_statements (number)
                       DEFERRABLE INITIALLY DEFERRED,
    entry_id           bigint NOT NULL,
    account            text NOT NULL CHECK (account ~ '^partner:'),
    -- the partner-funded promotion and coupon points of an earning, apart
    promotion          boolean NOT NULL,
    kind               text NOT NULL,
    effective_at       timestamptz NOT NULL,
    booked_at          timestamptz NOT NULL,
    reverses_entry_id  bigint,
    partner_reference  text,
    priced_at          timestamptz NOT NULL,
    -- the posting on the partner's account, signed as posted
    amount             bigint NOT NULL CHECK (amount <> 0),
    contract_version   int,
    rate               numeric,
    PRIMARY KEY (statement, entry_id, account, promotion)
);

CREATE TRIGGER settlement_statements_append_only BEFORE UPDATE OR DELETE
    ON settlement_statements FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER settlement_statements_no_truncate BEFORE TRUNCATE
    ON settlement_statements FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER settlement_coverage_append_only BEFORE UPDATE OR DELETE
    ON settlement_coverage FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER settlement_coverage_no_truncate BEFORE TRUNCATE
    ON settlement_coverage FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER settlement_statement_entries_append_only BEFORE UPDATE OR DELETE
    ON settlement_statement_entries FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER settlement_statement_entries_no_truncate BEFORE TRUNCATE
    ON settlement_statement_entries FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS settlement_statement_entries;
DROP TABLE IF EXISTS settlement_coverage;
DROP TABLE IF EXISTS settlement_statements;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
