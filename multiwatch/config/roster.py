"""The roster's frozen dataclasses, one declaration per key: what `load.py` builds and every
process reads.

Each key is one field written with `key(default, coercer, doc)` (see keys.py): the loader's
coercer tables and `check`'s effective output are derived from these fields, and a test keeps
the README's roster block listing every key with its default. Frozen dataclasses give
equality for free, so a reload can diff old against new; they are pickled into each watcher
child, which imports this module but never PyYAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multiwatch.config import activity, deletions, limits
from multiwatch.config import coercers as co
from multiwatch.config import source as cs
from multiwatch.config.activity import DEFAULT_UNUSUAL_ACTIVITY, UnusualActivityConfig
from multiwatch.config.broker import BrokerConfig
from multiwatch.config.deletions import DEFAULT_MAX_SCAN_DELETIONS, ScanDeletionBound
from multiwatch.config.ha import DEFAULT_HA, HaConfig, ha
from multiwatch.config.keys import described, key

DEFAULT_EXCLUDE: tuple[str, ...] = (".*", "*.part", "*.tmp", "*~")
DEFAULT_HTTP_LISTEN = "127.0.0.1:9120"


@dataclass(frozen=True)
class SupervisorConfig:
    """How the parent looks after its children (the roster's `supervisor` section)."""

    report_interval_seconds: float = key(
        30.0, co.positive, "how often the psutil resource line of each child is logged")
    stop_timeout_seconds: float = key(
        8.0, co.positive, "graceful stop deadline: SIGTERM, wait this long, then SIGKILL")
    restart_backoff_seconds: float = key(
        1.0, co.positive, "first restart delay after a crash, doubled per crash")
    restart_backoff_max_seconds: float = key(
        60.0, co.positive, "the longest restart delay")
    backoff_reset_seconds: float = key(
        60.0, co.positive, "a child up this long restarts from the first delay again")
    hang_timeout_seconds: float = key(
        60.0, co.positive, "no heartbeat from a child's work loop this long: SIGTERM, then SIGKILL")
    max_parallel_hashes: int = key(
        2, co.hash_slots, "big files read at once by all watchers of the state_dir together")


@dataclass(frozen=True)
class HttpConfig:
    """The operator endpoint: /healthz, /readyz, /status, /metrics and the / page."""

    listen: str | None = key(
        DEFAULT_HTTP_LISTEN, co.listen_address, '"host:port" ("[::1]:9120"); None: no server')
    # Besides the listen address, localhost and (on a wildcard listen) IP literals; any
    # other Host header is refused (DNS rebinding).
    allowed_hosts: tuple[str, ...] = key(
        (), co.allowed_hosts, "host names the endpoint also answers")


@dataclass(frozen=True)
class InstanceConfig:
    """One watched directory tree, served by one child process (an item of `instances`;
    the keys with a default may also be set in `defaults`)."""

    id: str = field(metadata=described(
        "unique; names the AMQP connection file_watcher_<id> and state files"))
    directory: str = field(metadata=described("the tree to watch: absolute, normalised"))
    include: tuple[str, ...] = key(
        ("*",), co.include, "glob patterns of the files to announce")
    exclude: tuple[str, ...] = key(
        DEFAULT_EXCLUDE, co.exclude, "glob patterns of files and directories to ignore")
    recursive: bool = key(
        True, cs.boolean, "watch the whole tree, not only the directory itself")
    settle_seconds: float = key(
        1.0, co.non_negative, "quiet period before a file counts as written")
    optional: bool = key(
        False, cs.boolean, "a missing directory is waited for instead of being an error")
    mount_required: bool = key(
        False, cs.boolean, "the directory must be a mount point to be watched")
    one_filesystem: bool = key(
        False, cs.boolean, "like find -xdev: directories on other mounts are skipped")
    follow_symlinks: bool = key(
        False, cs.boolean, "announce symlinked files whose target is inside the tree")
    close_grace_seconds: float = key(
        0.0, co.non_negative, "> 0: a close-after-write ends the quiet period after this grace")
    observer: str = key(
        "auto", co.observer_mode, "auto | inotify | polling (network mounts)")
    polling_interval_seconds: float = key(
        1.0, co.positive, "how often the polling observer looks")
    scan_interval_seconds: float = key(
        0.0, co.non_negative, "periodic reconcile scan of disk against state; 0: only at start")
    outbox_max_events: int = key(
        100_000, co.positive_whole, "full outbox: settled files wait, watching goes on")
    outbox_max_bytes: int = key(
        256 * 1024 * 1024, co.positive_whole, "the outbox bound in bytes")
    memory_limit: int = key(
        0, co.byte_size, "bytes of RSS; above it the child is restarted gracefully; 0: none")
    read_rate_limit: int = key(
        0, co.byte_rate, "bytes per second the watcher may read to hash; 0: no limit")
    nice: int | None = key(
        None, limits.nice, "the watcher's CPU priority, -20..19; None: inherited")
    ionice: str | None = key(
        None, limits.ionice, "its I/O class: idle, best-effort[:0-7], realtime[:0-7]")
    unusual_activity: UnusualActivityConfig | None = key(
        DEFAULT_UNUSUAL_ACTIVITY, activity.unusual_activity,
        "a burst of deletions, modifications and renames above this is reported; None: off")
    max_scan_deletions: ScanDeletionBound | None = key(
        DEFAULT_MAX_SCAN_DELETIONS, deletions.max_scan_deletions,
        "a scan finding more tracked files gone than this holds their deletions; None: off")
    ha: HaConfig = key(
        DEFAULT_HA, ha, "replicas: one announces (the lease holder), the others stand by")


@dataclass(frozen=True)
class Roster:
    """Everything one `multiwatch run` needs."""

    # The top-level keys fall back to environment variables, so load.py reads each itself.
    state_dir: str = field(metadata=described(
        "absolute; default $MULTIWATCH_STATE_DIR, else /var/lib/multiwatch (root) or "
        "$XDG_STATE_HOME/multiwatch"))
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    instances: tuple[InstanceConfig, ...] = ()
    log_level: str = field(default="INFO", metadata=described(
        "DEBUG, INFO, WARNING, ERROR or CRITICAL; default $LOG_LEVEL, else INFO"))
    source: str = "<environment>"  # the roster file, or "<environment>"
    http: HttpConfig = field(default_factory=HttpConfig)
    log_format: str = field(default="auto", metadata=described(
        "console, json or auto (console lines when stdout is a terminal); default $LOG_FORMAT"))
    # Every instance's default `ha` (the top-level section; default $MULTIWATCH_HA).
    ha: HaConfig = field(default=DEFAULT_HA, metadata=described(
        "replicas: the default of every instance's ha; default $MULTIWATCH_HA, else off"))


ENV_SOURCE = "<environment>"
