"""Configuration errors never echo a secret: a URL's password, a value that came from a
`${VAR}` expansion, or the value of a key named like a password, secret or token."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from multiwatch.config import ConfigError, load_roster
from multiwatch.config.source import Node, Source
from tests.support.hostile import roster as hostile_roster
from tests.support.process import Multiwatch, run_cli

SECRET = "S3cret-pw-42"


def _error(tmp_path: Path, top: str, environ: dict[str, str] | None = None) -> str:
    """The error `load_roster` raises for a roster with `top` above a valid instance."""
    (tmp_path / "music").mkdir(exist_ok=True)
    roster = tmp_path / "roster.yaml"
    roster.write_text(f"{top}\nstate_dir: {tmp_path / 'state'}\n"
                      f"instances:\n  - id: music\n    directory: {tmp_path / 'music'}\n")
    with pytest.raises(ConfigError) as caught:
        load_roster(str(roster), environ or {})
    return str(caught.value)


def test_the_issue_example_hides_the_password(tmp_path: Path) -> None:
    """`broker: amqp://user:S3cret@rabbit/` (a URL where a mapping belongs): `check` exits 2
    naming the mistake, with the password masked (issue 18 item 7)."""
    (tmp_path / "music").mkdir()
    roster = tmp_path / "roster.yaml"
    roster.write_text(f"broker: amqp://user:{SECRET}@rabbit/\nstate_dir: {tmp_path / 's'}\n"
                      f"instances: [{{id: m, directory: {tmp_path / 'music'}}}]\n")
    result = run_cli("check", "-c", str(roster))
    assert result.returncode == 2
    assert "broker: expected a mapping" in result.stderr
    assert "amqp://user:****@rabbit/" in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("top", [
    f"broker: amqp://user:{SECRET}@rabbit/",
    f"broker: [amqp://user:{SECRET}@rabbit/]",
    f"broker: {{exchange: [amqp://u:{SECRET}@h/]}}",
    f"broker: {{heartbeat_seconds: 'amqps://u:{SECRET}@h:5671/v'}}",
    f"broker: {{queue_type: 'amqp://u:{SECRET}@a;amqp://u:{SECRET}@b'}}",
    f"broker: {{url: 'amqpx://u:{SECRET}@h/'}}",
    f"broker: {{url: 'amqp://u:{SECRET}@h/', tls: {{}}}}",
    f"http: {{listen: 'amqp://u:{SECRET}@h/'}}",
    f"log_level: 'amqp://u:p:{SECRET}@h/'",
    f"supervisor: {{max_parallel_hashes: 'amqp://u:{SECRET} with space@h'}}",
    f"defaults: {{memory_limit: 'amqp://u:{SECRET}\"quote@h'}}",
    f"defaults: {{observer: 'AMQP://U:{SECRET.upper()}@H'}}",
])
def test_a_url_password_in_the_wrong_place_is_masked(tmp_path: Path, top: str) -> None:
    """A URL with a password, put in any field that refuses it, is shown masked."""
    error = _error(tmp_path, top)
    assert SECRET.lower() not in error.lower(), error
    assert f": {top.partition(':')[0]}" in error  # the error about that field, not another


@pytest.mark.parametrize("top", [
    "broker: ${MW_SECRET}",
    "broker: {url: '${MW_SECRET}'}",
    "broker: {exchange: ['${MW_SECRET}']}",
    "broker: {heartbeat_seconds: '${MW_SECRET}'}",
    "broker: {queue_type: ' ${MW_SECRET} '}",
    "http: {listen: '${MW_SECRET}'}",
    "http: {listen: 'myhost:${MW_SECRET}'}",
    "log_level: 'level-${MW_SECRET}'",
    "defaults: {memory_limit: '${MW_SECRET}'}",
    "defaults: {settle_seconds: '${MW_SECRET}'}",
    "supervisor: {stop_timeout_seconds: '${MW_SECRET}'}",
    "broker: {url: 'amqp://u:${MW_SECRET}@h/', tls: {}}",
    "broker: {url: 'amqp://${MW_SECRET}@h/', tls: {}}",
])
def test_a_value_from_an_environment_variable_is_not_echoed(tmp_path: Path, top: str) -> None:
    """A `${VAR}` value an error is about is shown as the reference the roster holds."""
    error = _error(tmp_path, top, {"MW_SECRET": SECRET})
    assert SECRET.lower() not in error.lower(), error
    assert f": {top.partition(':')[0]}" in error  # the error about that field, not another


def test_an_instance_id_from_the_environment_is_hidden_in_other_errors(tmp_path: Path) -> None:
    """A variable's value stays hidden even in an error about another value that quotes it."""
    (tmp_path / "music").mkdir()
    roster = tmp_path / "roster.yaml"
    roster.write_text(f"state_dir: {tmp_path / 's'}\ninstances:\n"
                      f"  - {{id: '${{MW_SECRET}}', directory: {tmp_path / 'music'}}}\n"
                      f"  - {{id: other, directory: {tmp_path / 'music'}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_roster(str(roster), {"MW_SECRET": SECRET})
    assert "same directory" in str(caught.value)
    assert SECRET not in str(caught.value) and "${MW_SECRET}" in str(caught.value)


def test_a_short_variable_is_hidden_only_where_it_is_the_value(tmp_path: Path) -> None:
    """`${N}` = "-1": its own error shows the reference; other numbers stay readable."""
    error = _error(tmp_path, "defaults: {settle_seconds: '${N}'}", {"N": "-1"})
    assert error.endswith('defaults.settle_seconds: must be 0 or more, got ${N}'), error


def test_a_default_written_in_the_roster_is_shown(tmp_path: Path) -> None:
    """`${HANG:-never}` with HANG unset: the default is roster text, so the error shows it."""
    error = _error(tmp_path, "supervisor: {hang_timeout_seconds: '${HANG:-never}'}")
    assert 'got "never"' in error


def test_a_key_named_like_a_secret_is_masked() -> None:
    """An error about a key named password, secret or token never shows its value."""
    src = Source("roster.yaml", "/", {}, expand=True)
    for key in ("broker.password", "x.api_token", "RABBITMQ_PASS", "client_secret"):
        error = src.where(Node(SECRET, 3), key).error(f"unexpected value \"{SECRET}\"")
        assert SECRET not in str(error) and "****" in str(error), error
    shown = src.where(Node("/run/secrets/pw", 3), "broker.password_file").error("x \"/run/s\"")
    assert "/run/s" in str(shown)  # a file's path is not a secret


def test_run_and_a_sighup_reload_hide_the_password_and_the_variable(
        tmp_path: Path, inbox: Path) -> None:
    """`run` refuses the issue's roster with the password masked; a SIGHUP reload of it (and
    of a `${VAR}` in the wrong field) is rejected in the log without the secret, the
    supervisor running on."""
    good = hostile_roster(tmp_path, [{"id": "box", "directory": str(inbox)}])
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("state_dir:", f"broker: amqp://user:{SECRET}@rabbit/"
                                            "\nstate_dir:", 1))
    refused = run_cli("run", "-c", str(bad), timeout=30)
    assert refused.returncode == 2 and "amqp://user:****@rabbit/" in refused.stderr
    assert SECRET not in refused.stdout + refused.stderr
    variable = good.read_text().replace("settle_seconds: 0.1", "settle_seconds: ${MW_SECRET}")
    assert variable != good.read_text()
    mw = Multiwatch(["-c", str(good)], env={"MW_SECRET": SECRET})
    try:
        mw.wait_watching("box")
        errors = []
        for text in (bad.read_text(), variable):
            good.write_text(text)
            seen = len(mw.lines)
            os.kill(mw.pid, signal.SIGHUP)
            rejected = mw.wait_for_log(lambda line: line.get("message") == (
                "roster reload rejected; the running fleet is unchanged"), after=seen)
            errors.append(rejected["error"])
        assert "amqp://user:****@rabbit/" in errors[0] and "${MW_SECRET}" in errors[1], errors
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
    assert not [raw for raw in mw.raw if SECRET in raw]
