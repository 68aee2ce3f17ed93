"""Running a `loyalty` command to its end from a benchmark, measured on its
own: wall time and the command's resource usage (wait4: its peak RSS is the
command's alone, not the benchmark's)."""

import os
import subprocess
import sys
import time
from pathlib import Path


def loyalty() -> list[str]:
    """This virtualenv's `loyalty`, or the module when it was never installed."""
    script = Path(sys.executable).with_name("loyalty")
    return [str(script)] if script.exists() else [sys.executable, "-m", "api.cli"]


def run_measured(command: list[str], env: dict, out_path: Path, *, quiet: bool = False):
    """Run `command` to its end with its standard output in `out_path`: that
    output, the wall time and the resource usage. A failure ends the benchmark
    with the command's output."""
    with out_path.open("w+") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.DEVNULL if quiet else None
        )
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        out.seek(0)
        output = out.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command[-6:])} failed ({code}): {output}")
    return output, elapsed, usage
