"""The kinds of journal entry: what an entry's `kind` can be (the
journal_entries.kind check constraint, migration 0007, allows exactly these),
and so what a member's history can be filtered by."""

ENTRY_KINDS = (
    "earn",
    "release",
    "burn",
    "hold",
    "capture",
    "void",
    "transfer",
    "reverse",
    "adjust",
    "expire",
    "forfeit",
    "merge",
)
