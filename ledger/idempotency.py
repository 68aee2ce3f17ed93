"""Idempotent operations: a key per caller, stored with a fingerprint of the
request and the first result, in the same transaction as the posting.

A second transaction with the same key blocks on the key's unique index until
the first commits, then finds the stored result: the same key racing in two
transactions posts once.
"""

import hashlib
from dataclasses import dataclass

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.errors import IdempotencyKeyReused, InvalidAmount


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    caller: str  # e.g. "partner:shop-a", "staff:alice"
    key: str

    def __post_init__(self) -> None:
        if not self.key or len(self.key) > 255 or not self.key.isprintable():
            raise InvalidAmount("an idempotency key is 1-255 printable characters")


def fingerprint(operation: str, command: object) -> str:
    body = msgspec.json.encode(msgspec.to_builtins(command), order="sorted")
    return hashlib.sha256(operation.encode() + b"\n" + body).hexdigest()


async def claim(
    conn: AsyncConnection, key: IdempotencyKey, operation: str, digest: str
) -> object | None:
    """Take the key for this transaction, or return the stored first result."""
    inserted = await conn.execute(
        text(
            "INSERT INTO idempotency_keys (caller, key, operation, fingerprint) "
            "VALUES (:caller, :key, :operation, :fingerprint) "
            "ON CONFLICT DO NOTHING RETURNING 1"
        ),
        {"caller": key.caller, "key": key.key, "operation": operation, "fingerprint": digest},
    )
    if inserted.first() is not None:
        return None
    stored = (
        await conn.execute(
            text(
                "SELECT operation, fingerprint, result FROM idempotency_keys "
                "WHERE caller = :caller AND key = :key"
            ),
            {"caller": key.caller, "key": key.key},
        )
    ).one()
    if stored.operation != operation or stored.fingerprint != digest:
        raise IdempotencyKeyReused(
            f"idempotency key {key.key!r} was used for a different request",
            idempotency_key=key.key,
        )
    return stored.result


async def record(
    conn: AsyncConnection, key: IdempotencyKey, result: object, entry_id: int | None
) -> None:
    await conn.execute(
        text(
            "UPDATE idempotency_keys SET result = CAST(:result AS jsonb), entry_id = :entry_id "
            "WHERE caller = :caller AND key = :key"
        ),
        {
            "caller": key.caller,
            "key": key.key,
            "result": msgspec.json.encode(result).decode(),
            "entry_id": entry_id,
        },
    )
