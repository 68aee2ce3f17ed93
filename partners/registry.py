"""The partner registry: partners with their contract, API keys and cards.

Key secrets are encrypted at rest (Fernet, with the key from configuration)
and shown once, when created. At most two keys are active per partner, so a
key can be rotated without downtime; revocation takes effect at once.
"""

import secrets
from dataclasses import dataclass
from decimal import Decimal

import msgspec
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.accounts import check_id
from partners.audit import record_change
from partners.errors import (
    CardBlocked,
    CardNotFound,
    InvalidRule,
    KeyNotFound,
    PartnerNotFound,
    TooManyKeys,
)
from partners.money import MINOR_UNIT_EXPONENTS

MAX_ACTIVE_KEYS = 2


class PartnerInput(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str
    currency: str = "EUR"
    return_window_days: int = 0
    price_per_point: Decimal = Decimal(0)  # what the partner pays per point issued (currency units)
    redemption_value: Decimal = Decimal(0)  # what the partner is reimbursed per point redeemed
    credit_limit_minor: int | None = None


class PartnerView(msgspec.Struct, frozen=True):
    id: str
    name: str
    status: str
    currency: str
    return_window_days: int
    price_per_point: Decimal
    redemption_value: Decimal
    credit_limit_minor: int | None


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
    return_window_days: int


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


def _partner(row) -> PartnerView:
    return PartnerView(
        row.id,
        row.name,
        row.status,
        row.currency,
        row.return_window_days,
        row.price_per_point,
        row.redemption_value,
        row.credit_limit_minor,
    )


class Registry:
    def __init__(self, engine: AsyncEngine, box: SecretBox) -> None:
        self.engine = engine
        self.box = box

    # -- partners -------------------------------------------------------------

    async def create_partner(self, data: PartnerInput, actor: str) -> PartnerView:
        check_id("partner", data.id)
        if not data.name.strip():
            raise InvalidRule("name", "is required")
        if data.currency not in MINOR_UNIT_EXPONENTS:
            raise InvalidRule("currency", "unknown currency")
        if not 0 <= data.return_window_days <= 365:
            raise InvalidRule("return_window_days", "between 0 and 365")
        for field in ("price_per_point", "redemption_value"):
            value = getattr(data, field)
            if not value.is_finite() or value < 0:
                raise InvalidRule(field, "must be zero or more")
        if data.credit_limit_minor is not None and data.credit_limit_minor < 0:
            raise InvalidRule("credit_limit_minor", "must be zero or more")
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO partners (id, name, currency, return_window_days, "
                        "price_per_point, redemption_value, credit_limit_minor) "
                        "VALUES (:id, :name, :currency, :return_window_days, "
                        ":price_per_point, :redemption_value, :credit_limit_minor) "
                        "ON CONFLICT (id) DO NOTHING RETURNING *"
                    ),
                    msgspec.structs.asdict(data),
                )
            ).first()
            if row is None:
                raise InvalidRule("id", f"partner {data.id!r} exists already")
            view = _partner(row)
            await record_change(conn, "partner", data.id, "create", actor, None, view)
            return view

    async def partner(self, partner_id: str, conn: AsyncConnection | None = None) -> PartnerView:
        async def read(c):
            return (
                await c.execute(text("SELECT * FROM partners WHERE id = :id"), {"id": partner_id})
            ).first()

        if conn is None:
            async with self.engine.connect() as c:
                row = await read(c)
        else:
            row = await read(conn)
        if row is None:
            raise PartnerNotFound(f"no partner {partner_id!r}")
        return _partner(row)

    async def set_status(self, partner_id: str, status: str, actor: str) -> PartnerView:
        if status not in ("active", "suspended"):
            raise InvalidRule("status", "active or suspended")
        async with self.engine.begin() as conn:
            before = await self.partner(partner_id, conn)
            row = (
                await conn.execute(
                    text(
                        "UPDATE partners SET status = :s, updated_at = now() WHERE id = :id "
                        "RETURNING *"
                    ),
                    {"s": status, "id": partner_id},
                )
            ).one()
            after = _partner(row)
            await record_change(
                conn, "partner", partner_id, f"status:{status}", actor, before, after
            )
            return after

    # -- keys -----------------------------------------------------------------

    async def create_key(self, partner_id: str, actor: str) -> KeyView:
        async with self.engine.begin() as conn:
            locked = (
                await conn.execute(
                    text("SELECT id FROM partners WHERE id = :id FOR UPDATE"), {"id": partner_id}
                )
            ).first()
            if locked is None:
                raise PartnerNotFound(f"no partner {partner_id!r}")
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
        async with self.engine.begin() as conn:
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

    async def signing_key(self, key_id: str) -> SigningKey | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT k.key_id, k.partner_id, k.secret_encrypted, k.status, "
                        "p.status AS partner_status, p.return_window_days FROM partner_keys k "
                        "JOIN partners p "
                        "ON p.id = k.partner_id WHERE k.key_id = :k"
                    ),
                    {"k": key_id},
                )
            ).first()
        if row is None:
            return None
        return SigningKey(
            row.key_id,
            row.partner_id,
            self.box.open(row.secret_encrypted),
            row.status,
            row.partner_status,
            row.return_window_days,
        )

    # -- cards ----------------------------------------------------------------

    async def issue_card(self, member_id: str, card_number: str, actor: str) -> dict:
        check_id("member", member_id)
        if not card_number.isdigit() or not 8 <= len(card_number) <= 19:
            raise InvalidRule("card_number", "8 to 19 digits")
        async with self.engine.begin() as conn:
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
        async with self.engine.begin() as conn:
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
            row = (
                await conn.execute(
                    text("SELECT member_id, status FROM cards WHERE card_number = :c"),
                    {"c": card_number},
                )
            ).first()
        if row is None:
            raise CardNotFound("unknown card number")
        if row.status != "active":
            raise CardBlocked("this card is blocked")
        return row.member_id
