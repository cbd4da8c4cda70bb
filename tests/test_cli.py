"""The command line as users meet it: help texts, `check`, and clear errors for bad rosters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.process import run_cli


@pytest.mark.parametrize("command, expected", [
    ([], ["run", "check", "tail", "state"]),
    (["state", "export"], ["--config", "--instance", "JSON"]),
    (["state", "backup"], ["--config", "--instance", "--to", "restore"]),
    (["run"], ["--config", "MULTIWATCH_CONFIG", "--only", "SIGHUP"]),
    (["check"], ["--config", "masked", "2"]),
    (["tail"], ["--config", "--queue", "--tap", "--count", "--timeout"]),
])
def test_help_describes_every_command_and_option(command: list[str], expected: list[str]) -> None:
    """`--help` on each command exits 0 and names its options."""
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    for word in expected:
        assert word in result.stdout, f"{word!r} missing from help of {command}"


def test_check_prints_effective_config_with_password_masked(tmp_path: Path) -> None:
    """`check` on a valid roster exits 0 and never prints the password."""
    watched = tmp_path / "music"
    watched.mkdir()
    roster = tmp_path / "roster.yaml"
    roster.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "broker:\n  url: amqp://alice:${SECRET}@rabbit:5672/\n"
        f"instances:\n  - id: watcher-music\n    directory: {watched}\n"
    )
    result = run_cli("check", "-c", str(roster), env={"SECRET": "hunter2-very-secret"})
    assert result.returncode == 0, result.stderr
    assert "watcher-music" in result.stdout
    assert "alice" in result.stdout
    assert "hunter2-very-secret" not in result.stdout + result.stderr


def test_config_path_comes_from_multiwatch_config(tmp_path: Path) -> None:
    """MULTIWATCH_CONFIG names the roster when -c is not given."""
    watched = tmp_path / "w"
    watched.mkdir()
    roster = tmp_path / "r.yaml"
    roster.write_text(f"state_dir: {tmp_path / 's'}\ninstances:\n"
                      f"  - id: from-env-var\n    directory: {watched}\n")
    result = run_cli("check", env={"MULTIWATCH_CONFIG": str(roster)})
    assert result.returncode == 0, result.stderr
    assert "from-env-var" in result.stdout


def test_environment_mode_builds_one_instance(tmp_path: Path) -> None:
    """With no roster, the guide's variables define one instance and its broker."""
    result = run_cli("check", env={
        "DATA_DIR": str(tmp_path), "INSTANCE_ID": "watcher-env", "RABBITMQ_HOST": "rabbit",
        "RABBITMQ_USER": "tracktion", "RABBITMQ_PASS": "changeme-secret",
        "MULTIWATCH_STATE_DIR": str(tmp_path.parent / f"{tmp_path.name}-state"),
    })
    assert result.returncode == 0, result.stderr
    assert "watcher-env" in result.stdout
    assert "rabbit" in result.stdout
    assert "changeme-secret" not in result.stdout


def _bad(tmp_path: Path, text: str) -> tuple[int, str]:
    roster = tmp_path / "roster.yaml"
    roster.write_text(text)
    result = run_cli("check", "-c", str(roster))
    assert "Traceback" not in result.stderr
    return result.returncode, result.stderr


def test_bad_rosters_exit_2_with_a_message_naming_the_problem(tmp_path: Path) -> None:
    """Each kind of roster mistake: exit 2, one clear message, no traceback."""
    a, b = tmp_path / "a", tmp_path / "a" / "inner"
    b.mkdir(parents=True)
    state = f"state_dir: {tmp_path / 'state'}\n"
    cases = {
        "YAML syntax": (state + "instances: [\n  - id: x\n", ["roster.yaml", "line"]),
        "unknown key": (state + f"instances:\n  - id: x\n    directroy: {a}\n",
                        ["directroy", "directory"]),
        "duplicate id": (state + f"instances:\n  - id: dup\n    directory: {a}\n"
                         f"  - id: dup\n    directory: {tmp_path}/other\n", ["dup", "unique"]),
        "missing dir": (state + f"instances:\n  - id: x\n    directory: {tmp_path}/nope\n",
                        ["nope"]),
        "nested dirs": (state + f"instances:\n  - id: x\n    directory: {a}\n"
                        f"  - id: y\n    directory: {b}\n", ["inner"]),
        "same dir": (state + f"instances:\n  - id: x\n    directory: {a}\n"
                     f"  - id: y\n    directory: {a}\n", ["x", "y"]),
        "state inside watched": (f"state_dir: {a}/state\ninstances:\n  - id: x\n"
                                 f"    directory: {a}\n", ["state_dir"]),
        "hash cap": (state + "supervisor:\n  max_parallel_hashes: 0\n"
                     f"instances:\n  - id: x\n    directory: {a}\n",
                     ["roster.yaml:3", "supervisor.max_parallel_hashes", "greater than 0"]),
    }
    (tmp_path / "other").mkdir()
    for name, (text, words) in cases.items():
        status, stderr = _bad(tmp_path, text)
        assert status == 2, f"{name}: exit {status}"
        for word in words:
            assert word in stderr, f"{name}: {word!r} not in {stderr!r}"


def test_optional_missing_directory_is_accepted(tmp_path: Path) -> None:
    """`optional: true` lets a not-yet-mounted directory pass validation."""
    status, stderr = _bad(tmp_path, f"state_dir: {tmp_path / 'state'}\ninstances:\n"
                          f"  - id: late\n    directory: {tmp_path}/later\n    optional: true\n")
    assert status == 0, stderr


def test_missing_roster_file_is_a_clear_error(tmp_path: Path) -> None:
    """A roster path that does not exist: exit 2 naming the path."""
    result = run_cli("check", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_only_unknown_instance_is_a_clear_error(tmp_path: Path) -> None:
    """`run --only` with an id not in the roster: exit 2 listing the instances."""
    watched = tmp_path / "w"
    watched.mkdir()
    roster = tmp_path / "r.yaml"
    roster.write_text(f"state_dir: {tmp_path / 's'}\ninstances:\n  - id: real\n"
                      f"    directory: {watched}\n")
    result = run_cli("run", "-c", str(roster), "--only", "ghost")
    assert result.returncode == 2
    assert "ghost" in result.stderr and "real" in result.stderr


def _roster(tmp_path: Path, *ids: str) -> Path:
    roster = tmp_path / "r.yaml"
    lines = [f"state_dir: {tmp_path / 's'}", "instances:"]
    for ident in ids:
        (tmp_path / ident).mkdir()
        lines += [f"  - id: {ident}", f"    directory: {tmp_path / ident}"]
    roster.write_text("\n".join(lines) + "\n")
    return roster


def test_bare_multiwatch_prints_the_help_not_an_error() -> None:
    """`multiwatch` alone prints the full help (every command) on stderr and exits 2."""
    result = run_cli()
    assert result.returncode == 2
    assert "error" not in result.stderr
    for command in ("run", "check", "tail", "state", "status", "health", "export"):
        assert re.search(rf"^ +{command} ", result.stderr, re.MULTILINE), command
    assert "--version" in result.stderr


def test_help_lists_each_command_once() -> None:
    """`multiwatch --help` names each command on one line, not twice."""
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "check", "tail", "state", "status", "health", "export"):
        lines = [line for line in result.stdout.splitlines()
                 if line.split()[:1] == [command]]
        assert len(lines) == 1, (command, result.stdout)


def test_help_lists_commands_like_options() -> None:
    """Under "commands:" each line is a command and its help, aligned as the options are:
    no COMMAND placeholder line, no name too long to share a line with its help."""
    result = run_cli("--help")
    listed = result.stdout.split("\ncommands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in listed if line.startswith("  ") and
             not line.startswith("   ")]
    assert "COMMAND" not in names and "completion" in names and "run" in names
    assert all(len(line.split()) > 1 for line in listed if line.startswith("  ")
               and not line.startswith("   ")), result.stdout


def test_only_with_a_typo_suggests_the_instance_meant(tmp_path: Path) -> None:
    """`run --only watcher-musci` asks "did you mean watcher-music?"."""
    roster = _roster(tmp_path, "watcher-music", "watcher-films")
    result = run_cli("run", "-c", str(roster), "--only", "watcher-musci")
    assert result.returncode == 2
    assert "did you mean watcher-music?" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_instance_with_a_typo_suggests_the_instance_meant(tmp_path: Path) -> None:
    """`state export --instance watcher-musci` asks "did you mean watcher-music?" too."""
    roster = _roster(tmp_path, "watcher-music", "watcher-films")
    result = run_cli("state", "export", "-c", str(roster), "--instance", "watcher-musci")
    assert result.returncode == 2
    assert "did you mean watcher-music?" in result.stderr, result.stderr


def test_a_tab_in_yaml_indentation_says_use_spaces(tmp_path: Path) -> None:
    """A roster indented with a tab: the error says spaces, not tabs, and names the line."""
    (tmp_path / "w").mkdir()
    status, stderr = _bad(tmp_path, f"state_dir: {tmp_path / 's'}\ninstances:\n"
                          f"  - id: x\n\t  directory: {tmp_path / 'w'}\n")
    assert status == 2
    assert "YAML indentation must use spaces, not tabs (line 4)" in stderr, stderr


def test_tail_on_the_embedded_spool_before_run_creates_nothing(tmp_path: Path) -> None:
    """`tail` before any `run`: says there is nothing to tail yet, creates no state_dir."""
    roster = _roster(tmp_path, "w")
    result = run_cli("tail", "-c", str(roster), "--timeout", "1")
    assert result.returncode == 0, result.stderr
    assert "nothing to tail yet" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "s").exists()


def _command_paths() -> list[str]:
    """Every command and sub-command the parser accepts, e.g. "state export"."""
    import argparse

    from multiwatch.cli import _parser

    found: list[str] = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                    if nested:
                        walk(sub, f"{prefix}{name} ")
                    else:
                        found.append(f"{prefix}{name}")

    walk(_parser(), "")
    return found


def test_readme_command_table_lists_every_command() -> None:
    """Each command of the parser has a row in the README's command table."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("\n\n", 3)[2]
    rows = [line for line in table.splitlines() if line.startswith("| `multiwatch ")]
    missing = [path for path in _command_paths()
               if not any(f"`multiwatch {path}" in row for row in rows)]
    assert len(_command_paths()) >= 14 and not missing, missing
