"""Request signing for partner calls: HMAC-SHA256 over a canonical request.

The canonical string is six lines joined by '\\n' (no newline at the end):

    METHOD                 upper case, e.g. POST
    PATH                   the path without the query, percent-decoded, e.g.
                           /v1/partner/earn
    QUERY                  query parameters sorted by name then value, RFC 3986
                           encoded, joined with '&' (empty line if none)
    TIMESTAMP              Unix seconds, as sent in X-Loyalty-Timestamp
    BODY-SHA256            hex SHA-256 of the raw body (of b'' when there is none)
    IDEMPOTENCY-KEY        the Idempotency-Key header's value (empty line if none),
                           so a captured request cannot be re-sent under another key

The signature is the lower-case hex HMAC-SHA256 of that string with the key's
secret, sent in X-Loyalty-Signature with the key id in X-Loyalty-Key-Id.
Pure functions: the server's check and the partners' client share them.
"""

import hashlib
import hmac
import math
from urllib.parse import parse_qsl, quote

KEY_ID_HEADER = "X-Loyalty-Key-Id"
TIMESTAMP_HEADER = "X-Loyalty-Timestamp"
SIGNATURE_HEADER = "X-Loyalty-Signature"
TOLERANCE_SECONDS = 300


class SignatureProblem(Exception):
    """Why a signature was refused; `code` is the problem type."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def canonical_query(query: str) -> str:
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


def canonical_request(
    method: str, path: str, query: str, timestamp: str, body: bytes, idempotency_key: str = ""
) -> str:
    """The string that is signed; `idempotency_key` is "" when the request has none."""
    return "\n".join(
        [
            method.upper(),
            path,
            canonical_query(query),
            timestamp,
            hashlib.sha256(body).hexdigest(),
            idempotency_key,
        ]
    )


def sign(secret: str, canonical: str) -> str:
    return hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def signed_headers(
    key_id: str,
    secret: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    now: float,
    idempotency_key: str = "",
) -> dict[str, str]:
    timestamp = str(int(now))
    signature = sign(
        secret, canonical_request(method, path, query, timestamp, body, idempotency_key)
    )
    return {KEY_ID_HEADER: key_id, TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature}


def parse_headers(headers) -> tuple[str, int, str]:
    """Key id, timestamp and signature from request headers, or a problem."""
    key_id = headers.get(KEY_ID_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    if not key_id and not timestamp and not signature:
        raise SignatureProblem(
            "signature-missing",
            f"sign the request: {KEY_ID_HEADER}, {TIMESTAMP_HEADER}, {SIGNATURE_HEADER}",
        )
    if not key_id or not timestamp or not signature:
        raise SignatureProblem("signature-malformed", "all three signature headers are needed")
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise SignatureProblem("signature-malformed", f"{TIMESTAMP_HEADER} is Unix seconds")
    if len(signature) != 64 or any(c not in "0123456789abcdef" for c in signature):
        raise SignatureProblem("signature-malformed", f"{SIGNATURE_HEADER} is 64 hex digits")
    return key_id, int(timestamp), signature


def check_timestamp(timestamp: int, now: float, tolerance: int = TOLERANCE_SECONDS) -> None:
    offset = timestamp - now
    if abs(offset) > tolerance:
        # Rounded away from zero: an offset just past the tolerance never
        # reads as inside it.
        seconds = math.ceil(abs(offset))
        side = "ahead of" if offset > 0 else "behind"
        raise SignatureProblem(
            "signature-stale",
            f"timestamp is {seconds} s {side} the server's clock (tolerance {tolerance} s)",
        )


def check_signature(secret: str, canonical: str, signature: str) -> None:
    if not hmac.compare_digest(sign(secret, canonical), signature):
        raise SignatureProblem("signature-invalid", "the signature does not match the request")
