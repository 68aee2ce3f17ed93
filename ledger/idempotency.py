"""Idempotent operations: a key per caller, stored with a fingerprint of the
request and the first result, in the same transaction as the posting.

Because key, posting and result commit together, a crash anywhere before the
commit leaves nothing behind and the retry runs afresh; a crash after it
leaves the stored result, which the retry gets back. The fingerprint covers
only what the caller sent: callers that fill in values themselves (a purchase
time defaulting to "now") pass the digest of the request as received, so a
retry after a crash is recognised as the same request.

While a transaction holds a key (a transaction-scoped advisory lock on it, freed
by commit, rollback or the death of the session), a second caller with the
same key is told the request is in flight instead of waiting for it.

A key also tells its caller what became of it (`IdempotencyKey.outcome`, set
by `LedgerService.run` once the transaction committed): the operation that
stored its result under the key, and whether this call only got back the
result stored by an earlier one. A caller that keeps answers of its own (the
partner API's stored HTTP answers) need not store one the ledger already
holds with the key.
"""

import hashlib
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.errors import IdempotencyKeyReused, InvalidIdempotencyKey, RequestInFlight
from ledger.statements import statement

R = TypeVar("R")


class KeyOutcome:
    """What the ledger did under a key, known once its transaction committed:
    `operation` stored (or had stored) its result under the key, `replayed`
    when that result came from an earlier call. Both stay unset when the
    operation failed or never reached the ledger with the key."""

    __slots__ = ("operation", "replayed")

    def __init__(self) -> None:
        self.operation: str | None = None
        self.replayed = False

    def settle(self, operation: str, replayed: bool) -> None:
        self.operation, self.replayed = operation, replayed


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    caller: str  # e.g. "partner:shop-a", "staff:alice"
    key: str
    # SHA-256 of the request exactly as the caller sent it; None: the command
    # itself is the request (every field came from the caller).
    request_digest: str | None = None
    outcome: KeyOutcome = field(default_factory=KeyOutcome, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_key(self.key)


def check_key(key: str) -> str:
    """An idempotency key as a caller sent it: 1-255 printable characters."""
    if not key or len(key) > 255 or not key.isprintable():
        raise InvalidIdempotencyKey("an idempotency key is 1-255 printable characters")
    return key


def fingerprint(operation: str, command: object) -> str:
    body = msgspec.json.encode(msgspec.to_builtins(command), order="sorted")
    return hashlib.sha256(operation.encode() + b"\n" + body).hexdigest()


def request_fingerprint(operation: str, key: IdempotencyKey, command: object) -> str:
    if key.request_digest is None:
        return fingerprint(operation, command)
    return hashlib.sha256(f"{operation}\n{key.request_digest}".encode()).hexdigest()


# The claim as CTEs a statement opens with: the key's advisory lock tried,
# then the key inserted when the lock was got. A body of `LedgerService.run`
# may make the claim in its own first statement (`Claim`), one round trip less.
# The advisory lock a transaction running under a key holds (`:claim_caller`,
# `:claim_key`): tried by the claim, waited for by whoever must come after it.
KEY_LOCK = "hashtextextended(:claim_caller || chr(10) || :claim_key, 0)"
CLAIM_CTES = (
    f"claim_lock AS (SELECT pg_try_advisory_xact_lock({KEY_LOCK}) AS got), "
    "claim_new AS (INSERT INTO idempotency_keys (caller, key, operation, fingerprint) "
    "SELECT :claim_caller, :claim_key, :claim_operation, :claim_fingerprint "
    "FROM claim_lock WHERE got ON CONFLICT DO NOTHING RETURNING 1)"
)
# The claim's outcome, as two columns of the statement's answer.
CLAIM_COLUMNS = (
    "(SELECT got FROM claim_lock) AS claim_got, EXISTS (SELECT 1 FROM claim_new) AS claim_inserted"
)
# A condition for the statement's other parts: this call took the key.
CLAIMED = "EXISTS (SELECT 1 FROM claim_new)"
# Built once (a text() construct parses its parameters when made).
_CLAIM = text(f"WITH {CLAIM_CTES} SELECT {CLAIM_COLUMNS}")
_STORED = text(
    "SELECT operation, fingerprint, result FROM idempotency_keys "
    "WHERE caller = :claim_caller AND key = :claim_key"
)


class AlreadyStored(Exception):
    """The key's first result is stored: a body that claimed the key itself
    (`Claim.settle`) ends with it, and `LedgerService.run` answers it."""

    def __init__(self, stored: object) -> None:
        super().__init__("the result is stored with the key")
        self.stored = stored


@dataclass(frozen=True, slots=True)
class Claim:
    """The claim of `key` for `operation`, made in a statement of the caller's
    (`CLAIM_CTES` and `CLAIM_COLUMNS` with `params()`), then `settle`d."""

    key: IdempotencyKey
    operation: str
    command: object

    def params(self) -> dict[str, object]:
        return {
            "claim_caller": self.key.caller,
            "claim_key": self.key.key,
            "claim_operation": self.operation,
            "claim_fingerprint": request_fingerprint(self.operation, self.key, self.command),
        }

    async def settle(self, conn: AsyncConnection, got: bool, inserted: bool) -> None:
        """Returns when this call took the key. Raises `RequestInFlight` when
        another transaction holds it, `AlreadyStored` with the first result
        when an earlier call stored one for the same request, and
        `IdempotencyKeyReused` when that call was another request."""
        if not got:
            raise RequestInFlight(
                f"a request with idempotency key {self.key.key!r} is still being processed",
                idempotency_key=self.key.key,
                retry_after=1,
            )
        if inserted:
            return
        params = self.params()
        stored = (await conn.execute(_STORED, params)).one()
        if stored.operation != self.operation or stored.fingerprint != params["claim_fingerprint"]:
            raise IdempotencyKeyReused(
                f"idempotency key {self.key.key!r} was used for a different request",
                idempotency_key=self.key.key,
            )
        raise AlreadyStored(stored.result)


# The first result, stored with its key: alone (`record`), or as a part of the
# body's own last statement (`storing`, `Stored`), one round trip less.
STORE_RESULT = (
    "UPDATE idempotency_keys SET result = CAST(:stored_result AS jsonb), "
    "entry_id = :stored_entry_id WHERE caller = :stored_caller AND key = :stored_key"
)


async def claim(
    conn: AsyncConnection, key: IdempotencyKey, operation: str, command: object
) -> object | None:
    """Take the key for this transaction, or return the stored first result."""
    taking = Claim(key, operation, command)
    row = (await conn.execute(_CLAIM, taking.params())).one()
    try:
        await taking.settle(conn, row.claim_got, row.claim_inserted)
    except AlreadyStored as earlier:
        return earlier.stored
    return None


def storing(key: IdempotencyKey, result: object) -> dict[str, object]:
    """The parameters of `STORE_RESULT` for `result` under `key` (its
    `entry_id`, when it has one, kept with the key)."""
    return {
        "stored_caller": key.caller,
        "stored_key": key.key,
        # msgspec encodes structs as their builtins would be, in one pass.
        "stored_result": msgspec.json.encode(result).decode(),
        "stored_entry_id": getattr(result, "entry_id", None),
    }


async def record(conn: AsyncConnection, key: IdempotencyKey, result: object) -> None:
    await conn.execute(statement(STORE_RESULT), storing(key, result))


@dataclass(frozen=True, slots=True)
class Stored(Generic[R]):
    """What a body of `LedgerService.run` returns when its own last statement
    stored the result with the key (`STORE_RESULT` with `storing`)."""

    result: R
