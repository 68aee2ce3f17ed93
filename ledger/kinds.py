"""The kinds of journal entry: what an entry's `kind` can be (the
journal_entries.kind check constraint, migrations 0007 and 0019, allows
exactly these), and so what a member's history can be filtered by."""

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
    "reward",  # a burn of its own kind: points spent on goods, not at a till
)
