"""The Makefile's quickstart: `make run` and `make tail` install the package alone, quietly;
`make test` brings the test tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _planned(target: str, venv: Path) -> str:
    """What `make TARGET` would run on a machine without the venv (make -n: nothing runs)."""
    result = subprocess.run(["make", "-n", "-C", str(REPO), target, f"VENV={venv}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("target", ["run", "tail"])
def test_quickstart_installs_the_package_alone_quietly(tmp_path: Path, target: str) -> None:
    """`make run`/`make tail` on a fresh checkout: one quiet pip install of the package,
    no test tools (pytest, hypothesis, kubernetes-validate...)."""
    planned = _planned(target, tmp_path / "venv")
    installs = [line for line in planned.splitlines() if "pip install" in line]
    assert len(installs) == 1, planned
    assert " -q " in installs[0] and installs[0].rstrip().endswith("-e ."), installs[0]
    assert "[test]" not in installs[0] and "-m pytest" not in planned


def test_make_test_installs_the_test_tools(tmp_path: Path) -> None:
    """`make test` still installs `.[test]` before running pytest."""
    planned = _planned("test", tmp_path / "venv")
    assert "-e '.[test]'" in planned
    assert "-m pytest" in planned
