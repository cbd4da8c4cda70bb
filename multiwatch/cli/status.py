"""`multiwatch status` and `multiwatch health`: ask a running supervisor over HTTP.

The endpoint comes from `--url`, else from the roster's `http.listen` (a wildcard listen
address is reached on loopback). Only the roster's `http` section and state_dir are read, so
both commands work while a watched directory is gone. No curl needed: fit for Docker
HEALTHCHECK and Kubernetes exec probes. `health` exits 0 when healthy and 1 for everything
else (Docker reserves 2), printing one line.

Whoever listens first on a port answers there.  So when `status` found the endpoint through
the roster, it believes the answer only if the endpoint proves it holds the secret its
supervisor published under state_dir (`multiwatch.supervisor.identity`); with `--url` the
operator named the endpoint and it is asked as is.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

from multiwatch.cli.tail import escape_controls
from multiwatch.config import ConfigError, load_endpoint_config, split_listen
from multiwatch.status_view import mapping, role_label
from multiwatch.supervisor import identity
from multiwatch.supervisor.dashboard import (
    LINKS,
    deletions_held_text,
    event_name,
    events_by_type,
    format_duration,
    format_mib,
    last_event,
    unusual_activity_text,
)

TIMEOUT_SECONDS = 5.0
# Loopback only: a proxy from the environment must not see (or break) our requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EndpointError(Exception):
    """The endpoint could not be asked, or did not answer sensibly; the message says why."""


def endpoint_url(listen: str) -> str:
    """The base URL for a `http.listen` value; wildcard addresses become loopback."""
    host, port = split_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass(frozen=True)
class Endpoint:
    """Where to ask, and (found through a roster) where its identity is published."""

    url: str
    state_dir: str | None = None
    listen: str | None = None


def resolve_endpoint(url: str | None, config: str | None,
                     environ: Mapping[str, str]) -> Endpoint:
    """`--url` as given (http:// added if missing), else from the roster's http.listen."""
    if url:
        url = url.strip().rstrip("/")
        return Endpoint(url if "://" in url else f"http://{url}")
    http, state_dir = load_endpoint_config(config, environ)
    if http.listen is None:
        where = config or environ.get("MULTIWATCH_CONFIG") or "the environment"
        raise ConfigError(f"http.listen is off in {where}, so there is no endpoint to ask; "
                          "set http.listen or pass --url")
    return Endpoint(endpoint_url(http.listen), state_dir, http.listen)


def fetch(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """GET `url`: (status, body) for any HTTP answer; EndpointError if there is none."""
    status, _, body = _fetch(url, headers)
    return status, body


def _fetch(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:  # 4xx/5xx still carry a body worth reading
        with exc:
            return exc.code, exc.headers, exc.read()
    except urllib.error.URLError as exc:
        reason = exc.reason
        why = getattr(reason, "strerror", None) or str(reason)
        raise EndpointError(f"cannot reach {url}: {why}") from None
    except TimeoutError:
        raise EndpointError(f"cannot reach {url}: no answer within {TIMEOUT_SECONDS:g} s") \
            from None
    except (OSError, ValueError) as exc:  # connection reset, malformed URL
        raise EndpointError(f"cannot reach {url}: {exc}") from None


def fetch_json(url: str) -> tuple[int, Any]:
    status, body = fetch(url)
    return status, _parse_json(url, status, body)


def _parse_json(url: str, status: int, body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise EndpointError(f"unexpected answer from {url} (HTTP {status}): not JSON; "
                            "is this a multiwatch endpoint?") from None


# ---------------------------------------------------------------- status


def status_command(endpoint: Endpoint, *, as_json: bool) -> int:
    """Print the fleet as a table (or the raw /status JSON); 0 on success, 1 if the endpoint
    is unreachable or (found through a roster) cannot prove it is this roster's supervisor."""
    url = f"{endpoint.url}/status"
    try:
        view = _fetch_status(endpoint, url)
    except (EndpointError, identity.IdentityError) as exc:
        print(f"multiwatch: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(view, indent=2))
    else:
        print(render_status(view, endpoint.url), end="")
    return 0


def _fetch_status(endpoint: Endpoint, url: str) -> dict[str, Any]:
    """The /status view; checked against the published identity when there is a roster."""
    if endpoint.state_dir is None or endpoint.listen is None:
        status, _, body = _fetch(url)
    else:
        published = identity.read_identity(endpoint.state_dir, endpoint.listen)
        challenge = identity.new_challenge()
        status, headers, body = _fetch(url, {identity.CHALLENGE_HEADER: challenge})
        given = headers.get(identity.PROOF_HEADER)
        if not identity.proof_matches(published.secret, challenge, "/status", body, given):
            raise EndpointError(_impostor(url, published))
    view = _parse_json(url, status, body)
    if status != 200 or not isinstance(view, dict):
        raise EndpointError(f"unexpected answer from {url}: HTTP {status}")
    return view


def _impostor(url: str, published: identity.EndpointIdentity) -> str:
    state = ("is running" if identity.pid_is_running(published.pid)
             else "is not running")
    return (f"refusing the answer from {url}: it did not prove to be the supervisor that "
            f"published {published.path} (pid {published.pid}, which {state}); another "
            "program may hold the port")


_COLUMNS = ("ID", "STATE", "PID", "RESTARTS", "UPTIME", "FILES", "EV/MIN", "LAST EVENT",
            "OUTBOX", "BROKER", "ROLE", "CPU%", "RSS MiB", "DIRECTORY", "LAST EXIT / REASON")
_RIGHT = {2, 3, 4, 5, 6, 8, 11, 12}  # numeric columns are right-aligned


def render_status(view: Mapping[str, Any], base_url: str = "", now: float | None = None) -> str:
    """The fleet view as a summary line, an aligned table (one row per instance), then each
    instance's events by type and last event, and the endpoint's pages."""
    wall_now = time.time() if now is None else now
    supervisor = mapping(view.get("supervisor"))
    instances = mapping(view.get("instances"))
    resources = mapping(supervisor.get("resources"))
    count = len(instances)
    summary = (f"supervisor pid {_cell(supervisor.get('pid'))}, "
               f"up {format_duration(supervisor.get('uptime_seconds'))}, "
               f"RSS {format_mib(resources.get('rss_bytes'))} MiB, "
               f"{count} instance{'' if count == 1 else 's'}, "
               f"role {_cell(supervisor.get('role'))}, "
               f"broker {_cell(supervisor.get('broker'))}, "
               f"roster {_cell(supervisor.get('roster'))}")
    ordered = sorted((str(ident), mapping(entry)) for ident, entry in instances.items())
    rows = [_row(ident, entry, wall_now) for ident, entry in ordered]
    details = ["", *(_details(ident, entry, wall_now) for ident, entry in ordered)]
    if base_url:
        details.append("pages: " + ", ".join(f"{base_url}{link}" for link in ("/", *LINKS)))
    return summary + "\n" + _table([list(_COLUMNS), *rows]) + "\n".join(details) + "\n"


def _row(ident: str, entry: Mapping[str, Any], now: float) -> list[str]:
    heartbeat = mapping(entry.get("heartbeat"))
    resources = mapping(entry.get("resources"))
    connected = heartbeat.get("broker_connected")
    broker = "up" if connected is True else "down" if connected is False else "-"
    cpu = resources.get("cpu_percent")
    rate = entry.get("events_per_minute")
    event = mapping(heartbeat.get("last_event"))
    at = event.get("at")
    last = (f"{event_name(event.get('event_type'))} "
            f"{format_duration(max(0.0, now - at))} ago") if isinstance(at, (int, float)) else "-"
    notes = [entry.get("reason") or entry.get("last_exit"), deletions_held_text(heartbeat),
             unusual_activity_text(heartbeat)]
    if connected is False:
        notes.append(f"broker: {heartbeat.get('last_error') or 'down'}")
    note = "; ".join(str(n) for n in notes if n)
    return [
        _cell(ident), _cell(entry.get("state")), _cell(entry.get("pid")),
        _cell(entry.get("restarts")),
        format_duration(entry.get("uptime_seconds")), _cell(heartbeat.get("files_tracked")),
        f"{rate:.1f}" if isinstance(rate, (int, float)) else "-", _cell(last),
        _cell(heartbeat.get("outbox_depth")),
        broker, _cell(role_label(entry)),  # active | standby (replicas, roster ha)
        f"{cpu:.1f}" if isinstance(cpu, (int, float)) else "-",
        format_mib(resources.get("rss_bytes")), _cell(entry.get("directory")),
        _cell(note, empty=""),
    ]


def _details(ident: str, entry: Mapping[str, Any], now: float) -> str:
    """"music: discovered 7, modified 2; last modified /x at 2024-… UTC, 5m00s ago"."""
    heartbeat = mapping(entry.get("heartbeat"))
    if entry.get("role") == "standby" and heartbeat.get("role") == "standby":
        return _cell(_standby_details(ident, heartbeat))
    what, when = last_event(heartbeat, now)
    counts = events_by_type(heartbeat)
    line = f"{ident}: {'no heartbeat yet' if counts == '-' else counts}"
    if what != "-":
        line += f"; last {what} at {when}"
    return _cell(line)


def _standby_details(ident: str, heartbeat: Mapping[str, Any]) -> str:
    """A standby counts no events of its own: say what it does instead."""
    line = f"{ident}: standby, announcing nothing while another replica holds the lease"
    warm, lag = heartbeat.get("standby_warm"), heartbeat.get("standby_lag_events")
    if warm is True:
        return line + "; its state is warm (takes over without announcing again)"
    if warm is False:
        behind = f", {lag} events behind" if isinstance(lag, int) and lag else ""
        return line + f"; catching up with the active replica's events{behind}"
    return line + "; no state of its own kept warm"


def _table(rows: Sequence[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in _RIGHT else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _cell(value: Any, empty: str = "-") -> str:
    text = empty if value is None or value == "" else str(value)
    # One line per row, whatever the server sent; file names and reasons come from others:
    # nothing in them reaches the terminal as a control sequence.
    return escape_controls(" ".join(text.split()))


# ---------------------------------------------------------------- health


def health_command(base_url: str, *, live: bool) -> int:
    """Exit status 0 if /readyz (or /healthz with `live`) answers 200, else 1; one line out."""
    url = f"{base_url}/healthz" if live else f"{base_url}/readyz"
    try:
        status, body = fetch_json(url)
    except EndpointError as exc:
        print(f"multiwatch: {exc}", file=sys.stderr)
        return 1
    body = mapping(body)
    if status not in (200, 503) or "status" not in body:
        print(f"multiwatch: unexpected answer from {url}: HTTP {status}", file=sys.stderr)
        return 1
    print(_liveness_line(status, body) if live else _readiness_line(status, body))
    return 0 if status == 200 else 1


def _liveness_line(status: int, body: Mapping[str, Any]) -> str:
    age = body.get("loop_age_seconds")
    if status == 200:
        turned = f"{age:.1f} s ago" if isinstance(age, (int, float)) else "recently"
        return f"alive: the supervisor loop turned {turned}"
    return f"not alive: {_cell(body.get('reason'))}"


def _readiness_line(status: int, body: Mapping[str, Any]) -> str:
    if status == 200:
        count = body.get("instances")
        return f"ready: {_cell(count)} instance{'' if count == 1 else 's'} running, " \
               "broker connected"
    waiting = body.get("not_ready")
    parts = [f"{_cell(mapping(item).get('instance_id'))}: {_cell(mapping(item).get('reason'))}"
             for item in (waiting if isinstance(waiting, list) else [])]
    return "not ready: " + ("; ".join(parts) or _cell(body.get("reason")))
