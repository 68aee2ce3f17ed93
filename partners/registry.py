"""The partner registry: partners with their contract, API keys and cards.

A partner's contract (return window, late-submission window, price per point,
redemption value, credit limit, deposit) is kept as versions, each an
amendment in force from its `effective_from`: the version in force at a time
is the newest version whose `effective_from` is not after it (so a later
version replaces every earlier one from its date on), and for a time before
every version's date, version 1, the contract the partner was registered
with. Terms about a purchase (its submission window, its return window) are
those in force at the purchase time; the credit limit is today's.

The credit arithmetic is plain functions over plain data: a partner's
outstanding points (issued by it minus redeemed at it) at its price per
point, rounded up, may not pass its credit limit plus its deposit.

Key secrets are encrypted at rest (Fernet, with the key from configuration)
and shown once, when created. At most two keys are active per partner, so a
key can be rotated without downtime; revocation takes effect at once.
"""

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

import msgspec
from cryptography.fernet import Fernet, InvalidToken
from msgspec import UNSET, UnsetType
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.accounts import check_id
from ledger.database import begin, once_more_if_dropped
from partners.audit import record_change
from partners.errors import (
    CardBlocked,
    CardNotFound,
    CreditLimitExceeded,
    InvalidRule,
    KeyNotFound,
    PartnerNotFound,
    PurchaseTimeOutsideWindow,
    TooManyKeys,
)
from partners.money import MINOR_UNIT_EXPONENTS, to_minor

MAX_ACTIVE_KEYS = 2
DEFAULT_LATE_SUBMISSION_DAYS = 30
DEFAULT_FUTURE_TOLERANCE_SECONDS = 300
MAX_RETURN_WINDOW_DAYS = 365
MAX_LATE_SUBMISSION_DAYS = 730
MAX_FUTURE_TOLERANCE_SECONDS = 86_400
MAX_PRICE_PER_POINT = Decimal(1000)  # currency units; far beyond any real contract
PRICE_PLACES = 6  # a millionth of a currency unit per point: far finer than any contract
MAX_MONEY_MINOR = 10**15
MAX_REQUESTS_PER_SECOND = 1_000_000


class PartnerInput(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str
    currency: str = "EUR"
    return_window_days: int = 0
    price_per_point: Decimal = Decimal(0)  # what the partner pays per point issued (currency units)
    redemption_value: Decimal = Decimal(0)  # what the partner is reimbursed per point redeemed
    credit_limit_minor: int | None = None  # None: no limit
    deposit_minor: int = 0  # prepaid: a limit of 0 plus a deposit
    late_submission_days: int = DEFAULT_LATE_SUBMISSION_DAYS  # how far back a purchase may be
    future_tolerance_seconds: int = DEFAULT_FUTURE_TOLERANCE_SECONDS  # how far ahead (clocks)
    requests_per_second: int | None = None  # signed calls; None: the service's default


class ContractInput(msgspec.Struct, forbid_unknown_fields=True):
    """A new version of a partner's contract, in force from `effective_from`;
    the terms left out stay as in the version in force at that time."""

    effective_from: datetime
    return_window_days: int | UnsetType = UNSET
    price_per_point: Decimal | UnsetType = UNSET
    redemption_value: Decimal | UnsetType = UNSET
    credit_limit_minor: int | UnsetType | None = UNSET  # null: no limit
    deposit_minor: int | UnsetType = UNSET
    late_submission_days: int | UnsetType = UNSET
    future_tolerance_seconds: int | UnsetType = UNSET
    requests_per_second: int | UnsetType | None = UNSET  # null: the service's default


TERMS = (
    "return_window_days",
    "price_per_point",
    "redemption_value",
    "credit_limit_minor",
    "deposit_minor",
    "late_submission_days",
    "future_tolerance_seconds",
    "requests_per_second",
)


class Contract(msgspec.Struct, frozen=True):
    """One version of a partner's contract."""

    partner_id: str
    version: int
    effective_from: datetime
    currency: str
    return_window_days: int
    price_per_point: Decimal
    redemption_value: Decimal
    credit_limit_minor: int | None
    deposit_minor: int
    late_submission_days: int
    future_tolerance_seconds: int
    requests_per_second: int | None
    created_by: str
    created_at: datetime


class PartnerView(msgspec.Struct, frozen=True):
    """A partner with the terms of the contract version in force now."""

    id: str
    name: str
    status: str
    currency: str
    return_window_days: int
    price_per_point: Decimal
    redemption_value: Decimal
    credit_limit_minor: int | None
    deposit_minor: int
    late_submission_days: int
    future_tolerance_seconds: int
    requests_per_second: int | None
    contract_version: int
    contract_effective_from: datetime


class CreditStanding(msgspec.Struct, frozen=True):
    """What a partner owes for the points it has issued, against its limit."""

    partner_id: str
    currency: str
    contract_version: int
    price_per_point: Decimal
    credit_limit_minor: int | None  # None: no limit
    deposit_minor: int
    outstanding_points: int  # issued by the partner minus redeemed at it
    liability_minor: int  # the outstanding points at the price per point, rounded up
    headroom_minor: int | None  # limit + deposit - liability; None: no limit


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


async def _lock_partner(conn, partner_id: str) -> None:
    """Lock the partner's row (its contract versions and keys change one at a
    time), or PartnerNotFound."""
    locked = (
        await conn.execute(
            text("SELECT id FROM partners WHERE id = :id FOR UPDATE"), {"id": partner_id}
        )
    ).first()
    if locked is None:
        raise PartnerNotFound(f"no partner {partner_id!r}")


# -- the contract's arithmetic (pure) ---------------------------------------------


def submission_window(contract: Contract, received_at: datetime) -> tuple[datetime, datetime]:
    """The purchase times the contract accepts in a call received at `received_at`."""
    return (
        received_at - timedelta(days=contract.late_submission_days),
        received_at + timedelta(seconds=contract.future_tolerance_seconds),
    )


def check_purchase_time(contract: Contract, occurred_at: datetime, received_at: datetime) -> None:
    """Refuse a purchase time outside the submission window (edges included)."""
    earliest, latest = submission_window(contract, received_at)
    if not earliest <= occurred_at <= latest:
        raise PurchaseTimeOutsideWindow(
            f"partner {contract.partner_id} may report purchases from "
            f"{contract.late_submission_days} days back to "
            f"{contract.future_tolerance_seconds} seconds ahead; "
            f"{occurred_at.isoformat()} is outside {earliest.isoformat()} .. {latest.isoformat()}",
            earliest=earliest.isoformat(),
            latest=latest.isoformat(),
            late_submission_days=contract.late_submission_days,
            future_tolerance_seconds=contract.future_tolerance_seconds,
        )


def release_time(
    contract: Contract, occurred_at: datetime, received_at: datetime
) -> datetime | None:
    """The end of the return window (None without one): counted from the
    purchase, but never from before the partner reported it, so a back-dated
    purchase does not skip the pending period."""
    if not contract.return_window_days:
        return None
    return max(occurred_at, received_at) + timedelta(days=contract.return_window_days)


def liability_minor(points: int, price_per_point: Decimal, currency: str) -> int:
    # Rounded up: what a partner owes is never understated.
    return to_minor(Decimal(points) * price_per_point, currency, "ceiling")


def credit_standing(
    contract: Contract, issued_balance: int, redeemed_balance: int
) -> CreditStanding:
    """The partner's standing from its ledger accounts: `partner:{id}:issued`
    goes negative by the points it awarded, `partner:{id}:redeemed` positive
    by the points redeemed at it."""
    outstanding = -issued_balance - redeemed_balance
    liability = liability_minor(outstanding, contract.price_per_point, contract.currency)
    limit = contract.credit_limit_minor
    return CreditStanding(
        partner_id=contract.partner_id,
        currency=contract.currency,
        contract_version=contract.version,
        price_per_point=contract.price_per_point,
        credit_limit_minor=limit,
        deposit_minor=contract.deposit_minor,
        outstanding_points=outstanding,
        liability_minor=liability,
        headroom_minor=None if limit is None else limit + contract.deposit_minor - liability,
    )


def check_credit(standing: CreditStanding, points: int) -> None:
    """Refuse `points` more issued by the partner if they take its liability
    beyond its limit plus deposit."""
    if standing.credit_limit_minor is None or points <= 0:
        return
    allowed = standing.credit_limit_minor + standing.deposit_minor
    after = liability_minor(
        standing.outstanding_points + points, standing.price_per_point, standing.currency
    )
    if after > allowed:
        raise CreditLimitExceeded(
            f"partner {standing.partner_id}: {points} points more would take its liability "
            f"to {after} minor units of {standing.currency}, beyond its credit limit of "
            f"{standing.credit_limit_minor} plus deposit of {standing.deposit_minor}",
            currency=standing.currency,
            credit_limit_minor=standing.credit_limit_minor,
            deposit_minor=standing.deposit_minor,
            liability_minor=standing.liability_minor,
            headroom_minor=standing.headroom_minor,
            requested_minor=after - standing.liability_minor,
        )


# The range of a contract version's start: no programme runs before 2000, and
# a change scheduled more than ten years ahead is a typing error.
CONTRACTS_FROM = datetime(2000, 1, 1, tzinfo=UTC)
CONTRACTS_AHEAD = timedelta(days=3653)


def _check_terms(terms: dict) -> None:
    def require(ok: bool, field: str, detail: str) -> None:
        if not ok:
            raise InvalidRule(field, detail)

    require(
        0 <= terms["return_window_days"] <= MAX_RETURN_WINDOW_DAYS,
        "return_window_days",
        f"between 0 and {MAX_RETURN_WINDOW_DAYS}",
    )
    for field in ("price_per_point", "redemption_value"):
        value = terms[field]
        require(
            value.is_finite()
            and 0 <= value <= MAX_PRICE_PER_POINT
            and value.normalize().as_tuple().exponent >= -PRICE_PLACES,
            field,
            f"between 0 and {MAX_PRICE_PER_POINT}, with at most {PRICE_PLACES} decimal places",
        )
    limit = terms["credit_limit_minor"]
    require(
        limit is None or 0 <= limit <= MAX_MONEY_MINOR,
        "credit_limit_minor",
        f"null (no limit) or between 0 and {MAX_MONEY_MINOR}",
    )
    require(
        0 <= terms["deposit_minor"] <= MAX_MONEY_MINOR,
        "deposit_minor",
        f"between 0 and {MAX_MONEY_MINOR}",
    )
    require(
        0 <= terms["late_submission_days"] <= MAX_LATE_SUBMISSION_DAYS,
        "late_submission_days",
        f"between 0 and {MAX_LATE_SUBMISSION_DAYS}",
    )
    require(
        0 <= terms["future_tolerance_seconds"] <= MAX_FUTURE_TOLERANCE_SECONDS,
        "future_tolerance_seconds",
        f"between 0 and {MAX_FUTURE_TOLERANCE_SECONDS}",
    )
    rate = terms["requests_per_second"]
    require(
        rate is None or 1 <= rate <= MAX_REQUESTS_PER_SECOND,
        "requests_per_second",
        f"null (the service's default) or between 1 and {MAX_REQUESTS_PER_SECOND}",
    )


# -- reading contracts (also inside other transactions) ----------------------------

# The version in force at {at}: the newest one in force from a time not after
# it; before every version's date, version 1.
_IN_FORCE = (
    "ORDER BY c.effective_from <= {at} DESC, "
    "CASE WHEN c.effective_from <= {at} THEN c.version END DESC, c.version LIMIT 1"
)
_CONTRACT_COLUMNS = (
    "c.partner_id, c.version, c.effective_from, p.currency, c.return_window_days, "
    "c.price_per_point, c.redemption_value, c.credit_limit_minor, c.deposit_minor, "
    "c.late_submission_days, c.future_tolerance_seconds, c.requests_per_second, "
    "c.created_by, c.created_at"
)
_PARTNER_NOW = (
    "SELECT p.id, p.name, p.status, p.currency, c.return_window_days, c.price_per_point, "
    "c.redemption_value, c.credit_limit_minor, c.deposit_minor, c.late_submission_days, "
    "c.future_tolerance_seconds, c.requests_per_second, c.version AS contract_version, "
    "c.effective_from AS contract_effective_from FROM partners p CROSS JOIN LATERAL "
    "(SELECT * FROM partner_contracts c WHERE c.partner_id = p.id "
    + _IN_FORCE.format(at="now()")
    + ") c"
)


def version_in_force(versions: list[Contract], at: datetime) -> Contract | None:
    """`_IN_FORCE` over versions already read (oldest first): the newest one
    in force from a time not after `at`; before every version's date, version 1."""
    in_force = [c for c in versions if c.effective_from <= at]
    if in_force:
        return max(in_force, key=lambda c: c.version)
    return versions[0] if versions else None


async def card_holders(conn: AsyncConnection, numbers: list[str]) -> dict[str, tuple[str, str]]:
    """Card number -> (member, card status), for the cards that exist."""
    rows = await conn.execute(
        text(
            "SELECT card_number, member_id, status FROM cards "
            "WHERE card_number = ANY(CAST(:cards AS text[]))"
        ),
        {"cards": numbers},
    )
    return {r.card_number: (r.member_id, r.status) for r in rows}


def holder_of(card_number: str, holders: dict[str, tuple[str, str]]) -> str:
    """The member behind an active card (a blocked card cannot earn or burn)."""
    member_id, status = holders.get(card_number, (None, None))
    if member_id is None:
        raise CardNotFound("unknown card number")
    if status != "active":
        raise CardBlocked("this card is blocked")
    return member_id


def _contract(row) -> Contract:
    return Contract(**{f: getattr(row, f) for f in Contract.__struct_fields__})


def _partner(row) -> PartnerView:
    return PartnerView(**{f: getattr(row, f) for f in PartnerView.__struct_fields__})


async def contract_in_force(
    conn: AsyncConnection, partner_id: str, at: datetime
) -> Contract | None:
    """The partner's contract version in force at `at`; None for a partner
    the registry does not know (rules set up for an id with no contract)."""
    row = (
        await conn.execute(
            text(
                f"SELECT {_CONTRACT_COLUMNS} FROM partner_contracts c "
                "JOIN partners p ON p.id = c.partner_id WHERE c.partner_id = :p "
                + _IN_FORCE.format(at=":at")
            ),
            {"p": partner_id, "at": at},
        )
    ).first()
    return None if row is None else _contract(row)


async def contracts_by_partner(conn: AsyncConnection) -> dict[str, list[Contract]]:
    """Every contract version of every partner, by partner, oldest first."""
    rows = await conn.execute(
        text(
            f"SELECT {_CONTRACT_COLUMNS} FROM partner_contracts c "
            "JOIN partners p ON p.id = c.partner_id ORDER BY c.partner_id, c.version"
        )
    )
    contracts: dict[str, list[Contract]] = {}
    for row in rows:
        contracts.setdefault(row.partner_id, []).append(_contract(row))
    return contracts


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


_SIGNING_KEY = text(
    "SELECT k.key_id, k.partner_id, k.secret_encrypted, k.status, "
    "p.status AS partner_status, (SELECT c.requests_per_second "
    "FROM partner_contracts c WHERE c.partner_id = p.id "
    + _IN_FORCE.format(at="now()")
    + ") AS requests_per_second FROM partner_keys k "
    "JOIN partners p ON p.id = k.partner_id WHERE k.key_id = :k"
)


class Registry:
    def __init__(self, engine: AsyncEngine, box: SecretBox) -> None:
        self.engine = engine
        self.box = box

    # -- partners and contracts --------------------------------------------------

    async def create_partner(self, data: PartnerInput, actor: str) -> PartnerView:
        """A partner with the first version of its contract, in force from now."""
        check_id("partner", data.id)
        name = data.name.strip()
        # Printed on statements and terminals: one line, no control characters.
        if not 1 <= len(name) <= 200 or not name.isprintable():
            raise InvalidRule("name", "1 to 200 printable characters")
        if data.currency not in MINOR_UNIT_EXPONENTS:
            raise InvalidRule("currency", "unknown currency")
        terms = {field: getattr(data, field) for field in TERMS}
        _check_terms(terms)
        async with begin(self.engine) as conn:
            created = (
                await conn.execute(
                    text(
                        "INSERT INTO partners (id, name, currency) VALUES (:id, :name, :currency) "
                        "ON CONFLICT (id) DO NOTHING RETURNING id"
                    ),
                    {"id": data.id, "name": name, "currency": data.currency},
                )
            ).first()
            if created is None:
                raise InvalidRule("id", f"partner {data.id!r} exists already")
            await self._insert_contract(conn, data.id, 1, None, terms, actor)
            view = await self.partner(data.id, conn)
            await record_change(conn, "partner", data.id, "create", actor, None, view)
            return view

    async def _insert_contract(
        self, conn, partner_id: str, version: int, effective_from, terms: dict, actor: str
    ) -> None:
        await conn.execute(
            text(
                "INSERT INTO partner_contracts (partner_id, version, effective_from, "
                + ", ".join(TERMS)
                + ", created_by) VALUES (:partner_id, :version, "
                "coalesce(CAST(:effective_from AS timestamptz), now()), "
                + ", ".join(f":{t}" for t in TERMS)
                + ", :actor)"
            ),
            {
                **terms,
                "partner_id": partner_id,
                "version": version,
                "effective_from": effective_from,
                "actor": actor,
            },
        )

    async def partner(self, partner_id: str, conn: AsyncConnection | None = None) -> PartnerView:
        """A partner with the terms in force now."""

        async def read(c):
            return (
                await c.execute(text(_PARTNER_NOW + " WHERE p.id = :id"), {"id": partner_id})
            ).first()

        if conn is None:
            async with self.engine.connect() as c:
                row = await read(c)
        else:
            row = await read(conn)
        if row is None:
            raise PartnerNotFound(f"no partner {partner_id!r}")
        return _partner(row)

    async def partners(self) -> list[PartnerView]:
        async with self.engine.connect() as conn:
            return [_partner(r) for r in await conn.execute(text(_PARTNER_NOW + " ORDER BY p.id"))]

    async def contracts(self, partner_id: str) -> list[Contract]:
        """Every version of the partner's contract, oldest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT {_CONTRACT_COLUMNS} FROM partner_contracts c "
                        "JOIN partners p ON p.id = c.partner_id WHERE c.partner_id = :p "
                        "ORDER BY c.version"
                    ),
                    {"p": partner_id},
                )
            ).all()
        if not rows:
            raise PartnerNotFound(f"no partner {partner_id!r}")
        return [_contract(r) for r in rows]

    async def update_contract(self, partner_id: str, data: ContractInput, actor: str) -> Contract:
        """A new version of the contract, in force from `data.effective_from`
        (history kept: earlier versions still apply to purchases made while
        they were in force). Terms left out are those of the version in force
        at that date."""
        if data.effective_from.tzinfo is None:
            raise InvalidRule("effective_from", "needs a time zone")
        async with begin(self.engine) as conn:
            # Versions of one partner are numbered one at a time.
            await _lock_partner(conn, partner_id)
            closed_through, now = (
                await conn.execute(text("SELECT ledger_closed_through(), now()"))
            ).one()
            # A correction may reach back (statements are then reissued), but
            # not into closed books, whose figures never change.
            if closed_through is not None and data.effective_from < closed_through:
                raise InvalidRule(
                    "effective_from",
                    f"must not be before {closed_through.isoformat()}: the books are closed "
                    "through then",
                )
            if not CONTRACTS_FROM <= data.effective_from <= now + CONTRACTS_AHEAD:
                raise InvalidRule(
                    "effective_from",
                    f"must be from {CONTRACTS_FROM.date()} to ten years from now",
                )
            before = await contract_in_force(conn, partner_id, data.effective_from)
            terms = {
                field: getattr(before, field)
                if getattr(data, field) is UNSET
                else getattr(data, field)
                for field in TERMS
            }
            _check_terms(terms)
            version = (
                await conn.execute(
                    text("SELECT max(version) + 1 FROM partner_contracts WHERE partner_id = :p"),
                    {"p": partner_id},
                )
            ).scalar_one()
            await self._insert_contract(
                conn, partner_id, version, data.effective_from, terms, actor
            )
            after = await contract_in_force(conn, partner_id, data.effective_from)
            await record_change(
                conn, "partner_contract", f"{partner_id}/{version}", "create", actor, before, after
            )
            return after

    async def set_status(self, partner_id: str, status: str, actor: str) -> PartnerView:
        if status not in ("active", "suspended"):
            raise InvalidRule("status", "active or suspended")
        async with begin(self.engine) as conn:
            before = await self.partner(partner_id, conn)
            await conn.execute(
                text("UPDATE partners SET status = :s, updated_at = now() WHERE id = :id"),
                {"s": status, "id": partner_id},
            )
            after = await self.partner(partner_id, conn)
            await record_change(
                conn, "partner", partner_id, f"status:{status}", actor, before, after
            )
            return after

    # -- keys -----------------------------------------------------------------

    async def create_key(self, partner_id: str, actor: str) -> KeyView:
        async with begin(self.engine) as conn:
            await _lock_partner(conn, partner_id)
            active = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM partner_keys WHERE partner_id = :p "
                        "AND status = 'active'"
                    ),
                    {"p": partner_id},
                )
            ).scalar_one()
            if active >= MAX_ACTIVE_KEYS:
                raise TooManyKeys(
                    f"partner {partner_id} has {active} active keys; revoke one first",
                    max_active=MAX_ACTIVE_KEYS,
                )
            key_id = f"pk_{secrets.token_hex(8)}"
            secret = secrets.token_urlsafe(32)
            await conn.execute(
                text(
                    "INSERT INTO partner_keys (key_id, partner_id, secret_encrypted, created_by) "
                    "VALUES (:k, :p, :s, :actor)"
                ),
                {"k": key_id, "p": partner_id, "s": self.box.seal(secret), "actor": actor},
            )
            await record_change(
                conn, "partner_key", key_id, "create", actor, None, {"partner_id": partner_id}
            )
            return KeyView(key_id, partner_id, "active", secret)

    async def revoke_key(self, partner_id: str, key_id: str, actor: str) -> KeyView:
        async with begin(self.engine) as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE partner_keys SET status = 'revoked', revoked_at = coalesce("
                        "revoked_at, now()) WHERE key_id = :k AND partner_id = :p RETURNING status"
                    ),
                    {"k": key_id, "p": partner_id},
                )
            ).first()
            if row is None:
                raise KeyNotFound(f"partner {partner_id} has no key {key_id!r}")
            await record_change(
                conn, "partner_key", key_id, "revoke", actor, None, {"partner_id": partner_id}
            )
            return KeyView(key_id, partner_id, "revoked")

    async def keys(self, partner_id: str) -> list[KeyView]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT key_id, status FROM partner_keys WHERE partner_id = :p "
                    "ORDER BY created_at"
                ),
                {"p": partner_id},
            )
            return [KeyView(r.key_id, partner_id, r.status) for r in rows]

    async def signing_key(
        self, key_id: str, cache: SigningKeyCache | None = None
    ) -> SigningKey | None:
        """The key as it is now (one statement), or None. With a `cache`, the
        key's partner and secret and the partner's rate limit are kept there
        (a revoked key as revoked); nothing is kept for an unknown id."""

        async def read():
            async with self.engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                return (await autocommit.execute(_SIGNING_KEY, {"k": key_id})).first()

        row = await once_more_if_dropped(read)
        if row is None:
            return None
        key = SigningKey(
            row.key_id,
            row.partner_id,
            self.box.open(row.secret_encrypted),
            row.status,
            row.partner_status,
            row.requests_per_second,
        )
        if cache is not None:
            cache.remember(key_id, KnownKey(key.partner_id, key.secret, key.status != "active"))
            cache.set_limit(key.partner_id, key.requests_per_second)
        return key

    # -- cards ----------------------------------------------------------------

    async def issue_card(self, member_id: str, card_number: str, actor: str) -> dict:
        check_id("member", member_id)
        # ASCII digits: str.isdigit also takes other scripts' digits (a
        # full-width six), which the cards table's check refuses.
        if not (card_number.isascii() and card_number.isdigit()) or not (
            8 <= len(card_number) <= 19
        ):
            raise InvalidRule("card_number", "8 to 19 digits")
        async with begin(self.engine) as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO cards (card_number, member_id) VALUES (:c, :m) "
                        "ON CONFLICT DO NOTHING RETURNING card_number, member_id, status"
                    ),
                    {"c": card_number, "m": member_id},
                )
            ).first()
            if row is None:
                raise InvalidRule("card_number", "this card number is taken")
            await record_change(
                conn, "card", card_number, "issue", actor, None, {"member_id": member_id}
            )
            return dict(row._mapping)

    async def block_card(self, member_id: str, card_number: str, actor: str) -> dict:
        async with begin(self.engine) as conn:
            row = (
                await conn.execute(
                    text(
                        "UPDATE cards SET status = 'blocked', "
                        "blocked_at = coalesce(blocked_at, now()) "
                        "WHERE card_number = :c AND member_id = :m "
                        "RETURNING card_number, member_id, status"
                    ),
                    {"c": card_number, "m": member_id},
                )
            ).first()
            if row is None:
                raise CardNotFound("no such card for this member")
            await record_change(
                conn, "card", card_number, "block", actor, None, {"member_id": member_id}
            )
            return dict(row._mapping)

    async def cards(self, member_id: str) -> list[dict]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT card_number, status, issued_at, blocked_at FROM cards "
                    "WHERE member_id = :m ORDER BY issued_at"
                ),
                {"m": member_id},
            )
            return [dict(r._mapping) for r in rows]

    async def member_for_card(self, card_number: str) -> str:
        """The member behind an active card (a blocked card cannot earn or burn)."""
        async with self.engine.connect() as conn:
            return holder_of(card_number, await card_holders(conn, [card_number]))
