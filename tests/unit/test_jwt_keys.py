"""Public-key tokens: RS256 with a PEM file or a JWKS document, keys by `kid`."""

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import TokenVerifier
from api.problems import ApiError
from api.settings import Settings, SettingsError


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


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
    pem = tmp_path / "public.pem"
    pem.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    verifier = TokenVerifier(
        Settings(
            database_url="postgresql://x/y", jwt_algorithms=("RS256",), jwt_public_key_file=pem
        )
    )
    assert verifier.verify(_token(rsa_key))["sub"] == "alice"
    hs_token = jwt.encode(
        {"sub": "a", "iss": "loyalty-dev", "aud": "loyalty-api", "exp": int(time.time()) + 60},
        "x" * 64,
        algorithm="HS256",
    )
    with pytest.raises(ApiError) as refused:
        verifier.verify(hs_token)  # no algorithm confusion: HS256 is not accepted
    assert refused.value.code == "token-algorithm-not-allowed"


def test_rs256_with_a_jwks_document(tmp_path, rsa_key):
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    verifier = TokenVerifier(
        Settings(database_url="postgresql://x/y", jwt_algorithms=("RS256",), jwt_jwks_file=jwks)
    )
    assert verifier.verify(_token(rsa_key, kid="k1"))["roles"] == ["admin"]
    with pytest.raises(ApiError) as unknown:
        verifier.verify(_token(rsa_key, kid="k2"))
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
