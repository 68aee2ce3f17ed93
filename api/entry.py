"""The `loyalty` command's entry point: the command-line app is imported
inside an interrupt handler, so Ctrl-C while Python is still loading it ends
the command as an interrupt during it does (one line, exit 130), not with a
traceback of the import."""

import sys


def main() -> None:
    try:
        from api.cli import main as command
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    command()
