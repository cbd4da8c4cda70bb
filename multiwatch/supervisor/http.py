"""The supervisor's read-only HTTP endpoint: probes, status, Prometheus metrics, a web page.

| path       | answers                                                                   |
| ---------- | ------------------------------------------------------------------------- |
| `/healthz` | 200 while the supervisor loop turns (last turn < 10 s ago), else 503       |
| `/readyz`  | 200 when every instance is RUNNING, connected and publishing, else 503     |
| `/status`  | the fleet view as JSON                                                     |
| `/metrics` | Prometheus text exposition (see `multiwatch.supervisor.metrics`)           |
| `/`        | a self-refreshing HTML page, one row per instance                          |

A `ThreadingHTTPServer` serves from daemon threads; handlers only call `fleet_view()`,
which the supervisor keeps fresh and thread-safe, so a slow or broken client can never hold
up the supervisor loop. Only GET is served: anything else gets 405.  The accepting thread
sleeps until a connection or `close()` arrives (socketserver's serve_forever would wake
every poll_interval to look for a shutdown request).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import urlsplit

from multiwatch import __version__
from multiwatch.config import split_listen
from multiwatch.supervisor.dashboard import EventRates, render_page
from multiwatch.supervisor.metrics import metrics_registry, render_metrics

log = logging.getLogger(__name__)

FleetView = Callable[[], dict[str, Any]]
LIVENESS_SECONDS = 10.0  # /healthz fails once the loop has not turned for this long
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"
# The classic text format, which every Prometheus version reads (what generate_latest writes).
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class HttpListenError(OSError):
    """The endpoint cannot listen; the message names `http.listen` and why."""


class HttpServer:
    """A running endpoint; `close()` stops it and frees the port."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False
        self.host: str = server.server_address[0]  # type: ignore[assignment]
        self.port: int = server.server_address[1]

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
        self._server.server_close()


def start_http_server(listen: str, fleet_view: FleetView, *,
                      clock: Callable[[], float] = time.monotonic) -> HttpServer:
    """Listen on `listen` ("host:port", "[::1]:port"; port 0 picks a free one) and serve.

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
    try:
        server = _Server(address, family, _App(fleet_view, clock))
    except OSError as exc:
        raise HttpListenError(f"http.listen {listen}: {_why(exc)}") from None
    thread = threading.Thread(target=server.serve, name="multiwatch-http", daemon=True)
    thread.start()
    return HttpServer(server, thread)


def _why(exc: OSError) -> str:
    reason = (exc.strerror or str(exc)).lower()
    if exc.errno == errno.EACCES:
        reason += " (ports below 1024 need root)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason += " (not an address of this host)"
    return reason


# ---------------------------------------------------------------- what each path answers

Response = tuple[int, str, bytes]


class _App:
    """What the handlers share: the view, the metrics registry and the page's event rates."""

    def __init__(self, fleet_view: FleetView, clock: Callable[[], float]) -> None:
        self.fleet_view = fleet_view
        self.clock = clock
        self.registry = metrics_registry(fleet_view)
        self.rates = EventRates()

    def healthz(self) -> Response:
        supervisor = _mapping(self.fleet_view().get("supervisor"))
        age = supervisor.get("loop_age_seconds")
        if isinstance(age, (int, float)) and age < LIVENESS_SECONDS:
            return _json(200, {"status": "ok", "loop_age_seconds": age})
        why = (f"the supervisor loop has not turned for {age:.0f} s"
               if isinstance(age, (int, float)) else "the supervisor loop reports no turn")
        return _json(503, {"status": "stalled", "loop_age_seconds": age, "reason": why})

    def readyz(self) -> Response:
        instances = _mapping(self.fleet_view().get("instances"))
        if not instances:
            return _json(503, {"status": "not ready", "reason": "no instances", "not_ready": []})
        waiting = [{"instance_id": ident, "reason": why}
                   for ident, entry in sorted(instances.items())
                   if (why := not_ready_reason(_mapping(entry)))]
        if waiting:
            return _json(503, {"status": "not ready", "not_ready": waiting})
        return _json(200, {"status": "ready", "instances": len(instances)})

    def status(self) -> Response:
        return _json(200, self.fleet_view())

    def metrics(self) -> Response:
        return 200, _PROMETHEUS_TEXT, render_metrics(self.registry)

    def index(self) -> Response:
        view = self.fleet_view()
        rates = self.rates.observe(_mapping(view.get("instances")), self.clock())
        return 200, _HTML, render_page(view, rates).encode()


def not_ready_reason(entry: Mapping[str, Any]) -> str:
    """Why an instance is not ready ("" when it is): not RUNNING, its broker link is down,
    or its events cannot leave (an unroutable event held, a connection the broker blocked)."""
    state = entry.get("state")
    if state != "RUNNING":
        detail = entry.get("reason") or entry.get("last_exit")
        return f"state {state}" + (f": {detail}" if detail else "")
    heartbeat = _mapping(entry.get("heartbeat"))
    connected = heartbeat.get("broker_connected")
    if connected is True:  # connected, yet an event may be held (unroutable) or blocked
        problem = heartbeat.get("problem")
        return str(problem) if problem else ""
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


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# ---------------------------------------------------------------- the server


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Any, family: socket.AddressFamily, app: _App) -> None:
        self.address_family = family
        self.app = app
        self._stopping = False
        self._wake_read, self._wake_write = os.pipe()  # closed by server_close, also on failure
        super().__init__(address, _Handler)

    def serve(self) -> None:
        """Accept connections until stop(), without waking up in between."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self and not self._stopping:
                        self.handle_request()  # readable: accepts without waiting

    def stop(self) -> None:
        """Make serve() return (from any thread)."""
        self._stopping = True
        os.write(self._wake_write, b"x")

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang on a broken DNS.
        TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"multiwatch/{__version__}"
    sys_version = ""
    timeout = 10  # a client that stops mid-request does not hold a thread for long

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.command != "GET":
            self.close_connection = True
            body = b"" if self.command == "HEAD" else _json(405, {"error": "only GET"})[2]
            self._send(405, _JSON, body, allow="GET")
            return False  # no do_<METHOD> dispatch
        return True

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        route = _ROUTES.get(path)
        if route is None:
            self._send(*_json(404, {"error": f"no such page: {path}", "pages": list(_ROUTES)}))
            return
        try:
            response = route(self.server.app)
        except Exception:  # a broken view must not kill the endpoint, only this answer
            log.exception("HTTP request failed", extra={"path": path})
            code = 503 if path in _PROBES else 500
            response = _json(code, {"error": "internal error; see the supervisor log"})
        self._send(*response)

    def _send(self, status: int, content_type: str, body: bytes, allow: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("HTTP %s", format % args)
