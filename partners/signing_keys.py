"""Partner API keys as a worker sees them: the key a signed request names
(`SigningKey`, read with the partner's status and rate limit), the secrets'
encryption at rest (`SecretBox`, Fernet with the key from configuration; a
secret is shown once, when created), and what a worker keeps of keys between
requests (`SigningKeyCache`). At most two keys are active per partner, so a
key can be rotated without downtime; revocation takes effect at once. Keys
are created and revoked by the registry (partners/registry.py)."""

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import msgspec
from cryptography.fernet import Fernet, InvalidToken

MAX_ACTIVE_KEYS = 2


class KeyView(msgspec.Struct, frozen=True):
    key_id: str
    partner_id: str
    status: str
    secret: str | None = None  # only in the answer that created it


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    partner_id: str
    secret: str
    status: str
    partner_status: str
    requests_per_second: int | None  # the contract's in force now; None: the default


class SecretBox:
    """Encrypts key secrets at rest."""

    def __init__(self, key: str | bytes) -> None:
        self._fernet = Fernet(key)

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise RuntimeError(
                "a partner key cannot be decrypted: wrong LOYALTY_SECRET_KEY?"
            ) from None


class KnownKey(NamedTuple):
    partner_id: str
    secret: str
    revoked: bool = False


class SigningKeyCache:
    """What a worker keeps of partner keys, so a signed request is checked
    without a lookup: key id -> (partner, secret), bounded (least recently
    used out). Safe to keep for the life of the process: a key's secret and
    partner never change (a key is created, then at most revoked), and a
    revocation is never undone, so a key seen revoked is remembered as such.
    Whether a key is still active, and its partner too, is not cached: the
    guard reads both with every request (api/partner_auth.py). Unknown key ids
    are not remembered (anyone can send any id).
    Beside it, each partner's `requests_per_second`. A rate limit protects
    capacity, not correctness, so it may lag a little: it is read again when
    the definitions version has moved (every contract change bumps it,
    migration 0009; the guard reads the number with every request) and at
    least every `limit_seconds` (a contract version in force from a later
    date bumps nothing when that date comes). The request that finds it due
    is still limited by the old figure; the next ones use the new one.
    """

    def __init__(
        self,
        max_keys: int = 4096,
        limit_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_keys = max_keys
        self.limit_seconds = limit_seconds
        self.clock = clock
        self._keys: OrderedDict[str, KnownKey] = OrderedDict()
        # partner -> (requests per second, definitions version, read at)
        self._limits: OrderedDict[str, tuple[int | None, int | None, float]] = OrderedDict()
        self._definitions: int | None = None

    def key(self, key_id: str) -> KnownKey | None:
        known = self._keys.get(key_id)
        if known is not None:
            self._keys.move_to_end(key_id)
        return known

    def remember(self, key_id: str, known: KnownKey) -> None:
        self._keys[key_id] = known
        self._keys.move_to_end(key_id)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def forget(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def revoked(self, key_id: str) -> None:
        if (known := self._keys.get(key_id)) is not None:
            self._keys[key_id] = known._replace(revoked=True)

    def saw_definitions(self, version: int | None) -> None:
        """The definitions version as a statement just read it."""
        self._definitions = version

    def limit(self, partner_id: str) -> tuple[int | None, bool]:
        """The partner's requests per second as last read (None: the service's
        default), and whether it is due to be read again."""
        limit, version, read_at = self._limits.get(partner_id, (None, None, -float("inf")))
        due = version != self._definitions or self.clock() - read_at >= self.limit_seconds
        return limit, due

    def set_limit(self, partner_id: str, limit: int | None) -> None:
        """The limit as read under the definitions version last seen."""
        self._limits[partner_id] = (limit, self._definitions, self.clock())
        self._limits.move_to_end(partner_id)
        while len(self._limits) > self.max_keys:
            self._limits.popitem(last=False)
