"""`multiwatch export supervisord|systemd`: the configuration text each instance gets."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from supervisor import datatypes
from supervisor import options as supervisor_options

from tests.support.process import run_cli


@pytest.fixture
def roster(tmp_path: Path) -> Path:
    """A two-instance roster reading ${RABBITMQ_PASS}, with an 11 s stop timeout."""
    for name in ("music", "docs"):
        (tmp_path / name).mkdir()
    path = tmp_path / "roster.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "broker:\n  url: amqp://alice:${RABBITMQ_PASS:-x}@rabbit:5672/\n"
        "supervisor:\n  stop_timeout_seconds: 11\n"
        "http:\n  listen: 0.0.0.0:9120\n"
        "instances:\n  - {id: watcher-music, directory: music}\n"
        "  - {id: watcher-docs, directory: docs}\n"
    )
    return path


def _export(*args: str) -> subprocess.CompletedProcess[str]:
    """`multiwatch export ...`; supervisord programs run as `nobody` (as root the default is
    the `multiwatch` user, which this machine need not have)."""
    if args[0] == "supervisord" and "--help" not in args and "--user" not in args:
        args = (*args, "--user", "nobody")
    result = run_cli("export", *args)
    assert "Traceback" not in result.stderr
    return result


def _unit(text: str) -> dict[str, dict[str, str]]:
    """A systemd unit as section → key → value (a repeated key keeps its last value)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current[key] = value
    return sections


def _ini(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_supervisord_has_one_program_per_instance(roster: Path) -> None:
    """Each instance becomes a program running `multiwatch run --only ID` on the roster."""
    result = _export("supervisord", "-c", str(roster))
    assert result.returncode == 0, result.stderr
    config = _ini(result.stdout)
    programs = [s for s in config.sections() if s.startswith("program:")]
    assert programs == ["program:multiwatch-watcher-music", "program:multiwatch-watcher-docs"]
    music = config["program:multiwatch-watcher-music"]
    assert shlex.split(music["command"]) == [
        sys.executable, "-m", "multiwatch", "run", "-c", str(roster),
        "--only", "watcher-music", "--http-listen", "off"]
    assert music["autorestart"] == "true" and music["stopsignal"] == "TERM"
    assert int(music["stopwaitsecs"]) > 11
    assert music["stdout_logfile"] == "AUTO" and music["redirect_stderr"] == "true"
    assert "RABBITMQ_PASS" in result.stdout  # the header names what the roster reads


def test_supervisord_preamble_points_at_the_run_dir(roster: Path, tmp_path: Path) -> None:
    """The supervisord, socket and supervisorctl sections agree on one socket in --run-dir."""
    run_dir = tmp_path / "run"
    config = _ini(_export("supervisord", "-c", str(roster), "--run-dir", str(run_dir)).stdout)
    socket = run_dir / "supervisor.sock"
    assert config["unix_http_server"]["file"] == str(socket)
    assert config["supervisorctl"]["serverurl"] == f"unix://{socket}"
    assert config["supervisord"]["pidfile"] == str(run_dir / "supervisord.pid")
    assert "supervisor.rpcinterface_factory" in config["rpcinterface:supervisor"]


def test_supervisord_programs_only(roster: Path) -> None:
    """--programs-only emits just the [program:...] sections, for an existing supervisord."""
    config = _ini(_export("supervisord", "-c", str(roster), "--programs-only").stdout)
    assert all(s.startswith("program:") for s in config.sections())
    assert len(config.sections()) == 2


def test_supervisord_file_is_accepted_by_supervisor(roster: Path, tmp_path: Path) -> None:
    """supervisord's own option parser reads the written file and sees both programs."""
    out = tmp_path / "supervisord.conf"
    result = _export("supervisord", "-c", str(roster), "-o", str(out),
                     "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run").is_dir()  # created, since supervisord will not
    options = supervisor_options.ServerOptions()
    options.realize(args=["-c", str(out)])
    groups = {group.name: group for group in options.process_group_configs}
    assert sorted(groups) == ["multiwatch-watcher-docs", "multiwatch-watcher-music"]
    [process] = groups["multiwatch-watcher-music"].process_configs
    assert process.autorestart is datatypes.RestartUnconditionally
    assert process.killasgroup is True and process.stopwaitsecs > 11


def test_http_port_base_gives_each_program_its_own_port(roster: Path) -> None:
    """--http-port-base N: instance i listens on N+i on the roster's http host."""
    config = _ini(_export("supervisord", "-c", str(roster), "--http-port-base", "9300").stdout)
    listens = [shlex.split(config[s]["command"])[-1] for s in config.sections()
               if s.startswith("program:")]
    assert listens == ["0.0.0.0:9300", "0.0.0.0:9301"]


def test_percent_in_paths_is_escaped_for_supervisord(tmp_path: Path) -> None:
    """A `%` in the roster path is written as `%%`, which supervisord reads back as `%`."""
    odd = tmp_path / "100%"
    (odd / "w").mkdir(parents=True)
    path = odd / "roster.yaml"
    path.write_text(f"state_dir: {odd / 'state'}\ninstances: [{{id: w, directory: w}}]\n")
    text = _export("supervisord", "-c", str(path), "--programs-only").stdout
    assert "100%%/roster.yaml" in text
    interpolating = configparser.ConfigParser()  # `%%` → `%`, as supervisord reads it
    interpolating.read_string(text)
    assert str(path) in shlex.split(interpolating["program:multiwatch-w"]["command"])


def test_export_without_roster_is_a_clear_error(tmp_path: Path) -> None:
    """Environment mode has no roster to point at: exit 2 and say what to use instead."""
    result = run_cli("export", "supervisord", env={
        "DATA_DIR": str(tmp_path), "MULTIWATCH_STATE_DIR": str(tmp_path.parent / "s")})
    assert result.returncode == 2
    assert "roster file" in result.stderr and "multiwatch@.service" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_http_listen_option_is_a_clear_error(roster: Path) -> None:
    """`run --http-listen` with a bad value: exit 2 naming the option, no traceback."""
    result = run_cli("run", "-c", str(roster), "--http-listen", "nowhere")
    assert result.returncode == 2
    assert "--http-listen" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_systemd_writes_one_sandboxed_unit_per_instance(roster: Path, tmp_path: Path) -> None:
    """Each unit runs one instance with restart, reload and the roster unit's sandbox."""
    out = tmp_path / "units"
    result = _export("systemd", "-c", str(roster), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "multiwatch-watcher-docs.service", "multiwatch-watcher-music.service"]
    unit = _unit((out / "multiwatch-watcher-music.service").read_text())
    service = unit["Service"]
    assert service["ExecStart"] == (f"{sys.executable} -m multiwatch run -c {roster} "
                                    "--only watcher-music --http-listen off")
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["ReadOnlyPaths"] == f"-{tmp_path / 'music'}"
    assert service["ReadWritePaths"] == str(tmp_path / "state")  # not under /var/lib
    assert "PrivateTmp" not in service  # the test's paths are under /tmp
    assert int(service["TimeoutStopSec"].rstrip("s")) > 11


def test_systemd_state_under_var_lib_uses_state_directory(tmp_path: Path) -> None:
    """A state_dir under /var/lib becomes StateDirectory=, which systemd creates and owns."""
    (tmp_path / "w").mkdir()
    path = tmp_path / "roster.yaml"
    path.write_text("state_dir: /var/lib/multiwatch-export-test\n"
                    "instances: [{id: w, directory: w}]\n")
    text = _export("systemd", "-c", str(path)).stdout
    assert "# ==> multiwatch-w.service <==" in text
    assert "StateDirectory=multiwatch-export-test\n" in text
    assert "ReadWritePaths" not in text


def test_systemd_units_pass_systemd_analyze_verify(roster: Path, tmp_path: Path) -> None:
    """systemd's own checker accepts every exported unit."""
    # Never skipped: `make test` (CI) installs it, and a skip would hide a broken export.
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: sudo make deploy-deps"
    out = tmp_path / "units"
    assert _export("systemd", "-c", str(roster), "-o", str(out)).returncode == 0
    units = sorted(str(p) for p in out.iterdir())
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "multiwatch-" not in done.stderr, done.stderr  # no warning about our units


@pytest.mark.parametrize("target, words", [
    ("supervisord", ["--programs-only", "--run-dir", "--output", "--http-port-base"]),
    ("systemd", ["--output", "--python", "Restart=on-failure"]),
])
def test_export_help_names_its_options(target: str, words: list[str]) -> None:
    """`export TARGET --help` exits 0 and documents every option."""
    result = run_cli("export", target, "--help")
    assert result.returncode == 0
    for word in words:
        assert word in result.stdout
