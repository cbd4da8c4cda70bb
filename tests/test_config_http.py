"""The roster's `http.allowed_hosts`: Host names the endpoint answers besides its address."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multiwatch.cli import main
from multiwatch.config import ConfigError, load_endpoint_config, load_roster, render_effective

_ONE = "state_dir: st\ninstances: [{id: music, directory: music}]\n"


def _roster(tmp_path: Path, http: str) -> str:
    (tmp_path / "music").mkdir(exist_ok=True)
    path = tmp_path / "roster.yaml"
    path.write_text(http + _ONE)
    return str(path)


@pytest.mark.parametrize(("section", "names"), [
    ("", ()),
    ("http: {allowed_hosts: []}\n", ()),
    ("http: {allowed_hosts: [Monitor.Example., multiwatch]}\n", ("monitor.example", "multiwatch")),
    ("http: {allowed_hosts: multiwatch.ns.svc}\n", ("multiwatch.ns.svc",)),
])
def test_allowed_hosts_values(tmp_path: Path, section: str, names: tuple[str, ...]) -> None:
    """A list of names (or one name) in lower case without a trailing dot; none by default."""
    assert load_roster(_roster(tmp_path, section), {}).http.allowed_hosts == names


@pytest.mark.parametrize("value", ["http://monitor.example", "monitor.example:9120", "'*'",
                                   "'a b'", "''"])
def test_a_bad_allowed_host_names_line_and_value(tmp_path: Path, value: str) -> None:
    """A scheme, a port, a wildcard or a blank is refused at its line, saying what to write."""
    path = _roster(tmp_path, f"http:\n  allowed_hosts: [{value}]\n")
    with pytest.raises(ConfigError) as info:
        load_roster(path, {})
    message = str(info.value)
    assert message.startswith(f"{path}:2: http.allowed_hosts")
    assert "is not a host name" in message or "must not be empty" in message


def test_allowed_hosts_keep_the_listen_from_the_environment(tmp_path: Path) -> None:
    """Setting only allowed_hosts leaves the listen address to $MULTIWATCH_HTTP_LISTEN."""
    path = _roster(tmp_path, "http: {allowed_hosts: [monitor.example]}\n")
    http = load_roster(path, {"MULTIWATCH_HTTP_LISTEN": "0.0.0.0:9200"}).http
    assert (http.listen, http.allowed_hosts) == ("0.0.0.0:9200", ("monitor.example",))


def test_check_shows_allowed_hosts_and_status_finds_the_state_dir(tmp_path: Path) -> None:
    """`check` prints the names; `status` reads the state_dir where the endpoint's identity is."""
    path = _roster(tmp_path, "http: {allowed_hosts: [monitor.example]}\n")
    shown = yaml.safe_load(render_effective(load_roster(path, {})))
    assert shown["http"] == {"listen": "127.0.0.1:9120", "allowed_hosts": ["monitor.example"]}
    http, state_dir = load_endpoint_config(path, {})
    assert http.allowed_hosts == ("monitor.example",) and state_dir == str(tmp_path / "st")


def test_unknown_http_key_lists_allowed_hosts(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in the http section is a config error (exit 2) suggesting the right key."""
    assert main(["check", "-c", _roster(tmp_path, "http: {allowed_host: [a]}\n")]) == 2
    assert "allowed_hosts" in capsys.readouterr().err


def test_allowed_hosts_from_the_environment_when_the_roster_sets_none(tmp_path: Path) -> None:
    """$MULTIWATCH_HTTP_ALLOWED_HOSTS (comma-separated) applies with a roster that sets no
    allowed_hosts, and in environment mode; a roster's own list wins."""
    environ = {"MULTIWATCH_HTTP_ALLOWED_HOSTS": " multiwatch, Monitor.Example ,"}
    assert load_roster(_roster(tmp_path, ""), environ).http.allowed_hosts == (
        "multiwatch", "monitor.example")
    own = _roster(tmp_path, "http: {allowed_hosts: [mine]}\n")
    assert load_roster(own, environ).http.allowed_hosts == ("mine",)
    (tmp_path / "data").mkdir()
    env_mode = {**environ, "DATA_DIR": str(tmp_path / "data"),
                "MULTIWATCH_STATE_DIR": str(tmp_path / "state")}
    assert load_roster(None, env_mode).http.allowed_hosts == ("multiwatch", "monitor.example")


def test_a_bad_allowed_host_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    """A URL in $MULTIWATCH_HTTP_ALLOWED_HOSTS is refused naming the variable."""
    with pytest.raises(ConfigError) as info:
        load_roster(_roster(tmp_path, ""),
                    {"MULTIWATCH_HTTP_ALLOWED_HOSTS": "http://monitor.example"})
    assert "MULTIWATCH_HTTP_ALLOWED_HOSTS" in str(info.value)
    assert "is not a host name" in str(info.value)
