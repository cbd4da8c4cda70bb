"""systemd/: the units pass `systemd-analyze verify` and rate well in `systemd-analyze security`,
and what they configure matches multiwatch.

systemd-analyze runs against a throw-away root directory (`--root=`), so the real system is
never touched: the units are installed under its /etc/systemd/system exactly as shipped, the
host's own unit files are copied beside them (so After=/WantedBy= targets resolve), and the
commands the units run are placed where their install recipe and Debian put them
(/opt/multiwatch/bin/multiwatch: this checkout's console script; /bin/kill: the host's).  No running
systemd is needed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from multiwatch.config import SupervisorConfig
from tests.deploy.artifacts import REPO, SYSTEMD, multiwatch_check

UNITS = ("multiwatch.service", "multiwatch@music.service")  # the template as one instance
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def unit_settings(name: str) -> dict[str, list[str]]:
    """Key -> values (in order; keys may repeat) of a unit file in systemd/."""
    settings: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def fake_root(tmp_path: Path) -> Path:
    """A root directory holding the units, the host's unit files and the commands they run."""
    root = tmp_path / "root"
    system = next(d for d in SYSTEM_UNIT_DIRS if d.is_dir())
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in SYSTEMD.glob("*.service"):
        shutil.copy(unit, units / unit.name)
    script = shutil.which("multiwatch", path=str(REPO / ".venv/bin")) or shutil.which(
        "multiwatch")
    assert script, "the multiwatch console script is not installed (make install)"
    for command, source in (("opt/multiwatch/bin/multiwatch", script), ("bin/kill", "/bin/kill")):
        (root / command).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / command)
    return root


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: make deploy-deps (apt-get install systemd)"
    return subprocess.run([tool, *args, f"--root={root}"], capture_output=True, text=True,
                          timeout=60)


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts both units without a single warning."""
    result = analyze(fake_root(tmp_path), "verify", "--man=no", "--generators=no", *UNITS)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """A misspelt setting or a missing program makes the same check speak up."""
    root = fake_root(tmp_path)
    unit = root / "etc/systemd/system/multiwatch.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    (root / "opt/multiwatch/bin/multiwatch").unlink()
    result = analyze(root, "verify", "--man=no", "--generators=no", "multiwatch.service")
    assert "Unknown key 'NoNewPrivilege'" in result.stderr
    assert "/opt/multiwatch/bin/multiwatch is not executable" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_sandboxed(unit: str, tmp_path: Path) -> None:
    """`systemd-analyze security` rates each unit's exposure OK or better (at most 2.0 of 10)."""
    result = analyze(fake_root(tmp_path), "security", "--offline=yes", "--no-pager", unit)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 2.0 and match[2] in ("SAFE", "OK"), match[0]


def test_roster_unit_runs_the_roster_and_reloads_with_sighup() -> None:
    """multiwatch.service: roster mode, SIGHUP reload, restart on failure, graceful stop."""
    unit = unit_settings("multiwatch.service")
    assert one(unit, "ExecStart") == (
        "/opt/multiwatch/bin/multiwatch run -c /etc/multiwatch/multiwatch.yaml")
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Type") == "simple"
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "KillMode") == "mixed" and one(unit, "KillSignal") == "SIGTERM"
    stop = int(one(unit, "TimeoutStopSec").removesuffix("s"))
    assert stop > SupervisorConfig().stop_timeout_seconds
    assert one(unit, "StateDirectory") == "multiwatch"
    assert "MULTIWATCH_STATE_DIR=/var/lib/multiwatch" in unit["Environment"]
    assert one(unit, "ReadOnlyPaths")  # the place to list watched trees


@pytest.mark.parametrize("name", ["multiwatch.service", "multiwatch@.service"])
def test_units_run_unprivileged_in_a_read_only_system(name: str) -> None:
    """Both units: dedicated user, nothing writable but the state directory, no privileges."""
    unit = unit_settings(name)
    assert one(unit, "User") == "multiwatch"
    assert one(unit, "ProtectSystem") == "strict"
    assert one(unit, "ProtectHome") == "read-only"
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "PrivateTmp") == "yes"
    assert one(unit, "CapabilityBoundingSet") == ""
    assert not unit.get("ReadWritePaths"), "only StateDirectory= may be writable"


def test_sysusers_creates_the_user_the_units_run_as(tmp_path: Path) -> None:
    """systemd/multiwatch.sysusers creates the `multiwatch` system user (checked in a tmp root)."""
    root = tmp_path / "root"
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy(SYSTEMD / "multiwatch.sysusers", root / "usr/lib/sysusers.d/multiwatch.conf")
    tool = shutil.which("systemd-sysusers")
    assert tool, "systemd-sysusers is missing: make deploy-deps (apt-get install systemd)"
    result = subprocess.run([tool, f"--root={root}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    user = (root / "etc/passwd").read_text().split(":")
    assert user[0] == "multiwatch" and 0 < int(user[2]) < 1000
    assert user[5:7] == ["/var/lib/multiwatch", "/usr/sbin/nologin\n"]


def test_template_keeps_each_instance_apart() -> None:
    """multiwatch@NAME: its own env file, state directory and instance id; no shared port."""
    unit = unit_settings("multiwatch@.service")
    assert one(unit, "ExecStart") == "/opt/multiwatch/bin/multiwatch run"
    assert one(unit, "EnvironmentFile") == "/etc/multiwatch/%i.env"
    assert one(unit, "StateDirectory") == "multiwatch/%i"
    environment = dict(value.split("=", 1) for value in unit["Environment"])
    assert environment["MULTIWATCH_STATE_DIR"] == "/var/lib/multiwatch/%i"
    assert environment["INSTANCE_ID"] == "%i"
    assert environment["MULTIWATCH_HTTP_LISTEN"] == "off"
    assert one(unit, "Restart") == "on-failure" and one(unit, "KillMode") == "mixed"


def test_instance_env_example_passes_check(tmp_path: Path) -> None:
    """The example /etc/multiwatch/NAME.env is a valid environment-mode configuration."""
    environment = {"MULTIWATCH_STATE_DIR": "/var/lib/multiwatch"}
    for line in (SYSTEMD / "instance.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            environment[key] = value
    assert {"INSTANCE_ID", "DATA_DIR", "RABBITMQ_HOST", "RABBITMQ_PASS_FILE"} <= set(environment)
    assert "RABBITMQ_PASS" not in environment  # no password in the example, known or not
    environment["DATA_DIR"] = environment["DATA_DIR"].replace("/srv/", "/data/")
    secret = environment["RABBITMQ_PASS_FILE"]
    result = multiwatch_check(None, environment, tmp_path, {secret: "s3cret\n"})
    assert result.returncode == 0, result.stderr
    assert "id: watcher-music" in result.stdout
    assert "amqp://multiwatch:****@localhost:5672/%2F" in result.stdout
    assert f"password_file: {tmp_path}{secret}\n" in result.stdout and "s3cret" not in result.stdout


def test_the_credential_recipe_in_the_roster_unit_works(tmp_path: Path) -> None:
    """The unit's commented LoadCredential= recipe, applied, passes `systemd-analyze verify`."""
    root = fake_root(tmp_path)
    unit = root / "etc/systemd/system/multiwatch.service"
    recipe = [line.strip().removeprefix("#").strip() for line in unit.read_text().splitlines()
              if line.startswith("#     ")]
    assert [line.split("=")[0] for line in recipe] == ["LoadCredential", "Environment"]
    assert recipe[1] == "Environment=RABBITMQ_PASS_FILE=%d/rabbitmq_pass"
    text = unit.read_text().replace("\n[Service]\n", "\n[Service]\n" + "\n".join(recipe) + "\n")
    unit.write_text(text)
    result = analyze(root, "verify", "--man=no", "--generators=no", "multiwatch.service")
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def install_recipe(name: str) -> list[list[str]]:
    """The commands a unit's header tells people to run (`#   command`), as argv lists."""
    header = (SYSTEMD / name).read_text().split("\n[Unit]\n")[0]
    return [shlex.split(match, comments=True)
            for match in re.findall(r"^#   (\S.*)$", header, flags=re.MULTILINE)]


@pytest.mark.parametrize("name", ["multiwatch.service", "multiwatch@.service"])
def test_the_install_recipe_runs_in_order_in_a_fresh_root(name: str, tmp_path: Path) -> None:
    """Each `install` step of the unit's recipe succeeds in order in an empty root (so every
    directory it writes to was made by an earlier step); the program ExecStart= names is the
    one the recipe's venv gets from this checkout; the owner it names was created before."""
    root = tmp_path / "root"
    for stock in ("etc/systemd/system", "usr/lib/sysusers.d"):  # there on any systemd host
        (root / stock).mkdir(parents=True)
    typed = tmp_path / "typed"
    typed.write_text("s3cret\n")
    venvs: set[str] = set()
    users: set[str] = set()
    for argv in install_recipe(name):
        if argv[:3] == ["python3", "-m", "venv"]:
            venvs.add(argv[3])
        elif argv[0].endswith("/bin/pip"):
            assert str(Path(argv[0]).parents[1]) in venvs, f"{argv[0]}: no venv made before"
            assert argv[1:] == ["install", "."] and (REPO / "pyproject.toml").is_file()
        elif argv[0] == "systemd-sysusers":
            tool = shutil.which("systemd-sysusers")
            assert tool, "systemd-sysusers is missing: make deploy-deps"
            subprocess.run([tool, f"--root={root}"], check=True, capture_output=True, timeout=60)
            users |= {line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()}
        elif argv[0] == "systemctl":
            if argv[1] == "daemon-reload":
                assert (root / "etc/systemd/system" / name).is_file(), "unit not installed yet"
        else:
            assert argv[0] == "install", f"unknown step: {shlex.join(argv)}"
            command = ["install"]
            words = iter(argv[1:])
            for word in words:
                if word in ("-o", "-g"):
                    owner = next(words)
                    assert owner in users, f"{owner}: not created by an earlier step"
                elif word == "/dev/stdin":
                    command.append(str(typed))
                elif word.startswith("/"):
                    command.append(f"{root}{word}")
                else:
                    command.append(word)
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"{shlex.join(argv)}: {result.stderr}"
    program = one(unit_settings(name), "ExecStart").split()[0]
    assert str(Path(program).parents[1]) in venvs, f"{program} is not the recipe's venv"
    assert (root / "etc/multiwatch").is_dir()
