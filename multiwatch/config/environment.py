"""The environment: every variable multiwatch reads (ENVIRONMENT_VARIABLES, the one
documented list) and the deployment guide's contract (RABBITMQ_*, DATA_DIR ids, state dir
defaults).

The guide's names (INSTANCE_ID, DATA_DIR, RABBITMQ_*, LOG_LEVEL) come from the original
one-container-per-directory `file_watcher` and must not change.
`tests/deploy/test_environment_contract.py` checks ENVIRONMENT_VARIABLES against the code that
reads the variables and against every deployment artifact (Dockerfile, docker-compose.yaml,
systemd/, config/kubernetes/, README.md), so a name cannot be documented without being read,
or read without being documented.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping
from urllib.parse import quote

from multiwatch.config import source as cs
from multiwatch.config.source import Node, Source, Where

ENV_NAME = "environment"  # how errors name values that came from environment variables


def env_source(environ: Mapping[str, str]) -> Source:
    """Values from variables: relative paths against the cwd, no `${VAR}` re-expansion."""
    return Source(ENV_NAME, os.getcwd(), environ, expand=False)


def env_node(environ: Mapping[str, str], name: str) -> Node | None:
    # Empty counts as unset: compose files and k8s manifests often pass `NAME=`.
    value = environ.get(name)
    return Node(value, None, value) if value else None


def password_file_node(environ: Mapping[str, str]) -> Node | None:
    """$RABBITMQ_PASS_FILE: the password's file (Docker's and Kubernetes' `_FILE` convention
    for secrets), or None. Set together with $RABBITMQ_PASS it is an error: which one counts
    would be a guess, and a stale RABBITMQ_PASS left in an environment is a leak to remove."""
    node = env_node(environ, "RABBITMQ_PASS_FILE")
    if node is not None and env_node(environ, "RABBITMQ_PASS") is not None:
        raise Where(ENV_NAME, None, "RABBITMQ_PASS_FILE").error(
            "RABBITMQ_PASS is set too; set only one of them (RABBITMQ_PASS_FILE keeps the "
            "password out of the environment)"
        )
    return node


def broker_url_from_env(environ: Mapping[str, str]) -> str | None:
    """RABBITMQ_* as one amqp:// URL; None (embedded broker) without RABBITMQ_HOST."""
    host = environ.get("RABBITMQ_HOST", "").strip()
    if not host:
        return None
    port = (environ.get("RABBITMQ_PORT") or "5672").strip()
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise Where(ENV_NAME, None, "RABBITMQ_PORT").error(
            f"expected a port number from 1 to 65535, got {cs.show(port)}"
        )
    # quote(safe="") so the default vhost "/" becomes %2F and odd passwords survive.
    user, password, vhost = (
        quote(environ.get(name) or default, safe="")
        for name, default in (
            ("RABBITMQ_USER", "guest"),
            ("RABBITMQ_PASS", "guest"),
            ("RABBITMQ_VHOST", "/"),
        )
    )
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address
    return f"amqp://{user}:{password}@{host}:{int(port)}/{vhost}"


def default_state_dir(environ: Mapping[str, str], roster_name: str) -> tuple[str, Where]:
    """The state dir when the roster names none, and what an error about it should blame."""
    if node := env_node(environ, "MULTIWATCH_STATE_DIR"):
        where = Where(ENV_NAME, None, "MULTIWATCH_STATE_DIR")
        return cs.path(env_source(environ), node, where.key), where
    where = Where(roster_name, None, "state_dir")
    if _euid() == 0:
        return "/var/lib/multiwatch", where
    xdg = environ.get("XDG_STATE_HOME", "")
    # The XDG spec says to ignore relative values.
    base = xdg if os.path.isabs(xdg) else cs.resolve_path("~/.local/state", "/", environ)
    return os.path.join(os.path.abspath(base), "multiwatch"), where


def _euid() -> int:
    geteuid = getattr(os, "geteuid", None)  # absent on Windows
    return geteuid() if geteuid else -1


def generated_instance_id(directory: str, hostname: str | None = None) -> str:
    """The id used when INSTANCE_ID is unset: readable, and stable per host + directory.

    Stable so a restarted container keeps its state files and connection name; the hash
    keeps `/a/data` and `/b/data` apart.
    """
    host = socket.gethostname() if hostname is None else hostname
    absolute = os.path.abspath(directory)
    digest = hashlib.sha256(f"{host}:{absolute}".encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", os.path.basename(absolute).lower()).strip("-")
    return f"watcher-{slug[:40].strip('-') or 'root'}-{digest}"


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
    "MULTIWATCH_HA": "1 (or on): replicas of each instance take turns, one announcing, the "
    "others on standby (the roster's top-level ha section when it sets none)",
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
    # Set by supervisord for the programs it runs (never by the operator): a supervisor under
    # supervisord records its program, so `multiwatch stop` names the supervisorctl command.
    "SUPERVISOR_ENABLED": "set by supervisord: this process is one of its programs",
    "SUPERVISOR_PROCESS_NAME": "set by supervisord: the program's name",
    "SUPERVISOR_SERVER_URL": "set by supervisord: the URL supervisorctl reaches it by",
}
