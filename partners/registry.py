"""The partner registry: partners, their contract versions, API keys and
cards, written one change at a time under the partner's row lock, each
change audited (partners/audit.py).

What the contract's terms mean and how they are checked is in
partners/contracts.py; the keys as a worker uses them (encryption at rest,
the per-worker cache) in partners/signing_keys.py."""

import secrets
from datetime import datetime
from decimal import Decimal

import msgspec
from msgspec import UNSET
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.accounts import check_id
from ledger.database import begin, once_more_if_dropped
from partners.audit import record_change
from partners.contracts import (
    CONTRACT_COLUMNS,
    CONTRACTS_AHEAD,
    CONTRACTS_FROM,
    DEFAULT_FUTURE_TOLERANCE_SECONDS,
    DEFAULT_LATE_SUBMISSION_DAYS,
    IN_FORCE,
    TERMS,
    Contract,
    ContractInput,
    check_terms,
    contract_in_force,
    contract_of,
)
from partners.errors import (
    CardBlocked,
    CardNotFound,
    InvalidRule,
    KeyNotFound,
    PartnerNotFound,
    TooManyKeys,
)
from partners.money import MINOR_UNIT_EXPONENTS
from partners.signing_keys import (
    MAX_ACTIVE_KEYS,
    KeyView,
    KnownKey,
    SecretBox,
    SigningKey,
    SigningKeyCache,
)


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


_PARTNER_NOW = (
    "SELECT p.id, p.name, p.status, p.currency, c.return_window_days, c.price_per_point, "
    "c.redemption_value, c.credit_limit_minor, c.deposit_minor, c.late_submission_days, "
    "c.future_tolerance_seconds, c.requests_per_second, c.version AS contract_version, "
    "c.effective_from AS contract_effective_from FROM partners p CROSS JOIN LATERAL "
    "(SELECT * FROM partner_contracts c WHERE c.partner_id = p.id "
    + IN_FORCE.format(at="now()")
    + ") c"
)


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


def _partner(row) -> PartnerView:
    return PartnerView(**{f: getattr(row, f) for f in PartnerView.__struct_fields__})


_SIGNING_KEY = text(
    "SELECT k.key_id, k.partner_id, k.secret_encrypted, k.status, "
    "p.status AS partner_status, (SELECT c.requests_per_second "
    "FROM partner_contracts c WHERE c.partner_id = p.id "
    + IN_FORCE.format(at="now()")
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
        check_terms(terms)
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
                        f"SELECT {CONTRACT_COLUMNS} FROM partner_contracts c "
                        "JOIN partners p ON p.id = c.partner_id WHERE c.partner_id = :p "
                        "ORDER BY c.version"
                    ),
                    {"p": partner_id},
                )
            ).all()
        if not rows:
            raise PartnerNotFound(f"no partner {partner_id!r}")
        return [contract_of(r) for r in rows]

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
            check_terms(terms)
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
