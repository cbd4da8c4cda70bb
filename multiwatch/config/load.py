"""Loading the roster from YAML or from the environment, every key checked.

`load_roster` is the only entry point; every user mistake becomes a `ConfigError`
whose message names the file, the line, the key and why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from multiwatch.config import checks, keys
from multiwatch.config import source as cs
from multiwatch.config.broker import load_broker
from multiwatch.config.checks import Origin, check_roster
from multiwatch.config.coercers import (
    Coerce,
    allowed_hosts,
    instance_id,
    listen_address,
    log_level,
    non_negative,
)
from multiwatch.config.environment import (
    ENV_NAME,
    default_state_dir,
    env_node,
    env_source,
    generated_instance_id,
)
from multiwatch.config.errors import ConfigErrors
from multiwatch.config.ha import DEFAULT_HA, HaConfig, ha
from multiwatch.config.roster import (
    ENV_SOURCE,
    HttpConfig,
    InstanceConfig,
    Roster,
    SupervisorConfig,
)
from multiwatch.config.source import ConfigError, Node, Source, Where
from multiwatch.logs import LOG_FORMATS

HTTP_LISTEN_ENV = "MULTIWATCH_HTTP_LISTEN"
HTTP_ALLOWED_HOSTS_ENV = "MULTIWATCH_HTTP_ALLOWED_HOSTS"
HA_ENV = "MULTIWATCH_HA"


# ---------------------------------------------------------------- public API


def load_roster(path: str | None, environ: Mapping[str, str]) -> Roster:
    """Load and validate a roster from `path`, or from the environment when `path` is None."""
    if path is None:
        path = environ.get("MULTIWATCH_CONFIG") or None
    if path is None:
        return _load_environment(environ)
    return _load_file(path, environ)


def load_http_config(path: str | None, environ: Mapping[str, str]) -> HttpConfig:
    """Only the `http` section (what `multiwatch status|health` need to find the endpoint).

    Reads the roster's YAML without checking instances or directories, so the commands still
    work while a watched mount is gone — exactly when an operator asks for status.
    """
    return load_endpoint_config(path, environ)[0]


def load_endpoint_config(path: str | None, environ: Mapping[str, str]) -> tuple[HttpConfig, str]:
    """The `http` section and the state_dir (where the supervisor leaves its endpoint's
    identity), read like `load_http_config`."""
    if path is None:
        path = environ.get("MULTIWATCH_CONFIG") or None
    if path is None:
        env = env_source(environ)
        return _http(env, {}), _state_dir(env, {})[0]
    file = cs.resolve_path(path, os.getcwd(), environ)
    root = _parse_yaml(_read_roster(path, file), path)
    top: dict[str, Node] = {}
    if root is not None and isinstance(root.value, dict):
        top = root.value
    src = Source(path, os.path.dirname(file), environ, expand=True)
    return _http(src, top), _state_dir(src, top)[0]


def http_override(listen: str, option: str = "--http-listen") -> HttpConfig:
    """An `http` section from a command-line value (`host:port` or `off`), checked."""
    src = Source("command line", os.getcwd(), {}, expand=False)
    return HttpConfig(listen=listen_address(src, Node(listen, None, listen), option))


_TOP_KEYS = (
    "state_dir", "log_level", "log_format", "broker", "supervisor", "http", "ha", "defaults",
    "instances",
)
_HTTP_FIELDS = keys.coercers(HttpConfig)

_SUPERVISOR_FIELDS = keys.coercers(SupervisorConfig)
_INSTANCE_FIELDS = keys.coercers(InstanceConfig)  # the ones `defaults` may set too
_INSTANCE_KEYS = tuple(spec.name for spec in keys.declared(InstanceConfig))  # id, directory...


def _coerce(
    src: Source, entries: Mapping[str, Node], prefix: str, fields: Mapping[str, Coerce]
) -> dict[str, Any]:
    """The entries that `fields` knows, typed; the caller has already rejected unknown keys."""
    return {
        name: fields[name](src, node, cs.join(prefix, name))
        for name, node in entries.items()
        if name in fields
    }


def _section(
    src: Source, node: Node | None, key: str, fields: Mapping[str, Coerce]
) -> dict[str, Any]:
    return {} if node is None else _coerce(src, cs.mapping(src, node, key, fields), key, fields)


# ---------------------------------------------------------------- loading


def _load_file(given: str, environ: Mapping[str, str]) -> Roster:
    file = cs.resolve_path(given, os.getcwd(), environ)
    root = _parse_yaml(_read_roster(given, file), given)
    if root is None:
        raise ConfigError(
            f"{given}: the roster is empty; expected a mapping with an instances list"
        )
    if not isinstance(root.value, dict):
        raise ConfigError(
            f"{given}:{root.line}: the roster must be a mapping with keys "
            f"{', '.join(_TOP_KEYS)}; got {cs.kind(root.value)}"
        )
    src = Source(given, os.path.dirname(file), environ, expand=True)
    errors = ConfigErrors(given)  # each section and instance on its own: all errors at once
    top: dict[str, Node] = {}
    for name, child in root.value.items():  # each unknown top-level key is one error
        with errors.collecting():
            top.update(cs.mapping(src, Node({name: child}, root.line), "", _TOP_KEYS))
    # A misspelt `defaults:` may hold the optional: true a missing directory needs.
    misspelt_defaults = any(_meant(name) == "defaults" for name in root.value
                            if name not in _TOP_KEYS)
    defaults: dict[str, Any] | None = None
    top_ha = DEFAULT_HA  # (an error in it is collected once, here)
    with errors.collecting():
        top_ha = _ha(src, top)
        # The top-level `ha` is every instance's default; `defaults:` may override it.
        defaults = {"ha": top_ha, **_section(src, top.get("defaults"), "defaults",
                                             _INSTANCE_FIELDS)}
    instances, origins = _yaml_instances(src, top.get("instances"), defaults or {}, errors)
    # Without its defaults (optional: true...), an instance's directory check would mislead.
    return _finish(src, top, instances, origins, source=file, errors=errors,
                   check_directories=defaults is not None and not misspelt_defaults,
                   ha_section=top_ha)


def _meant(name: str) -> str | None:
    """The top-level key an unknown one is closest to (as its error's did-you-mean)."""
    from difflib import get_close_matches  # only for a mistake

    close = get_close_matches(name, list(_TOP_KEYS), n=1)
    return close[0] if close else None


def _parse_yaml(text: str, filename: str) -> Node | None:
    """Parse one YAML document with SafeLoader semantics; None when it is empty."""
    # PyYAML is imported only where a roster is read: a watcher child unpickles the
    # config dataclasses but never parses YAML, and its start is what a restart waits for.
    from multiwatch.config.yaml_nodes import parse_yaml

    return parse_yaml(text, filename)


def _read_roster(given: str, file: str) -> str:
    name = cs.show(given) if given == file else f"{cs.show(given)} ({file})"
    from multiwatch.config.yaml_nodes import MAX_ROSTER_BYTES

    try:
        with open(file, encoding="utf-8-sig") as handle:
            text = handle.read(MAX_ROSTER_BYTES + 1)  # never all of a huge file
    except IsADirectoryError:
        raise ConfigError(f"cannot read roster {name}: it is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read roster {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read roster {name}: not UTF-8 text (byte {exc.start})") from None
    if len(text) > MAX_ROSTER_BYTES:
        raise ConfigError(f"roster {name} is larger than {MAX_ROSTER_BYTES // 2**20} MiB, "
                          "the limit; refused")
    return text


def _yaml_instances(
    src: Source, node: Node | None, defaults: Mapping[str, Any], errors: ConfigErrors
) -> tuple[list[InstanceConfig], list[Origin]]:
    instances: list[InstanceConfig] = []
    origins: list[Origin] = []
    with errors.collecting():
        if node is None or node.value is None or node.value == []:
            where = Where(src.name, node.line if node else None, "instances")
            raise where.error("no instances: list at least one, each with an id and a directory")
        if not isinstance(node.value, list):
            raise src.where(node, "instances").error(
                f"expected a list, got {cs.kind(node.value)}")
        first: dict[str, Where] = {}
        for i, item in enumerate(node.value):
            with errors.collecting():  # one error per instance, every instance
                instance, origin = _yaml_instance(src, item, f"instances[{i}]", defaults, first)
                instances.append(instance)
                origins.append(origin)
    return instances, origins


def _yaml_instance(
    src: Source, item: Node, key: str, defaults: Mapping[str, Any], first: dict[str, Where]
) -> tuple[InstanceConfig, Origin]:
    """One instance of the list; `first` maps the ids seen so far to where they were."""
    fields = cs.mapping(src, item, key, _INSTANCE_KEYS)
    for required in ("id", "directory"):
        if required not in fields:
            raise src.where(item, key).error(f"missing required key {cs.show(required)}")
    origin = Origin(
        src.where(fields["id"], f"{key}.id"), src.where(fields["directory"], f"{key}.directory")
    )
    ident = instance_id(src, fields["id"], origin.id.key)
    if ident in first:
        raise origin.id.error(
            f"duplicate instance id {cs.show(ident)} (first defined at line "
            f"{first[ident].line}); each instance needs a unique id"
        )
    first[ident] = origin.id
    directory = cs.path(src, fields["directory"], origin.directory.key)
    settings = {**defaults, **_coerce(src, fields, key, _INSTANCE_FIELDS)}
    return InstanceConfig(id=ident, directory=directory, **settings), origin


def _load_environment(environ: Mapping[str, str]) -> Roster:
    env = env_source(environ)
    data_dir = env_node(environ, "DATA_DIR")
    if data_dir is None:
        raise ConfigError(
            "no roster was given (-c/--config or MULTIWATCH_CONFIG) and DATA_DIR is not set; "
            "pass a roster file, or set DATA_DIR (and INSTANCE_ID) to watch one directory"
        )
    directory = cs.path(env, data_dir, "DATA_DIR")
    id_node = env_node(environ, "INSTANCE_ID")
    ident = (
        instance_id(env, id_node, "INSTANCE_ID") if id_node else generated_instance_id(directory)
    )
    settings: dict[str, Any] = {}
    if settle := env_node(environ, "SETTLE_SECONDS"):
        settings["settle_seconds"] = non_negative(env, settle, "SETTLE_SECONDS")
    for name in ("INCLUDE", "EXCLUDE"):
        if listed := env_node(environ, name):  # comma-separated patterns
            items = [Node(p.strip()) for p in listed.value.split(",") if p.strip()]
            settings[name.lower()] = _INSTANCE_FIELDS[name.lower()](env, Node(items), name)
    settings["ha"] = _ha(env, {})
    instance = InstanceConfig(id=ident, directory=directory, **settings)
    origin = Origin(Where(ENV_NAME, None, "INSTANCE_ID"), Where(ENV_NAME, None, "DATA_DIR"))
    return _finish(env, {}, [instance], [origin], source=ENV_SOURCE, ha_section=settings["ha"])


def _finish(
    src: Source,
    top: Mapping[str, Node],
    instances: list[InstanceConfig],
    origins: list[Origin],
    source: str,
    errors: ConfigErrors | None = None,
    check_directories: bool = True,
    ha_section: HaConfig = DEFAULT_HA,
) -> Roster:
    """The settings shared by both modes, then the checks that need the whole roster.

    Each section, and each instance's directory, is checked on its own: `errors` collects
    what fails, so one run of `check` reports every independent error."""
    errors = errors or ConfigErrors(src.name)
    parts: dict[str, Any] = {}
    sections: dict[str, Callable[[], Any]] = {
        "state_dir": lambda: _state_dir(src, top),
        "log_level": lambda: _log_level(src, top),
        "log_format": lambda: _log_format(src, top),
        "supervisor": lambda: _supervisor(src, top.get("supervisor")),
        "broker": lambda: load_broker(src, top.get("broker")),
        "http": lambda: _http(src, top),
    }
    for name, load in sections.items():
        with errors.collecting():
            parts[name] = load()
    for instance, origin in zip(instances, origins, strict=True):
        with errors.collecting():
            if check_directories:
                checks.check_directories((instance,), [origin])
    errors.raise_any()
    state_dir, state_where = parts.pop("state_dir")
    roster = Roster(state_dir=state_dir, instances=tuple(instances), source=source,
                    ha=ha_section, **parts)
    check_roster(roster, origins, state_where)  # needs the whole roster: overlaps, state_dir
    return roster


def _state_dir(src: Source, top: Mapping[str, Node]) -> tuple[str, Where]:
    node = top.get("state_dir")
    value = cs.optional_text(src, node, "state_dir") if node else None
    if node and value is not None:
        return cs.resolve_path(value, src.base_dir, src.environ), src.where(node, "state_dir")
    return default_state_dir(src.environ, src.name)


def _log_level(src: Source, top: Mapping[str, Node]) -> str:
    node = top.get("log_level")
    level = log_level(src, node, "log_level") if node else None
    if level is None and (from_env := env_node(src.environ, "LOG_LEVEL")):
        level = log_level(env_source(src.environ), from_env, "LOG_LEVEL")
    return level or "INFO"


def _log_format(src: Source, top: Mapping[str, Node]) -> str:
    """`log_format`, else $LOG_FORMAT, else auto."""
    node, key = top.get("log_format"), "log_format"
    if node is None and (node := env_node(src.environ, "LOG_FORMAT")):
        src, key = env_source(src.environ), "LOG_FORMAT"
    value = cs.optional_text(src, node, key) if node else None
    if node is None or value is None:
        return "auto"
    if value.strip().lower() not in LOG_FORMATS:
        raise src.where(node, key).error(
            f"unknown log format {cs.show(value)}; use one of {', '.join(LOG_FORMATS)}")
    return value.strip().lower()


def _http(src: Source, top: Mapping[str, Node]) -> HttpConfig:
    """The roster's `http` section; `$MULTIWATCH_HTTP_LISTEN` and
    `$MULTIWATCH_HTTP_ALLOWED_HOSTS` (comma-separated) stand in for keys it does not set."""
    values = _section(src, top.get("http"), "http", _HTTP_FIELDS)
    if "listen" not in values and (from_env := env_node(src.environ, HTTP_LISTEN_ENV)):
        # (or off)
        values["listen"] = listen_address(env_source(src.environ), from_env, HTTP_LISTEN_ENV)
    if "allowed_hosts" not in values and (
            listed := env_node(src.environ, HTTP_ALLOWED_HOSTS_ENV)):
        names = Node([Node(name.strip()) for name in listed.value.split(",") if name.strip()])
        values["allowed_hosts"] = allowed_hosts(env_source(src.environ), names,
                                                 HTTP_ALLOWED_HOSTS_ENV)
    return HttpConfig(**values)


def _ha(src: Source, top: Mapping[str, Node]) -> HaConfig:
    """The top-level `ha` section, else `$MULTIWATCH_HA` (1/on: enabled), else off."""
    node, key = top.get("ha"), "ha"
    if node is None and (node := env_node(src.environ, HA_ENV)):
        src, key = env_source(src.environ), HA_ENV
    return DEFAULT_HA if node is None else ha(src, node, key)


def _supervisor(src: Source, node: Node | None) -> SupervisorConfig:
    config = SupervisorConfig(**_section(src, node, "supervisor", _SUPERVISOR_FIELDS))
    if config.restart_backoff_max_seconds < config.restart_backoff_seconds:
        assert node is not None and isinstance(node.value, dict)  # defaults are consistent
        at = node.value.get("restart_backoff_max_seconds", node)
        raise src.where(at, "supervisor.restart_backoff_max_seconds").error(
            f"must be at least restart_backoff_seconds ({config.restart_backoff_seconds:g})"
        )
    return config
