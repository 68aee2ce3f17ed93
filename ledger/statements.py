"""SQL statements built once per process: `statement(sql)` is SQLAlchemy's
`text(sql)`, made the first time a string is seen and kept.

A `text()` construct parses its bind parameters when it is made (a regular
expression over the whole string, a parameter object per name): on the hot
paths (the journal's posting, the accrual's reads and records) that was most
of the cost of SQLAlchemy itself, on every call. Their statements are fixed
strings or a few fixed variants of one (with or without a lock, a CTE), so
each is parsed once. Never for a string that carries values: those are bind
parameters, always."""

from functools import lru_cache

from sqlalchemy import TextClause, text


@lru_cache(maxsize=512)
def statement(sql: str) -> TextClause:
    """The statement of `sql`, built once (a TextClause is not changed by
    executing it: binding values makes a copy)."""
    return text(sql)
