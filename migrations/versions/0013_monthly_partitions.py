"""Postings, entries and lots partitioned by month (native PostgreSQL range
partitioning), every foreign key kept.

Ids encode the booking month. A new entry's or lot's id is
`ledger_id(nextval(seq))` = `(month << 40) | (seq & (2^40 - 1))`, where month
= (year - 2000) * 12 + (month - 1) of the transaction's `now()` in UTC, the
instant its `created_at` also takes: ids stay unique and increasing over time,
below 2^53 (JSON-safe) until the year 2682, and an entry's id names the month
it was booked in (a CHECK holds the two together). So:

- `journal_entries` and `lots` are `PARTITION BY RANGE (id)`, `postings` and
  `lot_movements` `PARTITION BY RANGE (entry_id)`, one partition per month
  `[month << 40, (month + 1) << 40)` (`journal_entries_2026_11`, ...). The
  primary keys stay on `id` (postings and movements: `(entry_id, id)`), so
  every foreign key to `journal_entries (id)` and `lots (id)` is kept,
  re-pointed at the partitioned parents.
- The rows written before this revision keep their small ids (< 2^40): the old
  tables are attached as each parent's first partition, `*_legacy`,
  `FROM (MINVALUE) TO (2^40)`, after their identity is dropped (the new
  sequences start above the old ids). `ledger_legacy_until()` is the instant
  after the last legacy entry was booked: nothing booked later goes there.
- A partner's reference, unique per partner forever, cannot be a unique index
  of a partitioned table (it would have to contain the partition key): it
  moves to the claims table `partner_references`, backfilled here, written by
  the journal in the statement that inserts the entries.
- The append-only row triggers, the partner check and the statement-level
  balance check (migration 0010) are declared on the parents, once each (the
  legacy tables' own copies are dropped first; row triggers are cloned to
  every partition, statement triggers fire on the parent).
- `ledger_ensure_partitions(first, last)` creates the months missing in a
  range (under a transaction-scoped advisory lock, so concurrent callers
  agree); this revision creates the current month and the next three.
  `ledger_ids_from(t)` / `ledger_ids_before(t)` bound the ids of the entries
  booked in a window, so a window read touches only its months' partitions.

The downgrade folds the months back into one plain table each, every id
kept (ids are in receipts partners hold), and restarts the identities of
entries and lots below 2^40; upgrading again moves the rows with month ids
back into their months' partitions and keeps the rest as the legacy ones.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from alembic import op

from migrations import sql_statements

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The month arithmetic ids are made of (UTC, 2000-01 is month 0).
FUNCTIONS = r"""
CREATE FUNCTION ledger_month_index(moment timestamptz) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (extract(year FROM timezone('UTC', moment))::int - 2000) * 12
           + extract(month FROM timezone('UTC', moment))::int - 1
$$;

CREATE FUNCTION ledger_month_start(m int) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT m::bigint << 40
$$;

-- The id of a row booked now: the month in the high bits, the sequence's
-- value in the low 40.
CREATE FUNCTION ledger_id(seq bigint) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ledger_month_start(ledger_month_index(now())) | (seq & 1099511627775)
$$;

CREATE FUNCTION ledger_month_label(m int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (2000 + m / 12)::text || '_' || lpad((m % 12 + 1)::text, 2, '0')
$$;
"""

# The keys between the four tables themselves (and lots to members), declared
# on the partitioned parents going up and on the plain tables going down.
OWN_FOREIGN_KEYS = r"""
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_reverses_entry_id_fkey
    FOREIGN KEY (reverses_entry_id) REFERENCES journal_entries (id);
ALTER TABLE postings ADD CONSTRAINT postings_entry_id_fkey
    FOREIGN KEY (entry_id) REFERENCES journal_entries (id);
ALTER TABLE lots ADD CONSTRAINT lots_source_entry_id_fkey
    FOREIGN KEY (source_entry_id) REFERENCES journal_entries (id);
ALTER TABLE lots ADD CONSTRAINT lots_earn_entry_id_fkey
    FOREIGN KEY (earn_entry_id) REFERENCES journal_entries (id);
ALTER TABLE lots ADD CONSTRAINT lots_member_fk FOREIGN KEY (member_id) REFERENCES members (id);
ALTER TABLE lot_movements ADD CONSTRAINT lot_movements_entry_id_fkey
    FOREIGN KEY (entry_id) REFERENCES journal_entries (id);
ALTER TABLE lot_movements ADD CONSTRAINT lot_movements_lot_id_fkey
    FOREIGN KEY (lot_id) REFERENCES lots (id);
ALTER TABLE lot_movements ADD CONSTRAINT lot_movements_origin_entry_id_fkey
    FOREIGN KEY (origin_entry_id) REFERENCES journal_entries (id);
"""

# The journal's own triggers, declared once on each table going up (on the
# partitioned parents) and going down (on the plain tables).
LEDGER_TRIGGERS = r"""
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_entries_partner_registered BEFORE INSERT ON journal_entries
    FOR EACH ROW WHEN (NEW.partner_id IS NOT NULL)
    EXECUTE FUNCTION check_partner_registered();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_balance_per_asset AFTER INSERT ON postings
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_inserted_entries_balance();
"""

UPGRADE = (
    r"""
-- Nobody writes the ledger while its tables change shape; locked in the
-- order the write path takes them (entries, postings, lots, movements).
LOCK TABLE journal_entries, postings, lots, lot_movements IN ACCESS EXCLUSIVE MODE;

ALTER TABLE journal_entries RENAME TO journal_entries_legacy;
ALTER TABLE postings RENAME TO postings_legacy;
ALTER TABLE lots RENAME TO lots_legacy;
ALTER TABLE lot_movements RENAME TO lot_movements_legacy;

-- Declared on the parents below; the parents' row triggers are cloned onto
-- the legacy partitions when they are attached.
DROP TRIGGER journal_entries_append_only ON journal_entries_legacy;
DROP TRIGGER journal_entries_partner_registered ON journal_entries_legacy;
DROP TRIGGER postings_append_only ON postings_legacy;
DROP TRIGGER postings_balance_per_asset ON postings_legacy;

-- Foreign keys between the four tables: declared on the parents below.
ALTER TABLE journal_entries_legacy DROP CONSTRAINT journal_entries_reverses_entry_id_fkey;
ALTER TABLE postings_legacy DROP CONSTRAINT postings_entry_id_fkey;
ALTER TABLE lots_legacy DROP CONSTRAINT lots_source_entry_id_fkey;
ALTER TABLE lots_legacy DROP CONSTRAINT lots_earn_entry_id_fkey;
ALTER TABLE lots_legacy DROP CONSTRAINT lots_member_fk;
ALTER TABLE lot_movements_legacy DROP CONSTRAINT lot_movements_entry_id_fkey;
ALTER TABLE lot_movements_legacy DROP CONSTRAINT lot_movements_lot_id_fkey;
ALTER TABLE lot_movements_legacy DROP CONSTRAINT lot_movements_origin_entry_id_fkey;

-- Every other table's foreign key to an entry or a lot, kept aside and added
-- again at the end, pointing at the parent (same name, same definition).
CREATE TEMP TABLE ledger_moved_fks ON COMMIT DROP AS
SELECT c.conrelid::regclass::text AS tab, c.conname, pg_get_constraintdef(c.oid) AS def,
       t.relname AS target
FROM pg_constraint c JOIN pg_class t ON t.oid = c.confrelid
WHERE c.contype = 'f' AND c.conparentid = 0
  AND t.relname IN ('journal_entries_legacy', 'lots_legacy')
  AND c.conrelid NOT IN ('journal_entries_legacy'::regclass, 'postings_legacy'::regclass,
                         'lots_legacy'::regclass, 'lot_movements_legacy'::regclass);
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN SELECT * FROM ledger_moved_fks ORDER BY tab, conname LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tab, fk.conname);
    END LOOP;
END $$;

-- The reference's uniqueness moves to partner_references; postings and
-- movements are keyed (entry_id, id), which also serves lookups by entry.
DROP INDEX journal_entries_partner_reference;
DROP INDEX postings_entry;
DROP INDEX lot_movements_entry;
ALTER TABLE postings_legacy DROP CONSTRAINT postings_pkey;
ALTER TABLE lot_movements_legacy DROP CONSTRAINT lot_movements_pkey;

-- The legacy indexes take partition names, so that the parents' indexes
-- (named as before) adopt them on ATTACH instead of building new ones.
ALTER TABLE journal_entries_legacy RENAME CONSTRAINT journal_entries_pkey
    TO journal_entries_legacy_pkey;
ALTER INDEX journal_entries_reverses RENAME TO journal_entries_legacy_reverses;
ALTER INDEX journal_entries_member_transfers RENAME TO journal_entries_legacy_member_transfers;
ALTER INDEX journal_entries_member_earnings RENAME TO journal_entries_legacy_member_earnings;
ALTER INDEX postings_account RENAME TO postings_legacy_account;
ALTER INDEX postings_member_history RENAME TO postings_legacy_member_history;
ALTER TABLE lots_legacy RENAME CONSTRAINT lots_pkey TO lots_legacy_pkey;
ALTER INDEX lots_open_by_member RENAME TO lots_legacy_open_by_member;
ALTER INDEX lots_open_by_expiry RENAME TO lots_legacy_open_by_expiry;
ALTER INDEX lots_by_earning RENAME TO lots_legacy_by_earning;
ALTER INDEX lot_movements_origin RENAME TO lot_movements_legacy_origin;
ALTER INDEX lot_movements_lot RENAME TO lot_movements_legacy_lot;

-- Ids come from sequences of the same names. Entry and lot sequences start
-- above every low 40 bits used (so a month id made later never meets one
-- made before), postings and movements above the old ids.
ALTER TABLE journal_entries_legacy ALTER COLUMN id DROP IDENTITY;
ALTER TABLE postings_legacy ALTER COLUMN id DROP IDENTITY;
ALTER TABLE lots_legacy ALTER COLUMN id DROP IDENTITY;
ALTER TABLE lot_movements_legacy ALTER COLUMN id DROP IDENTITY;
CREATE SEQUENCE journal_entries_id_seq;
CREATE SEQUENCE postings_id_seq;
CREATE SEQUENCE lots_id_seq;
CREATE SEQUENCE lot_movements_id_seq;
SELECT setval('journal_entries_id_seq', coalesce(max(id & 1099511627775), 0) + 1, false)
    FROM journal_entries_legacy;
SELECT setval('postings_id_seq', coalesce(max(id), 0) + 1, false) FROM postings_legacy;
SELECT setval('lots_id_seq', coalesce(max(id & 1099511627775), 0) + 1, false) FROM lots_legacy;
SELECT setval('lot_movements_id_seq', coalesce(max(id), 0) + 1, false)
    FROM lot_movements_legacy;

-- Rows with month ids in the old tables (booked while this revision was in
-- place, kept by its downgrade) go back to their months' partitions below.
CREATE TEMP TABLE ledger_month_entries ON COMMIT DROP AS
    SELECT * FROM journal_entries_legacy WHERE id >= 1099511627776;
CREATE TEMP TABLE ledger_month_postings ON COMMIT DROP AS
    SELECT * FROM postings_legacy WHERE entry_id >= 1099511627776;
CREATE TEMP TABLE ledger_month_lots ON COMMIT DROP AS
    SELECT * FROM lots_legacy WHERE id >= 1099511627776;
CREATE TEMP TABLE ledger_month_lot_movements ON COMMIT DROP AS
    SELECT * FROM lot_movements_legacy WHERE entry_id >= 1099511627776;
DELETE FROM lot_movements_legacy WHERE entry_id >= 1099511627776;
DELETE FROM lots_legacy WHERE id >= 1099511627776;
DELETE FROM postings_legacy WHERE entry_id >= 1099511627776;
DELETE FROM journal_entries_legacy WHERE id >= 1099511627776;

-- The instant after the last legacy entry was booked (-infinity: none), a
-- constant from now on: windows that start later skip the legacy partition.
DO $$
BEGIN
    EXECUTE format(
        'CREATE FUNCTION ledger_legacy_until() RETURNS timestamptz '
        'LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
        format('SELECT %L::timestamptz', (
            SELECT coalesce(max(created_at) + interval '1 microsecond', '-infinity')
            FROM journal_entries_legacy)));
END $$;

-- The parents: the legacy tables' columns, defaults and CHECK constraints
-- (names included, which ATTACH matches), keyed and partitioned by id.
CREATE TABLE journal_entries (
    LIKE journal_entries_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    CONSTRAINT journal_entries_pkey PRIMARY KEY (id)
) PARTITION BY RANGE (id);
ALTER TABLE journal_entries ALTER COLUMN id
    SET DEFAULT ledger_id(nextval('journal_entries_id_seq'));
ALTER SEQUENCE journal_entries_id_seq OWNED BY journal_entries.id;
CREATE INDEX journal_entries_reverses ON journal_entries (reverses_entry_id)
    WHERE reverses_entry_id IS NOT NULL;
CREATE INDEX journal_entries_member_transfers ON journal_entries (member_id, effective_at)
    WHERE kind = 'transfer';
CREATE INDEX journal_entries_member_earnings ON journal_entries (member_id, effective_at)
    WHERE kind = 'earn';

CREATE TABLE postings (
    LIKE postings_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    CONSTRAINT postings_pkey PRIMARY KEY (entry_id, id)
) PARTITION BY RANGE (entry_id);
ALTER TABLE postings ALTER COLUMN id SET DEFAULT nextval('postings_id_seq');
ALTER SEQUENCE postings_id_seq OWNED BY postings.id;
CREATE INDEX postings_account ON postings (account, asset);
CREATE INDEX postings_member_history ON postings (member_id, entry_id DESC)
    WHERE member_id IS NOT NULL;

CREATE TABLE lots (
    LIKE lots_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    CONSTRAINT lots_pkey PRIMARY KEY (id)
) PARTITION BY RANGE (id);
ALTER TABLE lots ALTER COLUMN id SET DEFAULT ledger_id(nextval('lots_id_seq'));
ALTER SEQUENCE lots_id_seq OWNED BY lots.id;
CREATE INDEX lots_open_by_member ON lots (member_id, expires_at, id) WHERE remaining > 0;
CREATE INDEX lots_open_by_expiry ON lots (expires_at) WHERE remaining > 0;
CREATE INDEX lots_by_earning ON lots (earn_entry_id) WHERE earn_entry_id IS NOT NULL;

CREATE TABLE lot_movements (
    LIKE lot_movements_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    CONSTRAINT lot_movements_pkey PRIMARY KEY (entry_id, id)
) PARTITION BY RANGE (entry_id);
ALTER TABLE lot_movements ALTER COLUMN id SET DEFAULT nextval('lot_movements_id_seq');
ALTER SEQUENCE lot_movements_id_seq OWNED BY lot_movements.id;
CREATE INDEX lot_movements_origin ON lot_movements (origin_entry_id)
    WHERE origin_entry_id IS NOT NULL;
CREATE INDEX lot_movements_lot ON lot_movements (lot_id);

ALTER TABLE journal_entries ATTACH PARTITION journal_entries_legacy
    FOR VALUES FROM (MINVALUE) TO (1099511627776);
ALTER TABLE postings ATTACH PARTITION postings_legacy
    FOR VALUES FROM (MINVALUE) TO (1099511627776);
ALTER TABLE lots ATTACH PARTITION lots_legacy
    FOR VALUES FROM (MINVALUE) TO (1099511627776);
ALTER TABLE lot_movements ATTACH PARTITION lot_movements_legacy
    FOR VALUES FROM (MINVALUE) TO (1099511627776);

-- The partitions of months first..last (month indexes) that are missing, for
-- all four tables; returns how many it made. Concurrent callers queue on the
-- advisory lock and find the others' partitions made. A month is made as an
-- empty table attached to its parent (SHARE UPDATE EXCLUSIVE on the parent:
-- reads and writes go on; the foreign keys take SHARE ROW EXCLUSIVE on the
-- tables that reference the parent for the moment of the attach).
CREATE FUNCTION ledger_ensure_partitions(first_month int, last_month int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    m int;
    parent text;
    part text;
    made int := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('ledger_ensure_partitions', 0));
    FOR m IN first_month .. last_month LOOP
        FOREACH parent IN ARRAY ARRAY['journal_entries', 'postings', 'lots', 'lot_movements']
        LOOP
            part := parent || '_' || ledger_month_label(m);
            CONTINUE WHEN EXISTS (
                SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = parent::regclass AND c.relname = part);
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING CONSTRAINTS)', part, parent);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                parent, part, ledger_month_start(m), ledger_month_start(m + 1));
            made := made + 1;
        END LOOP;
    END LOOP;
    RETURN made;
END $$;

SELECT ledger_ensure_partitions(m, m)
FROM (SELECT DISTINCT (id >> 40)::int AS m FROM ledger_month_entries) AS months;
INSERT INTO journal_entries SELECT * FROM ledger_month_entries;
INSERT INTO postings SELECT * FROM ledger_month_postings;
INSERT INTO lots SELECT * FROM ledger_month_lots;
INSERT INTO lot_movements SELECT * FROM ledger_month_lot_movements;

-- An entry lives in the partition of the month it was booked in: what lets a
-- window of booking time be read from its months' partitions alone.
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_booking_month CHECK (
    CASE WHEN id < 1099511627776 THEN created_at < ledger_legacy_until()
         ELSE id >> 40 = ledger_month_index(created_at) END);
-- A lot is made by an entry of its own transaction, so of its month.
ALTER TABLE lots ADD CONSTRAINT lots_booking_month CHECK (id >> 40 = source_entry_id >> 40);

"""
    + OWN_FOREIGN_KEYS
    + r"""
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN SELECT * FROM ledger_moved_fks ORDER BY tab, conname LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.tab, fk.conname,
            replace(fk.def, 'REFERENCES ' || fk.target || '(',
                    'REFERENCES ' || replace(fk.target, '_legacy', '') || '('));
    END LOOP;
END $$;

"""
    + LEDGER_TRIGGERS
    + r"""

-- A partner's reference is claimed once, forever, by the entry that used it.
CREATE TABLE partner_references (
    partner_id        text NOT NULL,
    partner_reference text NOT NULL,
    entry_id          bigint NOT NULL REFERENCES journal_entries (id),
    PRIMARY KEY (partner_id, partner_reference)
);
INSERT INTO partner_references (partner_id, partner_reference, entry_id)
SELECT partner_id, partner_reference, id FROM journal_entries
WHERE partner_reference IS NOT NULL;
CREATE TRIGGER partner_references_append_only BEFORE UPDATE OR DELETE ON partner_references
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- The ids of the entries (and lots) booked in [a, b) lie in
-- [ledger_ids_from(a), ledger_ids_before(b)): with both conditions next to
-- the created_at ones, a window reads its months' partitions alone (and the
-- legacy one only while the window starts before ledger_legacy_until()).
CREATE FUNCTION ledger_ids_from(moment timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN moment < ledger_legacy_until() THEN 0
                ELSE ledger_month_start(ledger_month_index(moment)) END
$$;
CREATE FUNCTION ledger_ids_before(moment timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT greatest(1099511627776, ledger_month_start(ledger_month_index(moment)
        + CASE WHEN date_trunc('month', timezone('UTC', moment)) = timezone('UTC', moment)
               THEN 0 ELSE 1 END))
$$;

SELECT ledger_ensure_partitions(ledger_month_index(now()), ledger_month_index(now()) + 3);
"""
)

DOWNGRADE = (
    r"""
LOCK TABLE journal_entries, postings, lots, lot_movements IN ACCESS EXCLUSIVE MODE;

DROP TABLE partner_references;

-- The other tables' foreign keys to entries and lots, kept aside: a partition
-- that rows elsewhere reference cannot be detached.
CREATE TEMP TABLE ledger_moved_fks ON COMMIT DROP AS
SELECT c.conrelid::regclass::text AS tab, c.conname, pg_get_constraintdef(c.oid) AS def
FROM pg_constraint c
WHERE c.contype = 'f' AND c.conparentid = 0
  AND c.confrelid IN ('journal_entries'::regclass, 'lots'::regclass)
  AND c.conrelid NOT IN ('journal_entries'::regclass, 'postings'::regclass,
                         'lots'::regclass, 'lot_movements'::regclass);
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN SELECT * FROM ledger_moved_fks ORDER BY tab, conname LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tab, fk.conname);
    END LOOP;
END $$;

ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_reverses_entry_id_fkey;
ALTER TABLE postings DROP CONSTRAINT postings_entry_id_fkey;
ALTER TABLE lots DROP CONSTRAINT lots_source_entry_id_fkey;
ALTER TABLE lots DROP CONSTRAINT lots_earn_entry_id_fkey;
ALTER TABLE lots DROP CONSTRAINT lots_member_fk;
ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_entry_id_fkey;
ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_lot_id_fkey;
ALTER TABLE lot_movements DROP CONSTRAINT lot_movements_origin_entry_id_fkey;
DROP TRIGGER journal_entries_append_only ON journal_entries;
DROP TRIGGER journal_entries_partner_registered ON journal_entries;
DROP TRIGGER postings_append_only ON postings;
DROP TRIGGER postings_balance_per_asset ON postings;

ALTER TABLE journal_entries DETACH PARTITION journal_entries_legacy;
ALTER TABLE postings DETACH PARTITION postings_legacy;
ALTER TABLE lots DETACH PARTITION lots_legacy;
ALTER TABLE lot_movements DETACH PARTITION lot_movements_legacy;

-- What was booked in the months goes back into the one table each.
INSERT INTO journal_entries_legacy SELECT * FROM journal_entries;
INSERT INTO postings_legacy SELECT * FROM postings;
INSERT INTO lots_legacy SELECT * FROM lots;
INSERT INTO lot_movements_legacy SELECT * FROM lot_movements;
DROP TABLE journal_entries, postings, lots, lot_movements;

ALTER TABLE journal_entries_legacy DROP CONSTRAINT journal_entries_booking_month;
ALTER TABLE lots_legacy DROP CONSTRAINT lots_booking_month;
ALTER TABLE journal_entries_legacy RENAME TO journal_entries;
ALTER TABLE postings_legacy RENAME TO postings;
ALTER TABLE lots_legacy RENAME TO lots;
ALTER TABLE lot_movements_legacy RENAME TO lot_movements;

ALTER TABLE journal_entries RENAME CONSTRAINT journal_entries_legacy_pkey TO journal_entries_pkey;
ALTER INDEX journal_entries_legacy_reverses RENAME TO journal_entries_reverses;
ALTER INDEX journal_entries_legacy_member_transfers RENAME TO journal_entries_member_transfers;
ALTER INDEX journal_entries_legacy_member_earnings RENAME TO journal_entries_member_earnings;
ALTER INDEX postings_legacy_account RENAME TO postings_account;
ALTER INDEX postings_legacy_member_history RENAME TO postings_member_history;
ALTER TABLE lots RENAME CONSTRAINT lots_legacy_pkey TO lots_pkey;
ALTER INDEX lots_legacy_open_by_member RENAME TO lots_open_by_member;
ALTER INDEX lots_legacy_open_by_expiry RENAME TO lots_open_by_expiry;
ALTER INDEX lots_legacy_by_earning RENAME TO lots_by_earning;
ALTER INDEX lot_movements_legacy_origin RENAME TO lot_movements_origin;
ALTER INDEX lot_movements_legacy_lot RENAME TO lot_movements_lot;

-- Postings and movements: keyed by id again (the (entry_id, id) key the
-- parent gave them goes).
DO $$
DECLARE
    tab text;
BEGIN
    FOREACH tab IN ARRAY ARRAY['postings', 'lot_movements'] LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', tab,
            (SELECT conname FROM pg_constraint
             WHERE conrelid = tab::regclass AND contype = 'p'));
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY (id)', tab, tab || '_pkey');
    END LOOP;
END $$;
CREATE INDEX postings_entry ON postings (entry_id);
CREATE INDEX lot_movements_entry ON lot_movements (entry_id);
CREATE UNIQUE INDEX journal_entries_partner_reference
    ON journal_entries (partner_id, partner_reference) WHERE partner_reference IS NOT NULL;

ALTER TABLE journal_entries ALTER COLUMN id DROP DEFAULT;
ALTER TABLE postings ALTER COLUMN id DROP DEFAULT;
ALTER TABLE lots ALTER COLUMN id DROP DEFAULT;
ALTER TABLE lot_movements ALTER COLUMN id DROP DEFAULT;
ALTER TABLE journal_entries ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
ALTER TABLE postings ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
ALTER TABLE lots ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
ALTER TABLE lot_movements ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
-- Entries and lots: small ids again, above every low 40 bits used, so that
-- an upgrade finds the rows booked meanwhile below 2^40 (legacy) and its
-- months' ids never meet them.
SELECT setval('journal_entries_id_seq', coalesce(max(id & 1099511627775), 0) + 1, false)
    FROM journal_entries;
SELECT setval('postings_id_seq', coalesce(max(id), 0) + 1, false) FROM postings;
SELECT setval('lots_id_seq', coalesce(max(id & 1099511627775), 0) + 1, false) FROM lots;
SELECT setval('lot_movements_id_seq', coalesce(max(id), 0) + 1, false) FROM lot_movements;

"""
    + OWN_FOREIGN_KEYS
    + r"""
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN SELECT * FROM ledger_moved_fks ORDER BY tab, conname LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.tab, fk.conname, fk.def);
    END LOOP;
END $$;

"""
    + LEDGER_TRIGGERS
    + r"""

DROP FUNCTION ledger_ensure_partitions(int, int);
DROP FUNCTION ledger_ids_before(timestamptz);
DROP FUNCTION ledger_ids_from(timestamptz);
DROP FUNCTION ledger_legacy_until();
DROP FUNCTION ledger_month_label(int);
DROP FUNCTION ledger_id(bigint);
DROP FUNCTION ledger_month_start(int);
DROP FUNCTION ledger_month_index(timestamptz);
"""
)


def upgrade() -> None:
    for statement in sql_statements(FUNCTIONS) + sql_statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in sql_statements(DOWNGRADE):
        op.execute(statement)
