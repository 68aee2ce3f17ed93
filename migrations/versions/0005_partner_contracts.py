"""Partner contracts with effective dates: the terms move from `partners` into
`partner_contracts`, one row per version (history kept), with a
late-submission window and a deposit; promotions that accept purchases
reported after they ended.

Every existing partner gets version 1 with its terms as they were, in force
from its creation. The version in force at a time is the newest one whose
`effective_from` is not after it (version 1 before every date). The downgrade
puts the terms in force at that moment back on `partners`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE partner_contracts (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_id               text NOT NULL REFERENCES partners (id),
    version                  int NOT NULL CHECK (version > 0),
    effective_from           timestamptz NOT NULL,
    return_window_days       int NOT NULL DEFAULT 0 CHECK (return_window_days BETWEEN 0 AND 365),
    price_per_point          numeric NOT NULL DEFAULT 0 CHECK (price_per_point >= 0),
    redemption_value         numeric NOT NULL DEFAULT 0 CHECK (redemption_value >= 0),
    credit_limit_minor       bigint CHECK (credit_limit_minor >= 0),
    deposit_minor            bigint NOT NULL DEFAULT 0 CHECK (deposit_minor >= 0),
    late_submission_days     int NOT NULL DEFAULT 30
                             CHECK (late_submission_days BETWEEN 0 AND 730),
    future_tolerance_seconds int NOT NULL DEFAULT 300
                             CHECK (future_tolerance_seconds BETWEEN 0 AND 86400),
    created_by               text NOT NULL,
    created_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (partner_id, version)
);

INSERT INTO partner_contracts (partner_id, version, effective_from, return_window_days,
    price_per_point, redemption_value, credit_limit_minor, created_by)
SELECT id, 1, created_at, return_window_days, price_per_point, redemption_value,
       credit_limit_minor, 'migration:0005'
FROM partners;

ALTER TABLE partners DROP COLUMN return_window_days, DROP COLUMN price_per_point,
    DROP COLUMN redemption_value, DROP COLUMN credit_limit_minor;

ALTER TABLE promotions ADD COLUMN accepts_late_submissions boolean NOT NULL DEFAULT false;
"""

DOWNGRADE = r"""
ALTER TABLE promotions DROP COLUMN IF EXISTS accepts_late_submissions;

ALTER TABLE partners
    ADD COLUMN return_window_days int NOT NULL DEFAULT 0
        CHECK (return_window_days BETWEEN 0 AND 365),
    ADD COLUMN price_per_point numeric NOT NULL DEFAULT 0 CHECK (price_per_point >= 0),
    ADD COLUMN redemption_value numeric NOT NULL DEFAULT 0 CHECK (redemption_value >= 0),
    ADD COLUMN credit_limit_minor bigint CHECK (credit_limit_minor >= 0);

UPDATE partners p SET (return_window_days, price_per_point, redemption_value,
    credit_limit_minor) = (
    SELECT c.return_window_days, c.price_per_point, c.redemption_value, c.credit_limit_minor
    FROM partner_contracts c WHERE c.partner_id = p.id
    ORDER BY c.effective_from <= now() DESC,
             CASE WHEN c.effective_from <= now() THEN c.version END DESC, c.version
    LIMIT 1)
WHERE EXISTS (SELECT 1 FROM partner_contracts c WHERE c.partner_id = p.id);

DROP TABLE IF EXISTS partner_contracts;
"""


def upgrade() -> None:
    for statement in sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
