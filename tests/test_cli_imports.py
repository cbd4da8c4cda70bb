"""The lazy-import rule of multiwatch/cli (its docstring): parsing a command line imports no
configuration, supervisor, watcher or broker code; the handler imports what it needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

# What `multiwatch run` must not have imported when it spawns its first watcher.
HEAVY = ("multiwatch.config", "multiwatch.supervisor", "multiwatch.watcher", "yaml", "kombu",
         "multiwatch.cli.control", "multiwatch.cli.status", "multiwatch.cli.preflight")


@pytest.mark.parametrize("argv", [["run"], ["check", "--connect"], ["status"],
                                  ["state", "export"], ["export", "systemd"]])
def test_parsing_a_command_line_imports_no_configuration_code(argv: list[str]) -> None:
    """Building the parser and parsing `multiwatch <command>` loads none of the modules the
    commands' work needs, so `run` can spawn its first watcher before reading the roster."""
    code = ("import sys; from multiwatch.cli import _parser; "
            f"_parser().parse_args({argv!r}); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == ""
