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

import msgspec
from sqlalchemy import TextClause, text


@lru_cache(maxsize=512)
def statement(sql: str) -> TextClause:
    """The statement of `sql`, built once (a TextClause is not changed by
    executing it: binding values makes a copy)."""
    return text(sql)


def json_rows(rows: list[tuple]) -> str:
    """Rows for a set-based statement as one JSON array of arrays, read there
    with `jsonb_array_elements(CAST(:rows AS jsonb))` and `e->>i` per column.
    msgspec encodes it in one call and the server parses it once: as one SQL
    array per column, every element was encoded on its own, several times
    the client's and the server's work for a call of a thousand rows. Times
    go as ISO strings with their offset."""
    return msgspec.json.encode(rows).decode()
