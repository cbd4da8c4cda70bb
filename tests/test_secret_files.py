"""RABBITMQ_PASS_FILE, the `_FILE` convention of Docker and Kubernetes secrets: the password
comes from a file, without its trailing newline; an unreadable file or a second source of the
password is a one-line error naming the variable, never the password."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from multiwatch.config import ConfigError, load_roster
from multiwatch.config.broker import read_password_file
from tests.support.privilege import run_unprivileged
from tests.support.process import run_cli


def env_mode(tmp_path: Path, **variables: str) -> dict[str, str]:
    (tmp_path / "data").mkdir(exist_ok=True)
    return {"DATA_DIR": str(tmp_path / "data"), "MULTIWATCH_STATE_DIR": str(tmp_path / "state"),
            "RABBITMQ_HOST": "rabbit", **variables}


def test_both_password_variables_set_is_an_error(tmp_path: Path) -> None:
    """RABBITMQ_PASS and RABBITMQ_PASS_FILE together: exit 2 naming both, no password shown."""
    secret = tmp_path / "secret"
    secret.write_text("from-the-file\n")
    result = run_cli("check", env=env_mode(tmp_path, RABBITMQ_PASS="from-the-env",
                                           RABBITMQ_PASS_FILE=str(secret)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("multiwatch: error: environment: RABBITMQ_PASS_FILE: ")
    assert "RABBITMQ_PASS is set too" in result.stderr and result.stderr.count("\n") == 1
    assert "from-the-env" not in result.stderr and "from-the-file" not in result.stderr


def test_a_roster_with_both_variables_is_refused_too(tmp_path: Path) -> None:
    """The conflict is refused with a roster as well, where RABBITMQ_PASS_FILE also applies."""
    (tmp_path / "w").mkdir()
    roster = tmp_path / "roster.yaml"
    roster.write_text("broker: {url: 'amqp://u@rabbit/'}\ninstances: [{id: w, directory: w}]\n"
                      f"state_dir: {tmp_path / 'state'}\n")
    (tmp_path / "secret").write_text("x")
    with pytest.raises(ConfigError, match="RABBITMQ_PASS is set too"):
        load_roster(str(roster), {"RABBITMQ_PASS": "y",
                                  "RABBITMQ_PASS_FILE": str(tmp_path / "secret")})


@pytest.mark.parametrize("content", ["s3cret\n", "s3cret\r\n", "s3cret"])
def test_the_trailing_newline_of_a_secret_file_is_not_part_of_the_password(
        tmp_path: Path, content: str) -> None:
    """`echo s3cret > file` and a Windows-edited file both give the password `s3cret`."""
    secret = tmp_path / "secret"
    secret.write_bytes(content.encode())
    assert read_password_file(str(secret)) == "s3cret"


def test_a_secret_file_the_user_cannot_read_names_the_variable(tmp_path: Path) -> None:
    """A password file readable only by its owner: `check` by another user fails in one line
    naming RABBITMQ_PASS_FILE and the file (run with permission checks enforced)."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(secret, 65534, 65534)  # another user's: root without DAC override is refused
    env = env_mode(tmp_path, RABBITMQ_PASS_FILE=str(secret))
    assignments = [f"{name}={value}" for name, value in env.items()]
    result = run_unprivileged(["env", "-i", *assignments, "MULTIWATCH_HTTP_LISTEN=off",
                               sys.executable, "-m", "multiwatch", "check"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("multiwatch: error: environment: RABBITMQ_PASS_FILE: "
                                    "cannot read the broker password file")
    assert str(secret) in result.stderr and "Permission denied" in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr
