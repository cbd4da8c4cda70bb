"""The Dockerfile, parsed with BuildKit's own parser, and its build replayed without Docker.

No Docker engine runs here, so the build is replayed step by step: the build context is made
by applying .dockerignore to the repository, each stage gets a fresh `python -m venv` in place
of the python:3.11-slim base (same Python minor version), COPY copies from that context, the
`pip` RUN steps run exactly as written (container paths such as /wheels mapped to temporary
directories), and the result is started the way a container starts it: ENTRYPOINT + CMD with
the image's ENV, in its WORKDIR, with the root filesystem remounted read-only in a private
mount namespace (`unshare`) and only the state volume writable — as with `docker run
--read-only`.  Its HEALTHCHECK command then runs against that supervisor.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from multiwatch.config import SupervisorConfig
from tests.deploy.artifacts import REPO, STATE_DIR, dockerfile_stages, relocate, stage_env
from tests.support.process import free_port

# The one RUN step that is not replayed (it creates a user on the real system); its effect,
# the state directory owned by the image's user, is checked and reproduced instead.
USER_SETUP = re.compile(r"groupadd --system --gid (\d+) multiwatch\b.*useradd --system "
                        r"--uid (\d+) --gid (\d+) .*install -d -o (\d+) -g (\d+) -m 0750 "
                        + re.escape(STATE_DIR), re.S)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_REACH_PYPI = re.compile(r"PIP_|(?i:[a-z]+_proxy$)|SSL_CERT_|REQUESTS_CA_BUNDLE$")


def final_stage() -> list[Any]:
    return dockerfile_stages()[-1]


def instructions(cmd: str, stage: list[Any] | None = None) -> list[Any]:
    return [c for c in (stage or final_stage()) if c.cmd.upper() == cmd]


def only(cmd: str) -> Any:
    found = instructions(cmd)
    assert len(found) == 1, f"expected one {cmd} in the final stage, got {len(found)}"
    return found[0]


def flags(command: Any) -> dict[str, str]:
    return dict(flag.removeprefix("--").split("=", 1) for flag in command.flags)


# ------------------------------------------------------------------ static checks


def test_dockerfile_parses_and_declares_the_runtime_contract() -> None:
    """Non-root numeric USER, SIGTERM, health via `multiwatch health`, state volume, run."""
    stages = dockerfile_stages()
    assert len(stages) == 2, "a build stage and a runtime stage"
    user = only("USER").value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert only("STOPSIGNAL").value == ("SIGTERM",)
    healthcheck = only("HEALTHCHECK")
    assert healthcheck.json and healthcheck.value == ("CMD", "multiwatch", "health")
    assert set(flags(healthcheck)) >= {"interval", "timeout", "start-period", "retries"}
    assert only("VOLUME").value == (STATE_DIR,)
    assert only("WORKDIR").value == (STATE_DIR,)
    env = stage_env(final_stage())
    assert env["MULTIWATCH_STATE_DIR"] == STATE_DIR
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "MULTIWATCH_CONFIG" not in env, "it would make the guide's environment mode impossible"
    assert only("ENTRYPOINT").json and only("ENTRYPOINT").value == ("multiwatch",)
    assert only("CMD").json and only("CMD").value == ("run",)
    assert only("EXPOSE").value == ("9120",)
    (setup,) = [c for c in instructions("RUN") if not c.value[0].startswith("pip ")]
    ids = USER_SETUP.search(setup.value[0])
    assert ids, setup.original
    assert set(ids.groups()) == {uid}, "the user, its group and the state dir owner are USER"


def test_both_stages_use_the_slim_python_this_suite_runs_on() -> None:
    """FROM python:<3.11>-slim, the Python version the replay below runs with."""
    (arg,) = [c for c in _preamble() if c.cmd.upper() == "ARG"]
    name, _, version = arg.value[0].partition("=")
    assert name == "PYTHON_VERSION"
    assert version == f"{sys.version_info.major}.{sys.version_info.minor}"
    for stage in dockerfile_stages():
        assert stage[0].value[0] == "python:${PYTHON_VERSION}-slim"
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"', (REPO / "pyproject.toml").read_text())
    assert requires and requires[1] == version


def _preamble() -> list[Any]:
    import dockerfile

    commands = dockerfile.parse_file(str(REPO / "Dockerfile"))
    first_from = next(i for i, c in enumerate(commands) if c.cmd.upper() == "FROM")
    return list(commands[:first_from])


# ------------------------------------------------------------------ .dockerignore


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1:end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[re.Pattern[str], bool, str]]:
    """(pattern, is_exception, literal prefix) in file order."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip("/"))
        rules.append((_pattern(pattern), exception, re.split(r"[*?\[]", pattern)[0]))
    return rules


def ignored(relative: str, rules: list[tuple[re.Pattern[str], bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for regex, exception, _ in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not exception
    return excluded


def build_context(destination: Path) -> list[str]:
    """Copy what `docker build .` would send (the repository less .dockerignore)."""
    rules = dockerignore_rules()
    exceptions = [prefix for _, exception, prefix in rules if exception]
    sent = []
    for directory, subdirs, files in os.walk(REPO):
        relative_dir = os.path.relpath(directory, REPO)
        for sub in list(subdirs):
            relative = os.path.normpath(os.path.join(relative_dir, sub))
            could_hold_exception = any(e == relative or e.startswith(relative + "/")
                                       or relative.startswith(e + "/") or e == ""
                                       for e in exceptions)
            if ignored(relative, rules) and not could_hold_exception:
                subdirs.remove(sub)
        for name in files:
            relative = os.path.normpath(os.path.join(relative_dir, name))
            if not ignored(relative, rules):
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / relative, target)
                sent.append(relative)
    return sorted(sent)


def test_build_context_holds_what_copy_needs_and_nothing_else(tmp_path: Path) -> None:
    """Every COPY source is in the repository and survives .dockerignore; .venv, .git don't."""
    sent = build_context(tmp_path)
    for stage in dockerfile_stages():
        for copy in instructions("COPY", stage):
            assert "from" not in flags(copy)
            for source in copy.value[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert any(s == source or s.startswith(source.rstrip("/") + "/") for s in sent), \
                    f"COPY {source}: excluded by .dockerignore"
    assert "multiwatch/cli/__init__.py" in sent and "pyproject.toml" in sent
    assert not [s for s in sent if s.startswith((".venv/", ".git/", "tests/"))
                or "__pycache__" in s or s.endswith(".pyc")]


# ------------------------------------------------------------------ the replay


@dataclass
class Image:
    """The replayed image: its Python environment and how to start a container of it."""

    venv: Path
    env: dict[str, str]  # the image's ENV, container paths still as written
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    wheels: list[str]

    def container_env(self, root: Path, extra: Mapping[str, str] = {}) -> dict[str, str]:
        """What a process in the container sees: ENV and `-e` values, paths under `root`."""
        env = {name: relocate(value, root) for name, value in {**self.env, **extra}.items()}
        env["PATH"] = f"{self.venv / 'bin'}:/usr/bin:/bin"
        env["HOME"] = str(root / STATE_DIR.lstrip("/"))  # the image user's home
        return env


def _run_step(command: str, cwd: Path, env: Mapping[str, str], paths: Mapping[str, Path],
              venv: Path) -> None:
    for container_path, real in paths.items():
        command = re.sub(rf"(?<![\w./-]){re.escape(container_path)}(?![\w.-])", str(real),
                         command)
    # How this machine reaches PyPI (pip settings, proxies, CA bundle) is the builder's
    # business, as with `docker build`; then the stage's own ENV, which wins.
    reach = {name: value for name, value in os.environ.items() if _REACH_PYPI.match(name)}
    step_env = {**reach, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd), **env}
    result = subprocess.run(["sh", "-c", command], cwd=cwd, env=step_env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"RUN {command}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"


def replay(tmp: Path) -> Image:
    """Build the image's Python environment the way the Dockerfile does."""
    context = tmp / "context"
    build_context(context)
    build_root, image_root = tmp / "build-root", tmp / "image-root"
    venvs = {0: tmp / "build-python", 1: tmp / "image-python"}
    stages = dockerfile_stages()
    for index, stage in enumerate(stages):
        subprocess.run([sys.executable, "-m", "venv", str(venvs[index])], check=True,
                       timeout=120)
        root = build_root if index == 0 else image_root
        root.mkdir()
        workdir, env = "/", dict[str, str]()
        for command in stage[1:]:
            kind = command.cmd.upper()
            if kind == "ENV":
                pairs = list(command.value)
                env.update(zip(pairs[::2], pairs[1::2], strict=True))
            elif kind == "WORKDIR":
                workdir = os.path.join(workdir, command.value[0])
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif kind == "COPY":
                *sources, target = command.value
                destination = root / os.path.join(workdir, target).lstrip("/")
                for source in sources:
                    if (context / source).is_dir():  # Docker copies a directory's contents
                        shutil.copytree(context / source, destination, dirs_exist_ok=True)
                    else:
                        destination.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(context / source, destination)
            elif kind == "RUN" and command.value[0].startswith("pip "):
                paths = {"/wheels": build_root / "wheels"}
                for flag in command.flags:
                    mount = dict(p.split("=", 1) for p in flag.removeprefix("--mount=").split(","))
                    assert mount["type"] == "bind" and mount["from"] == "build"
                    paths[mount["target"]] = build_root / mount["source"].lstrip("/")
                _run_step(command.value[0], root / workdir.lstrip("/"), env, paths, venvs[index])
            elif kind == "RUN":
                assert USER_SETUP.search(command.value[0]), \
                    f"a RUN step the replay does not know: {command.original}"
    final = stages[-1]
    return Image(
        venv=venvs[1], env=stage_env(final),
        entrypoint=list(only("ENTRYPOINT").value), cmd=list(only("CMD").value),
        workdir=only("WORKDIR").value[0],
        wheels=sorted(p.name for p in (build_root / "wheels").glob("*.whl")),
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The Dockerfile's build, replayed once for this module (nothing cached across runs)."""
    return replay(tmp_path_factory.mktemp("docker-build"))


def read_only_root(argv: list[str], writable: list[Path]) -> list[str]:
    """`argv` in a private mount namespace whose / is read-only except `writable` paths."""
    binds = "".join(f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))} && "
                    for p in writable)
    script = f'{binds}mount -o remount,bind,ro / && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            *argv]


def container_exec(image: Image, root: Path, argv: list[str],
                   extra: Mapping[str, str] = {}, timeout: float = 60,
                   ) -> subprocess.CompletedProcess[str]:
    """`argv` run to the end in a read-only container of the image (state volume writable)."""
    state = root / STATE_DIR.lstrip("/")
    state.mkdir(parents=True, exist_ok=True)
    return subprocess.run(read_only_root(argv, [state]), capture_output=True, text=True,
                          env=image.container_env(root, extra), cwd=state, timeout=timeout)


def container_run(image: Image, root: Path, args: list[str],
                  extra: Mapping[str, str] = {},
                  ) -> subprocess.CompletedProcess[str]:
    """`docker run --read-only -v state:/var/lib/multiwatch [-e ...] image ARGS`."""
    return container_exec(image, root, image.entrypoint + args, extra)


def test_replayed_build_gives_a_working_multiwatch(image: Image, tmp_path: Path) -> None:
    """pip wheel + offline pip install, as the Dockerfile does them, give a working command."""
    assert any(w.startswith("multiwatch-") for w in image.wheels)
    assert {"kombu", "watchdog", "xxhash", "psutil"} <= {w.split("-")[0] for w in image.wheels}
    result = container_run(image, tmp_path, ["--help"])
    assert result.returncode == 0, result.stderr
    for command in ("run", "check", "status", "health"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), command


def test_environment_mode_runs_the_guides_docker_run(image: Image, tmp_path: Path) -> None:
    """`docker run -e INSTANCE_ID -e DATA_DIR -e RABBITMQ_HOST image check` from the guide works."""
    guide = {"INSTANCE_ID": "watcher-music", "DATA_DIR": "/data/music",
             "RABBITMQ_HOST": "rabbitmq"}
    relocate("/data/music", tmp_path)  # the -v /host/music:/data/music:ro mount
    result = container_run(image, tmp_path, ["check"], guide)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["state_dir"] == str(tmp_path) + STATE_DIR
    assert effective["broker"]["url"] == "amqp://guest:****@rabbitmq:5672/%2F"
    assert [(i["id"], i["directory"]) for i in effective["instances"]] == [
        ("watcher-music", f"{tmp_path}/data/music")]


def _get(url: str) -> int:
    try:
        with _OPENER.open(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture
def supervisor(image: Image, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`docker run --read-only` of the image with a small roster mounted, as compose does."""
    port = free_port()
    roster = {
        "state_dir": STATE_DIR,
        "http": {"listen": f"127.0.0.1:{port}"},
        "instances": [{"id": "watcher-music", "directory": "/data/music"},
                      {"id": "watcher-downloads", "directory": "/data/downloads"}],
    }
    config = tmp_path / "etc" / "multiwatch" / "multiwatch.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(relocate(yaml.safe_dump(roster), tmp_path))
    state = tmp_path / STATE_DIR.lstrip("/")
    env = image.container_env(tmp_path, {"MULTIWATCH_CONFIG": "/etc/multiwatch/multiwatch.yaml"})
    log = (tmp_path / "container.log").open("wb")
    process = subprocess.Popen(read_only_root(image.entrypoint + image.cmd, [state]), env=env,
                               cwd=state, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        yield process, port
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
        log.close()


def test_healthcheck_reports_a_running_supervisor(
    image: Image, tmp_path: Path, supervisor: tuple[subprocess.Popen[bytes], int]
) -> None:
    """The HEALTHCHECK command says healthy (exit 0) once the container is ready, within its
    timeout, and unhealthy (exit 1) after STOPSIGNAL stopped the supervisor cleanly."""
    process, port = supervisor
    deadline = time.monotonic() + 60
    while _get(f"http://127.0.0.1:{port}/readyz") != 200:
        assert process.poll() is None, (tmp_path / "container.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "not ready within 60 s"
        time.sleep(0.2)
    healthcheck = only("HEALTHCHECK")
    timeout = float(flags(healthcheck)["timeout"].removesuffix("s"))
    probe = list(healthcheck.value[1:])  # CMD [...] runs as is, not through ENTRYPOINT
    env = {"MULTIWATCH_CONFIG": "/etc/multiwatch/multiwatch.yaml"}
    started = time.monotonic()
    healthy = container_exec(image, tmp_path, probe, env, timeout=timeout)
    assert time.monotonic() - started < timeout
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("ready: 2 instances running")

    stop_signal = getattr(signal, only("STOPSIGNAL").value[0])
    process.send_signal(stop_signal)
    assert process.wait(timeout=SupervisorConfig().stop_timeout_seconds + 10) == 0
    unhealthy = container_exec(image, tmp_path, probe, env, timeout=timeout)
    assert unhealthy.returncode == 1

    log = (tmp_path / "container.log").read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert "Read-only file system" not in log
    assert not [line for line in lines if line.get("level") in ("ERROR", "CRITICAL")]
    for instance in ("watcher-music", "watcher-downloads"):
        assert (tmp_path / STATE_DIR.lstrip("/") / "instances" / instance / "state.db").is_file()
