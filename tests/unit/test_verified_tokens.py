"""A worker remembers the tokens it verified: the same token string is taken
from memory until it expires, then refused as expired; any other string,
however close, is verified in full."""

import time

import pytest

from api.auth import TokenVerifier, mint_token
from api.problems import ApiError
from api.settings import Settings

SETTINGS = Settings(
    database_url="postgresql://x/y", jwt_secret="s" * 64, member_jwt_secret="m" * 64
)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def member_verifier(clock: Clock):
    verifier = TokenVerifier(SETTINGS)
    member = verifier.kinds["member"]
    member.clock = clock
    return member


def test_a_remembered_token_is_refused_once_it_expires():
    clock = Clock()
    member = member_verifier(clock)
    token = mint_token(SETTINGS, "m-1", ["member"], ttl_seconds=60)
    assert member.verify(token)["sub"] == "m-1"
    clock.now += 60 + SETTINGS.jwt_leeway_seconds - 2
    assert member.verify(token)["sub"] == "m-1"  # from memory, still valid
    clock.now += 3
    with pytest.raises(ApiError) as expired:
        member.verify(token)
    assert expired.value.code == "token-expired"


def test_only_the_identical_string_is_remembered():
    member = member_verifier(Clock())
    token = mint_token(SETTINGS, "m-2", ["member"])
    member.verify(token)
    head, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(ApiError) as forged:
        member.verify(f"{head}.{payload}.{flipped}")
    assert forged.value.code == "token-invalid"
    staff = mint_token(SETTINGS, "alice", ["admin"])
    with pytest.raises(ApiError) as other_kind:
        member.verify(staff)  # verified as a staff token elsewhere: still refused here
    assert other_kind.value.code == "token-wrong-audience"


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr("api.auth.VERIFIED_TOKENS_KEPT", 3)
    member = member_verifier(Clock())
    tokens = [mint_token(SETTINGS, f"m-{i}", ["member"]) for i in range(5)]
    for token in tokens:
        member.verify(token)
    assert list(member._verified) == tokens[2:]
