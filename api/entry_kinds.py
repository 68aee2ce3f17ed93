"""The `kind` filter of history reads (staff and card holders): one or more
of the ledger's entry kinds (`?kind=earn&kind=burn`). An unknown kind is a
422 `invalid-query-parameter` naming the parameter, the values refused and
the values allowed, never an empty page that looks like "no such entries"."""

from typing import Annotated

from litestar.params import QueryParameter

from api.problems import ApiError
from ledger.kinds import ENTRY_KINDS

KindFilter = Annotated[
    list[str] | None,
    QueryParameter(
        description="Only entries of these kinds (repeat the parameter for several)",
        schema_extra={"items": {"type": "string", "enum": list(ENTRY_KINDS)}},
    ),
]


def entry_kinds(kind: list[str] | None) -> tuple[str, ...]:
    """The kinds asked for, checked: every one must be an entry kind."""
    kinds = tuple(kind or ())
    unknown = sorted(set(kinds) - set(ENTRY_KINDS))
    if unknown:
        raise ApiError(
            "invalid-query-parameter",
            f"kind: {', '.join(map(repr, unknown))} is not an entry kind; "
            f"allowed: {', '.join(ENTRY_KINDS)}",
            parameter="kind",
            invalid=unknown,
            allowed=list(ENTRY_KINDS),
        )
    return kinds
