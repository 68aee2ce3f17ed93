"""Public-key tokens: RS256 with a PEM file or a JWKS document, keys by `kid`;
staff and member keys must differ; HS secrets long enough for their algorithm."""

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import TokenVerifier
from api.problems import ApiError
from api.settings import Settings, SettingsError

MEMBER_SECRET = "m" * 64


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(pem, key):
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pem


def _token(key, kid=None, **claims) -> str:
    now = int(time.time())
    body = {
        "sub": "alice",
        "roles": ["admin"],
        "iss": "loyalty-dev",
        "aud": "loyalty-api",
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def test_rs256_with_a_pem_public_key(tmp_path, rsa_key):
    verifier = TokenVerifier(
        Settings(
            database_url="postgresql://x/y",
            jwt_algorithms=("RS256",),
            jwt_public_key_file=_pem(tmp_path / "staff.pem", rsa_key),
            member_jwt_secret=MEMBER_SECRET,
        )
    )
    assert verifier.verify(_token(rsa_key), "staff")["sub"] == "alice"
    hs_token = jwt.encode(
        {"sub": "a", "iss": "loyalty-dev", "aud": "loyalty-api", "exp": int(time.time()) + 60},
        "x" * 64,
        algorithm="HS256",
    )
    with pytest.raises(ApiError) as refused:
        verifier.verify(hs_token, "staff")  # no algorithm confusion: HS256 is not accepted
    assert refused.value.code == "token-algorithm-not-allowed"


def test_rs256_with_a_jwks_document(tmp_path, rsa_key):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    verifier = TokenVerifier(
        Settings(
            database_url="postgresql://x/y",
            jwt_algorithms=("RS256",),
            jwt_jwks_file=jwks,
            member_jwt_secret=MEMBER_SECRET,
        )
    )
    assert verifier.verify(_token(rsa_key, kid="k1"), "staff")["roles"] == ["admin"]
    with pytest.raises(ApiError) as unknown:
        verifier.verify(_token(rsa_key, kid="k2"), "staff")
    assert unknown.value.code == "token-invalid"


def test_mixing_hmac_and_public_key_algorithms_is_refused():
    with pytest.raises(SettingsError):
        TokenVerifier(
            Settings(
                database_url="postgresql://x/y",
                jwt_secret="s" * 64,
                jwt_algorithms=("HS256", "RS256"),
            )
        )


def test_staff_and_member_tokens_cannot_share_a_key(tmp_path, rsa_key):
    pem = _pem(tmp_path / "staff.pem", rsa_key)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    shared = [
        {"jwt_secret": "s" * 64, "member_jwt_secret": "s" * 64},
        {
            "jwt_algorithms": ("RS256",),
            "jwt_public_key_file": pem,
            "member_jwt_algorithms": ("RS256",),
            "member_jwt_jwks_file": jwks,  # the same key, in another file and form
        },
    ]
    for keys in shared:
        with pytest.raises(SettingsError, match="different keys"):
            TokenVerifier(Settings(database_url="postgresql://x/y", **keys))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = TokenVerifier(
        Settings(
            database_url="postgresql://x/y",
            jwt_algorithms=("RS256",),
            jwt_public_key_file=pem,
            member_jwt_algorithms=("RS256",),
            member_jwt_public_key_file=_pem(tmp_path / "member.pem", other),
        )
    )
    assert verifier.verify(_token(rsa_key), "staff")["sub"] == "alice"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"LOYALTY_JWT_SECRET": "x" * 31},
            "LOYALTY_JWT_SECRET is 31 bytes; HS256 needs at least 32",
        ),
        (
            {"LOYALTY_MEMBER_JWT_SECRET": "x" * 40, "LOYALTY_MEMBER_JWT_ALGORITHMS": "HS512"},
            "LOYALTY_MEMBER_JWT_SECRET is 40 bytes; HS512 needs at least 64",
        ),
        ({"LOYALTY_MEMBER_JWT_AUDIENCE": "loyalty-api"}, "must differ"),
        ({"LOYALTY_MEMBER_JWT_ALGORITHMS": "HS256,ES256"}, "mixes HMAC and public-key"),
        ({"LOYALTY_JWT_MAX_LIFETIME_SECONDS": "0"}, "at least 1"),
    ],
)
def test_weak_or_confusable_token_settings_are_refused(environ, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"LOYALTY_DATABASE_URL": "postgresql://x/y", **environ})
