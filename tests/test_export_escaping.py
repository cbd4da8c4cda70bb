"""`multiwatch export`: hostile directory names, roster paths and instance ids either come back
exactly as they are from systemd's and supervisord's own parsers, or are refused with one line.

systemd's parser is systemd itself: `systemd --system --test --unit=NAME` loads the exported
unit and dumps what it understood (as an unprivileged user: test mode refuses root), beside
`systemd-analyze verify`. supervisord's is `supervisor.options`.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from supervisor import options as supervisor_options

from multiwatch.cli import export as ex
from multiwatch.config import ConfigError, load_roster
from tests.support.process import run_cli

# Each name becomes a path component (a `/` in it makes nested directories).
HOSTILE = {
    "newline-injection": 'up\n[Service]\nExecStartPre=+/bin/sh -c "id > /tmp/pwned"',
    "carriage-return": "a\rExecStartPre=/bin/true",
    "tab": "a\tb",
    "escape-sequence": "\x1b[31mred",
    "line-separator": "a\u2028b",
    "specifiers": "100%n %i %% %",
    "supervisord-expansion": "%(ENV_HOME)s",
    "here-expansion": "%(here)s",
    "double-quotes": 'say "hi"',
    "single-quote": "it's",
    "both-quotes": "say \"hi\" it's",
    "backslashes": "back\\slash\\",
    "dollars": "$HOME ${USER} $$ $",
    "semicolons": "a;b ; c #d ;",
    "colons": "a:b::c",
    "spaces": "  lead and trail  ",
    "unicode": "Müsik ♫ 音楽",
}
BREAKS_LINES = {"newline-injection", "carriage-return", "tab", "escape-sequence",
                "line-separator"}
# supervisord has no escape for these: `%(here)s` is replaced whatever the quoting, a value in
# environment= cannot hold both quote characters, nor whitespace before `;` (a comment).
SUPERVISORD_CANNOT = BREAKS_LINES | {"here-expansion", "both-quotes", "semicolons"}
SYSTEMD_BINARIES = (Path("/lib/systemd/systemd"), Path("/usr/lib/systemd/systemd"))


@pytest.fixture
def readable_tmp() -> Iterator[Path]:
    """A temporary directory `nobody` can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mw-export-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def roster_with(base: Path, name: str, *, state_inside: bool = True) -> tuple[Path, Path, Path]:
    """base/<name>/roster.yaml watching base/<name>/watched: (roster, directory, state)."""
    home = base / name
    watched = home / "watched"
    watched.mkdir(parents=True)
    state = home / "state" if state_inside else base / "state"
    roster = home / "roster.yaml"
    dollar = lambda path: str(path).replace("$", "$$")  # noqa: E731 - `$$` is a roster's `$`
    roster.write_text(yaml.safe_dump({"state_dir": dollar(state), "instances": [
        {"id": "w", "directory": dollar(watched)}]}, allow_unicode=True))
    for path in base.rglob("*"):
        path.chmod(0o755)
    return roster, watched, state


def run_argv(roster: Path) -> list[str]:
    return [sys.executable, "-m", "multiwatch", "run", "-c", str(roster), "--only", "w",
            "--http-listen", "off"]


def assert_refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("multiwatch: error: ") and result.stderr.count("\n") == 1
    assert words in result.stderr, result.stderr


# ---------------------------------------------------------------- systemd


def systemd_view(unit_dir: Path, unit: str) -> list[str]:
    """The settings systemd itself parsed from `unit_dir/unit`, one `Key: value` per line."""
    binary = next((b for b in SYSTEMD_BINARIES if b.exists()), None)
    assert binary, "systemd is missing: make deploy-deps (apt-get install systemd)"
    drop = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            if os.geteuid() == 0 else [])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}
    done = subprocess.run([*drop, str(binary), "--system", "--test", f"--unit={unit}"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    block = done.stdout.split(f"-> Unit {unit}:\n", 1)[1]
    block = re.split(r"\n\t-> Unit ", block, maxsplit=1)[0]
    return [line.lstrip("\t") for line in block.splitlines()]


def view_value(view: list[str], key: str) -> list[str]:
    return [line[len(key) + 2:] for line in view if line.startswith(f"{key}: ")]


_DUMP_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')


def exec_start_argv(view: list[str]) -> list[str]:
    """ExecStart's argv as the service would get it (systemd turns `$$` into `$` at exec).

    The dump quotes a word as the shell's double quotes do (`\\` before `"`, `\\`, `$` and
    a backquote), which shlex does not undo for `$`."""
    index = view.index("-> ExecStart:")
    (command,) = view_value(view[index + 1:index + 2], "Command Line")
    words = [re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
             for quoted, plain in (m.groups() for m in _DUMP_WORD.finditer(command))]
    return [word.replace("$$", "$") for word in words]


def unit_keys(text: str) -> list[str]:
    """`[Section]` and `Key` lines of a unit, in order: what an injection would change."""
    return [line if line.startswith("[") else line.split("=", 1)[0]
            for line in text.splitlines() if line and not line.startswith("#")]


def analyze_verify(unit: Path) -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: make deploy-deps (apt-get install systemd)"
    done = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_systemd_export_escapes_or_refuses_hostile_paths(case: str, readable_tmp: Path) -> None:
    """A hostile directory/roster/state path is read back by systemd exactly, or refused."""
    roster, watched, state = roster_with(readable_tmp / "in", HOSTILE[case])
    assert run_cli("check", "-c", str(roster)).returncode == 0  # `check` accepts every name
    out = readable_tmp / "units"
    result = run_cli("export", "systemd", "-c", str(roster), "-o", str(out))
    if case in BREAKS_LINES:
        assert_refused(result, "control character")
        assert not out.exists() or not list(out.iterdir())
        return
    assert result.returncode == 0, result.stderr
    out.chmod(0o755)  # for systemd's test mode, which runs as nobody
    unit = out / "multiwatch-w.service"
    benign_roster, _, _ = roster_with(readable_tmp / "benign", "plain")
    benign = ex.systemd_units(load_roster(str(benign_roster), {}),
                              ex.options_for(load_roster(str(benign_roster), {}), None, None))
    assert unit_keys(unit.read_text()) == unit_keys(benign["multiwatch-w.service"])
    assert "multiwatch-w" not in analyze_verify(unit)
    view = systemd_view(out, unit.name)
    assert exec_start_argv(view) == run_argv(roster)
    assert [line for line in view if line.startswith("-> Exec")] == [
        "-> ExecStart:", "-> ExecReload:"]
    assert view_value(view, "ReadOnlyPaths") == [f"-{watched}"]
    assert view_value(view, "ReadWritePaths") == [str(state)]
    assert f"MULTIWATCH_STATE_DIR={state}" in view_value(view, "Environment")
    assert view_value(view, "Description") == [
        f"multiwatch instance w: announce files landing in {watched} on RabbitMQ"]
    assert view_value(view, "User") == ["multiwatch"]


@pytest.mark.parametrize("case", sorted(set(HOSTILE) - BREAKS_LINES | {"plain"}))
def test_systemd_state_under_var_lib_round_trips(case: str, readable_tmp: Path) -> None:
    """A state_dir under /var/lib: StateDirectory= for a plain name, ReadWritePaths= for an
    odd one (StateDirectory= splits at `:`), and systemd reads either back exactly."""
    roster_file, _, _ = roster_with(readable_tmp / "in", "plain")
    roster = load_roster(str(roster_file), {})
    state = f"/var/lib/multiwatch/{HOSTILE.get(case, 'plain.name_1-x').strip('/')}"
    roster = dataclasses.replace(roster, state_dir=state)
    out = readable_tmp / "units"
    out.mkdir(mode=0o755)
    (out / "multiwatch-w.service").write_text(
        ex.systemd_units(roster, ex.options_for(roster, None, None))["multiwatch-w.service"])
    (out / "multiwatch-w.service").chmod(0o644)
    view = systemd_view(out, "multiwatch-w.service")
    if case == "plain":
        assert view_value(view, "StateDirectory") == [state.removeprefix("/var/lib/")]
    else:
        assert view_value(view, "StateDirectory") == []
        assert view_value(view, "ReadWritePaths") == [state]
    assert f"MULTIWATCH_STATE_DIR={state}" in view_value(view, "Environment")


def test_hostile_instance_ids_are_refused(tmp_path: Path) -> None:
    """An id that could break a unit or section name fails `check`, and the exporters too."""
    (tmp_path / "w").mkdir()
    roster_file = tmp_path / "roster.yaml"
    for bad in ("w\n[Service]", "w]\n[program:x", "%n", "a b", "$x", "../w"):
        roster_file.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "s"), "instances": [
            {"id": bad, "directory": str(tmp_path / "w")}]}))
        for command in (["check"], ["export", "systemd"], ["export", "supervisord"]):
            assert_refused(run_cli(*command, "-c", str(roster_file)), "invalid instance id")
    # Built in code, past the roster's own check: the exporters check again.
    roster_file.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "s"), "instances": [
        {"id": "w", "directory": str(tmp_path / "w")}]}))
    roster = load_roster(str(roster_file), {})
    forged = dataclasses.replace(roster, instances=(
        dataclasses.replace(roster.instances[0], id="w\n[Service]\nExecStartPre=/bin/id"),))
    with pytest.raises(ConfigError, match="instance id"):
        ex.options_for(forged, None, None)


def test_python_option_must_be_an_absolute_path(tmp_path: Path) -> None:
    """--python with a relative or prefixed name (systemd's `+`, `-`) is refused."""
    roster, _, _ = roster_with(tmp_path, "plain")
    for python in ("python3", "+/bin/sh", "-python"):
        result = run_cli("export", "systemd", "-c", str(roster), f"--python={python}")
        assert_refused(result, "absolute path")


# ---------------------------------------------------------------- supervisord


def supervisord_view(conf: Path) -> supervisor_options.ServerOptions:
    options = supervisor_options.ServerOptions()
    try:
        options.realize(args=["-c", str(conf)])
    except SystemExit:  # realize() prints its usage error and exits
        pytest.fail(f"supervisord rejects {conf}")
    return options


def ini_keys(conf: Path) -> dict[str, list[str]]:
    parser = supervisor_options.UnhosedConfigParser()
    parser.read(str(conf))
    return {section: list(parser.options(section)) for section in parser.sections()}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_supervisord_export_escapes_or_refuses_hostile_paths(
        case: str, tmp_path: Path) -> None:
    """The roster path and state_dir reach the program exactly as supervisord parses them
    (command split, environment, no injected section or key), or the export is refused."""
    roster, _, state = roster_with(tmp_path / "in", HOSTILE[case])
    conf, run_dir = tmp_path / "supervisord.conf", tmp_path / "run"
    result = run_cli("export", "supervisord", "-c", str(roster), "-o", str(conf),
                     "--run-dir", str(run_dir), "--user", "nobody")
    if case in SUPERVISORD_CANNOT:
        words = {"here-expansion": "%(here)s", "semicolons": "comment",
                 "both-quotes": "environment= cannot hold it"}.get(case, "control character")
        assert_refused(result, words)
        assert not conf.exists()
        return
    assert result.returncode == 0, result.stderr
    benign_roster, _, _ = roster_with(tmp_path / "benign", "plain")
    benign = tmp_path / "benign.conf"
    assert run_cli("export", "supervisord", "-c", str(benign_roster), "-o", str(benign),
                   "--run-dir", str(run_dir), "--user", "nobody").returncode == 0
    assert ini_keys(conf) == ini_keys(benign)
    (group,) = supervisord_view(conf).process_group_configs
    (program,) = group.process_configs
    assert group.name == "multiwatch-w"
    assert shlex.split(program.command) == run_argv(roster)
    assert program.environment == {"MULTIWATCH_STATE_DIR": str(state),
                                   "HOME": pwd.getpwnam("nobody").pw_dir}
    assert program.uid == pwd.getpwnam("nobody").pw_uid and program.umask == 0o077


def test_supervisord_command_keeps_a_semicolon_after_a_space(tmp_path: Path) -> None:
    """` ;` and ` #` in the roster path, which configparser would cut as a comment, survive."""
    roster, _, _ = roster_with(tmp_path / "in", HOSTILE["semicolons"], state_inside=False)
    conf = tmp_path / "supervisord.conf"
    result = run_cli("export", "supervisord", "-c", str(roster), "-o", str(conf),
                     "--run-dir", str(tmp_path / "run"), "--user", "nobody")
    assert result.returncode == 0, result.stderr
    (group,) = supervisord_view(conf).process_group_configs
    assert shlex.split(group.process_configs[0].command) == run_argv(roster)


def test_supervisord_runs_programs_as_a_dedicated_user_with_umask_077() -> None:
    """Exported as root, programs get user=multiwatch by default; otherwise supervisord's own."""
    plain = ex.ExportOptions(roster_file="/etc/multiwatch/multiwatch.yaml")
    expected = "multiwatch" if os.geteuid() == 0 else None
    assert ex.supervisord_user(plain) == expected
    assert ex.supervisord_user(dataclasses.replace(plain, user="svc")) == "svc"


def test_supervisord_unknown_user_and_run_dir_in_state_are_refused(tmp_path: Path) -> None:
    """An unknown --user, or a --run-dir the programs' user could redirect, is a clear error."""
    roster, _, state = roster_with(tmp_path, "plain")
    assert_refused(run_cli("export", "supervisord", "-c", str(roster), "--user",
                           "no-such-user-mw"), "no such user")
    assert_refused(run_cli("export", "supervisord", "-c", str(roster), "--user", "nobody",
                           "--run-dir", str(state / "run")), "inside state_dir")
    result = run_cli("export", "supervisord", "-c", str(roster), "--user", "nobody")
    assert result.returncode == 0, result.stderr
    assert f"childlogdir={state}-supervisord\n" in result.stdout
