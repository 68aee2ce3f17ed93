"""A `?status=` filter of a listing: one of the statuses a record can have. An
unknown one is a 422 `invalid-query-parameter` naming the values allowed,
never an empty page that looks like "none of those"."""

from api.problems import ApiError


def status_filter(status: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if status is not None and status not in allowed:
        raise ApiError(
            "invalid-query-parameter",
            f"status: {status!r} is not {what} status; allowed: {', '.join(allowed)}",
            parameter="status",
            invalid=[status],
            allowed=list(allowed),
        )
    return status
