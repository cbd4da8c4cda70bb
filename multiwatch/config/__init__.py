"""The roster: typed, frozen configuration loaded from YAML or from the environment.

The modules of this package, each importing only the ones listed before it:
  source.py       Node, Where, Source, ConfigError and the typed coercers (`file:line: key: why`)
  yaml_nodes.py   YAML text → Node tree with lines (imports PyYAML: only where a roster is read)
  errors.py       every independent error of one `check` at once
  environment.py  every environment variable multiwatch reads; the deployment guide's contract
  activity.py, deletions.py, limits.py   the keys with a value of their own shape
  broker.py       the `broker` section
  roster.py       the frozen dataclasses and loading
  checks.py       checks that need the whole roster (directories, overlaps, state_dir)

Everything a caller needs is importable from `multiwatch.config` itself.
"""

from multiwatch.config.roster import (
    DEFAULT_BINDING_KEY,
    DEFAULT_EXCHANGE,
    DEFAULT_EXCLUDE,
    DEFAULT_HTTP_LISTEN,
    DEFAULT_QUEUE,
    EMBEDDED_URL,
    ENV_SOURCE,
    BrokerConfig,
    ConfigError,
    HttpConfig,
    InstanceConfig,
    Roster,
    SupervisorConfig,
    TlsConfig,
    generated_instance_id,
    http_override,
    load_endpoint_config,
    load_http_config,
    load_roster,
    mask_url,
    render_effective,
    split_listen,
)

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
