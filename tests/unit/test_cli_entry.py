"""The `loyalty` entry point: Ctrl-C while the command is still loading."""

import sys
import types

import pytest

from api import entry


def test_an_interrupt_while_the_command_loads_ends_in_one_line(monkeypatch, capsys):
    class Loading(types.ModuleType):
        def __getattr__(self, name: str):
            raise KeyboardInterrupt  # as Ctrl-C lands in the middle of the import

    monkeypatch.setitem(sys.modules, "api.cli", Loading("api.cli"))
    with pytest.raises(SystemExit) as ended:
        entry.main()
    assert ended.value.code == 130
    assert capsys.readouterr().err == "Error: interrupted\n"
