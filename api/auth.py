"""JWT verification for staff and members (RFC 8725): algorithms pinned by
configuration (never taken from the token header), issuer, audience and expiry
checked. Staff roles: `admin`, `finance`."""

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from litestar import Request
from litestar.connection import ASGIConnection

from api.problems import ApiError
from api.settings import Settings, SettingsError

STAFF_ROLES = ("admin", "finance")


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]

    def require_role(self, *roles: str) -> "Principal":
        if not self.roles.intersection(roles):
            raise ApiError(
                "missing-role",
                f"this needs one of the roles: {', '.join(roles)}",
                required_roles=list(roles),
            )
        return self


def require_staff(*roles: str):
    """A guard: a valid token with one of `roles`, checked before the body is read."""

    async def guard(connection: ASGIConnection, _: object) -> None:
        principal = connection.app.state.verifier.principal(connection)
        connection.state.principal = principal.require_role(*roles)

    return guard


def provide_principal(request: Request) -> Principal:
    return request.state.principal


def _data_dir_secret(settings: Settings, name: str, make) -> str:
    path = settings.data_dir / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def dev_secret(settings: Settings) -> str:
    """The development HS256 secret kept in the data directory (embedded mode)."""
    return _data_dir_secret(settings, "dev-jwt-secret", lambda: secrets.token_urlsafe(32))


def dev_secret_key(settings: Settings) -> str:
    """The key encrypting partner secrets, kept in the data directory (embedded mode)."""
    from cryptography.fernet import Fernet

    return _data_dir_secret(settings, "secret-key", lambda: Fernet.generate_key().decode())


def _symmetric(algorithms: tuple[str, ...]) -> bool:
    return all(alg.startswith("HS") for alg in algorithms)


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.algorithms = list(settings.jwt_algorithms)
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_seconds
        self._jwks: jwt.PyJWKSet | None = None
        self._key: object = None
        if any(a.startswith("HS") for a in self.algorithms) and not _symmetric(self.algorithms):
            # Mixing families invites algorithm confusion (RFC 8725 section 3.1).
            raise SettingsError("LOYALTY_JWT_ALGORITHMS mixes HMAC and public-key algorithms")
        if _symmetric(self.algorithms):
            if not settings.jwt_secret:
                raise SettingsError("HS* tokens need LOYALTY_JWT_SECRET")
            self._key = settings.jwt_secret
        elif settings.jwt_jwks_file:
            self._jwks = jwt.PyJWKSet.from_dict(
                json.loads(Path(settings.jwt_jwks_file).read_text())
            )
        elif settings.jwt_public_key_file:
            self._key = Path(settings.jwt_public_key_file).read_text()
        else:
            raise SettingsError(
                "public-key algorithms need LOYALTY_JWT_PUBLIC_KEY_FILE or LOYALTY_JWT_JWKS_FILE"
            )

    def _signing_key(self, token: str) -> object:
        if self._jwks is None:
            return self._key
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._jwks.keys:
            if key.key_id == kid:
                return key.key
        raise ApiError("token-invalid", f"no key with id {kid!r} in the configured JWKS")

    def verify(self, token: str) -> dict:
        try:
            return jwt.decode(
                token,
                self._signing_key(token),
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError("token-expired", "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise ApiError(
                "token-wrong-audience", f"the token is not for {self.audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise ApiError("token-wrong-issuer", f"the token is not from {self.issuer!r}") from None
        except jwt.InvalidAlgorithmError:
            raise ApiError(
                "token-algorithm-not-allowed",
                f"tokens must be signed with {', '.join(self.algorithms)}",
            ) from None
        except jwt.PyJWTError as error:
            raise ApiError("token-invalid", f"the token is invalid: {error}") from None

    def principal(self, connection: ASGIConnection) -> Principal:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError("token-missing", "send 'Authorization: Bearer <token>'")
        claims = self.verify(token.strip())
        roles = claims.get("roles", [])
        if not isinstance(roles, list):
            raise ApiError("token-invalid", "the roles claim must be a list")
        return Principal(str(claims["sub"]), frozenset(map(str, roles)))


def mint_token(
    settings: Settings,
    subject: str,
    roles: list[str],
    ttl_seconds: int = 900,
    private_key: str | None = None,
    key_id: str | None = None,
) -> str:
    """A development token signed as the verifier expects (HS* secret or a private key)."""
    algorithm = settings.jwt_algorithms[0]
    now = int(time.time())
    claims = {
        "sub": subject,
        "roles": roles,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if algorithm.startswith("HS"):
        key = settings.jwt_secret or (dev_secret(settings) if settings.embedded else None)
        if not key:
            raise SettingsError("HS* tokens need LOYALTY_JWT_SECRET")
    elif private_key:
        key = private_key
    else:
        raise SettingsError(f"{algorithm} tokens need --private-key")
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)
