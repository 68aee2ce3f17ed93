"""Finance closes the books from the ledger: journal export with control
totals, balances as of any instant, trial balance, points-liability
roll-forward. Reads the ledger through ledger/history.py (and its own
groupings over journal entries and postings); imports neither litestar,
redis nor jwt.

Periods and "as of" use the entry's booking time, `created_at` (set by the
server, never in the past), so a closed period's figures never change; see
ledger/history.py."""
