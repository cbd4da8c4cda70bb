"""The supervisor's read-only HTTP endpoint: probes, status, Prometheus metrics, a web page.

| path       | answers                                                                   |
| ---------- | ------------------------------------------------------------------------- |
| `/healthz` | 200 while the supervisor loop turns (last turn < 10 s ago), else 503       |
| `/readyz`  | 200 when every instance is RUNNING, connected and publishing, else 503     |
|            | (a standby replica, roster ha: RUNNING and connected; it publishes nothing) |
| `/status`  | the fleet view as JSON                                                     |
| `/metrics` | Prometheus text exposition (see `multiwatch.supervisor.metrics`)           |
| `/`        | a self-refreshing HTML page, one row per instance                          |

Connections are handled by `http_server.BoundedServer` (one IO thread, two workers, a
deadline per request, a bounded number of connections); handlers only call `fleet_view()`,
which the supervisor keeps fresh and thread-safe, so a slow or broken client can never hold
up the supervisor loop. Only GET is served: anything else gets 405.

DNS rebinding: a request whose `Host` is not the listen address (an IP literal, any on a
wildcard listen), `localhost`, the listen host name or a name in `http.allowed_hosts` gets
421: a web page on a rebound domain cannot read the endpoint.  A request carrying an
`X-Multiwatch-Challenge` gets an `X-Multiwatch-Proof` (see `identity`) when the server was
given the secret the supervisor published in its state_dir.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from multiwatch import __version__
from multiwatch.config import split_listen
from multiwatch.status_view import ViewSource, mapping
from multiwatch.supervisor import identity
from multiwatch.supervisor.dashboard import render_page
from multiwatch.supervisor.http_server import BoundedServer
from multiwatch.supervisor.metrics import metrics_registry, render_metrics

log = logging.getLogger(__name__)

LIVENESS_SECONDS = 10.0  # /healthz fails once the loop has not turned for this long
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"
# The classic text format, which every Prometheus version reads (what generate_latest writes).
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class HttpListenError(OSError):
    """The endpoint cannot listen; the message names `http.listen` and why."""


class HttpServer:
    """A running endpoint; `close()` stops it and frees the port."""

    def __init__(self, server: BoundedServer, thread: threading.Thread,
                 address: tuple[Any, ...]) -> None:
        self._server = server
        self._thread = thread
        self._closed = False
        self.host: str = address[0]
        self.port: int = address[1]

    @property
    def url(self) -> str:
        """Base URL of the endpoint, e.g. http://127.0.0.1:9120."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._server.stop()
        self._thread.join(timeout=5)
        self._server.close()


def start_http_server(listen: str, fleet_view: ViewSource, *,
                      allowed_hosts: Collection[str] = (),
                      secret: bytes | None = None) -> HttpServer:
    """Listen on `listen` ("host:port", "[::1]:port"; port 0 picks a free one) and serve.

    `allowed_hosts`: Host names answered besides the listen address and localhost.
    `secret`: proves the endpoint's identity to a challenge (see `identity`).
    Raises HttpListenError (an OSError) when the address cannot be bound, e.g.
    "http.listen 127.0.0.1:9120: address already in use"; ValueError for a malformed `listen`.
    """
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HttpListenError(f"http.listen {listen}: cannot resolve {host}: {exc.strerror}") \
            from None
    family, _, _, _, address = infos[0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        bound = listener.getsockname()
        hosts = HostPolicy.for_listen(host, str(bound[0]), allowed_hosts)
        app = _App(fleet_view, hosts, secret)
        server = BoundedServer(listener, app.respond)
    except OSError as exc:
        listener.close()
        raise HttpListenError(f"http.listen {listen}: {_why(exc)}") from None
    thread = threading.Thread(target=server.serve, name="multiwatch-http", daemon=True)
    thread.start()
    return HttpServer(server, thread, bound)


def _why(exc: OSError) -> str:
    reason = (exc.strerror or str(exc)).lower()
    if exc.errno == errno.EACCES:
        reason += " (ports below 1024 need root)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason += " (not an address of this host)"
    return reason


# ---------------------------------------------------------------- what each path answers

Response = tuple[int, str, bytes]


@dataclass(frozen=True)
class HostPolicy:
    """Which `Host` headers the endpoint answers (any port: port forwarding changes it)."""

    bound_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    names: frozenset[str]  # lower case: localhost, the listen host name, http.allowed_hosts

    @classmethod
    def for_listen(cls, listen_host: str, bound_ip: str,
                   allowed_hosts: Collection[str]) -> HostPolicy:
        names = {"localhost", *(name.lower().rstrip(".") for name in allowed_hosts)}
        if _ip(listen_host) is None:
            names.add(listen_host.lower().rstrip("."))
        return cls(_ip(bound_ip), frozenset(names))

    def allows(self, host_headers: list[str]) -> bool:
        """No Host (HTTP/1.0 tools; every browser sends one) passes; two never do."""
        if not host_headers:
            return True
        if len(host_headers) > 1:
            return False
        name = _host_name(host_headers[0])
        if name is None:
            return False
        address = _ip(name)
        if address is None:
            return name in self.names
        if self.bound_ip is None or self.bound_ip.is_unspecified:
            return True  # a wildcard listen answers on every address of the host
        return address == self.bound_ip


def _host_name(header: str) -> str | None:
    """The host of a Host header, without port or brackets, lower case; None if malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return inside or None
    name, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return None
    name = name.rstrip(".")
    return name or None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


_MISDIRECTED = (421, "application/json",
                b'{"error": "this endpoint does not answer for that Host; '
                b'list the name in http.allowed_hosts"}\n')


class _App:
    """What the handlers share: the view, the metrics registry, the Host policy and the
    identity secret."""

    def __init__(self, fleet_view: ViewSource, hosts: HostPolicy, secret: bytes | None) -> None:
        self.fleet_view = fleet_view
        self.registry = metrics_registry(fleet_view)
        self.hosts = hosts
        self.secret = secret

    def respond(self, head: bytes, client_address: Any) -> bytes:
        """The whole response to one request head (called by a worker thread)."""
        handler = _Handler(head, client_address, self)
        return handler.output()

    def healthz(self) -> Response:
        supervisor = mapping(self.fleet_view().get("supervisor"))
        age = supervisor.get("loop_age_seconds")
        if isinstance(age, (int, float)) and age < LIVENESS_SECONDS:
            return _json(200, {"status": "ok", "loop_age_seconds": age})
        why = (f"the supervisor loop has not turned for {age:.0f} s"
               if isinstance(age, (int, float)) else "the supervisor loop reports no turn")
        return _json(503, {"status": "stalled", "loop_age_seconds": age, "reason": why})

    def readyz(self) -> Response:
        instances = mapping(self.fleet_view().get("instances"))
        if not instances:
            return _json(503, {"status": "not ready", "reason": "no instances", "not_ready": []})
        waiting = [{"instance_id": ident, "reason": why}
                   for ident, entry in sorted(instances.items())
                   if (why := not_ready_reason(mapping(entry)))]
        if waiting:
            return _json(503, {"status": "not ready", "not_ready": waiting})
        return _json(200, {"status": "ready", "instances": len(instances)})

    def status(self) -> Response:
        return _json(200, self.fleet_view())

    def metrics(self) -> Response:
        return 200, _PROMETHEUS_TEXT, render_metrics(self.registry)

    def index(self) -> Response:
        return 200, _HTML, render_page(self.fleet_view()).encode()


def not_ready_reason(entry: Mapping[str, Any]) -> str:
    """Why an instance is not ready ("" when it is): not RUNNING, its broker link is down,
    or its events cannot leave (an unroutable event held, a connection the broker blocked).
    A standby replica is judged the same way (its heartbeat has its broker link, no outbox),
    and, when it keeps a state database warm from the active replica's events, is ready
    once it has caught up with them (watcher/standby.py)."""
    state = entry.get("state")
    if state != "RUNNING":
        detail = entry.get("reason") or entry.get("last_exit")
        return f"state {state}" + (f": {detail}" if detail else "")
    heartbeat = mapping(entry.get("heartbeat"))
    connected = heartbeat.get("broker_connected")
    if connected is True:  # connected, yet an event may be held (unroutable) or blocked
        problem = heartbeat.get("problem")
        if problem:
            return str(problem)
        if heartbeat.get("role") == "standby" and heartbeat.get("standby_warm") is False:
            lag = heartbeat.get("standby_lag_events")
            return "standby not warm yet: catching up with the active replica's events" + (
                f" ({lag} waiting)" if isinstance(lag, int) and lag > 0 else "")
        return ""
    if connected is None:
        return "no heartbeat with the broker link yet"
    last_error = heartbeat.get("last_error")
    return "broker not connected" + (f": {last_error}" if last_error else "")


_ROUTES: dict[str, Callable[[_App], Response]] = {
    "/healthz": _App.healthz,
    "/readyz": _App.readyz,
    "/status": _App.status,
    "/metrics": _App.metrics,
    "/": _App.index,
}
_PROBES = ("/healthz", "/readyz")


def _json(status: int, body: Any) -> Response:
    return status, _JSON, json.dumps(body, default=str).encode() + b"\n"


# ---------------------------------------------------------------- one request


class _Handler(BaseHTTPRequestHandler):
    """The standard request parsing and answers, run on a buffered request head: the bytes
    come from and go to `BoundedServer`, never from a socket in a worker thread."""

    server_version = f"multiwatch/{__version__}"
    sys_version = ""

    def __init__(self, head: bytes, client_address: Any, app: _App) -> None:
        self.app = app
        self._head = head
        super().__init__(None, client_address, None)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.rfile = io.BytesIO(self._head)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        pass  # output() reads what was written

    def output(self) -> bytes:
        data: bytes = self.wfile.getvalue()  # type: ignore[attr-defined]
        return data

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.close_connection = True  # one request per connection: its deadline covers it
        if not self.app.hosts.allows(self.headers.get_all("Host") or []):
            self._send(*_MISDIRECTED)
            return False
        if self.command != "GET":
            body = b"" if self.command == "HEAD" else _json(405, {"error": "only GET"})[2]
            self._send(405, _JSON, body, allow="GET")
            return False  # no do_<METHOD> dispatch
        return True

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        route = _ROUTES.get(path)
        if route is None:
            self._send(*_json(404, {"error": f"no such page: {path}", "pages": list(_ROUTES)}),
                       proof_for=path)
            return
        try:
            response = route(self.app)
        except Exception:  # a broken view must not kill the endpoint, only this answer
            log.exception("HTTP request failed", extra={"path": path})
            code = 503 if path in _PROBES else 500
            response = _json(code, {"error": "internal error; see the supervisor log"})
        self._send(*response, proof_for=path)

    def _send(self, status: int, content_type: str, body: bytes, allow: str = "",
              proof_for: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        if allow:
            self.send_header("Allow", allow)
        challenge = self.headers.get(identity.CHALLENGE_HEADER)
        if proof_for is not None and self.app.secret and identity.valid_challenge(challenge):
            assert challenge is not None
            self.send_header(identity.PROOF_HEADER,
                             identity.proof(self.app.secret, challenge, proof_for, body))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("HTTP %s", format % args)
