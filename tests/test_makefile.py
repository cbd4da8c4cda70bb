"""The Makefile's quickstart: `make run` and `make tail` install the package alone, quietly;
`make test` brings the test tools."""

from __future__ import annotations

import re
import shutil
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
    assert re.search(r" -q+ ", installs[0]) and installs[0].rstrip().endswith("-e ."), installs[0]
    assert "[test]" not in installs[0] and "-m pytest" not in planned


def test_make_test_installs_the_test_tools(tmp_path: Path) -> None:
    """`make test` still installs `.[test]` before running pytest."""
    planned = _planned("test", tmp_path / "venv")
    assert "-e '.[test]'" in planned
    assert "-m pytest" in planned


def _deploy_deps(tmp_path: Path, tools: list[str]) -> subprocess.CompletedProcess[str]:
    """`make deploy-deps` as a non-root user whose PATH holds only `tools` (links to the
    real programs): what it would install is printed, nothing is installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    fake_id = bin_dir / "id"
    fake_id.write_text("#!/bin/sh\necho 1000\n")
    fake_id.chmod(0o755)
    for tool in tools:
        real = shutil.which(tool)
        assert real is not None, f"{tool} is missing: run `make deploy-deps` as root"
        (bin_dir / tool).symlink_to(real)
    return subprocess.run([shutil.which("make") or "make", "-s", "-C", str(REPO), "deploy-deps"],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": str(bin_dir)})


def test_deploy_deps_asks_for_promtool_when_it_is_missing(tmp_path: Path) -> None:
    """Without promtool on PATH, `make deploy-deps` names Debian's prometheus package (as
    root it would apt-get install it); with both tools present it does nothing."""
    missing = _deploy_deps(tmp_path / "a", ["systemd-analyze"])
    assert missing.returncode != 0
    assert "apt-get install prometheus" in missing.stderr
    assert "systemd" not in missing.stderr.split("run")[0]
    present = _deploy_deps(tmp_path / "b", ["systemd-analyze", "promtool"])
    assert present.returncode == 0, present.stderr
    assert present.stdout == present.stderr == ""
