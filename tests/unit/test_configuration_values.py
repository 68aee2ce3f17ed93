"""Settings and database URLs a command cannot use are refused when they are
read, with a message naming the variable or parameter (never the URL, which
may hold a password)."""

import pytest

from api.embedded import database_name, with_database
from api.settings import Settings, SettingsError
from ledger.database import DatabaseUrlError, async_url, asyncpg_dsn

FERNET_KEY = "K4cpIiv3R3JWAXbq8kFn2o3VlqK8M2r0E9gr0Hr9lWQ="


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LOYALTY_SECRET_KEY": "bad"}, "make one with python -c"),
        ({"LOYALTY_PORT": "99999"}, "LOYALTY_PORT is a port number (1 to 65535)"),
        ({"LOYALTY_PORT": "0"}, "LOYALTY_PORT is a port number"),
        ({"LOYALTY_DATABASE_URL": ""}, "LOYALTY_DATABASE_URL is set but empty"),
        ({"LOYALTY_REDIS_URL": " "}, "LOYALTY_REDIS_URL is set but empty"),
        ({"LOYALTY_SECRET_KEY": ""}, "LOYALTY_SECRET_KEY is set but empty"),
        ({"LOYALTY_SCHEDULER": ""}, "LOYALTY_SCHEDULER is set but empty"),
        (
            {
                "LOYALTY_DATABASE_URL": "postgresql://h/db",
                "LOYALTY_REPLICA_DATABASE_URL": "postgresql://h/db?foo=1",
            },
            "LOYALTY_REPLICA_DATABASE_URL: unsupported parameter ?foo=",
        ),
        # Values the code takes as given: 0 days of retention would purge the
        # keys just stored (a retried transfer posting again).
        ({"LOYALTY_IDEMPOTENCY_RETENTION_DAYS": "0"}, "must be between 1 and 3,650"),
        ({"LOYALTY_IDEMPOTENCY_RETENTION_DAYS": "-1"}, "IDEMPOTENCY_RETENTION_DAYS"),
        ({"LOYALTY_DB_POOL_SIZE": "0"}, "LOYALTY_DB_POOL_SIZE must be between 1"),
        ({"LOYALTY_MAX_BODY_BYTES": "-1"}, "LOYALTY_MAX_BODY_BYTES must be between"),
        ({"LOYALTY_HOLD_TTL_SECONDS": "-60"}, "LOYALTY_HOLD_TTL_SECONDS must be between"),
        ({"LOYALTY_TRANSFER_MIN_POINTS": "-5"}, "LOYALTY_TRANSFER_MIN_POINTS must be"),
        ({"LOYALTY_TRANSFER_DAILY_LIMIT": "-1"}, "LOYALTY_TRANSFER_DAILY_LIMIT must be"),
        ({"LOYALTY_BALANCE_CACHE_TTL_SECONDS": "0"}, "BALANCE_CACHE_TTL_SECONDS must be"),
    ],
)
def test_unusable_values_are_settings_errors(environ, message):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(environ)
    assert message in str(raised.value)


def test_usable_values_are_read():
    settings = Settings.from_env(
        {"LOYALTY_SECRET_KEY": FERNET_KEY, "LOYALTY_PORT": "65535", "LOYALTY_JOB_INTERVALS": ""}
    )
    assert (settings.secret_key, settings.port, settings.job_intervals) == (FERNET_KEY, 65535, "")
    # What `serve --workers N` hands its workers reads back the same.
    assert Settings.from_env(settings.as_environ()) == settings


def test_libpq_sslmode_becomes_asyncpg_ssl():
    url = "postgresql://u:p%40ss@db.example.org:5432/loyalty?sslmode=require"
    assert async_url(url) == (
        "postgresql+asyncpg://u:p%40ss@db.example.org:5432/loyalty?ssl=require"
    )
    assert asyncpg_dsn(url) == url  # asyncpg reads libpq's sslmode in a DSN itself
    assert asyncpg_dsn("postgres://h/x?ssl=disable") == "postgresql://h/x?sslmode=disable"
    plain = "postgresql://u@h/loyalty"
    assert async_url(plain) == "postgresql+asyncpg://u@h/loyalty"
    socket_dir = "postgresql://postgres:@/postgres?host=/tmp/pg"
    assert async_url(socket_dir) == "postgresql+asyncpg://postgres:@/postgres?host=/tmp/pg"


def test_a_server_on_this_host_is_reached_in_the_clear_unless_the_url_says_otherwise():
    for host in ("127.0.0.1:5432", "localhost", "[::1]:5432"):
        url = f"postgresql://postgres@{host}/loyalty"
        assert async_url(url) == f"postgresql+asyncpg://postgres@{host}/loyalty?ssl=disable"
        assert asyncpg_dsn(url) == f"{url}?sslmode=disable"  # pgbench and the CLI alike
    kept = "postgresql://postgres@127.0.0.1/loyalty?sslmode=require"
    assert async_url(kept) == "postgresql+asyncpg://postgres@127.0.0.1/loyalty?ssl=require"
    elsewhere = "postgresql://u@db.example.org/loyalty"  # asyncpg's own default there
    assert async_url(elsewhere) == "postgresql+asyncpg://u@db.example.org/loyalty"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:secret@h/x?foo=bar", "unsupported parameter ?foo="),
        ("postgresql://u:secret@h/x?sslmode=sometimes", "?sslmode= is one of"),
        ("postgresql://u:secret@h:99999/x", "port 99999 is out of range"),
        ("postgresql://u:secret@h:port/x", "the port is not a number"),
        ("mysql://u:secret@h/x", "not a PostgreSQL URL"),
    ],
)
def test_urls_asyncpg_cannot_use_are_refused(url, message):
    for convert in (async_url, asyncpg_dsn):
        with pytest.raises(DatabaseUrlError) as raised:
            convert(url)
        assert message in str(raised.value) and "secret" not in str(raised.value)


def test_database_names_are_decoded_and_encoded():
    assert database_name("postgresql://h:5432/review_q%22x?sslmode=disable") == 'review_q"x'
    assert database_name("postgresql://h:5432") == ""
    assert with_database("postgresql://h/postgres?sslmode=disable", 'a"b c') == (
        "postgresql://h/a%22b%20c?sslmode=disable"
    )
    assert database_name(with_database("postgresql://h/postgres", 'a"b c')) == 'a"b c'
