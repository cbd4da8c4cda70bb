"""docker-compose.yaml: valid Compose, sensible in every profile, and every multiwatch container
it defines passes `multiwatch check` in the environment Compose would give it.

The schema is the official compose-spec JSON schema as vendored by `check-jsonschema`
(`check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yaml` runs the same).
"""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from multiwatch.config import SupervisorConfig
from tests.deploy.artifacts import (
    COMPOSE,
    HOST_ENV,
    REPO,
    ROSTER_PATH,
    SECRETS_DIR,
    STATE_DIR,
    active_services,
    bind_mounts,
    checked_ha,
    checked_instances,
    image_env,
    load_compose,
    multiwatch_check,
    uses_multiwatch_image,
    with_dependencies,
)

PER_INSTANCE = {"file_watcher_music", "file_watcher_downloads", "file_watcher_imports"}
# What the README and the file's header tell people to run, and what each must start.
COMMANDS = {
    "docker compose up": (active_services, set(), {"rabbitmq", "multiwatch"}),
    "docker compose --profile extended up": (
        active_services, {"extended"}, {"rabbitmq", "multiwatch", "multiwatch-extended"}),
    "docker compose up file_watcher_music file_watcher_downloads file_watcher_imports": (
        with_dependencies, PER_INSTANCE, {"rabbitmq", *PER_INSTANCE}),
    "docker compose up --scale file_watcher_music=2 file_watcher_music": (
        with_dependencies, {"file_watcher_music"}, {"rabbitmq", "file_watcher_music"}),
}


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())  # type: ignore[no-any-return]


def schema_errors(document: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)  # the draft it declares
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def started(command: str) -> set[str]:
    how, argument, _ = COMMANDS[command]
    return how(load_compose(), argument)  # type: ignore[no-any-return]


def container_env(name: str, host_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of service `name`'s container: the image's ENV, then the service's."""
    service = load_compose(host_env)["services"][name]
    return {**image_env(), **{k: str(v) for k, v in service.get("environment", {}).items()}}


def container_secrets(name: str, host_env: dict[str, str] | None = None) -> dict[str, str]:
    """Secret file -> content, as Compose mounts service `name`'s secrets (from host variables)."""
    compose = load_compose(host_env)
    host = HOST_ENV if host_env is None else host_env
    return {f"{SECRETS_DIR}{secret}": host[compose["secrets"][secret]["environment"]]
            for secret in compose["services"][name].get("secrets", [])}


def test_compose_file_validates_against_the_compose_spec() -> None:
    """docker-compose.yaml is valid Compose (official schema), before and after interpolation."""
    raw = yaml.safe_load(COMPOSE.read_text())
    assert schema_errors(raw) == []
    assert schema_errors(load_compose()) == []
    assert schema_errors(load_compose({"RABBITMQ_PASS": "s3cret", "LOG_LEVEL": "DEBUG"})) == []


def test_the_schema_check_catches_a_typo() -> None:
    """A misspelt service key (the validator is strict, not a YAML parse) is reported."""
    broken = copy.deepcopy(load_compose())
    broken["services"]["multiwatch"]["heathcheck"] = broken["services"]["multiwatch"].pop(
        "healthcheck")
    assert any("heathcheck" in error for error in schema_errors(broken))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_documented_command_starts_a_consistent_set(command: str) -> None:
    """Every documented `up` starts the right services, whose dependencies and volumes exist."""
    compose = load_compose()
    services = started(command)
    assert services == COMMANDS[command][2]
    for name in services:
        service = compose["services"][name]
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} needs {dependency}, which is not started"
            assert condition == {"condition": "service_healthy"}
        for source, _target, _ro in bind_mounts(service):
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
            elif source.endswith(".yaml"):
                assert (REPO / source).is_file(), f"{name}: {source} is not in the repository"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_directory_is_watched_twice(command: str) -> None:
    """In each documented set, every host directory has one watcher and ids are unique."""
    compose = load_compose()
    sources: list[str] = []
    ids: list[str] = []
    for name in sorted(started(command)):
        service = compose["services"][name]
        if uses_multiwatch_image(service):
            sources += [s for s, target, _ in bind_mounts(service) if target.startswith("/data/")]
            if "INSTANCE_ID" in service["environment"]:
                ids.append(service["environment"]["INSTANCE_ID"])
            else:
                roster = yaml.safe_load(_roster_file(service).read_text())
                ids += [instance["id"] for instance in roster["instances"]]
    assert sources and len(sources) == len(set(sources)), sources
    assert len(ids) == len(set(ids)), ids


def _roster_file(service: dict[str, Any]) -> Path:
    path = service["environment"]["MULTIWATCH_CONFIG"]
    assert path == ROSTER_PATH
    sources = [s for s, target, ro in bind_mounts(service) if target == path and ro]
    assert len(sources) == 1, f"{path} is not mounted read-only from the repository"
    return REPO / sources[0]


def multiwatch_services() -> list[str]:
    return sorted(name for name, service in load_compose()["services"].items()
                  if uses_multiwatch_image(service))


@pytest.mark.parametrize("name", multiwatch_services())
def test_every_multiwatch_container_passes_check(name: str, tmp_path: Path) -> None:
    """`multiwatch check` accepts each container's roster or environment, password masked."""
    service = load_compose()["services"][name]
    env = container_env(name)
    roster = _roster_file(service).read_text() if "MULTIWATCH_CONFIG" in env else None
    secrets = container_secrets(name)
    result = multiwatch_check(roster, env, tmp_path, secrets)
    assert result.returncode == 0, result.stderr
    assert HOST_ENV["RABBITMQ_PASS"] not in result.stdout
    url = "amqp://multiwatch@rabbitmq:5672/" if roster else "amqp://multiwatch:****@rabbitmq:5672/"
    assert f"url: {url}" in result.stdout
    assert f"password_file: {tmp_path}{env['RABBITMQ_PASS_FILE']}\n" in result.stdout
    assert env["RABBITMQ_PASS_FILE"] in secrets
    watched = checked_instances(result)
    mounted = {target for _, target, ro in bind_mounts(service) if target.startswith("/data/")}
    # Every watched directory is one of the container's read-only mounts, and vice versa.
    assert {d.replace(str(tmp_path), "") for d in watched.values()} == mounted
    assert all(ro for _, target, ro in bind_mounts(service) if target.startswith("/data/"))
    if roster is None:
        assert list(watched) == [env["INSTANCE_ID"]]
    # `--scale` gives replicas that take turns, never two announcing every file.
    assert env["MULTIWATCH_HA"] == "1"
    ha = checked_ha(result)
    assert ha and all(ha.values()), ha


@pytest.mark.parametrize("name", multiwatch_services())
def test_every_multiwatch_container_is_locked_down(name: str) -> None:
    """Read-only root, no capabilities, state in its own volume, health via `multiwatch health`."""
    compose = load_compose()
    service = compose["services"][name]
    assert service["build"] == "." and service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["healthcheck"]["test"] == ["CMD", "multiwatch", "health"]
    assert service["stop_signal"] == "SIGTERM"
    grace = int(re.fullmatch(r"(\d+)s", service["stop_grace_period"])[1])  # type: ignore[index]
    assert grace > SupervisorConfig().stop_timeout_seconds
    states = [s for s, target, _ in bind_mounts(service) if target == STATE_DIR]
    assert len(states) == 1 and states[0] in compose["volumes"]
    others = [s for other, svc in compose["services"].items() if other != name
              for s, target, _ in bind_mounts(svc) if target == STATE_DIR]
    assert states[0] not in others, "two containers share one state volume"


def test_rabbitmq_has_management_ui_and_a_healthcheck() -> None:
    """RabbitMQ runs the management image, reports healthy via rabbitmq-diagnostics."""
    rabbitmq = load_compose()["services"]["rabbitmq"]
    assert rabbitmq["image"] == "rabbitmq:3-management"
    assert rabbitmq["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert "127.0.0.1:15672:15672" in rabbitmq["ports"]


def test_there_is_no_known_password() -> None:
    """Without RABBITMQ_PASS Compose refuses to start (`${RABBITMQ_PASS:?...}`): no default."""
    with pytest.raises(ValueError, match="required variable RABBITMQ_PASS is missing"):
        load_compose({})
    with pytest.raises(ValueError, match="RABBITMQ_PASS"):
        load_compose({"RABBITMQ_PASS": ""})
    literal = re.findall(r"(\w*PASS\w*):\s*(.+)", COMPOSE.read_text())
    assert literal and all(
        value.startswith(("${RABBITMQ_PASS:?", f"{SECRETS_DIR}rabbitmq_pass"))
        for _, value in literal), literal
    rabbitmq = load_compose({"RABBITMQ_PASS": "from-the-shell"})["services"]["rabbitmq"]
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"] == "from-the-shell"


@pytest.mark.parametrize("name", multiwatch_services())
def test_multiwatch_reads_the_password_from_a_docker_secret(name: str) -> None:
    """The password reaches multiwatch as the file /run/secrets/rabbitmq_pass, made from the
    shell's RABBITMQ_PASS, and never as an environment variable of its container."""
    env = container_env(name, {"RABBITMQ_PASS": "from-the-shell"})
    assert "RABBITMQ_PASS" not in env
    assert env["RABBITMQ_PASS_FILE"] == f"{SECRETS_DIR}rabbitmq_pass"
    assert container_secrets(name, {"RABBITMQ_PASS": "from-the-shell"}) == {
        f"{SECRETS_DIR}rabbitmq_pass": "from-the-shell"}


def test_the_instructions_create_every_watched_host_directory() -> None:
    """The file's header and the README say to create every ./data/... directory the services
    mount (Docker would otherwise make an empty root-owned one and nothing would be announced)."""
    compose = load_compose()
    sources = {source.removeprefix("./") for service in compose["services"].values()
               for source, _, _ in bind_mounts(service) if source.startswith("./data/")}
    assert sources
    header = COMPOSE.read_text().split("\nname:")[0]
    readme = (REPO / "README.md").read_text()
    for text in (header, readme):
        created = {word for line in re.findall(r"mkdir -p ([^#\n]*)(?:#(.*))?", text)
                   for part in line for word in part.split() if word.startswith("data/")}
        assert sources <= created, sources - created


def _megabytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([kmg])", size).groups()  # type: ignore[union-attr]
    return int(number) * {"k": 1 / 1024, "m": 1, "g": 1024}[unit]


@pytest.mark.parametrize("name", sorted(load_compose()["services"]))
def test_every_container_rotates_its_logs(name: str) -> None:
    """Every service (multiwatch and RabbitMQ, in every profile) uses the json-file driver
    with max-size and max-file, so a chatty container cannot fill the host's disk: at most
    100 MB of log per container."""
    logging = load_compose()["services"][name]["logging"]
    assert logging["driver"] == "json-file"
    options = logging["options"]
    files = int(options["max-file"])
    assert files >= 2  # the current file and at least one rotated
    assert 0 < _megabytes(options["max-size"]) * files <= 100
