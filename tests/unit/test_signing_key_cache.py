"""The worker's cache of partner keys (partners/signing_keys.py SigningKeyCache):
bounded, least recently used out, revocation sticky; rate limits re-read when
the definitions version moves or a few seconds have passed."""

from partners.signing_keys import KnownKey, SigningKeyCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_bounded_least_recently_used_out():
    cache = SigningKeyCache(max_keys=2)
    cache.remember("a", KnownKey("p", "s-a"))
    cache.remember("b", KnownKey("p", "s-b"))
    assert cache.key("a") == KnownKey("p", "s-a")  # "a" used: "b" is the oldest
    cache.remember("c", KnownKey("q", "s-c"))
    assert cache.key("b") is None
    assert cache.key("a") is not None and cache.key("c") is not None


def test_a_revoked_key_stays_revoked_and_unknown_ids_are_not_kept():
    cache = SigningKeyCache()
    cache.remember("a", KnownKey("p", "s-a"))
    cache.revoked("a")
    assert cache.key("a") == KnownKey("p", "s-a", revoked=True)
    cache.revoked("nobody")
    assert cache.key("nobody") is None
    cache.forget("a")
    assert cache.key("a") is None


def test_a_rate_limit_is_due_when_definitions_move_or_it_is_old():
    clock = Clock()
    cache = SigningKeyCache(limit_seconds=5, clock=clock)
    assert cache.limit("p") == (None, True)  # never read
    cache.saw_definitions(7)
    cache.set_limit("p", 3)
    assert cache.limit("p") == (3, False)
    cache.saw_definitions(7)
    clock.now = 4.9
    assert cache.limit("p") == (3, False)
    cache.saw_definitions(8)  # a contract (or any definition) changed
    assert cache.limit("p") == (3, True)
    cache.set_limit("p", 100)
    assert cache.limit("p") == (100, False)
    clock.now = 10.0  # a version in force from a later date bumps nothing
    assert cache.limit("p") == (100, True)
