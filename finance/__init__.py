"""Finance closes the books from the ledger: journal export with control
totals, balances as of any instant, trial balance, points-liability
roll-forward, breakage (IFRS 15, breakage.py), partner settlement statements
(settlement.py), partner file reconciliation (reconciliation*.py) and period
close (close.py). Reads the ledger through ledger/history.py (and its own
groupings over journal entries and postings); writes only its own records
(closes, statements, reconciliation runs, breakage estimates) and posts
repairs through the partners' normal earn path. Imports neither litestar,
redis nor jwt.

The reports' periods and "as of" use the entry's booking time, `created_at`
(set by the server, never in the past), so a period's figures never change;
see ledger/history.py. Settlement statements go by `effective_at` (the
purchase time a partner's books use), and a closed month refuses any entry
effective or booked in it (migration 0015)."""
