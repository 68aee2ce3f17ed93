"""Configuration: read once from LOYALTY_* environment variables into one
frozen object that is passed explicitly (nothing reads the environment at
import time)."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from ledger.database import DatabaseLimits
from ledger.expiry import parse_policy
from ledger.service import LedgerConfig, TransferRules


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None  # unset: embedded PostgreSQL under data_dir
    redis_url: str | None = None  # unset: embedded Redis under data_dir
    data_dir: Path = Path(".loyalty")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    db_pool_size: int = 10
    db_statement_timeout_ms: int = 10_000  # one statement; beyond it: 503
    db_lock_timeout_ms: int = 3_000  # one row-lock wait; retried, then 503
    db_pool_timeout_seconds: int = 5  # waiting for a pooled connection; beyond it: 503
    db_command_timeout_seconds: int = 30  # one round trip on the wire
    max_body_bytes: int = 1_000_000
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_secret: str | None = None  # HS256; unset in embedded mode: a dev secret in data_dir
    jwt_public_key_file: Path | None = None  # RS256 / ES256 PEM public key
    jwt_jwks_file: Path | None = None  # RS256 / ES256 JWKS document
    jwt_issuer: str = "loyalty-dev"
    jwt_audience: str = "loyalty-api"
    jwt_leeway_seconds: int = 30
    expiry_policy: str = "rolling:36"
    hot_account_slots: int = 8
    hold_ttl_seconds: int = 900
    tier_period: str = "calendar"  # calendar | rolling (12 months)
    secret_key: str | None = None  # Fernet key for partner secrets; embedded: generated
    partner_rate_limit: int = 100  # requests per second per partner
    idempotency_retention_days: int = 7
    transfer_min_points: int = 100
    transfer_fee_rate: str = "0"  # share of the amount, in points, rounded up
    transfer_daily_limit: int = 20_000
    balance_cache_ttl_seconds: int = 60

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for spec in fields(cls):
            raw = environ.get(f"LOYALTY_{spec.name.upper()}")
            if raw is None or raw == "":
                continue
            values[spec.name] = _convert(spec.name, spec.type, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        try:
            parse_policy(self.expiry_policy)
        except ValueError as error:
            raise SettingsError(f"LOYALTY_EXPIRY_POLICY: {error}") from None
        try:
            rate = Decimal(self.transfer_fee_rate)
        except ArithmeticError:
            raise SettingsError("LOYALTY_TRANSFER_FEE_RATE is a decimal, e.g. 0.01") from None
        if not rate.is_finite() or not 0 <= rate < 1:
            raise SettingsError("LOYALTY_TRANSFER_FEE_RATE is at least 0 and below 1")
        if self.tier_period not in ("calendar", "rolling"):
            raise SettingsError("LOYALTY_TIER_PERIOD is calendar or rolling")
        allowed = {"HS256", "HS384", "HS512", "RS256", "ES256", "PS256", "EdDSA"}
        unknown = set(self.jwt_algorithms) - allowed
        if unknown or not self.jwt_algorithms:
            raise SettingsError(f"LOYALTY_JWT_ALGORITHMS: unsupported {sorted(unknown)}")
        for name in (
            "db_statement_timeout_ms",
            "db_lock_timeout_ms",
            "db_pool_timeout_seconds",
            "db_command_timeout_seconds",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"LOYALTY_{name.upper()} must be at least 1")
        if self.hot_account_slots < 1 or self.hot_account_slots > 256:
            raise SettingsError("LOYALTY_HOT_ACCOUNT_SLOTS must be between 1 and 256")

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    def database_limits(self) -> DatabaseLimits:
        return DatabaseLimits(
            statement_timeout_ms=self.db_statement_timeout_ms,
            lock_timeout_ms=self.db_lock_timeout_ms,
            pool_timeout_seconds=self.db_pool_timeout_seconds,
            command_timeout_seconds=self.db_command_timeout_seconds,
        )

    def ledger_config(self) -> LedgerConfig:
        return LedgerConfig(
            expiry_policy=parse_policy(self.expiry_policy),
            hot_slots=self.hot_account_slots,
            hold_ttl=timedelta(seconds=self.hold_ttl_seconds),
            transfers=TransferRules(
                min_points=self.transfer_min_points,
                fee_rate=Decimal(self.transfer_fee_rate),
                daily_limit=self.transfer_daily_limit,
            ),
        )

    def as_environ(self) -> dict[str, str]:
        """The settings as LOYALTY_* variables (for worker processes)."""
        result = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            result[f"LOYALTY_{spec.name.upper()}"] = str(value)
        return result


def _convert(name: str, annotation: object, raw: str) -> object:
    kind = str(annotation)
    try:
        if "tuple" in kind:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if "Path" in kind:
            return Path(raw)
        if "int" in kind:
            return int(raw)
        return raw
    except ValueError:
        raise SettingsError(f"LOYALTY_{name.upper()}: not a valid value: {raw!r}") from None
