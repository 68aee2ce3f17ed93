-- The baseline of `python -m loadtests http-earn`: a bare double-entry
-- transfer of 10 between two random accounts, as an application would send it
-- over the simple protocol: one entry row, two postings, two balance updates
-- (in account order, so concurrent transfers never deadlock), one transaction.
-- Tables (bench_entries, bench_postings, bench_balances with accounts
-- 'member:b1:available' .. 'member:bN:available') are made by the benchmark:
--   pgbench -n -c 16 -j 2 -T 15 -f loadtests/bare_transfer.sql -D accounts=N URL
\set a random(1, :accounts)
\set b random(1, :accounts)
\set lo least(:a, :b)
\set hi greatest(:a, :b)
BEGIN;
INSERT INTO bench_entries (kind) VALUES ('transfer') RETURNING id AS entry \gset
INSERT INTO bench_postings (entry_id, account, amount) VALUES (:entry, 'member:b' || :a || ':available', -10), (:entry, 'member:b' || :b || ':available', 10);
UPDATE bench_balances SET balance = balance + (CASE WHEN :lo = :a THEN -10 ELSE 10 END) WHERE account = 'member:b' || :lo || ':available';
UPDATE bench_balances SET balance = balance + (CASE WHEN :hi = :b THEN 10 ELSE -10 END) WHERE account = 'member:b' || :hi || ':available';
END;
