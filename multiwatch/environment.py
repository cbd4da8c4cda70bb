"""Every environment variable multiwatch reads: the one documented list.

The deployment guide's names (INSTANCE_ID, DATA_DIR, RABBITMQ_*, LOG_LEVEL) are a contract
kept from the one-container-per-directory `file_watcher`.
`tests/deploy/test_environment_contract.py` checks this list against the code that reads the
variables and against every deployment artifact (Dockerfile, docker-compose.yaml, systemd/,
config/kubernetes/, README.md), so a name cannot be documented without being read, or read
without being documented.
"""

from __future__ import annotations

__all__ = ["ENVIRONMENT_VARIABLES"]

ENVIRONMENT_VARIABLES: dict[str, str] = {
    # Where the configuration and state live.
    "MULTIWATCH_CONFIG": "roster file used when -c/--config is not given; unset too: "
    "environment mode (one instance from DATA_DIR)",
    "MULTIWATCH_STATE_DIR": "state directory when the roster sets no state_dir "
    "(default /var/lib/multiwatch as root, else $XDG_STATE_HOME/multiwatch)",
    "MULTIWATCH_HTTP_LISTEN": "http.listen when the roster sets none, e.g. 0.0.0.0:9120; "
    "off disables the endpoint",
    "MULTIWATCH_HTTP_ALLOWED_HOSTS": "http.allowed_hosts when the roster sets none: "
    "comma-separated host names the endpoint also answers (e.g. a compose service name)",
    # The deployment guide's one instance per process.
    "INSTANCE_ID": "instance id in environment mode; unset: derived from host and DATA_DIR",
    "DATA_DIR": "directory to watch in environment mode (required there)",
    "SETTLE_SECONDS": "environment mode: quiet period before a file counts as written",
    "INCLUDE": "environment mode: comma-separated glob patterns of files to announce",
    "EXCLUDE": "environment mode: comma-separated glob patterns of files to ignore",
    "LOG_LEVEL": "DEBUG, INFO, WARNING, ERROR or CRITICAL when the roster sets no log_level",
    "LOG_FORMAT": "console, json or auto (console when stdout is a terminal) when the roster "
    "sets no log_format",
    # The broker, when the roster sets no broker.url.
    "RABBITMQ_HOST": "RabbitMQ host; unset: events go to the embedded spool under state_dir",
    "RABBITMQ_PORT": "RabbitMQ AMQP port (default 5672)",
    "RABBITMQ_USER": "RabbitMQ user name (default guest)",
    "RABBITMQ_PASS": "RabbitMQ password (default guest)",
    "RABBITMQ_PASS_FILE": "file holding the RabbitMQ password (a Docker or Kubernetes secret); "
    "re-read at every reconnect",
    "RABBITMQ_VHOST": "RabbitMQ virtual host (default /)",
    # Defaults for paths.
    "HOME": "expands ~ in roster paths",
    "XDG_STATE_HOME": "base of the default state directory for a non-root user "
    "(default ~/.local/state)",
}
