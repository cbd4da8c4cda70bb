"""The README's `docker run` example is coherent: the roster it mounts reads the variables it
passes, every directory that roster watches is mounted, and RabbitMQ is reachable by name."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from tests.deploy.artifacts import REPO, SECRETS_DIR, image_env, multiwatch_check


def docker_run() -> list[str]:
    """The README's `docker run` command as argv (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"^docker run .*?(?<!\\)\n", text, flags=re.MULTILINE | re.DOTALL)
    assert block, "no docker run example in the README"
    return shlex.split(block[0].replace("\\\n", " "), comments=True)


def options(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == name]


def test_the_docker_run_example_mounts_a_roster_that_uses_what_it_passes(tmp_path: Path) -> None:
    """The roster is a file of this checkout that `multiwatch check` accepts with the example's
    variables, its broker at the host name `rabbitmq` on a named --network, the password read
    from the mounted secret, and every watched directory mounted read-only."""
    argv = docker_run()
    environ = dict(value.split("=", 1) for value in options(argv, "-e"))
    mounts = {target: (source, mode) for source, target, *mode in
              (volume.split(":") for volume in options(argv, "-v"))}
    network = options(argv, "--network")
    assert network and network[0] not in ("bridge", "default"), "no --network to reach RabbitMQ"
    roster_source, _ = mounts[environ["MULTIWATCH_CONFIG"]]
    assert roster_source.startswith("$PWD/"), "the roster should be a file of this checkout"
    roster_text = (REPO / roster_source.removeprefix("$PWD/")).read_text()
    for instance in yaml.safe_load(roster_text)["instances"]:
        assert mounts.get(instance["directory"], ("", []))[1] == ["ro"], instance["directory"]
    secret = environ["RABBITMQ_PASS_FILE"]
    assert secret.startswith(SECRETS_DIR) and mounts[secret][1] == ["ro"]
    result = multiwatch_check(roster_text, {**image_env(), **environ}, tmp_path,
                              {secret: "s3cret\n"})
    assert result.returncode == 0, result.stderr
    assert f"url: amqp://{environ['RABBITMQ_USER']}@{environ['RABBITMQ_HOST']}:5672/\n" \
        in result.stdout
    assert f"password_file: {tmp_path}{secret}\n" in result.stdout
    assert "s3cret" not in result.stdout
