"""RFC 9457 problem details: one stable `type` per domain error, and handlers
that turn every error (domain, validation, HTTP, database, unexpected) into
`application/problem+json`, never a bare 500 page.

Database trouble is classified by ledger.database: a database that cannot
serve now (down, restarting, a time limit hit, contention that outlived the
retries) answers 503 with Retry-After and one warning line in the log; a value
PostgreSQL refused for its column answers 422 `invalid-input` (the boundary
guard in api/input_guard.py should have caught it first).

Every problem a request is answered with carries the request's id as
`request_id` (the `X-Request-Id` the response has, api/observability.py), so
a client's report of a problem finds its log lines. A stored answer replayed
for a retried Idempotency-Key is the first answer, with the first id."""

import logging
from collections.abc import Mapping

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy import exc as sqlalchemy_errors

from api.logs import current_request
from ledger.database import is_invalid_input, is_unavailable, refused_party, sqlstate
from ledger.errors import LedgerError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("loyalty.api")

# code -> (HTTP status, title)
PROBLEMS: dict[str, tuple[int, str]] = {
    "invalid-account": (422, "Invalid account address"),
    "invalid-amount": (422, "Invalid amount"),
    "unbalanced-entry": (422, "Entry does not balance"),
    "reason-required": (422, "A reason is required"),
    "insufficient-points": (422, "Insufficient points"),
    "entry-not-found": (404, "Journal entry not found"),
    "not-reversible": (422, "Entry cannot be reversed"),
    "reversal-exceeds-original": (422, "Reversal exceeds what is left of the original"),
    "hold-not-found": (404, "Hold not found"),
    "hold-not-open": (409, "Hold already resolved"),
    "hold-expired": (409, "Hold expired"),
    "capture-exceeds-hold": (422, "Capture exceeds the hold"),
    "duplicate-partner-reference": (409, "Partner reference already used"),
    "idempotency-key-reused": (422, "Idempotency key reused with a different request"),
    "same-member": (422, "Sender and receiver are the same member"),
    "transfer-refused": (422, "Transfer refused by the transfer rules"),
    "invalid-cursor": (400, "Invalid pagination cursor"),
    "invalid-rule": (422, "Invalid rule"),
    "invalid-period": (422, "Invalid period or instant"),
    "invalid-export-format": (422, "Invalid export format"),
    "export-incomplete": (500, "Export does not match its control totals"),
    "exports-busy": (503, "Every export connection is in use, retry later"),
    "invalid-reconciliation-mapping": (422, "Invalid reconciliation file mapping"),
    "reconciliation-file-invalid": (422, "File does not match the partner's mapping"),
    "reconciliation-not-found": (404, "Reconciliation not found"),
    "settlement-period-open": (422, "Settlement month not over yet"),
    "settlement-exists": (409, "Month already settled for the partner"),
    "settlement-out-of-order": (409, "Month before the partner's last settled month"),
    "statement-not-found": (404, "Settlement statement not found"),
    "period-closed": (422, "Effective time in a closed period"),
    "invalid-effective-time": (422, "Invalid effective time"),
    "period-already-closed": (409, "Period already closed"),
    "period-not-over": (422, "Period not over yet"),
    "period-not-next": (409, "Close the periods in order"),
    "period-not-closed": (404, "Period not closed"),
    "unknown-category": (422, "Unknown category"),
    "overlapping-exclusive-promotion": (422, "Overlaps another exclusive promotion"),
    "no-rule-in-force": (422, "No rule in force"),
    "unknown-currency": (422, "Unknown currency"),
    "currency-mismatch": (422, "Currency does not match the partner's rule"),
    "coupon-not-found": (404, "Coupon not found"),
    "coupon-not-usable": (422, "Coupon cannot be used"),
    "rule-not-found": (404, "Rule not found"),
    "invalid-purchase": (422, "Invalid purchase"),
    "invalid-reward": (422, "Invalid reward"),
    "reward-not-found": (404, "Reward not found"),
    "reward-exists": (409, "Reward already exists"),
    "reward-out-of-stock": (409, "Reward out of stock"),
    "reward-order-not-found": (404, "Reward order not found"),
    "reward-order-not-open": (409, "Reward order already shipped or cancelled"),
    "invalid-claim": (422, "Invalid missing-points claim"),
    "claim-outside-window": (422, "Purchase older than the claim window"),
    "claim-exists": (409, "Receipt already claimed"),
    "claim-not-found": (404, "Claim not found"),
    "claim-not-open": (409, "Claim already confirmed, settled or rejected"),
    "invalid-pool": (422, "Invalid family pool request"),
    "pool-not-found": (404, "Family pool not found"),
    "already-in-pool": (409, "Member already in a family pool"),
    "pool-full": (409, "Family pool full"),
    "pool-cool-off": (409, "Member left a pool too recently to join another"),
    "pool-redeem-refused": (403, "Only an adult of the pool redeems"),
    "insufficient-pooled-points": (422, "Insufficient miles in the pool"),
    "invalid-club": (422, "Invalid club"),
    "club-not-found": (404, "Club not found"),
    "club-exists": (409, "Club already exists"),
    "club-membership-not-found": (404, "Club membership not found"),
    "club-membership-exists": (409, "Already a member of the club"),
    "club-membership-cancelled": (409, "Club membership cancelled"),
    "club-renewal-too-early": (409, "Next club term already paid"),
    "club-fee-mismatch": (422, "Payment does not match the club's fee"),
    "club-payment-reference-reused": (409, "Payment reference recorded for another payment"),
    "invalid-service-input": (422, "Invalid service plan, product or visit"),
    "service-plan-not-found": (404, "Producer has no service plan"),
    "product-not-found": (404, "Product not registered"),
    "product-registered": (409, "Product registered to another member"),
    "dealer-not-authorised": (403, "Partner is not a dealer of the producer"),
    "service-visit-exists": (409, "Visit reference used for another visit"),
    "validation-error": (400, "Request does not match the schema"),
    "malformed-request": (400, "Malformed request"),
    "payload-too-large": (413, "Request body too large"),
    "unsupported-media-type": (415, "Request body of a media type this operation does not take"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "token-missing": (401, "Bearer token missing"),
    "token-invalid": (401, "Bearer token invalid"),
    "token-expired": (401, "Bearer token expired"),
    "token-wrong-audience": (401, "Bearer token for another audience"),
    "token-wrong-issuer": (401, "Bearer token from another issuer"),
    "token-algorithm-not-allowed": (401, "Bearer token algorithm not allowed"),
    "missing-role": (403, "Role required"),
    "signature-missing": (401, "Request not signed"),
    "signature-malformed": (401, "Signature headers malformed"),
    "key-unknown": (401, "Unknown key id"),
    "key-revoked": (401, "Key revoked"),
    "signature-stale": (401, "Timestamp outside the tolerance"),
    "signature-invalid": (401, "Signature does not match"),
    "signature-replayed": (401, "Signature already used"),
    "rate-limited": (429, "Too many requests"),
    "partner-suspended": (403, "Partner suspended"),
    "partner-not-found": (404, "Partner not found"),
    "member-not-found": (404, "Member not found"),
    "member-not-active": (422, "Member closed or merged"),
    "member-exists": (409, "Member already enrolled"),
    "invalid-member": (422, "Invalid member data"),
    "member-still-active": (409, "Member still active"),
    "member-accounts-not-settled": (409, "Member's accounts not settled"),
    "too-many-keys": (409, "Too many active keys"),
    "key-not-found": (404, "Key not found"),
    "card-not-found": (404, "Card not found"),
    "card-blocked": (422, "Card blocked"),
    "purchase-not-found": (404, "Purchase not found"),
    "return-exceeds-purchase": (422, "Return exceeds what is left of the purchase"),
    "purchase-time-outside-window": (422, "Purchase time outside the contract's window"),
    "credit-limit-exceeded": (422, "Partner credit limit exceeded"),
    "idempotency-key-missing": (400, "Idempotency-Key header required"),
    "invalid-idempotency-key": (400, "Idempotency-Key not 1-255 printable characters"),
    "request-in-flight": (409, "A request with this idempotency key is in flight"),
    "invalid-input": (422, "Input outside what the API accepts"),
    "invalid-query-parameter": (422, "Query parameter value not allowed"),
    "invalid-breakage-rate": (422, "Expected redemption rate outside (0, 1]"),
    "breakage-estimate-backdated": (422, "A breakage estimate cannot start in the past"),
    "invalid-trailing-months": (422, "Invalid trailing months"),
    "database-unavailable": (503, "Database unavailable, retry shortly"),
    "internal-error": (500, "Internal error"),
}

# Members RFC 9457 defines; an extension of the same name never replaces them.
STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})
DATABASE_RETRY_AFTER_SECONDS = 1

_HTTP_CODES = {
    400: "malformed-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


def problem_type(code: str) -> str:
    return f"/problems/{code}"


class ApiError(Exception):
    """An error of the API layer itself (authentication, authorisation, input)."""

    def __init__(self, code: str, detail: str, /, **extensions: object) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extensions = extensions


def problem(
    code: str,
    detail: str,
    instance: str | None = None,
    /,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, object] | None = None,
) -> Response:
    """The problem response for `code`. Extensions come as one mapping, so no
    extension name (`status`, `headers`, ...) can collide with a parameter;
    one named like a standard member is left out rather than replace it. A
    `retry_after` extension also becomes the Retry-After header. The answer
    to a request (a problem with its `instance`) names the request's id
    (`request_id`), and the request notes the type it answered (for the
    problem counters, api/metrics.py)."""
    default_status, title = PROBLEMS.get(code, (status or 500, code.replace("-", " ")))
    status = status or default_status
    extra = {
        name: value
        for name, value in (extensions or {}).items()
        if value is not None and name not in STANDARD_MEMBERS
    }
    body: dict[str, object] = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    if instance and (request := current_request()) is not None:
        # The answer to this request (an `instance`), not a problem embedded
        # in an answer (a batch item's, rebuilt the same on a replay).
        body["request_id"] = request.request_id
        request.problem = code
    all_headers = dict(headers or {})
    if "retry_after" in extra:
        all_headers.setdefault("Retry-After", str(extra["retry_after"]))
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=all_headers or None)


def _domain(request: Request, error: LedgerError) -> Response:
    return problem(error.code, error.detail, request.url.path, extensions=error.extensions)


def _api(request: Request, error: ApiError) -> Response:
    headers = {}
    if error.code.startswith("token-"):
        headers["WWW-Authenticate"] = 'Bearer realm="loyalty"'
    return problem(
        error.code, error.detail, request.url.path, headers=headers, extensions=error.extensions
    )


def _validation(request: Request, error: ValidationException) -> Response:
    errors = error.extra if isinstance(error.extra, list) else None
    return problem(
        "validation-error", str(error.detail), request.url.path, extensions={"errors": errors}
    )


def _http(request: Request, error: HTTPException) -> Response:
    code = _HTTP_CODES.get(
        error.status_code, "malformed-request" if error.status_code < 500 else "internal-error"
    )
    return problem(
        code, str(error.detail), request.url.path, status=error.status_code, headers=error.headers
    )


def _cause(error: BaseException) -> str:
    """What went wrong, for the log: exception classes and SQLSTATE, never the
    statement or its parameters (they may carry personal data)."""
    original = getattr(error, "orig", None)
    driver = getattr(original, "__cause__", None) or original
    names = [type(error).__name__] + ([type(driver).__name__] if driver is not None else [])
    state = sqlstate(error)
    return " / ".join(names) + (f" (SQLSTATE {state})" if state else "")


def _database_unavailable(request: Request, error: BaseException) -> Response:
    # Expected while the database restarts or is overloaded: one line, no traceback.
    log.warning(
        "database unavailable on %s %s: %s", request.method, request.url.path, _cause(error)
    )
    return problem(
        "database-unavailable",
        "the database cannot serve this request right now; retry shortly",
        request.url.path,
        extensions={"retry_after": DATABASE_RETRY_AFTER_SECONDS},
    )


def _database_refused_input(request: Request, error: BaseException) -> Response:
    log.warning(
        "input refused by the database on %s %s: %s",
        request.method,
        request.url.path,
        _cause(error),
    )
    return problem(
        "invalid-input",
        "a value in the request is outside what its field can hold",
        request.url.path,
    )


def _unexpected(request: Request, error: Exception) -> Response:
    """A database or network failure by its kind (503 or 422); anything else
    is a bug: a 500 with its traceback in the log."""
    if (refusal := refused_party(error)) is not None:
        return _domain(request, refusal)
    if is_unavailable(error):
        return _database_unavailable(request, error)
    if is_invalid_input(error):
        return _database_refused_input(request, error)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(
        "internal-error",
        "an unexpected error occurred; it has been logged",
        request.url.path,
        status=HTTP_500_INTERNAL_SERVER_ERROR,
    )


# Litestar picks the handler by the exception's class hierarchy: the database
# and network classes get the same classifying handler as any other exception.
EXCEPTION_HANDLERS = {
    LedgerError: _domain,
    ApiError: _api,
    ValidationException: _validation,
    HTTPException: _http,
    sqlalchemy_errors.DBAPIError: _unexpected,
    sqlalchemy_errors.TimeoutError: _unexpected,
    OSError: _unexpected,
    Exception: _unexpected,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEMS", "ApiError", "MediaType", "problem", "problem_type"]
