"""The roster loader: what users write, what they get, and what they are told when it is wrong."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from multiwatch.config import (
    DEFAULT_EXCLUDE,
    BrokerConfig,
    ConfigError,
    HttpConfig,
    InstanceConfig,
    Roster,
    SupervisorConfig,
    TlsConfig,
    http_override,
    load_http_config,
    load_roster,
    mask_url,
    render_effective,
)
from tests.support.privilege import run_unprivileged


def write_roster(tmp_path: Path, text: str, name: str = "roster.yaml") -> str:
    """Write a roster whose first content line is line 1, so tests can name lines."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def config_error(path: str | None, environ: dict[str, str] | None = None) -> str:
    """The ConfigError message for this input, checked to be a single paragraph."""
    with pytest.raises(ConfigError) as info:
        load_roster(path, environ or {})
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def dirs(tmp_path: Path) -> Path:
    """Two watchable directories, music and books, under tmp_path."""
    for name in ("music", "books"):
        (tmp_path / name).mkdir()
    return tmp_path


# ---------------------------------------------------------------- valid rosters


def test_valid_roster_round_trip(dirs: Path) -> None:
    """Every documented key is read into the typed roster exactly as written."""
    path = write_roster(
        dirs,
        """
        state_dir: state
        log_level: warning
        broker:
          url: amqps://bob:pw@rabbit.example:5671/prod
          exchange: files
          queue: incoming
          binding_key: "file.music.#"
          heartbeat_seconds: 30
          connect_timeout_seconds: 5
          confirm_timeout_seconds: 2.5
          reconnect_max_seconds: 120
        supervisor:
          report_interval_seconds: 10
          stop_timeout_seconds: 3
          restart_backoff_seconds: 0.5
          restart_backoff_max_seconds: 30
          backoff_reset_seconds: 90
          hang_timeout_seconds: 45
        instances:
          - id: watcher-music
            directory: music
            include: ["*.mp3", "*.flac"]
            exclude: []
            recursive: false
            settle_seconds: 0
            optional: true
        """,
    )
    roster = load_roster(path, {})
    assert roster == Roster(
        state_dir=str(dirs / "state"),
        broker=BrokerConfig(
            url="amqps://bob:pw@rabbit.example:5671/prod",
            exchange="files",
            queue="incoming",
            binding_key="file.music.#",
            heartbeat_seconds=30,
            connect_timeout_seconds=5.0,
            confirm_timeout_seconds=2.5,
            reconnect_max_seconds=120.0,
        ),
        supervisor=SupervisorConfig(10.0, 3.0, 0.5, 30.0, 90.0, 45.0),
        instances=(
            InstanceConfig(
                id="watcher-music",
                directory=str(dirs / "music"),
                include=("*.mp3", "*.flac"),
                exclude=(),
                recursive=False,
                settle_seconds=0.0,
                optional=True,
            ),
        ),
        log_level="WARNING",
        source=path,
    )


def test_defaults_apply_and_instances_override(dirs: Path) -> None:
    """`defaults` reach every instance; an instance's own key wins; unset keys keep built-ins."""
    path = write_roster(
        dirs,
        """
        state_dir: state
        defaults:
          settle_seconds: 3
          exclude: "*.part"
        instances:
          - id: music
            directory: music
          - id: books
            directory: books
            settle_seconds: 0.25
            include: "*.epub"
        """,
    )
    music, books = load_roster(path, {}).instances
    assert (music.settle_seconds, music.exclude, music.include) == (3.0, ("*.part",), ("*",))
    assert (books.settle_seconds, books.exclude, books.include) == (0.25, ("*.part",), ("*.epub",))
    assert music.recursive and not music.optional


def test_builtin_defaults_when_roster_is_minimal(dirs: Path) -> None:
    """A roster with only ids and directories gets the documented defaults."""
    path = write_roster(dirs, "instances: [{id: music, directory: music}]\n")
    roster = load_roster(path, {"MULTIWATCH_STATE_DIR": str(dirs / "st")})
    assert roster.instances[0].exclude == DEFAULT_EXCLUDE
    assert roster.broker == BrokerConfig() and roster.supervisor == SupervisorConfig()
    assert (roster.log_level, roster.state_dir) == ("INFO", str(dirs / "st"))


def test_env_expansion_with_defaults_and_literal_dollar(dirs: Path) -> None:
    """`${VAR}`, `${VAR:-default}` and `$$` expand in strings, then get type-checked."""
    path = write_roster(
        dirs,
        """
        state_dir: ${STATE}
        broker:
          exchange: "ex$$1"
          heartbeat_seconds: ${HEARTBEAT:-15}
        defaults:
          recursive: ${RECURSE:-yes}
        instances:
          - id: ${PREFIX:-watcher}-music
            directory: ${MEDIA}/music
            settle_seconds: "${SETTLE:-}0.5"
        """,
    )
    environ = {"STATE": str(dirs / "st"), "MEDIA": str(dirs), "RECURSE": "false"}
    roster = load_roster(path, environ)
    inst = roster.instances[0]
    assert (inst.id, inst.directory, inst.recursive) == (
        "watcher-music",
        str(dirs / "music"),
        False,
    )
    assert inst.settle_seconds == 0.5
    assert (roster.broker.exchange, roster.broker.heartbeat_seconds) == ("ex$1", 15)
    assert roster.state_dir == str(dirs / "st")


def test_missing_env_var_names_var_and_line(dirs: Path) -> None:
    """`${VAR}` with VAR unset and no default is an error naming VAR, the key and the line."""
    path = write_roster(
        dirs,
        """
        state_dir: state
        instances:
          - id: music
            directory: ${MUSIC_DIR}
        """,
    )
    message = config_error(path)
    assert message.startswith(f"{path}:4: instances[0].directory:")
    assert "MUSIC_DIR is not set" in message


def test_relative_paths_resolve_against_roster_file(
    dirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`directory` and `state_dir` are relative to the roster file, not the current directory."""
    path = write_roster(
        dirs,
        """
        state_dir: ../var/state
        instances:
          - id: music
            directory: ../music/
        """,
        name="etc/roster.yaml",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    roster = load_roster(os.path.relpath(path), {})
    assert roster.instances[0].directory == str(dirs / "music")
    assert roster.state_dir == str(dirs / "var" / "state")
    assert roster.source == path


def test_tilde_expands_from_environ_home(dirs: Path) -> None:
    """`~` in a path means the HOME given in the environment."""
    path = write_roster(dirs, "state_dir: ~/st\ninstances: [{id: m, directory: ~/music}]\n")
    roster = load_roster(path, {"HOME": str(dirs)})
    assert (roster.state_dir, roster.instances[0].directory) == (
        str(dirs / "st"),
        str(dirs / "music"),
    )


def test_multiwatch_config_env_names_the_roster(dirs: Path) -> None:
    """Without a path argument, MULTIWATCH_CONFIG picks the roster file."""
    path = write_roster(dirs, "state_dir: st\ninstances: [{id: music, directory: music}]\n")
    roster = load_roster(None, {"MULTIWATCH_CONFIG": path, "DATA_DIR": str(dirs / "books")})
    assert roster.source == path
    assert [i.id for i in roster.instances] == ["music"]


# ---------------------------------------------------------------- broker and log level


def test_broker_url_built_from_rabbitmq_env_with_quoting(dirs: Path) -> None:
    """RABBITMQ_* from the deployment guide become one URL; user, password and vhost quoted."""
    path = write_roster(dirs, "state_dir: st\ninstances: [{id: music, directory: music}]\n")
    environ = {
        "RABBITMQ_HOST": "rabbitmq",
        "RABBITMQ_PORT": "5673",
        "RABBITMQ_USER": "track tion",
        "RABBITMQ_PASS": "p@ss/w:rd",
    }
    url = load_roster(path, environ).broker.url
    assert url == "amqp://track%20tion:p%40ss%2Fw%3Ard@rabbitmq:5673/%2F"
    only_host = load_roster(path, {"RABBITMQ_HOST": "rabbitmq"}).broker.url
    assert only_host == "amqp://guest:guest@rabbitmq:5672/%2F"


def test_embedded_broker_when_nothing_configured(dirs: Path) -> None:
    """No broker.url and no RABBITMQ_HOST means the embedded spool; `embedded` forces it."""
    path = write_roster(dirs, "state_dir: st\ninstances: [{id: music, directory: music}]\n")
    assert load_roster(path, {}).broker.embedded
    forced = write_roster(
        dirs,
        "state_dir: st\nbroker: {url: embedded}\ninstances: [{id: m, directory: music}]\n",
        "f.yaml",
    )
    assert load_roster(forced, {"RABBITMQ_HOST": "rabbitmq"}).broker.url is None


def test_queue_null_means_no_queue(dirs: Path) -> None:
    """`queue: null` (or "none") tells the publisher to declare no queue."""
    for value in ("null", '"none"', '""'):
        path = write_roster(
            dirs,
            f"state_dir: st\nbroker: {{queue: {value}}}\ninstances: [{{id: m, directory: music}}]",
        )
        assert load_roster(path, {}).broker.queue is None


def test_log_level_from_env_when_roster_has_none(dirs: Path) -> None:
    """LOG_LEVEL is used (case-insensitively) when the roster does not set log_level."""
    path = write_roster(dirs, "state_dir: st\ninstances: [{id: music, directory: music}]\n")
    assert load_roster(path, {"LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_bad_rabbitmq_port_is_an_error(dirs: Path) -> None:
    """A RABBITMQ_PORT that is not 1-65535 is reported by name."""
    path = write_roster(dirs, "state_dir: st\ninstances: [{id: music, directory: music}]\n")
    message = config_error(path, {"RABBITMQ_HOST": "r", "RABBITMQ_PORT": "70000"})
    assert "RABBITMQ_PORT" in message and "70000" in message


def test_unsupported_url_scheme_is_named(dirs: Path) -> None:
    """A broker URL with a scheme kombu cannot serve here is an error naming the scheme."""
    path = write_roster(
        dirs,
        "state_dir: st\nbroker:\n  url: redis://h:6379\ninstances: [{id: m, directory: music}]\n",
    )
    message = config_error(path)
    assert message.startswith(f"{path}:3: broker.url:") and '"redis"' in message


# ---------------------------------------------------------------- state dir defaults


def test_default_state_dir_follows_xdg_for_non_root(
    dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Non-root users get $XDG_STATE_HOME/multiwatch, else ~/.local/state/multiwatch."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    path = write_roster(dirs, "instances: [{id: music, directory: music}]\n")
    xdg = load_roster(path, {"XDG_STATE_HOME": str(dirs / "xdg")}).state_dir
    home = load_roster(path, {"HOME": str(dirs / "home")}).state_dir
    assert xdg == str(dirs / "xdg" / "multiwatch")
    assert home == str(dirs / "home" / ".local" / "state" / "multiwatch")


def test_default_state_dir_for_root(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root gets /var/lib/multiwatch; MULTIWATCH_STATE_DIR overrides it."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    path = write_roster(dirs, "instances: [{id: music, directory: music}]\n")
    assert load_roster(path, {}).state_dir == "/var/lib/multiwatch"
    override = {"MULTIWATCH_STATE_DIR": str(dirs / "st")}
    assert load_roster(path, override).state_dir == str(dirs / "st")


# ---------------------------------------------------------------- environment mode


def test_env_mode_with_instance_id(dirs: Path) -> None:
    """DATA_DIR + INSTANCE_ID give one instance, as in the one-container-per-directory guide."""
    environ = {
        "DATA_DIR": str(dirs / "music"),
        "INSTANCE_ID": "watcher-music",
        "MULTIWATCH_STATE_DIR": str(dirs / "st"),
        "SETTLE_SECONDS": "2",
        "INCLUDE": "*.mp3, *.flac",
        "RABBITMQ_HOST": "rabbitmq",
        "LOG_LEVEL": "error",
    }
    roster = load_roster(None, environ)
    assert roster.source == "<environment>"
    assert roster.instances == (
        InstanceConfig(
            id="watcher-music",
            directory=str(dirs / "music"),
            include=("*.mp3", "*.flac"),
            settle_seconds=2.0,
        ),
    )
    assert roster.broker.url == "amqp://guest:guest@rabbitmq:5672/%2F"
    assert roster.log_level == "ERROR"


def test_env_mode_generated_id_is_stable_per_directory(dirs: Path) -> None:
    """Without INSTANCE_ID the id is readable, the same on every load, and differs per dir."""
    base = {"MULTIWATCH_STATE_DIR": str(dirs / "st")}
    first = load_roster(None, {**base, "DATA_DIR": str(dirs / "music")}).instances[0].id
    again = load_roster(None, {**base, "DATA_DIR": str(dirs / "music") + "/"}).instances[0].id
    other = load_roster(None, {**base, "DATA_DIR": str(dirs / "books")}).instances[0].id
    assert re.fullmatch(r"watcher-music-[0-9a-f]{8}", first)
    assert first == again
    assert other.startswith("watcher-books-") and other != first


def test_env_mode_without_data_dir_explains_both_options() -> None:
    """With neither a roster nor DATA_DIR the error says how to provide one."""
    message = config_error(None, {})
    assert "MULTIWATCH_CONFIG" in message and "DATA_DIR is not set" in message


def test_env_mode_missing_data_dir_directory(tmp_path: Path) -> None:
    """A DATA_DIR that does not exist is an error naming DATA_DIR and the path."""
    missing = str(tmp_path / "nope")
    message = config_error(None, {"DATA_DIR": missing, "MULTIWATCH_STATE_DIR": str(tmp_path)})
    assert "DATA_DIR" in message and missing in message and "does not exist" in message


# ---------------------------------------------------------------- bad input, told precisely


def test_yaml_syntax_error_has_line_and_column(dirs: Path) -> None:
    """Broken YAML is reported as file:line:col with the parser's problem."""
    path = write_roster(dirs, "state_dir: st\ninstances:\n  - id: [music\n")
    message = config_error(path)
    assert re.match(rf"{re.escape(path)}:4:1: YAML syntax error: ", message)


def test_unknown_key_suggests_the_close_one(dirs: Path) -> None:
    """A typo'd key is rejected at its line with a did-you-mean and the valid keys."""
    path = write_roster(
        dirs,
        """
        state_dir: st
        instances:
          - id: music
            directory: music
            setle_seconds: 2
        """,
    )
    message = config_error(path)
    assert message.startswith(f"{path}:5: instances[0].setle_seconds: unknown key")
    assert 'did you mean "settle_seconds"?' in message and "include" in message


def test_duplicate_mapping_key_is_an_error(dirs: Path) -> None:
    """The same key twice in one mapping is rejected instead of silently keeping the last."""
    path = write_roster(dirs, "state_dir: a\ninstances: []\nstate_dir: b\n")
    message = config_error(path)
    assert message.startswith(f"{path}:3:")
    assert 'duplicate key "state_dir" (first defined at line 1)' in message


def test_duplicate_instance_ids_name_both_lines(dirs: Path) -> None:
    """Two instances with one id: the error names the id, both lines, and the rule."""
    path = write_roster(
        dirs,
        """
        state_dir: st
        instances:
          - id: watcher-music
            directory: music
          - id: watcher-music
            directory: books
        """,
    )
    message = config_error(path)
    assert message == (
        f'{path}:5: instances[1].id: duplicate instance id "watcher-music" '
        "(first defined at line 3); each instance needs a unique id"
    )


def test_missing_directory_is_an_error(dirs: Path) -> None:
    """A directory that does not exist is reported with its line and a hint about optional."""
    path = write_roster(dirs, "state_dir: st\ninstances:\n  - id: m\n    directory: gone\n")
    message = config_error(path)
    assert message.startswith(f"{path}:4: instances[0].directory:")
    assert "does not exist" in message and "optional: true" in message


def test_optional_missing_directory_is_accepted(dirs: Path) -> None:
    """`optional: true` lets a not-yet-mounted directory through, to be waited for."""
    path = write_roster(
        dirs, "state_dir: st\ninstances:\n  - {id: m, directory: gone, optional: true}\n"
    )
    assert load_roster(path, {}).instances[0].directory == str(dirs / "gone")


def test_directory_that_is_a_file_is_an_error(dirs: Path) -> None:
    """A path that exists but is a regular file cannot be watched."""
    (dirs / "file.txt").write_text("x")
    path = write_roster(dirs, "state_dir: st\ninstances:\n  - {id: m, directory: file.txt}\n")
    assert "is not a directory" in config_error(path)


def test_unreadable_directory_is_an_error(dirs: Path) -> None:
    """A directory this user cannot list is rejected unless the instance is optional."""
    (dirs / "music").chmod(0o000)
    try:
        path = write_roster(dirs, "state_dir: st\ninstances:\n  - {id: m, directory: music}\n")
        result = run_unprivileged([sys.executable, "-m", "multiwatch", "check", "-c", str(path)])
        assert result.returncode == 2
        assert "is not readable" in result.stderr
    finally:
        (dirs / "music").chmod(0o755)


def test_same_directory_twice_is_an_error(dirs: Path) -> None:
    """Two instances on one directory (here via a symlink) would publish everything twice."""
    (dirs / "link").symlink_to(dirs / "music")
    path = write_roster(
        dirs,
        """
        state_dir: st
        instances:
          - {id: a, directory: music}
          - {id: b, directory: link}
        """,
    )
    message = config_error(path)
    assert message.startswith(f"{path}:4: instances[1].directory:")
    assert 'same directory as instance "a" (line 3)' in message


def test_nested_directory_under_recursive_is_an_error(dirs: Path) -> None:
    """A directory inside another instance's recursive tree is rejected with both lines."""
    (dirs / "music" / "live").mkdir()
    path = write_roster(
        dirs,
        """
        state_dir: st
        instances:
          - {id: live, directory: music/live}
          - {id: music, directory: music}
        """,
    )
    message = config_error(path)
    assert message.startswith(f"{path}:4: instances[1].directory:")
    assert "watched recursively" in message and "(line 3)" in message


def test_nested_directory_under_non_recursive_is_fine(dirs: Path) -> None:
    """Nesting is allowed when the outer instance only watches its top level."""
    (dirs / "music" / "live").mkdir()
    path = write_roster(
        dirs,
        """
        state_dir: st
        instances:
          - {id: music, directory: music, recursive: false}
          - {id: live, directory: music/live}
        """,
    )
    assert len(load_roster(path, {}).instances) == 2


def test_state_dir_inside_watched_directory_is_an_error(dirs: Path) -> None:
    """State inside a watched tree would publish its own database writes."""
    path = write_roster(
        dirs, "state_dir: music/.state\ninstances:\n  - {id: m, directory: music}\n"
    )
    message = config_error(path)
    assert message.startswith(f"{path}:1: state_dir:")
    assert "inside" in message and '"m" (line 3)' in message


@pytest.mark.parametrize("bad_id", ["-music", "my music", "a" * 101, ""])
def test_bad_instance_id_is_quoted(dirs: Path, bad_id: str) -> None:
    """An id that cannot name a connection or a file is rejected, quoting the id."""
    path = write_roster(
        dirs, f'state_dir: st\ninstances:\n  - id: "{bad_id}"\n    directory: music\n'
    )
    message = config_error(path)
    assert message.startswith(f'{path}:3: instances[0].id: invalid instance id "{bad_id}"')


def test_bad_log_level_is_an_error(dirs: Path) -> None:
    """An unknown log level is rejected at its line with the allowed levels."""
    path = write_roster(
        dirs, "state_dir: st\nlog_level: loud\ninstances: [{id: m, directory: music}]\n"
    )
    message = config_error(path)
    assert message.startswith(f'{path}:2: log_level: unknown log level "loud"')
    assert "WARNING" in message


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("settle_seconds: soon", 'expected a number of seconds, got "soon"'),
        ("settle_seconds: -1", "must be 0 or more"),
        ("settle_seconds: true", "expected a number of seconds, got boolean true"),
        ("recursive: maybe", 'expected true or false, got "maybe"'),
        ("include: []", "needs at least one pattern"),
        ("include: [ok, '']", "must not be empty"),
    ],
)
def test_bad_instance_value_types(dirs: Path, entry: str, problem: str) -> None:
    """A value of the wrong type or range is reported at its line with what was expected."""
    path = write_roster(
        dirs, f"state_dir: st\ninstances:\n  - id: m\n    directory: music\n    {entry}\n"
    )
    message = config_error(path)
    assert message.startswith(f"{path}:5: instances[0].") and problem in message


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("broker: {heartbeat_seconds: 1.5}", "expected a whole number"),
        ("broker: {confirm_timeout_seconds: 0}", "must be greater than 0"),
        ("supervisor: {hang_timeout_seconds: '${HANG:-never}'}", 'got "never"'),
        ("supervisor: {max_parallel_hashes: 0}", "must be greater than 0"),
        ("supervisor: {max_parallel_hashes: 1.5}", "expected a whole number"),
        ("supervisor: {max_parallel_hashes: two}", 'expected a whole number, got "two"'),
        ("supervisor: {max_parallel_hashes: 5000}", "must be at most 1024"),
    ],
)
def test_bad_number_in_sections(dirs: Path, entry: str, problem: str) -> None:
    """Broker and supervisor numbers are type- and range-checked after expansion."""
    path = write_roster(dirs, f"state_dir: st\n{entry}\ninstances: [{{id: m, directory: music}}]\n")
    message = config_error(path)
    assert message.startswith(f"{path}:2: ") and problem in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the roster is empty"),
        ("# just a comment\n", "the roster is empty"),
        ("- id: m\n", "must be a mapping"),
        ("state_dir: st\n", "no instances"),
        ("state_dir: st\ninstances: []\n", "no instances"),
        ("state_dir: st\ninstances:\n  - directory: music\n", 'missing required key "id"'),
    ],
)
def test_roster_shape_errors(dirs: Path, text: str, problem: str) -> None:
    """Empty, non-mapping and instance-less rosters get a plain explanation."""
    message = config_error(write_roster(dirs, text))
    assert problem in message


def test_unreadable_roster_path_is_named(tmp_path: Path) -> None:
    """A missing roster or a directory given as roster is an error naming the path and why."""
    missing = str(tmp_path / "missing.yaml")
    assert missing in config_error(missing) and "No such file" in config_error(missing)
    assert "is a directory" in config_error(str(tmp_path))


# ---------------------------------------------------------------- rendering and masking


def test_render_effective_masks_password(dirs: Path) -> None:
    """`multiwatch check` output shows every setting but never the broker password."""
    path = write_roster(dirs, "state_dir: st\ninstances: [{id: music, directory: music}]\n")
    secret = "Sup3r-s3cret"
    roster = load_roster(path, {"RABBITMQ_HOST": "rabbitmq", "RABBITMQ_PASS": secret})
    text = render_effective(roster)
    assert secret not in text
    effective = yaml.safe_load(text)
    assert effective["broker"]["url"] == "amqp://guest:****@rabbitmq:5672/%2F"
    assert effective["source"] == path and effective["supervisor"]["hang_timeout_seconds"] == 60
    assert effective["instances"][0]["exclude"] == list(DEFAULT_EXCLUDE)


def test_render_effective_shows_embedded_spool(dirs: Path) -> None:
    """With no broker the output says where the embedded spool lives."""
    path = write_roster(dirs, "state_dir: st\ninstances: [{id: music, directory: music}]\n")
    effective = yaml.safe_load(render_effective(load_roster(path, {})))
    assert effective["broker"]["url"] == f"embedded (spool: {dirs / 'st' / 'spool'})"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://u:pw@h:5672/%2F", "amqp://u:****@h:5672/%2F"),
        ("amqp://u@h//", "amqp://u@h//"),
        ("amqp://h:5672/", "amqp://h:5672/"),
        ("amqp://u:p/w@rd@h/", "amqp://u:****@h/"),
        ("amqp://a:x@h1//;amqp://b:y@h2//", "amqp://a:****@h1//;amqp://b:****@h2//"),
        ("embedded", "embedded"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    """Passwords in URLs become ****; URLs without one are unchanged."""
    assert mask_url(url) == masked


# ---------------------------------------------------------------- http section

_ONE = "state_dir: st\ninstances: [{id: music, directory: music}]\n"


@pytest.mark.parametrize(
    ("section", "listen"),
    [
        ("", "127.0.0.1:9120"),
        ("http:\n  listen: 0.0.0.0:9000\n", "0.0.0.0:9000"),
        ("http:\n  listen: '[::1]:9121'\n", "[::1]:9121"),
        ("http:\n  listen: localhost:80\n", "localhost:80"),
        ("http:\n  listen: off\n", None),
        ("http:\n  listen: null\n", None),
        ("http:\n  listen: ''\n", None),
    ],
)
def test_http_listen_values(dirs: Path, section: str, listen: str | None) -> None:
    """http.listen defaults to 127.0.0.1:9120, takes host:port or [v6]:port; `off` disables it."""
    roster = load_roster(write_roster(dirs, section + _ONE), {})
    assert roster.http == HttpConfig(listen=listen)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("127.0.0.1:99999", "port must be a number from 1 to 65535"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535"),
        ("127.0.0.1", "expected host:port"),
        (":9120", "0.0.0.0:PORT"),
        ("::1:9120", "IPv6 address in brackets"),
        ("localhost:http", "port must be a number"),
        ("true", "expected host:port"),
    ],
)
def test_bad_http_listen_names_line_and_value(dirs: Path, value: str, problem: str) -> None:
    """A malformed http.listen is reported at its line with the value and what is expected."""
    path = write_roster(dirs, f"http:\n  listen: '{value}'\n" + _ONE)
    message = config_error(path)
    assert message.startswith(f"{path}:2: http.listen: ") and problem in message


def test_unknown_http_key_suggests_listen(dirs: Path) -> None:
    """A typo in the http section gets a did-you-mean like every other section."""
    message = config_error(write_roster(dirs, "http:\n  listn: 127.0.0.1:1\n" + _ONE))
    assert 'did you mean "listen"' in message


def test_http_listen_from_environment(dirs: Path) -> None:
    """MULTIWATCH_HTTP_LISTEN replaces the default, in env mode too; the roster's key wins."""
    env = {"MULTIWATCH_HTTP_LISTEN": "0.0.0.0:9200"}
    assert load_roster(write_roster(dirs, _ONE), env).http.listen == "0.0.0.0:9200"
    explicit = write_roster(dirs, "http: {listen: '127.0.0.1:9300'}\n" + _ONE, name="b.yaml")
    assert load_roster(explicit, env).http.listen == "127.0.0.1:9300"
    env_mode = {"DATA_DIR": str(dirs / "music"), "MULTIWATCH_STATE_DIR": str(dirs / "st")}
    assert load_roster(None, {**env_mode, "MULTIWATCH_HTTP_LISTEN": "off"}).http.listen is None
    assert "MULTIWATCH_HTTP_LISTEN" in config_error(None, {**env_mode,
                                                           "MULTIWATCH_HTTP_LISTEN": "9120"})


def test_http_config_loads_without_checking_directories(tmp_path: Path) -> None:
    """`status`/`health` find the endpoint even when a watched directory has vanished."""
    path = write_roster(tmp_path, "http: {listen: '127.0.0.1:9333'}\n"
                                  "instances: [{id: m, directory: gone}]\n")
    assert "gone" in config_error(path)
    assert load_http_config(path, {}) == HttpConfig(listen="127.0.0.1:9333")
    assert load_http_config(None, {}) == HttpConfig()


def test_render_effective_shows_http_listen(dirs: Path) -> None:
    """`multiwatch check` prints where the HTTP endpoint listens, or off."""
    shown = yaml.safe_load(render_effective(load_roster(write_roster(dirs, _ONE), {})))
    assert shown["http"] == {"listen": "127.0.0.1:9120"}
    off = write_roster(dirs, "http: {listen: off}\n" + _ONE, name="off.yaml")
    assert yaml.safe_load(render_effective(load_roster(off, {})))["http"] == {"listen": "off"}


# ---------------------------------------------------------------- several brokers, queue type

_MUSIC = "state_dir: st\ninstances: [{id: music, directory: music}]\n"


def test_broker_url_list_and_semicolons_give_the_same_failover_order(dirs: Path) -> None:
    """A YAML list of URLs and a `;`-separated string both give the URLs in order."""
    listed = write_roster(dirs, _MUSIC + "broker:\n  url:\n    - amqp://u:a@h1:5672/\n"
                          "    - amqp://u:b@h2:5673/\n", name="listed.yaml")
    joined = write_roster(dirs, _MUSIC + "broker:\n  url: amqp://u:a@h1:5672/;amqp://u:b@h2:5673/\n",
                          name="joined.yaml")
    want = ("amqp://u:a@h1:5672/", "amqp://u:b@h2:5673/")
    assert load_roster(listed, {}).broker.urls == want
    assert load_roster(joined, {}).broker == load_roster(listed, {}).broker
    effective = yaml.safe_load(render_effective(load_roster(listed, {})))
    assert effective["broker"]["url"] == ["amqp://u:****@h1:5672/", "amqp://u:****@h2:5673/"]


@pytest.mark.parametrize(("value", "problem"), [
    ("[]", "broker.url: the list of broker URLs is empty"),
    ("[amqp://h1/, redis://h2/]", 'unsupported URL scheme "redis"'),
    ("[amqp://h1/, {a: b}]", "broker.url[1]: expected a single value"),
])
def test_bad_broker_url_lists(dirs: Path, value: str, problem: str) -> None:
    """A bad failover list is reported with the roster line and which entry is wrong."""
    path = write_roster(dirs, _MUSIC + f"broker:\n  url: {value}\n")
    message = config_error(path)
    assert message.startswith(f"{path}:4: broker.url") and problem in message


def test_queue_type_defaults_to_classic_and_accepts_quorum(dirs: Path) -> None:
    """queue_type is classic unless the roster asks for a quorum queue."""
    assert load_roster(write_roster(dirs, _MUSIC), {}).broker.queue_type == "classic"
    path = write_roster(dirs, _MUSIC + "broker: {url: 'amqp://h/', queue_type: Quorum}\n")
    assert load_roster(path, {}).broker.queue_type == "quorum"


def test_unknown_queue_type_is_an_error(dirs: Path) -> None:
    """A queue type RabbitMQ would not understand names the value and the choices."""
    path = write_roster(dirs, _MUSIC + "broker:\n  queue_type: stream\n")
    message = config_error(path)
    assert message.startswith(f"{path}:4: broker.queue_type:")
    assert '"stream"' in message and "classic" in message and "quorum" in message


# ---------------------------------------------------------------- password file


def test_password_file_is_relative_to_the_roster(dirs: Path) -> None:
    """broker.password_file resolves against the roster's directory like every path."""
    (dirs / "secret").write_text("s3cret\n")
    path = write_roster(dirs, _MUSIC + "broker: {url: 'amqp://u@h/', password_file: secret}\n")
    assert load_roster(path, {}).broker.password_file == str(dirs / "secret")


def test_rabbitmq_pass_file_applies_in_both_modes(dirs: Path) -> None:
    """RABBITMQ_PASS_FILE sets the password file with or without a roster; the roster wins."""
    (dirs / "env-secret").write_text("from-env")
    (dirs / "roster-secret").write_text("from-roster")
    env = {"RABBITMQ_HOST": "rabbit", "RABBITMQ_PASS_FILE": str(dirs / "env-secret")}
    assert load_roster(write_roster(dirs, _MUSIC), env).broker.password_file == str(
        dirs / "env-secret")
    env_mode = {**env, "DATA_DIR": str(dirs / "music"), "MULTIWATCH_STATE_DIR": str(dirs / "s")}
    assert load_roster(None, env_mode).broker.password_file == str(dirs / "env-secret")
    own = write_roster(dirs, _MUSIC + "broker: {password_file: roster-secret}\n")
    assert load_roster(own, env).broker.password_file == str(dirs / "roster-secret")


def test_password_file_is_ignored_for_the_embedded_spool(dirs: Path) -> None:
    """Without a broker URL there is no password to read, so a missing file is no error."""
    env = {"RABBITMQ_PASS_FILE": str(dirs / "absent")}
    assert load_roster(write_roster(dirs, _MUSIC), env).broker.password_file is None


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read the broker password file"),
    ("", "is empty"),
    ("\n", "is empty"),
    (b"\xff\xfe", "is not UTF-8 text"),
])
def test_unusable_password_file_is_an_error(
        dirs: Path, content: str | bytes | None, problem: str) -> None:
    """A missing, empty or binary password file fails the roster naming line and path."""
    secret = dirs / "secret"
    if isinstance(content, bytes):
        secret.write_bytes(content)
    elif content is not None:
        secret.write_text(content)
    path = write_roster(dirs, _MUSIC + "broker:\n  url: amqp://u@h/\n  password_file: secret\n")
    message = config_error(path)
    assert message.startswith(f"{path}:5: broker.password_file:")
    assert problem in message and str(secret) in message


def test_unreadable_rabbitmq_pass_file_names_the_variable(dirs: Path) -> None:
    """The error for a bad RABBITMQ_PASS_FILE blames the variable, not a roster line."""
    message = config_error(write_roster(dirs, _MUSIC), {
        "RABBITMQ_HOST": "rabbit", "RABBITMQ_PASS_FILE": str(dirs / "gone")})
    assert message.startswith("environment: RABBITMQ_PASS_FILE: cannot read")
    assert "No such file or directory" in message


def test_check_output_shows_the_password_file_never_its_content(dirs: Path) -> None:
    """`check` shows where the password comes from, not the password."""
    (dirs / "secret").write_text("Very-S3cret-Value\n")
    path = write_roster(dirs, _MUSIC + "broker: {url: 'amqp://u:old@h/', password_file: secret}\n")
    text = render_effective(load_roster(path, {}))
    assert "Very-S3cret-Value" not in text and "old" not in text
    assert yaml.safe_load(text)["broker"]["password_file"] == str(dirs / "secret")


# ---------------------------------------------------------------- TLS


def test_tls_section_reads_paths_relative_to_the_roster(dirs: Path) -> None:
    """broker.tls gives the CA, client certificate and key, resolved like other paths."""
    for name in ("ca.pem", "client.pem", "client.key"):
        (dirs / name).write_text("pem")
    path = write_roster(dirs, _MUSIC + textwrap.dedent("""\
        broker:
          url: amqps://u:p@rabbit.example/
          tls:
            ca_file: ca.pem
            cert_file: client.pem
            key_file: client.key
            server_hostname: rabbit.internal
        """))
    assert load_roster(path, {}).broker.tls == TlsConfig(
        ca_file=str(dirs / "ca.pem"), cert_file=str(dirs / "client.pem"),
        key_file=str(dirs / "client.key"), verify=True, server_hostname="rabbit.internal")


@pytest.mark.parametrize(("tls", "line", "problem"), [
    ("{ca_file: missing.pem}", 6, "broker.tls.ca_file: "),
    ("{key_file: k.pem}", 6, "broker.tls.key_file: a client key needs its certificate"),
    ("{verify: maybe}", 6, "broker.tls.verify: expected true or false"),
    ("{ca: x}", 6, 'unknown key "ca"'),
])
def test_bad_tls_settings_are_errors(dirs: Path, tls: str, line: int, problem: str) -> None:
    """Missing certificate files and wrong TLS keys name the exact setting and line."""
    (dirs / "k.pem").write_text("pem")
    path = write_roster(dirs, _MUSIC + f"broker:\n  url: amqps://h/\n\n  tls: {tls}\n")
    message = config_error(path)
    assert message.startswith(f"{path}:{line}: ") and problem in message


def test_tls_needs_amqps_urls(dirs: Path) -> None:
    """TLS settings with a plain amqp:// URL are refused instead of silently unused."""
    path = write_roster(dirs, _MUSIC + "broker:\n  url: [amqps://a/, amqp://u:pw@b/]\n  tls: {}\n")
    message = config_error(path)
    assert message.startswith(f"{path}:5: broker.tls:")
    assert "amqp://u:****@b/" in message and "pw" not in message.replace("****", "")


def test_http_override_from_the_command_line() -> None:
    """`run --http-listen` values: off disables, host:port is checked like the roster's."""
    assert http_override("off") == HttpConfig(listen=None)
    assert http_override("127.0.0.1:9300") == HttpConfig(listen="127.0.0.1:9300")
    with pytest.raises(ConfigError, match=r"command line: --http-listen: .*host:port"):
        http_override("nowhere")


def test_max_parallel_hashes_defaults_to_two_and_is_read_from_supervisor(dirs: Path) -> None:
    """The hashing cap is a supervisor setting: 2 unless the roster says otherwise."""
    text = "state_dir: st\ninstances: [{id: m, directory: music}]\n"
    assert load_roster(write_roster(dirs, text), {}).supervisor.max_parallel_hashes == 2
    path = write_roster(dirs, "supervisor: {max_parallel_hashes: 6}\n" + text)
    assert load_roster(path, {}).supervisor.max_parallel_hashes == 6


def test_check_reports_every_independent_error_at_once(dirs: Path) -> None:
    """A roster with several mistakes lists them all in file order, each at file:line: key."""
    path = write_roster(dirs, f"""
        log_level: LOUD
        supervisor:
          stop_timeout_seconds: -1
        broker:
          url: "ftp://broker"
        instances:
          - id: ok
            directory: {dirs / "music"}
          - id: bad id
            directory: {dirs / "books"}
          - id: nowhere
            directory: {dirs / "missing"}
          - id: slow
            directory: {dirs / "books"}
            settle_seconds: soon
    """)
    with pytest.raises(ConfigError) as info:
        load_roster(path, {})
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: 6 errors:"
    expected = [f"{path}:1: log_level", f"{path}:3: supervisor.stop_timeout_seconds",
                f"{path}:5: broker.url", f"{path}:9: instances[1].id",
                f"{path}:12: instances[2].directory", f"{path}:15: instances[3].settle_seconds"]
    assert [line.strip().split(": ")[0] + ": " + line.strip().split(": ")[1]
            for line in lines[1:]] == expected


def test_missing_directories_of_several_instances_are_reported_together(dirs: Path) -> None:
    """Two instances whose directories do not exist: both are named in one run of check."""
    path = write_roster(dirs, f"""
        instances:
          - id: one
            directory: {dirs / "gone1"}
          - id: two
            directory: {dirs / "gone2"}
    """)
    with pytest.raises(ConfigError) as info:
        load_roster(path, {})
    message = str(info.value)
    assert message.startswith(f"{path}: 2 errors:\n")
    assert "gone1" in message and "gone2" in message and ":3: instances[0].directory" in message


def test_a_single_error_keeps_its_one_line_message(dirs: Path) -> None:
    """One mistake reads exactly as before: file:line: key: why, without a count."""
    path = write_roster(dirs, f"""
        instances:
          - id: one
            directory: {dirs / "music"}
            settle_seconds: soon
    """)
    assert config_error(path).startswith(f"{path}:4: instances[0].settle_seconds: ")


def test_at_most_twenty_errors_are_listed(dirs: Path) -> None:
    """Thirty broken instances list twenty errors and say how many more there are."""
    items = "".join(f"  - id: i{n}\n    directory: {dirs / f'gone{n}'}\n" for n in range(30))
    path = write_roster(dirs, "instances:\n" + items)
    with pytest.raises(ConfigError) as info:
        load_roster(path, {})
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: 30 errors (the first 20 shown):"
    assert len(lines) == 21


def test_a_broken_defaults_section_does_not_add_errors_it_caused(dirs: Path) -> None:
    """A bad `defaults` is reported alone, not with the missing directory it made optional."""
    path = write_roster(dirs, f"""
        defaults:
          optional: true
          settle_seconds: soon
        instances:
          - id: later
            directory: {dirs / "mounted-later"}
    """)
    assert config_error(path).startswith(f"{path}:3: defaults.settle_seconds: ")


def test_a_misspelt_top_level_key_comes_with_the_other_errors(dirs: Path) -> None:
    """`log_levle:` at the top does not hide the mistakes below it: every one in one run."""
    path = write_roster(dirs, f"""
        log_levle: INFO
        brokre: {{}}
        instances:
          - id: nowhere
            directory: {dirs / "missing"}
    """)
    with pytest.raises(ConfigError) as info:
        load_roster(path, {})
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: 3 errors:"
    assert 'did you mean "log_level"?' in lines[1] and 'did you mean "broker"?' in lines[2]
    assert f"{path}:5: instances[0].directory" in lines[3]


def test_a_misspelt_defaults_section_adds_no_directory_errors(dirs: Path) -> None:
    """`defualts: {optional: true}`: the typo is reported, not the directory it made optional."""
    path = write_roster(dirs, f"""
        defualts:
          optional: true
        instances:
          - id: later
            directory: {dirs / "mounted-later"}
    """)
    assert config_error(path).startswith(f"{path}:1: defualts: unknown key")
