"""The book of record: accounts, journal, postings, balances, holds, lots and
reversals. Framework-free: it imports neither litestar, redis nor jwt."""
