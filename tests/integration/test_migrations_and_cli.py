"""Schema migrations both ways, and the CLI's demo and verify commands."""

import asyncio
import uuid

import pytest
from click.testing import CliRunner

from api.cli import main
from api.embedded import drop_database, ensure_database, with_database
from api.migrate import downgrade, upgrade

SECRET_KEY = "K4cpIiv3R3JWAXbq8kFn2o3VlqK8M2r0E9gr0Hr9lWQ="  # a Fernet key


def test_upgrade_downgrade_base_and_upgrade_again(server_url):
    name = f"loyalty_migrations_{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_database(server_url, name))
    url = with_database(server_url, name)
    try:
        upgrade(url)
        downgrade(url, "base")
        upgrade(url)
    finally:
        asyncio.run(drop_database(server_url, name))


def test_demo_twice_then_verify_is_clean(server_url, tmp_path):
    name = f"loyalty_cli_{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_database(server_url, name))
    env = {
        "LOYALTY_DATABASE_URL": with_database(server_url, name),
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": SECRET_KEY,
    }
    runner = CliRunner()
    try:
        first = runner.invoke(main, ["demo"], env=env)
        assert first.exit_code == 0, first.output
        second = runner.invoke(main, ["demo"], env=env)
        assert second.output == first.output  # idempotent: nothing posted twice
        assert "anna" in first.output and " 88 " in first.output
        verified = runner.invoke(main, ["verify"], env=env)
        assert verified.exit_code == 0, verified.output
        assert "ledger is clean" in verified.output
        for job in (
            "release-pending",
            "expire-holds",
            "expire-points",
            "requalify-tiers",
            "purge-idempotency",
        ):
            ran = runner.invoke(main, ["jobs", "run", job], env=env)
            assert ran.exit_code == 0 and f"{job}: 0 processed" in ran.output, ran.output
    finally:
        asyncio.run(drop_database(server_url, name))


def test_verify_exits_non_zero_on_a_mismatch(server_url, tmp_path):
    name = f"loyalty_cli_{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_database(server_url, name))
    url = with_database(server_url, name)
    env = {
        "LOYALTY_DATABASE_URL": url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": SECRET_KEY,
    }
    runner = CliRunner()
    try:
        assert runner.invoke(main, ["demo"], env=env).exit_code == 0

        async def tamper() -> None:
            import asyncpg

            conn = await asyncpg.connect(url)
            tampering = (
                "UPDATE balances SET balance = balance + 1 WHERE account = 'member:anna:available'"
            )
            # The database itself refuses a balance its lots do not match...
            with pytest.raises(asyncpg.exceptions.CheckViolationError, match="in lots"):
                await conn.execute(tampering)
            # ...so the tamperer has to switch the guards off (superuser only).
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(tampering)
            await conn.close()

        asyncio.run(tamper())
        result = runner.invoke(main, ["verify"], env=env)
        assert result.exit_code == 1
        assert "member:anna:available PTS: balance 89, postings 88" in result.output
    finally:
        asyncio.run(drop_database(server_url, name))


def test_token_command_mints_a_token_the_api_accepts(tmp_path):
    env = {"LOYALTY_JWT_SECRET": "s" * 64, "LOYALTY_DATABASE_URL": "postgresql://x/y"}
    result = CliRunner().invoke(main, ["token", "--sub", "alice", "--role", "admin"], env=env)
    assert result.exit_code == 0
    import jwt

    claims = jwt.decode(
        result.output.strip(),
        "s" * 64,
        algorithms=["HS256"],
        audience="loyalty-api",
        issuer="loyalty-dev",
    )
    assert claims["roles"] == ["admin"] and claims["sub"] == "alice"


def test_partner_sign_prints_headers_the_server_accepts():
    from partners.signing import canonical_request, check_signature

    env = {
        "LOYALTY_KEY_ID": "pk_demo",
        "LOYALTY_KEY_SECRET": "s3cret",
        "LOYALTY_DATABASE_URL": "postgresql://x/y",
    }
    result = CliRunner().invoke(
        main, ["partner", "sign", "POST", "/v1/partner/earn?b=2&a=1", '{"x": 1}'], env=env
    )
    assert result.exit_code == 0, result.output
    headers = dict(line.split(": ", 1) for line in result.output.strip().splitlines())
    assert headers["X-Loyalty-Key-Id"] == "pk_demo"
    canonical = canonical_request(
        "POST", "/v1/partner/earn", "b=2&a=1", headers["X-Loyalty-Timestamp"], b'{"x": 1}'
    )
    check_signature("s3cret", canonical, headers["X-Loyalty-Signature"])
