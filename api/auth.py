"""JWT verification (RFC 8725) for two kinds of token, kept apart: staff tokens
(roles `admin`, `finance`) and member tokens (as the app's identity provider
issues them, role `member`, `sub` the member id).

Each kind has its own keys, issuer and audience (api/settings.py): whoever can
mint member tokens cannot mint a staff one, staff roles are read from staff
tokens only, and a token of one kind is refused on the other's routes
(`token-wrong-audience`). Algorithms are pinned by configuration (never taken
from the token header); issuer, audience, `exp`, `nbf` and `iat` are checked,
and a token may live at most `LOYALTY_JWT_MAX_LIFETIME_SECONDS`.

A token that passed every check is remembered by the worker (its exact text,
until it expires): a card holder's app sends the same token with every
request for its lifetime, and verifying a signature again (twice decoded, an
RSA or EC verification with public keys) was a tenth of a cached balance
read. Only the identical string is taken from memory, and only while its
`exp` (plus leeway) has not passed; anything else is verified in full."""

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from litestar import Request
from litestar.connection import ASGIConnection

from api.problems import ApiError
from api.settings import Settings, SettingsError, TokenKeys

STAFF_ROLES = ("admin", "finance")
# Verified tokens a worker remembers per kind; beyond it the oldest goes first.
VERIFIED_TOKENS_KEPT = 10_000
MEMBER_ROLE = "member"
DEV_SECRET_FILES = {"staff": "dev-jwt-secret", "member": "dev-member-jwt-secret"}


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
    """A guard: a valid staff token with one of `roles`, checked before the body is read."""

    async def guard(connection: ASGIConnection, _: object) -> None:
        principal = connection.app.state.verifier.principal(connection, "staff")
        connection.state.principal = principal.require_role(*roles)

    return guard


def provide_principal(request: Request) -> Principal:
    return request.state.principal


def _data_dir_secret(settings: Settings, name: str, make) -> str:
    """A secret kept in the data directory, created readable by its owner only
    from the first byte: written to a private temporary file, then linked into
    place, so the file never exists with a looser mode nor half written (a
    second process creating it at the same time keeps the first one's)."""
    path = settings.data_dir / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{name}.{secrets.token_hex(8)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(make())
                file.flush()
                os.fsync(file.fileno())
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def dev_secret(settings: Settings, kind: str) -> str:
    """The development HS256 secret of one kind of token, kept in the data
    directory (embedded mode); staff and members have one each."""
    # 64 characters: long enough for HS512 too.
    return _data_dir_secret(settings, DEV_SECRET_FILES[kind], lambda: secrets.token_urlsafe(48))


def dev_secret_key(settings: Settings) -> str:
    """The key encrypting partner secrets, kept in the data directory (embedded mode)."""
    from cryptography.fernet import Fernet

    return _data_dir_secret(settings, "secret-key", lambda: Fernet.generate_key().decode())


def token_kind(roles: list[str]) -> str:
    """`member` for a member token (the role `member` alone), else `staff`."""
    if MEMBER_ROLE not in roles:
        return "staff"
    if set(roles) != {MEMBER_ROLE}:
        raise ValueError("a member token carries the role member and no other")
    return "member"


def _audiences(claims: dict) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


class KeyedVerifier:
    """Verification of one kind of token with its own keys, issuer and audience."""

    def __init__(self, keys: TokenKeys, leeway: int, max_lifetime: int, clock=time.time) -> None:
        self.kind = keys.kind
        self.algorithms = list(keys.algorithms)
        self.issuer = keys.issuer
        self.audience = keys.audience
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.clock = clock
        self._verified: dict[str, dict] = {}  # token -> its claims, in insertion order
        self._jwks: jwt.PyJWKSet | None = None
        self._key: object = None
        self._symmetric = keys.symmetric
        if keys.symmetric:
            if not keys.secret:
                raise SettingsError(f"HS* {keys.kind} tokens need {keys.variable}_SECRET")
            self._key = keys.secret
        elif keys.jwks_file:
            self._jwks = jwt.PyJWKSet.from_dict(json.loads(Path(keys.jwks_file).read_text()))
        elif keys.public_key_file:
            self._key = Path(keys.public_key_file).read_text()
        else:
            raise SettingsError(
                f"public-key {keys.kind} tokens need {keys.variable}_PUBLIC_KEY_FILE "
                f"or {keys.variable}_JWKS_FILE"
            )

    def key_material(self) -> set[bytes]:
        """The keys as bytes (the secret, or each public key as DER), so the two
        kinds' keys can be told apart."""
        if self._symmetric:
            return {str(self._key).encode()}
        public = (
            [key.key for key in self._jwks.keys]
            if self._jwks is not None
            else [serialization.load_pem_public_key(str(self._key).encode())]
        )
        return {
            key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for key in public
        }

    def _signing_key(self, token: str) -> object:
        if self._jwks is None:
            return self._key
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._jwks.keys:
            if key.key_id == kid:
                return key.key
        raise ApiError("token-invalid", f"no key with id {kid!r} in the configured JWKS")

    def _refuse_other_audiences(self, token: str) -> None:
        """A token for another audience (the other kind's, typically) is refused
        as such before its signature is checked against keys it was never
        signed with, so the answer does not depend on how keys are configured.
        Nothing read here is trusted: it can only lead to a refusal."""
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as error:
            raise ApiError("token-invalid", f"the token is invalid: {error}") from None
        audiences = _audiences(unverified)
        if audiences and self.audience not in audiences:
            raise ApiError(
                "token-wrong-audience",
                f"{self.kind} routes need a {self.kind} token (audience {self.audience!r})",
            )

    def verify(self, token: str) -> dict:
        claims = self._verified.get(token)
        if claims is not None:
            # PyJWT's own rule: expired once exp <= now - leeway.
            if int(claims["exp"]) > self.clock() - self.leeway:
                return claims
            del self._verified[token]
            raise ApiError("token-expired", "the token has expired")
        claims = self._verify_signed(token)
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = claims
        return claims

    def _verify_signed(self, token: str) -> dict:
        self._refuse_other_audiences(token)
        try:
            claims = jwt.decode(
                token,
                self._signing_key(token),
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError("token-expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise ApiError("token-invalid", "the token is not valid yet (nbf or iat)") from None
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
        lifetime = int(claims["exp"]) - int(claims["iat"])
        if lifetime > self.max_lifetime:
            # A stolen long-lived token stays useful; the issuer must keep them short.
            raise ApiError(
                "token-invalid",
                f"the token lives {lifetime} s; at most {self.max_lifetime} s is accepted",
            )
        return claims


class TokenVerifier:
    """Both kinds of token; `principal(connection, kind)` for a route's guard."""

    def __init__(self, settings: Settings) -> None:
        settings.check_tokens()
        self.kinds = {
            kind: KeyedVerifier(
                settings.token_keys(kind),
                settings.jwt_leeway_seconds,
                settings.jwt_max_lifetime_seconds,
            )
            for kind in ("staff", "member")
        }
        if self.kinds["staff"].key_material() & self.kinds["member"].key_material():
            raise SettingsError("staff and member tokens must be signed with different keys")

    def verify(self, token: str, kind: str) -> dict:
        return self.kinds[kind].verify(token)

    def principal(self, connection: ASGIConnection, kind: str) -> Principal:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError("token-missing", "send 'Authorization: Bearer <token>'")
        return self.principal_of(token.strip(), kind)

    def principal_of(self, token: str, kind: str) -> Principal:
        """Who a token of `kind` names, wherever it came from (a header, the
        dashboard's cookie)."""
        claims = self.verify(token, kind)
        roles = claims.get("roles", [])
        if not isinstance(roles, list):
            raise ApiError("token-invalid", "the roles claim must be a list")
        if not is_subject(claims["sub"]):
            raise ApiError("token-invalid", SUBJECT_RULE)
        return Principal(claims["sub"], frozenset(map(str, roles)))


SUBJECT_RULE = "the sub claim names who acts: 1-200 printable characters, no outer spaces"


def is_subject(value: object) -> bool:
    """Whether a token's subject can stand in the record of who did what."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 200
        and value.isprintable()
        and value == value.strip()
    )


def mint_token(
    settings: Settings,
    subject: str,
    roles: list[str],
    ttl_seconds: int = 900,
    private_key: str | None = None,
    key_id: str | None = None,
) -> str:
    """A development token signed as the verifier expects: a member token for
    the role `member`, a staff token otherwise, each with its kind's key (HS*
    secret, or `private_key`), issuer and audience."""
    keys = settings.token_keys(token_kind(roles))
    if not is_subject(subject):
        raise ValueError(SUBJECT_RULE)
    if not 0 < ttl_seconds <= settings.jwt_max_lifetime_seconds:
        raise ValueError(
            f"the lifetime is 1 to {settings.jwt_max_lifetime_seconds} s "
            "(LOYALTY_JWT_MAX_LIFETIME_SECONDS)"
        )
    algorithm = keys.algorithms[0]
    now = int(time.time())
    claims = {
        "sub": subject,
        "roles": roles,
        "iss": keys.issuer,
        "aud": keys.audience,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if keys.symmetric:
        key = keys.secret or (dev_secret(settings, keys.kind) if settings.embedded else None)
        if not key:
            raise SettingsError(f"HS* {keys.kind} tokens need {keys.variable}_SECRET")
    elif private_key:
        key = private_key
    else:
        raise SettingsError(f"{algorithm} tokens need --private-key")
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)
