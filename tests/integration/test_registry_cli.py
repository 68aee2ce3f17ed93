"""An operator runs the programme's registry from the `loyalty` command alone:
members enrolled, found by card, merged, closed and erased; a partner
registered with a contract, a new contract version, a key created and
revoked. A failure is one line on stderr, nothing on stdout, and the exit
code of its kind: 3 refused, 4 not found, 1 configuration, 2 usage."""

import shlex
import subprocess
import uuid

from click.testing import CliRunner

from api.cli import main
from tests.conftest import TEST_SECRET_KEY


def run(env, *args: str, env_without: str | None = None):
    env = {**env, **({env_without: None} if env_without else {})}
    return CliRunner().invoke(main, list(args), env=env)


def failed(result, code: int, message: str) -> bool:
    """The command failed with exit `code`, one line on stderr holding
    `message`, and nothing on stdout."""
    lines = result.stderr.strip().splitlines()
    assert (
        result.exit_code == code
        and result.stdout == ""
        and len(lines) == 1
        and lines[0].startswith("Error: ")
        and message in lines[0]
    ), (result.exit_code, result.stdout, result.stderr)
    return True


def exported(output: str) -> dict[str, str]:
    """What `eval` of create-key's output sets, as bash itself reads it."""
    shown = subprocess.run(
        [
            "bash",
            "-c",
            'eval "$1" && printf "%s\n%s" "$LOYALTY_KEY_ID" "$LOYALTY_KEY_SECRET"',
            "-",
            output,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return {"LOYALTY_KEY_ID": shown[0], "LOYALTY_KEY_SECRET": shown[1]}


def test_an_operator_runs_the_registry_from_the_command_line(database_url, tmp_path):
    env = {
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }
    tag = uuid.uuid4().hex[:8]
    anna, anna2, shop = f"cli-{tag}-anna", f"cli-{tag}-bea", f"cli-{tag}-shop"
    card = "6001" + str(uuid.uuid4().int)[:12]

    enrolled = run(env, "member", "enrol", anna, "--name", "Anna", "--email", "a@example.org")
    assert enrolled.exit_code == 0, enrolled.output
    assert f"id:          {anna}" in enrolled.output
    assert run(env, "member", "enrol", anna2).exit_code == 0
    issued = run(env, "member", "issue-card", anna2, card)
    assert issued.exit_code == 0 and f"card {card} issued to {anna2}" in issued.output

    listed = run(env, "member", "list", "--card", card)
    assert listed.exit_code == 0 and anna2 in listed.output and anna not in listed.output
    page = run(env, "member", "list", "--prefix", f"cli-{tag}", "--limit", "1")
    assert anna in page.output and f"more: --after {anna}" in page.output

    merged = run(env, "member", "merge", anna2, anna, "--reason", "one person")
    assert merged.exit_code == 0, merged.output
    # What moved, as `key: value` lines like every other record (not a dict).
    lines = merged.stdout.splitlines()
    assert lines[1] == "moved:" and "{" not in merged.stdout, merged.stdout
    moved = dict(line.split(":", 1) for line in lines[2:])
    assert moved["  tier"].strip() and moved["  cards"].strip() == "1", merged.stdout
    shown = run(env, "member", "show", anna)
    assert card in shown.output and "merged-from" in shown.output

    twice = run(env, "member", "merge", anna2, anna, "--reason", "again")
    assert twice.exit_code == 3
    assert twice.stderr.strip().splitlines() == [
        f"Error: member-not-active: member {anna2!r} is merged"
    ]
    unknown = run(env, "member", "issue-card", f"cli-{tag}-ghost", "6001" + "1" * 12)
    assert failed(unknown, 4, "member-not-found")
    assert failed(run(env, "member", "show", f"cli-{tag}-ghost"), 4, "member-not-found")

    refused_erase = run(env, "member", "erase", anna)
    assert failed(refused_erase, 3, "member-still-active")
    assert run(env, "member", "close", anna, "--reason", "moved away").exit_code == 0
    erased = run(env, "member", "erase", anna)
    assert erased.exit_code == 0 and "erased_at:" in erased.output
    assert "a@example.org" not in run(env, "member", "show", anna).output

    created = run(
        env,
        "partner",
        "create",
        shop,
        "--name",
        "Corner shop",
        "--return-window-days",
        "14",
        "--price-per-point",
        "0.01",
        "--credit-limit-minor",
        "500000",
    )
    assert created.exit_code == 0, created.output
    assert "return_window_days:       14" in created.output
    contract = run(
        env, "partner", "contract", shop, "--effective-from", "2031-01-01", "--deposit-minor", "5"
    )
    assert contract.exit_code == 0 and "version:                  2" in contract.output
    key = run(env, "partner", "create-key", shop)
    assert key.exit_code == 0, key.output
    assert [shlex.split(line)[0] for line in key.stdout.splitlines()] == ["export", "export"]
    key_id = exported(key.stdout)["LOYALTY_KEY_ID"]
    assert key_id.startswith("pk_") and exported(key.stdout)["LOYALTY_KEY_SECRET"]
    shown = run(env, "partner", "show", shop)
    assert "2031-01-01" in shown.output and f"{key_id}  active" in shown.output
    revoked = run(env, "partner", "revoke-key", shop, key_id)
    assert (
        revoked.exit_code == 0 and f"{key_id}  revoked" in run(env, "partner", "show", shop).output
    )
    assert shop in run(env, "partner", "list").output

    bad_rate = run(
        env, "partner", "create", f"{shop}-2", "--name", "x", "--price-per-point", "lots"
    )
    assert bad_rate.exit_code == 2 and "not a decimal number" in bad_rate.output
    duplicate = run(env, "partner", "create", shop, "--name", "again")
    assert failed(duplicate, 3, "invalid-rule: id: partner")


def test_create_key_prints_nothing_to_eval_when_it_fails(database_url, tmp_path):
    """Two active keys, an unknown partner, no secret key: nothing on stdout for
    `KEY=$(loyalty partner create-key P) && eval "$KEY"` to export, one line
    on stderr, and an exit code that stops the `&&`."""
    env = {
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }
    shop = f"cli-{uuid.uuid4().hex[:8]}-keys"
    assert run(env, "partner", "create", shop, "--name", "Keys").exit_code == 0
    for _ in range(2):
        assert run(env, "partner", "create-key", shop).exit_code == 0
    assert failed(run(env, "partner", "create-key", shop), 3, "too-many-keys: ")
    assert failed(run(env, "partner", "create-key", f"{shop}-ghost"), 4, "partner-not-found: ")
    no_key = run(env, "partner", "create-key", shop, env_without="LOYALTY_SECRET_KEY")
    assert failed(no_key, 1, "set LOYALTY_SECRET_KEY")

    # The README's way, in bash: the failure stops the chain, nothing is exported.
    shell = subprocess.run(
        [
            "bash",
            "-c",
            'KEY=$(loyalty partner create-key "$1") && eval "$KEY"; '
            'echo "$?:${LOYALTY_KEY_ID:-unset}"',
            "-",
            shop,
        ],
        env={**env, "PATH": _path()},
        capture_output=True,
        text=True,
    )
    assert shell.stdout.strip() == "3:unset", shell.stderr
    assert shell.stderr.strip().splitlines() == [
        f"Error: too-many-keys: partner {shop} has 2 active keys; revoke one first"
    ]


def test_partner_import_fails_in_one_line(database_url, tmp_path):
    env = {
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SECRET_KEY": TEST_SECRET_KEY,
    }
    day = tmp_path / "day.csv"
    day.write_text("card_number,reference,occurred_at,currency,amount_minor,category\n")
    ghost = f"cli-{uuid.uuid4().hex[:8]}-ghost"
    assert failed(run(env, "partner", "import", str(day), "--partner", ghost), 4, "partner-not")
    nameless = tmp_path / "day.txt"
    nameless.write_text(day.read_text())
    unknown_format = run(env, "partner", "import", str(nameless), "--partner", ghost)
    assert unknown_format.exit_code == 2 and "or give --format" in unknown_format.stderr
    # A device or pipe may never end: refused before anything is read.
    endless = run(env, "partner", "import", "/dev/zero", "--partner", ghost, "--format", "csv")
    assert failed(endless, 2, "is not a regular file")
    unwritable = run(
        env, "partner", "import", str(day), "--partner", ghost, "--rejects", "/dev/null"
    )
    assert failed(unwritable, 2, "is not a regular file")
    itself = run(env, "partner", "import", str(day), "--partner", ghost, "--rejects", str(day))
    assert itself.exit_code == 2 and "is the file being imported" in itself.stderr
    assert day.read_text().startswith("card_number,")


def _path() -> str:
    import os
    import sys
    from pathlib import Path

    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
