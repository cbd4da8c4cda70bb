"""The roster: typed, frozen configuration loaded from YAML or from the environment.

The modules of this package, each importing only modules listed above it (no cycles):
  urls.py         broker URLs: failover lists split, passwords masked
  source.py       Node, Where, Source, ConfigError and the generic typed coercers
  yaml_nodes.py   YAML text → Node tree with lines (PyYAML: imported only where a roster is read)
  errors.py       every independent error of one `check` at once
  environment.py  every environment variable multiwatch reads; the deployment guide's contract
  coercers.py     the roster's own value shapes (sizes, rates, listen addresses, ids...)
  keys.py         key(default, coercer, doc): how a key is declared; tables derived from it
  activity.py, deletions.py, limits.py, ha.py   the keys with a value of their own shape
  broker.py       the `broker` section, declared key by key
  roster.py       the frozen dataclasses, declared key by key (instances, supervisor, http)
  checks.py       checks that need the whole roster (directories, overlaps, state_dir)
  load.py         loading from YAML or the environment (`load_roster`)
  effective.py    what `multiwatch check` prints

Everything a caller needs is importable from `multiwatch.config` itself.
"""

from multiwatch.config.broker import (
    DEFAULT_BINDING_KEY,
    DEFAULT_EXCHANGE,
    DEFAULT_QUEUE,
    EMBEDDED_URL,
    BrokerConfig,
    TlsConfig,
)
from multiwatch.config.coercers import split_listen
from multiwatch.config.effective import render_effective
from multiwatch.config.environment import generated_instance_id
from multiwatch.config.load import (
    http_override,
    load_endpoint_config,
    load_http_config,
    load_roster,
)
from multiwatch.config.roster import (
    DEFAULT_EXCLUDE,
    DEFAULT_HTTP_LISTEN,
    ENV_SOURCE,
    HttpConfig,
    InstanceConfig,
    Roster,
    SupervisorConfig,
)
from multiwatch.config.source import ConfigError
from multiwatch.config.urls import mask_url

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
