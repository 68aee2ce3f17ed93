"""The README's walk-through, run as written: every fenced block marked
`<!-- walkthrough -->` ("Trying it", "A signed partner call", "Card holders'
API", "Commands"), in order, in one shell session's state, against a fresh
`loyalty serve --demo` of this test's own (a database of its own, an embedded
Redis in a temporary data directory, a free port as `BASE`). Every block must
exit 0, so the README cannot drift from what the service does.

Shell state carries from block to block as in a reader's terminal: each bash
block runs with allexport on (its assignments become environment variables),
and the environment it leaves is what the next block starts from. A python
block runs as `python -` in that environment."""

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from api.embedded import drop_database, ensure_database, with_database
from tests.api.conftest import MEMBER_SECRET, SECRET, SECRET_KEY
from tests.api.served import free_port, loyalty, output, stop, wait_ready

pytestmark = pytest.mark.long  # tens of seconds: handed out first (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
MARKED = re.compile(
    r"^<!-- walkthrough -->\n```(bash|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL
)


def walkthrough() -> list[tuple[str, str]]:
    """(language, code) of every marked block, in the README's order."""
    return MARKED.findall((ROOT / "README.md").read_text())


def test_the_readme_marks_its_walkthrough():
    blocks = walkthrough()
    marks = re.findall(r"^<!-- walkthrough -->$", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert len(blocks) == len(marks) >= 5, (
        "every mark must stand right before a bash or python block"
    )
    assert "loyalty token" in blocks[0][1] and "partner create-key" in blocks[1][1]


@pytest.fixture
def served(server_url, tmp_path):
    """A fresh `loyalty serve --demo`; its environment is the shell's too."""
    name = f"loyalty_readme_{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_database(server_url, name))
    port = free_port()
    env = {
        "LOYALTY_DATABASE_URL": with_database(server_url, name),
        "LOYALTY_DATA_DIR": str(tmp_path / "data"),
        "LOYALTY_SECRET_KEY": SECRET_KEY,
        "LOYALTY_JWT_SECRET": SECRET,
        "LOYALTY_MEMBER_JWT_SECRET": MEMBER_SECRET,
        "LOYALTY_PORT": str(port),
    }
    log = tmp_path / "serve.log"
    process = loyalty("serve", "--demo", env=env, log=log)
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{port}", process, log))
        yield {**env, "BASE": f"http://127.0.0.1:{port}"}, process, log
    finally:
        stop(process)
        asyncio.run(drop_database(server_url, name))


def test_every_walkthrough_step_succeeds_in_order(served, tmp_path):
    env, process, log = served
    shell = tmp_path / "shell"  # the reader's working directory (headers.txt lands here)
    shell.mkdir()
    state = tmp_path / "state.sh"
    state.write_text("")
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")},
        **env,
        # This checkout's `loyalty` and `python` first; its packages importable.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
    }
    for number, (language, code) in enumerate(walkthrough(), 1):
        if language == "python":
            code = f"python - <<'WALKTHROUGH_PYTHON'\n{code}WALKTHROUGH_PYTHON\n"
        script = f'set -a -e -o pipefail\n. "{state}"\n{code}\nexport -p > "{state}"\n'
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=shell,
            env=environ,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, (
            f"walk-through block {number} ({language}) exited {done.returncode}:\n{code}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n--- serve\n{output(log)}"
        )
    assert process.poll() is None, output(log)
