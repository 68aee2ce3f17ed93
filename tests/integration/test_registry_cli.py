"""An operator runs the programme's registry from the `loyalty` command alone:
members enrolled, found by card, merged, closed and erased; a partner
registered with a contract, a new contract version, a key created and
revoked. A refused operation is one line and exit code 3."""

import uuid

from click.testing import CliRunner

from api.cli import main
from tests.conftest import TEST_SECRET_KEY


def run(env, *args: str):
    return CliRunner().invoke(main, list(args), env=env)


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
    shown = run(env, "member", "show", anna)
    assert card in shown.output and "merged-from" in shown.output

    twice = run(env, "member", "merge", anna2, anna, "--reason", "again")
    assert twice.exit_code == 3
    assert twice.output.strip().splitlines() == [
        f"Error: member-not-active: member {anna2!r} is merged"
    ]
    unknown = run(env, "member", "issue-card", f"cli-{tag}-ghost", "6001" + "1" * 12)
    assert unknown.exit_code == 3 and "member-not-found" in unknown.output

    refused_erase = run(env, "member", "erase", anna)
    assert refused_erase.exit_code == 3 and "member-still-active" in refused_erase.output
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
    key_id = key.output.splitlines()[0].split("=", 1)[1]
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
    assert duplicate.exit_code == 3 and duplicate.output.count("\n") == 1
