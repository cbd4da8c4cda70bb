"""The roster: typed, frozen configuration loaded from YAML or from the environment.

Frozen dataclasses give equality for free, so a reload can diff old against new.
`load_roster` is the only entry point; every user mistake becomes a `ConfigError`
whose message names the file, the line, the key and why.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from multiwatch.config import source as cs
from multiwatch.config.activity import (
    DEFAULT_UNUSUAL_ACTIVITY,
    UnusualActivityConfig,
    unusual_activity,
)
from multiwatch.config.broker import (
    DEFAULT_BINDING_KEY,
    DEFAULT_EXCHANGE,
    DEFAULT_QUEUE,
    EMBEDDED_URL,
    BrokerConfig,
    TlsConfig,
    load_broker,
    mask_url,
)
from multiwatch.config.checks import Origin, _check_directories, check_roster
from multiwatch.config.deletions import (
    DEFAULT_MAX_SCAN_DELETIONS,
    ScanDeletionBound,
    max_scan_deletions,
)
from multiwatch.config.environment import (
    ENV_NAME,
    default_state_dir,
    env_node,
    env_source,
    generated_instance_id,
)
from multiwatch.config.errors import ConfigErrors
from multiwatch.config.limits import ionice, nice
from multiwatch.config.source import ConfigError, Node, Source, Where
from multiwatch.logs import LOG_FORMATS

__all__ = [
    "DEFAULT_BINDING_KEY",
    "DEFAULT_EXCHANGE",
    "DEFAULT_EXCLUDE",
    "DEFAULT_HTTP_LISTEN",
    "DEFAULT_QUEUE",
    "EMBEDDED_URL",
    "ENV_SOURCE",
    "BrokerConfig",
    "ConfigError",
    "HttpConfig",
    "InstanceConfig",
    "Roster",
    "SupervisorConfig",
    "TlsConfig",
    "generated_instance_id",
    "http_override",
    "load_endpoint_config",
    "load_http_config",
    "load_roster",
    "mask_url",
    "render_effective",
    "split_listen",
]

DEFAULT_EXCLUDE: tuple[str, ...] = (".*", "*.part", "*.tmp", "*~")
DEFAULT_HTTP_LISTEN = "127.0.0.1:9120"
HTTP_LISTEN_ENV = "MULTIWATCH_HTTP_LISTEN"
HTTP_ALLOWED_HOSTS_ENV = "MULTIWATCH_HTTP_ALLOWED_HOSTS"


@dataclass(frozen=True)
class SupervisorConfig:
    """How the parent looks after its children."""

    report_interval_seconds: float = 30.0  # psutil resource log line per child
    stop_timeout_seconds: float = 8.0  # SIGTERM → wait → SIGKILL
    restart_backoff_seconds: float = 1.0  # first restart delay, doubled per crash
    restart_backoff_max_seconds: float = 60.0
    backoff_reset_seconds: float = 60.0  # up this long → next crash starts from the first delay
    hang_timeout_seconds: float = 60.0  # no heartbeat this long → SIGTERM, then SIGKILL
    max_parallel_hashes: int = 2  # big files read at once, all watchers of the state_dir together


@dataclass(frozen=True)
class HttpConfig:
    """The operator endpoint: /healthz, /readyz, /status, /metrics and the / page."""

    listen: str | None = DEFAULT_HTTP_LISTEN  # "host:port" ("[::1]:9120"); None: no server
    # Host names answered besides the listen address, localhost and (on a wildcard listen)
    # IP literals; any other Host header is refused (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstanceConfig:
    """One watched directory tree, served by one child process."""

    id: str
    directory: str  # absolute, normalised
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    recursive: bool = True
    settle_seconds: float = 1.0
    optional: bool = False  # a missing directory is waited for instead of being an error
    mount_required: bool = False  # the directory must be a mount point to be watched
    one_filesystem: bool = False  # like find -xdev: directories on other mounts are skipped
    follow_symlinks: bool = False  # announce symlinked files whose target is inside the tree
    close_grace_seconds: float = 0.0  # > 0: a close-after-write ends the quiet period early
    observer: str = "auto"  # auto | inotify | polling (network mounts)
    polling_interval_seconds: float = 1.0
    scan_interval_seconds: float = 0.0  # periodic reconcile scan; 0 = only at start
    outbox_max_events: int = 100_000  # full outbox: stop taking settled work, keep watching
    outbox_max_bytes: int = 256 * 1024 * 1024
    memory_limit: int = 0  # bytes of RSS; above it the child is restarted gracefully; 0 = none
    read_rate_limit: int = 0  # bytes per second the watcher may read to hash; 0 = no limit
    nice: int | None = None  # the watcher's CPU priority, -20..19; None: inherited
    ionice: str | None = None  # its I/O class: idle, best-effort[:0-7], realtime[:0-7]
    # A burst of deletions, modifications and renames above this is reported (None: off).
    unusual_activity: UnusualActivityConfig | None = DEFAULT_UNUSUAL_ACTIVITY
    # A scan finding more tracked files gone than this holds their deletions (None: off).
    max_scan_deletions: ScanDeletionBound | None = DEFAULT_MAX_SCAN_DELETIONS


@dataclass(frozen=True)
class Roster:
    """Everything one `multiwatch run` needs."""

    state_dir: str  # absolute
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    instances: tuple[InstanceConfig, ...] = ()
    log_level: str = "INFO"
    source: str = "<environment>"  # the roster file, or "<environment>"
    http: HttpConfig = field(default_factory=HttpConfig)
    log_format: str = "auto"  # console | json | auto (console lines when stdout is a terminal)


ENV_SOURCE = "<environment>"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The id becomes part of the AMQP connection name `file_watcher_{id}` and of file names.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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
    root = cs.parse_yaml(_read_roster(path, file), path)
    top: dict[str, Node] = {}
    if root is not None and isinstance(root.value, dict):
        top = root.value
    src = Source(path, os.path.dirname(file), environ, expand=True)
    return _http(src, top), _state_dir(src, top)[0]


def http_override(listen: str, option: str = "--http-listen") -> HttpConfig:
    """An `http` section from a command-line value (`host:port` or `off`), checked."""
    src = Source("command line", os.getcwd(), {}, expand=False)
    return HttpConfig(listen=_listen(src, Node(listen, None, listen), option))


def split_listen(listen: str) -> tuple[str, int]:
    """`"host:port"` or `"[v6]:port"` as (host, port); ValueError says what is wrong."""
    host, sep, port = listen.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError("empty IPv6 address in brackets")
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, like [::1]:9120")
    if not sep or not port:
        raise ValueError("expected host:port, like 127.0.0.1:9120")
    if not host:
        raise ValueError("the host is missing; write 0.0.0.0:PORT to listen on every interface")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535, got {cs.show(port)}")
    if any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"{cs.show(host)} is not a host name or address")
    return host, int(port)


def render_effective(roster: Roster) -> str:
    """The effective configuration as YAML, passwords masked (what `multiwatch check` prints)."""
    broker: dict[str, Any] = dataclasses.asdict(roster.broker)
    spool = os.path.join(roster.state_dir, "spool")
    url = roster.broker.url
    if url is None:
        broker["url"] = f"embedded (spool: {spool})"
    else:  # several URLs as a list, like a failover list is written in the roster
        masked = [mask_url(part) for part in roster.broker.urls]
        broker["url"] = masked[0] if len(masked) == 1 else masked
    doc = {
        "source": roster.source,
        "state_dir": roster.state_dir,
        "log_level": roster.log_level,
        "log_format": roster.log_format,
        "broker": broker,
        "supervisor": dataclasses.asdict(roster.supervisor),
        "http": {"listen": roster.http.listen or "off",
                 **({"allowed_hosts": list(roster.http.allowed_hosts)}
                    if roster.http.allowed_hosts else {})},
        # SafeDumper cannot represent tuples.
        "instances": [
            {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(i).items()}
            for i in roster.instances
        ],
    }
    import yaml  # only `multiwatch check` writes YAML

    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)


# ---------------------------------------------------------------- field coercers

_Coerce = Callable[[Source, Node, str], Any]


def _positive(src: Source, node: Node, key: str) -> float:
    return cs.number(src, node, key, positive=True)


def _non_negative(src: Source, node: Node, key: str) -> float:
    return cs.number(src, node, key, positive=False)


def _whole(src: Source, node: Node, key: str) -> int:
    return int(cs.number(src, node, key, positive=False, integer=True))


def _positive_whole(src: Source, node: Node, key: str) -> int:
    return int(cs.number(src, node, key, positive=True, integer=True))


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?", re.IGNORECASE)


def _byte_size(src: Source, node: Node, key: str) -> int:
    """Bytes as a whole number, or with a unit: 512MiB, 1.5G, 800M (K/M/G/T; i = binary)."""
    value = cs.scalar(src, node, key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_RE.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if match is None:
        raise src.where(node, key).error(
            f"expected a size such as 536870912, 512MiB or 1G, got {cs.show(value)}")
    number, unit, binary = match.groups()
    base = 1024 if binary or not unit else 1000
    return int(float(number) * base ** " kmgt".index(unit.lower() or " "))



def _byte_rate(src: Source, node: Node, key: str) -> int:
    """Bytes per second, written like a size (50MiB, 1G), optionally ending in /s."""
    if isinstance(node.value, str) and node.value.strip().lower().endswith("/s"):
        node = dataclasses.replace(node, value=node.value.strip()[:-2])
    return _byte_size(src, node, key)


OBSERVER_MODES = ("auto", "inotify", "polling")


def _observer_mode(src: Source, node: Node, key: str) -> str:
    return cs.choice(src, node, key, OBSERVER_MODES, what="observer", hint=(
        f"use one of {', '.join(OBSERVER_MODES)} (polling for NFS/SMB/FUSE mounts where "
        "inotify misses remote writes)"))


def _include(src: Source, node: Node, key: str) -> tuple[str, ...]:
    return cs.patterns(src, node, key, allow_empty=False)


def _exclude(src: Source, node: Node, key: str) -> tuple[str, ...]:
    return cs.patterns(src, node, key, allow_empty=True)


def _level(src: Source, node: Node, key: str) -> str | None:
    level = cs.optional_text(src, node, key)
    if level is not None and level.strip().upper() not in _LEVELS:
        raise src.where(node, key).error(
            f"unknown log level {cs.show(level)}; use one of {', '.join(_LEVELS)}"
        )
    return None if level is None else level.strip().upper()


def _instance_id(src: Source, node: Node, key: str) -> str:
    ident = cs.text(src, node, key, allow_empty=True)
    if not _ID_RE.fullmatch(ident):
        raise src.where(node, key).error(
            f"invalid instance id {cs.show(ident)}: use 1 to 100 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit (it names the AMQP connection "
            "file_watcher_<id> and the state files)"
        )
    return ident


def _listen(src: Source, node: Node, key: str) -> str | None:
    value = cs.scalar(src, node, key)
    # YAML reads a bare `off` or `no` as false.
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in _LISTEN_OFF:
        return None
    listen = cs.text(src, node, key).strip()
    try:
        _, port = split_listen(listen)
    except ValueError as exc:
        raise src.where(node, key).error(f"{cs.show(listen)}: {exc}") from None
    if port == 0:
        raise src.where(node, key).error(
            f"{cs.show(listen)}: the port must be a number from 1 to 65535 "
            "(multiwatch status and health must know where to connect)"
        )
    return listen


_LISTEN_OFF = ("", "off", "none", "null", "false", "no", "disabled")
_TOP_KEYS = (
    "state_dir", "log_level", "log_format", "broker", "supervisor", "http", "defaults",
    "instances",
)
_HOST_NAME_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,252}[a-z0-9_])?")


def _allowed_hosts(src: Source, node: Node, key: str) -> tuple[str, ...]:
    """Host names (a list, or one name), compared case-insensitively, without a port."""
    names = []
    for name in cs.patterns(src, node, key, allow_empty=True):
        clean = name.strip().lower().rstrip(".")
        if not _HOST_NAME_RE.fullmatch(clean):
            raise src.where(node, key).error(
                f"{cs.show(name)} is not a host name; write names like monitor.example.com, "
                "without scheme or port")
        names.append(clean)
    return tuple(names)


_HTTP_FIELDS: dict[str, _Coerce] = {"listen": _listen, "allowed_hosts": _allowed_hosts}
MAX_PARALLEL_HASHES_LIMIT = 1024


def _hash_slots(src: Source, node: Node, key: str) -> int:
    count = _positive_whole(src, node, key)
    if count > MAX_PARALLEL_HASHES_LIMIT:
        raise src.where(node, key).error(
            f"must be at most {MAX_PARALLEL_HASHES_LIMIT}, got {count} (it counts big files "
            "read at the same time by all watchers; a few per disk is plenty)")
    return count


_SUPERVISOR_FIELDS: dict[str, _Coerce] = {
    **{f.name: _positive for f in dataclasses.fields(SupervisorConfig)},
    "max_parallel_hashes": _hash_slots,
}
_INSTANCE_FIELDS: dict[str, _Coerce] = {
    "include": _include,
    "exclude": _exclude,
    "recursive": cs.boolean,
    "settle_seconds": _non_negative,
    "optional": cs.boolean,
    "mount_required": cs.boolean,
    "one_filesystem": cs.boolean,
    "follow_symlinks": cs.boolean,
    "close_grace_seconds": _non_negative,
    "observer": _observer_mode,
    "polling_interval_seconds": _positive,
    "scan_interval_seconds": _non_negative,
    "outbox_max_events": _positive_whole,
    "outbox_max_bytes": _positive_whole,
    "memory_limit": _byte_size,
    "read_rate_limit": _byte_rate,
    "nice": nice,
    "ionice": ionice,
    "unusual_activity": unusual_activity,
    "max_scan_deletions": max_scan_deletions,
}
_INSTANCE_KEYS = ("id", "directory", *_INSTANCE_FIELDS)


def _coerce(
    src: Source, entries: Mapping[str, Node], prefix: str, fields: Mapping[str, _Coerce]
) -> dict[str, Any]:
    """The entries that `fields` knows, typed; the caller has already rejected unknown keys."""
    return {
        name: fields[name](src, node, cs.join(prefix, name))
        for name, node in entries.items()
        if name in fields
    }


def _section(
    src: Source, node: Node | None, key: str, fields: Mapping[str, _Coerce]
) -> dict[str, Any]:
    return {} if node is None else _coerce(src, cs.mapping(src, node, key, fields), key, fields)


# ---------------------------------------------------------------- loading


def _load_file(given: str, environ: Mapping[str, str]) -> Roster:
    file = cs.resolve_path(given, os.getcwd(), environ)
    root = cs.parse_yaml(_read_roster(given, file), given)
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
    top = cs.mapping(src, root, "", _TOP_KEYS)
    errors = ConfigErrors(given)  # each section and instance on its own: all errors at once
    defaults: dict[str, Any] | None = None
    with errors.collecting():
        defaults = _section(src, top.get("defaults"), "defaults", _INSTANCE_FIELDS)
    instances, origins = _yaml_instances(src, top.get("instances"), defaults or {}, errors)
    # Without its defaults (optional: true...), an instance's directory check would mislead.
    return _finish(src, top, instances, origins, source=file, errors=errors,
                   check_directories=defaults is not None)


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
    ident = _instance_id(src, fields["id"], origin.id.key)
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
        _instance_id(env, id_node, "INSTANCE_ID") if id_node else generated_instance_id(directory)
    )
    settings: dict[str, Any] = {}
    if settle := env_node(environ, "SETTLE_SECONDS"):
        settings["settle_seconds"] = _non_negative(env, settle, "SETTLE_SECONDS")
    for name in ("INCLUDE", "EXCLUDE"):
        if listed := env_node(environ, name):  # comma-separated patterns
            items = [Node(p.strip()) for p in listed.value.split(",") if p.strip()]
            settings[name.lower()] = _INSTANCE_FIELDS[name.lower()](env, Node(items), name)
    instance = InstanceConfig(id=ident, directory=directory, **settings)
    origin = Origin(Where(ENV_NAME, None, "INSTANCE_ID"), Where(ENV_NAME, None, "DATA_DIR"))
    return _finish(env, {}, [instance], [origin], source=ENV_SOURCE)


def _finish(
    src: Source,
    top: Mapping[str, Node],
    instances: list[InstanceConfig],
    origins: list[Origin],
    source: str,
    errors: ConfigErrors | None = None,
    check_directories: bool = True,
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
                _check_directories((instance,), [origin])
    errors.raise_any()
    state_dir, state_where = parts.pop("state_dir")
    roster = Roster(state_dir=state_dir, instances=tuple(instances), source=source, **parts)
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
    level = _level(src, node, "log_level") if node else None
    if level is None and (from_env := env_node(src.environ, "LOG_LEVEL")):
        level = _level(env_source(src.environ), from_env, "LOG_LEVEL")
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
        values["listen"] = _listen(env_source(src.environ), from_env, HTTP_LISTEN_ENV)  # or off
    if "allowed_hosts" not in values and (
            listed := env_node(src.environ, HTTP_ALLOWED_HOSTS_ENV)):
        names = Node([Node(name.strip()) for name in listed.value.split(",") if name.strip()])
        values["allowed_hosts"] = _allowed_hosts(env_source(src.environ), names,
                                                 HTTP_ALLOWED_HOSTS_ENV)
    return HttpConfig(**values)


def _supervisor(src: Source, node: Node | None) -> SupervisorConfig:
    config = SupervisorConfig(**_section(src, node, "supervisor", _SUPERVISOR_FIELDS))
    if config.restart_backoff_max_seconds < config.restart_backoff_seconds:
        assert node is not None and isinstance(node.value, dict)  # defaults are consistent
        at = node.value.get("restart_backoff_max_seconds", node)
        raise src.where(at, "supervisor.restart_backoff_max_seconds").error(
            f"must be at least restart_backoff_seconds ({config.restart_backoff_seconds:g})"
        )
    return config
