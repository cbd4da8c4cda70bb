"""The roster's frozen dataclasses: what `load.py` builds and every process reads.

Frozen dataclasses give equality for free, so a reload can diff old against new; they are
pickled into each watcher child, which imports this module but never PyYAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multiwatch.config.activity import DEFAULT_UNUSUAL_ACTIVITY, UnusualActivityConfig
from multiwatch.config.broker import BrokerConfig
from multiwatch.config.deletions import DEFAULT_MAX_SCAN_DELETIONS, ScanDeletionBound

DEFAULT_EXCLUDE: tuple[str, ...] = (".*", "*.part", "*.tmp", "*~")
DEFAULT_HTTP_LISTEN = "127.0.0.1:9120"


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
