"""Settings from the environment and account addresses."""

import pytest

from api.settings import Settings, SettingsError
from ledger.accounts import Address
from ledger.errors import InvalidAccount


def test_settings_read_from_loyalty_variables():
    settings = Settings.from_env(
        {
            "LOYALTY_DATABASE_URL": "postgresql://x/y",
            "LOYALTY_PORT": "9000",
            "LOYALTY_JWT_ALGORITHMS": "RS256,ES256",
            "OTHER": "ignored",
        }
    )
    assert settings.database_url == "postgresql://x/y"
    assert settings.port == 9000
    assert settings.jwt_algorithms == ("RS256", "ES256")
    assert not settings.embedded


@pytest.mark.parametrize(
    "environ",
    [
        {"LOYALTY_PORT": "eighty"},
        {"LOYALTY_EXPIRY_POLICY": "weekly:1"},
        {"LOYALTY_JWT_ALGORITHMS": "none"},
    ],
)
def test_bad_settings_are_refused(environ):
    with pytest.raises(SettingsError):
        Settings.from_env(environ)


def test_addresses_parse_and_know_their_owner():
    assert Address.parse("member:m-1:available").member_id == "m-1"
    assert Address.parse("partner:shop:issued").is_hot
    assert str(Address.parse("program:expired")) == "program:expired"


@pytest.mark.parametrize(
    "address",
    [
        "member:m1:wallet",
        "partner:shop",
        "program:nothing",
        "member::available",
        "bank:x:y",
        "member:a:b:available",
    ],
)
def test_unknown_addresses_are_refused(address):
    with pytest.raises(InvalidAccount):
        Address.parse(address)
