"""The roster's `broker` section: URLs (one or a failover list), queue type, password file, TLS.

Everything here is checked when the roster is loaded, so `multiwatch check` and the start of
`multiwatch run` report an unreadable password file or a missing certificate as one
paragraph. The password file itself is read again at every connect (`multiwatch.broker`), so a
rotated secret needs no restart.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from multiwatch.config import keys
from multiwatch.config import source as cs
from multiwatch.config.coercers import Coerce
from multiwatch.config.environment import (
    ENV_NAME,
    broker_url_from_env,
    env_source,
    password_file_node,
)
from multiwatch.config.keys import key
from multiwatch.config.source import Node, Source, Where
from multiwatch.config.urls import mask_url, split_urls

DEFAULT_EXCHANGE = "file_events"
DEFAULT_QUEUE = "file_events"
DEFAULT_BINDING_KEY = "file.#"
EMBEDDED_URL = "embedded"
PASSWORD_FILE_ENV = "RABBITMQ_PASS_FILE"
QUEUE_TYPES = ("classic", "quorum")
_SCHEMES = ("amqp", "amqps", "pyamqp", "filesystem")
_TLS_SCHEMES = ("amqps",)


# ---------------------------------------------------------------- coercers

def _url(src: Source, node: Node, key: str) -> str | None:
    """One URL, several joined by `;`, or a YAML list of URLs; `embedded`; None."""
    if isinstance(node.value, list):
        if not node.value:
            raise src.where(node, key).error("the list of broker URLs is empty")
        parts = [cs.text(src, item, f"{key}[{i}]").strip() for i, item in enumerate(node.value)]
        url: str | None = ";".join(parts)
    else:
        url = cs.optional_text(src, node, key)
    if url is None or url.strip().lower() == EMBEDDED_URL:
        return None if url is None else EMBEDDED_URL
    for part in split_urls(url):
        scheme, sep, _ = part.partition("://")
        if not sep:
            raise src.where(node, key).error(
                f'expected a URL like amqp://user:password@host:5672/%2F or "embedded", '
                f"got {cs.show(mask_url(url))}"
            )
        if scheme.lower() not in _SCHEMES:
            raise src.where(node, key).error(
                f"unsupported URL scheme {cs.show(scheme)}; use one of "
                f'{", ".join(_SCHEMES)}, or "embedded"'
            )
    return url


def _queue(src: Source, node: Node, key: str) -> str | None:
    value = cs.scalar(src, node, key)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None  # declare no queue: the user binds their own
    return cs.text(src, node, key)


def _queue_type(src: Source, node: Node, key: str) -> str:
    return cs.choice(src, node, key, QUEUE_TYPES, what="queue type", hint=(
        "use classic, or quorum for a queue replicated across the nodes of a RabbitMQ cluster"))


def _optional_path(src: Source, node: Node, key: str) -> str | None:
    value = cs.optional_text(src, node, key)
    return None if value is None else cs.resolve_path(value, src.base_dir, src.environ)


def _optional_name(src: Source, node: Node, key: str) -> str | None:
    value = cs.optional_text(src, node, key)
    return None if value is None else value.strip()


def _number(*, positive: bool, integer: bool = False) -> Coerce:
    def coerce(src: Source, node: Node, key: str) -> float | int:
        return cs.number(src, node, key, positive=positive, integer=integer)

    return coerce


def _tls_node(src: Source, node: Node, key: str) -> Node:
    """`broker.tls` as written: a mapping, read by _tls() once the URLs are known."""
    return node


# ---------------------------------------------------------------- the settings


@dataclass(frozen=True)
class TlsConfig:
    """Client-side TLS for `amqps://` URLs (py-amqp's `ssl=` options): `broker.tls`."""

    ca_file: str | None = key(None, _optional_path, "CA bundle; None: the system's trusted CAs")
    cert_file: str | None = key(
        None, _optional_path, "client certificate (may also hold the key)")
    key_file: str | None = key(None, _optional_path, "the client certificate's key")
    verify: bool = key(True, cs.boolean, "check the broker's certificate chain and host name")
    server_hostname: str | None = key(
        None, _optional_name, "name to check and send (SNI); None: the URL's host")


@dataclass(frozen=True)
class BrokerConfig:
    """Where events go. `url is None` means the embedded filesystem spool under state_dir.

    `url` holds one URL or several joined by `;` (a cluster, tried in turn).
    """

    url: str | None = key(None, _url, "broker URL(s) in failover order; None: embedded spool")
    exchange: str = key(DEFAULT_EXCHANGE, cs.text, "durable topic exchange events go to")
    queue: str | None = key(
        DEFAULT_QUEUE, _queue, "durable queue bound with binding_key; None: declare none")
    binding_key: str = key(DEFAULT_BINDING_KEY, cs.text, "routing key pattern of the queue")
    heartbeat_seconds: int = key(
        60, _number(positive=False, integer=True), "AMQP heartbeat; 0 disables it")
    connect_timeout_seconds: float = key(
        10.0, _number(positive=True), "bound of one connection attempt")
    confirm_timeout_seconds: float = key(
        10.0, _number(positive=True), "bound of every publisher confirm")
    reconnect_max_seconds: float = key(
        30.0, _number(positive=True), "cap of the exponential reconnect backoff")
    queue_type: str = key(
        "classic", _queue_type, "classic | quorum (replicated across a cluster's nodes)")
    password_file: str | None = key(
        None, _optional_path, "replaces any password in the URL(s); re-read per connect")
    tls: TlsConfig | None = key(None, _tls_node, "client TLS for amqps:// URLs; None: none")

    @property
    def embedded(self) -> bool:
        return self.url is None

    @property
    def urls(self) -> tuple[str, ...]:
        """Each broker URL, in failover order (empty for the embedded spool)."""
        return () if self.url is None else tuple(split_urls(self.url))


# ---------------------------------------------------------------- password files


PASSWORD_FILE_MAX_BYTES = 64 * 1024


def read_password_file(path: str) -> str:
    """The password in `path`: its text without the trailing newline. OSError if unreadable.

    Only a regular file is read (a FIFO would block, /dev/zero never end), and only its
    first 64 KiB."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        data = os.read(fd, PASSWORD_FILE_MAX_BYTES)
    finally:
        os.close(fd)
    return data.decode("utf-8").rstrip("\r\n")


_TLS_FIELDS = keys.coercers(TlsConfig)
BROKER_FIELDS = keys.coercers(BrokerConfig)


# ---------------------------------------------------------------- the section


def load_broker(src: Source, node: Node | None) -> BrokerConfig:
    """The `broker` section (or the RABBITMQ_* variables), checked."""
    entries = {} if node is None else cs.mapping(src, node, "broker", BROKER_FIELDS)
    values = {
        name: BROKER_FIELDS[name](src, child, f"broker.{name}") for name, child in entries.items()
    }
    url = values.pop("url", None)
    if url is None:
        url = broker_url_from_env(src.environ)
    elif url == EMBEDDED_URL:
        url = None
    tls_node = values.pop("tls", None)
    tls = _tls(src, tls_node) if tls_node is not None else None
    # The roster's password_file, else $RABBITMQ_PASS_FILE (empty counts as unset in both).
    password_file, password_where = values.pop("password_file", None), None
    if password_file is not None:
        password_where = src.where(entries["password_file"], "broker.password_file")
    elif env := password_file_node(src.environ):
        password_where = Where(ENV_NAME, None, PASSWORD_FILE_ENV)
        password_file = cs.path(env_source(src.environ), env, PASSWORD_FILE_ENV)
    if url is None:  # the embedded spool has no password and no TLS
        return BrokerConfig(url=None, **values)
    broker = BrokerConfig(url=url, password_file=password_file, tls=tls, **values)
    if password_file is not None and password_where is not None:
        _check_password_file(password_file, password_where)
    if tls is not None and tls_node is not None:
        _check_tls(src, tls_node, tls, broker)
    return broker


def _tls(src: Source, node: Node) -> TlsConfig | None:
    if node.value is None:  # `tls:` with nothing under it: the defaults
        return TlsConfig()
    entries = cs.mapping(src, node, "broker.tls", _TLS_FIELDS)
    return TlsConfig(**{
        name: _TLS_FIELDS[name](src, child, f"broker.tls.{name}")
        for name, child in entries.items()
    })


def _check_password_file(path: str, where: Where) -> None:
    try:
        password = read_password_file(path)
    except IsADirectoryError:
        raise where.error(f"{cs.show(path)} is a directory, not a password file") from None
    except OSError as exc:
        raise where.error(
            f"cannot read the broker password file {cs.show(path)}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise where.error(f"the broker password file {cs.show(path)} is not UTF-8 text") from None
    if not password:
        raise where.error(f"the broker password file {cs.show(path)} is empty")


def _check_tls(src: Source, node: Node, tls: TlsConfig, broker: BrokerConfig) -> None:
    entries: Mapping[str, Node] = node.value if isinstance(node.value, dict) else {}
    plain = [u for u in broker.urls if u.partition("://")[0].lower() not in _TLS_SCHEMES]
    if plain:
        raise src.where(node, "broker.tls").error(
            f"TLS settings need amqps:// URLs, but {cs.show(mask_url(plain[0]))} is plain "
            "AMQP; write amqps://host:5671/... (or drop broker.tls)"
        )
    if tls.key_file and not tls.cert_file:
        raise src.where(entries["key_file"], "broker.tls.key_file").error(
            "a client key needs its certificate: set cert_file too"
        )
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is None:
            continue
        where = src.where(entries[name], f"broker.tls.{name}")
        if not os.path.isfile(path):
            problem = "is a directory" if os.path.isdir(path) else "does not exist"
            raise where.error(f"{cs.show(path)} {problem}")
        if not os.access(path, os.R_OK):
            raise where.error(f"{cs.show(path)} is not readable by this user")

