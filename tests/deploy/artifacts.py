"""Reading the deployment artifacts the way their tools do, and checking what they configure.

Compose files get Compose's `${VAR:-default}` interpolation; rosters they mount are checked
with `multiwatch check` in the environment the container would have, with the container's
`/data/...` and `/var/lib/multiwatch` paths moved under a temporary directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yaml"
KUBERNETES = REPO / "config" / "kubernetes"
SYSTEMD = REPO / "systemd"
STATE_DIR = "/var/lib/multiwatch"  # the image's state volume, the units' StateDirectory
ROSTER_PATH = "/etc/multiwatch/multiwatch.yaml"  # where every artifact puts the roster
SECRETS_DIR = "/run/secrets/"  # where compose and the manifests mount the password file

# Compose interpolation: $$, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, $NAME.
_COMPOSE_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """`value` with Compose's variable interpolation applied to every string in it."""
    if isinstance(value, dict):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = environ.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise ValueError(f"required variable {name} is missing: {arg}")
        return current or ""

    return _COMPOSE_VAR.sub(one, value)


def compose_variables(text: str) -> set[str]:
    """Names Compose would interpolate in `text` (`$$` is a literal dollar)."""
    return {m["braced"] or m["bare"] for m in _COMPOSE_VAR.finditer(text) if not m["escaped"]}


# The shell `docker compose up` runs from: RABBITMQ_PASS is required (no default password).
HOST_ENV = {"RABBITMQ_PASS": "from-the-shell"}


def load_compose(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yaml as Compose sees it: anchors merged, variables interpolated."""
    raw = yaml.safe_load(COMPOSE.read_text())
    return interpolate(raw, HOST_ENV if environ is None else environ)  # type: ignore[no-any-return]


def active_services(compose: Mapping[str, Any], profiles: set[str]) -> set[str]:
    """Services `docker compose --profile P... up` starts: unprofiled ones and matching ones."""
    return {name for name, service in compose["services"].items()
            if not service.get("profiles") or profiles & set(service["profiles"])}


def with_dependencies(compose: Mapping[str, Any], targets: set[str]) -> set[str]:
    """Services `docker compose up TARGET...` starts: the targets and what they depend on."""
    started, todo = set(), list(targets)
    while todo:
        name = todo.pop()
        if name not in started:
            started.add(name)
            todo.extend(compose["services"][name].get("depends_on") or {})
    return started


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a service's short-syntax volumes."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        mounts.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
    return mounts


def uses_multiwatch_image(service: Mapping[str, Any]) -> bool:
    return str(service.get("image", "")).startswith("multiwatch")


# ------------------------------------------------------------------ multiwatch check


def relocate(text: str, root: Path) -> str:
    """Container paths (/data/..., /var/lib/multiwatch, /etc/multiwatch, /run/secrets) moved
    under `root`; the /data directories and the state directory are created."""
    for found in sorted(set(re.findall(r"/data/[A-Za-z0-9._-]+", text))):
        (root / found.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / STATE_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for prefix in ("/data/", STATE_DIR, "/etc/multiwatch/", SECRETS_DIR):
        text = re.sub(rf"(?<![\w/.]){re.escape(prefix)}", f"{root}{prefix}", text)
    return text


def multiwatch_check(roster: str | None, environ: Mapping[str, str], root: Path,
                     secrets: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`multiwatch check` as the container would run it, paths relocated under `root`.

    `roster` is the roster text (written to a file and passed as MULTIWATCH_CONFIG), or None
    for environment mode.  `secrets` maps mounted secret files (/run/secrets/...) to their
    content.  Only `environ` (relocated) and PATH reach the process.
    """
    for path, content in (secrets or {}).items():
        file = root / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
    env = {name: relocate(value, root) for name, value in environ.items()}
    env.pop("MULTIWATCH_CONFIG", None)
    if roster is not None:
        file = root / "etc" / "multiwatch" / "multiwatch.yaml"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(relocate(roster, root))
        env["MULTIWATCH_CONFIG"] = str(file)
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    return subprocess.run([sys.executable, "-m", "multiwatch", "check"], capture_output=True,
                          text=True, timeout=60, env=env, cwd=root)


def checked_instances(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Instance id -> directory from `multiwatch check` output (the effective roster)."""
    effective = yaml.safe_load(result.stdout)
    return {item["id"]: item["directory"] for item in effective["instances"]}


def checked_ha(result: subprocess.CompletedProcess[str]) -> dict[str, bool]:
    """Instance id -> whether its replicas take turns (`ha.enabled`), from `multiwatch check`."""
    effective = yaml.safe_load(result.stdout)
    return {item["id"]: bool(item["ha"]["enabled"]) for item in effective["instances"]}


# ------------------------------------------------------------------ Dockerfile


def dockerfile_stages() -> list[list[Any]]:
    """The Dockerfile's instructions (BuildKit's own parser), split into build stages."""
    import dockerfile

    stages: list[list[Any]] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def stage_env(stage: list[Any]) -> dict[str, str]:
    """The ENV a stage sets, in order (`ENV A=1 B=2` parses as A, 1, B, 2)."""
    env: dict[str, str] = {}
    for command in stage:
        if command.cmd.upper() == "ENV":
            pairs = list(command.value)
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def image_env() -> dict[str, str]:
    """What every container of the final image starts with."""
    return stage_env(dockerfile_stages()[-1])
