"""Configuration: read once from LOYALTY_* environment variables into one
frozen object that is passed explicitly (nothing reads the environment at
import time)."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from api.logs import FORMATS as LOG_FORMATS
from api.logs import LEVELS as LOG_LEVELS
from ledger.database import DatabaseLimits, async_url
from ledger.expiry import parse_policy
from ledger.service import LedgerConfig, TransferRules
from partners.expiry_notice import ExpiringWindow, parse_window


class SettingsError(ValueError):
    pass


# Settings whose sign or size the code takes as given: (name, lowest, highest
# or None). A retention of 0 days would purge the idempotency keys just stored
# (a retried transfer would post again); a pool of 0 connections serves nothing.
SETTING_RANGES: tuple[tuple[str, int, int | None], ...] = (
    ("claim_window_days", 1, 730),
    ("db_statement_timeout_ms", 1, None),
    ("db_lock_timeout_ms", 1, None),
    ("db_pool_timeout_seconds", 1, None),
    ("db_command_timeout_seconds", 1, None),
    ("hot_account_slots", 1, 256),
    ("partner_rate_limit", 1, None),
    ("member_rate_limit", 1, None),
    ("db_pool_size", 1, 1_000),
    ("max_body_bytes", 1_024, 1_073_741_824),
    ("hold_ttl_seconds", 1, 31 * 86_400),
    ("idempotency_retention_days", 1, 3_650),
    ("transfer_min_points", 1, 10**12),
    ("transfer_daily_limit", 1, 10**12),
    ("balance_cache_ttl_seconds", 1, 30 * 86_400),
    ("replica_timeout_ms", 1, 3_600_000),
)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None  # unset: embedded PostgreSQL under data_dir
    redis_url: str | None = None  # unset: embedded Redis under data_dir
    # The Redis URL names one node of a Redis Cluster (seed; db 0): the client
    # discovers the others and routes every key by its hash slot.
    redis_cluster: bool = False
    # A streaming replica of database_url: balance, history and entry reads go
    # there when it has everything the primary has for the member (api/replica.py).
    replica_database_url: str | None = None
    replica_timeout_ms: int = 2_000  # connect / statement / round trip on the replica
    # Where insights read (read-only transactions, a replica works); unset:
    # database_url (insights/, api/routes/insights.py).
    analytics_database_url: str | None = None
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
    # Staff tokens (roles admin, finance) and member tokens (the app's) are
    # signed with keys of their own, so whoever mints one kind cannot mint the
    # other; their audiences differ, so neither is accepted for the other.
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_secret: str | None = None  # HS*; unset in embedded mode: a dev secret in data_dir
    jwt_public_key_file: Path | None = None  # RS256 / ES256 PEM public key
    jwt_jwks_file: Path | None = None  # RS256 / ES256 JWKS document
    jwt_issuer: str = "loyalty-dev"
    jwt_audience: str = "loyalty-api"
    member_jwt_algorithms: tuple[str, ...] = ("HS256",)
    member_jwt_secret: str | None = None  # unset in embedded mode: a dev secret of its own
    member_jwt_public_key_file: Path | None = None
    member_jwt_jwks_file: Path | None = None
    member_jwt_issuer: str = "loyalty-dev-members"
    member_jwt_audience: str = "loyalty-members"
    jwt_leeway_seconds: int = 30  # clock skew allowed on exp, nbf and iat
    jwt_max_lifetime_seconds: int = 3600  # longest exp - iat accepted (either kind)
    expiry_policy: str = "rolling:36"
    hot_account_slots: int = 64
    hold_ttl_seconds: int = 900
    tier_period: str = "calendar"  # calendar | rolling (12 months)
    claim_window_days: int = 90  # how old a purchase a member may claim missing points for
    # How far ahead a member's balance view shows expiring points: days:N, or
    # quarters:N (this quarter and the next N-1, grouped by quarter).
    expiring_view: str = "days:90"
    secret_key: str | None = None  # Fernet key for partner secrets; embedded: generated
    partner_rate_limit: int = 100  # requests per second per partner
    member_rate_limit: int = 10  # requests per second per member
    idempotency_retention_days: int = 7
    transfer_min_points: int = 100
    transfer_fee_rate: str = "0"  # share of the amount, in points, rounded up
    transfer_daily_limit: int = 20_000
    balance_cache_ttl_seconds: int = 3600
    # Scheduled jobs: the in-service scheduler (`loyalty serve --with-scheduler`)
    # and the seconds between runs, `name=seconds,...` (names not given keep
    # their defaults, api/jobs_service.py).
    scheduler: bool = False
    job_intervals: str = ""
    # GET /metrics (Prometheus, no authentication: keep it off the public network).
    metrics_enabled: bool = True
    log_format: str = "json"  # json (one object per line) | text
    log_level: str = "info"  # debug | info | warning | error | critical

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for spec in fields(cls):
            raw = environ.get(f"LOYALTY_{spec.name.upper()}")
            if raw is None:
                continue
            if not raw.strip() and spec.default != "":
                # Set but empty: a mistake (an unset variable in a deployment
                # template), not "use the default", which silently means the
                # embedded database for LOYALTY_DATABASE_URL.
                raise SettingsError(
                    f"LOYALTY_{spec.name.upper()} is set but empty: give it a value or unset it"
                )
            values[spec.name] = _convert(spec.name, spec.type, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"LOYALTY_PORT is a port number (1 to 65535), not {self.port}")
        self.check_secret_key()
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
        if not 1 <= self.workers <= 64:
            raise SettingsError("LOYALTY_WORKERS is 1 to 64")
        if self.tier_period not in ("calendar", "rolling"):
            raise SettingsError("LOYALTY_TIER_PERIOD is calendar or rolling")
        try:
            parse_window(self.expiring_view)
        except ValueError as error:
            raise SettingsError(f"LOYALTY_EXPIRING_VIEW: {error}") from None
        self.check_tokens()
        for name, low, high in SETTING_RANGES:
            value = getattr(self, name)
            if high is None and value < low:
                raise SettingsError(f"LOYALTY_{name.upper()} must be at least {low}")
            if high is not None and not low <= value <= high:
                raise SettingsError(f"LOYALTY_{name.upper()} must be between {low} and {high:,}")
        if self.redis_cluster and not self.redis_url:
            # The embedded Redis is one node: a cluster has to be named.
            raise SettingsError("LOYALTY_REDIS_CLUSTER needs LOYALTY_REDIS_URL (a node of it)")
        if self.replica_database_url is not None:
            if self.database_url is None:
                raise SettingsError("LOYALTY_REPLICA_DATABASE_URL needs LOYALTY_DATABASE_URL")
            try:
                async_url(self.replica_database_url)
            except ValueError as error:
                raise SettingsError(f"LOYALTY_REPLICA_DATABASE_URL: {error}") from None
        if self.analytics_database_url is not None:
            try:
                async_url(self.analytics_database_url)
            except ValueError as error:
                raise SettingsError(f"LOYALTY_ANALYTICS_DATABASE_URL: {error}") from None
        if self.replica_timeout_ms < 1:
            raise SettingsError("LOYALTY_REPLICA_TIMEOUT_MS must be at least 1")
        if self.job_intervals:
            from api.jobs_service import JOB_NAMES  # imports this module: here, not above
            from operations.schedule import parse_intervals

            try:
                parse_intervals(self.job_intervals, list(JOB_NAMES))
            except ValueError as error:
                raise SettingsError(f"LOYALTY_JOB_INTERVALS: {error}") from None
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(f"LOYALTY_LOG_FORMAT is one of {', '.join(LOG_FORMATS)}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise SettingsError(f"LOYALTY_LOG_LEVEL is one of {', '.join(LOG_LEVELS)}")

    def check_secret_key(self) -> None:
        """LOYALTY_SECRET_KEY, when set, is a Fernet key (unset in embedded
        mode: one generated in the data directory, api/auth.py)."""
        if self.secret_key is None:
            return
        from cryptography.fernet import Fernet

        try:
            Fernet(self.secret_key)
        except (ValueError, TypeError):
            raise SettingsError(
                "LOYALTY_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes); "
                "make one with python -c 'from cryptography.fernet import Fernet as F; "
                "print(F.generate_key().decode())'"
            ) from None

    def token_keys(self, kind: str) -> "TokenKeys":
        """How tokens of one kind (`staff` or `member`) are signed and for whom."""
        prefix = {"staff": "jwt", "member": "member_jwt"}[kind]
        return TokenKeys(
            kind=kind,
            variable=f"LOYALTY_{prefix.upper()}",
            algorithms=getattr(self, f"{prefix}_algorithms"),
            secret=getattr(self, f"{prefix}_secret"),
            public_key_file=getattr(self, f"{prefix}_public_key_file"),
            jwks_file=getattr(self, f"{prefix}_jwks_file"),
            issuer=getattr(self, f"{prefix}_issuer"),
            audience=getattr(self, f"{prefix}_audience"),
        )

    def check_tokens(self) -> None:
        """What can be told about the token settings without reading key files
        (the verifier in api/auth.py checks the keys themselves)."""
        for kind in ("staff", "member"):
            self.token_keys(kind).check()
        if self.jwt_audience == self.member_jwt_audience:
            # The audience is what keeps a token of one kind off the other's routes.
            raise SettingsError("LOYALTY_JWT_AUDIENCE and LOYALTY_MEMBER_JWT_AUDIENCE must differ")
        if self.jwt_leeway_seconds < 0:
            raise SettingsError("LOYALTY_JWT_LEEWAY_SECONDS must be at least 0")
        if self.jwt_max_lifetime_seconds < 1:
            raise SettingsError("LOYALTY_JWT_MAX_LIFETIME_SECONDS must be at least 1")

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

    def replica_limits(self) -> DatabaseLimits:
        """The replica's limits: short, because a replica that is slow to answer
        costs the read a trip to the primary, not an error."""
        seconds = self.replica_timeout_ms / 1000
        return DatabaseLimits(
            statement_timeout_ms=self.replica_timeout_ms,
            lock_timeout_ms=self.db_lock_timeout_ms,
            pool_timeout_seconds=seconds,
            command_timeout_seconds=seconds,
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

    def expiring_window(self) -> ExpiringWindow:
        return parse_window(self.expiring_view)

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


ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "ES256", "PS256", "EdDSA")


@dataclass(frozen=True)
class TokenKeys:
    """The keys, algorithms, issuer and audience of one kind of token."""

    kind: str  # staff | member
    variable: str  # LOYALTY_JWT or LOYALTY_MEMBER_JWT, for messages
    algorithms: tuple[str, ...]
    secret: str | None
    public_key_file: Path | None
    jwks_file: Path | None
    issuer: str
    audience: str

    @property
    def symmetric(self) -> bool:
        return all(alg.startswith("HS") for alg in self.algorithms)

    def check(self) -> None:
        unknown = set(self.algorithms) - set(ALGORITHMS)
        if unknown or not self.algorithms:
            raise SettingsError(f"{self.variable}_ALGORITHMS: unsupported {sorted(unknown)}")
        if any(alg.startswith("HS") for alg in self.algorithms) and not self.symmetric:
            # Mixing families invites algorithm confusion (RFC 8725 section 3.1).
            raise SettingsError(f"{self.variable}_ALGORITHMS mixes HMAC and public-key algorithms")
        if self.symmetric and self.secret is not None:
            # RFC 7518 section 3.2: a key at least as long as the hash output.
            needed = max(int(alg[2:]) // 8 for alg in self.algorithms)
            if len(self.secret.encode()) < needed:
                raise SettingsError(
                    f"{self.variable}_SECRET is {len(self.secret.encode())} bytes; "
                    f"{'/'.join(self.algorithms)} needs at least {needed}"
                )


def _convert(name: str, annotation: object, raw: str) -> object:
    kind = str(annotation)
    if "bool" in kind:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"LOYALTY_{name.upper()}: 1 or 0, not {raw!r}")
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
