"""Two replicas of instance `music` (roster `ha`) in the integration tests: their rosters,
the files written for them, what a consumer got, and their /status and /readyz."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.consumer import Received, wait_for
from tests.support.process import Multiwatch, write_roster

QUEUE = "file_events"
TAKEOVER = "took over as the active replica of this instance"


def replica_roster(tmp_path: Path, name: str, inbox: Path, *, state: Path, port: int,
                   broker_url: str | list[str] | None,
                   broker_extra: Mapping[str, Any] | None = None) -> Path:
    """`<name>.yaml`: a replica of instance music watching `inbox`, its state in `state`,
    its HTTP endpoint on `port`; with a broker (None: the embedded spool) at a low
    heartbeat, so a replica cut off is noticed within seconds."""
    roster: dict[str, Any] = {
        "state_dir": str(state),
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"stop_timeout_seconds": 3},
        "http": {"listen": f"127.0.0.1:{port}"},
        "ha": {"enabled": True, "lease_retry_seconds": 0.5},
        "instances": [{"id": "music", "directory": str(inbox)}],
    }
    if broker_url is not None:
        roster["broker"] = {"url": broker_url, "heartbeat_seconds": 2,
                            "connect_timeout_seconds": 2, "confirm_timeout_seconds": 3,
                            **(broker_extra or {})}
    return write_roster(tmp_path / f"{name}.yaml", roster)


def write_numbered(inbox: Path, names: range, text: str = "file") -> set[str]:
    """Write f000.txt, f001.txt, … for `names` (content `<text> <n>`); their names."""
    for n in names:
        (inbox / f"f{n:03}.txt").write_text(f"{text} {n}")
    return {f"f{n:03}.txt" for n in names}


def ids_by_name(received: list[Received],
                event_type: str = "file_discovered") -> dict[str, set[str]]:
    """file name → the message ids its events of `event_type` carried."""
    ids: dict[str, set[str]] = {}
    for message in received:
        if message.body["event_type"] == event_type:
            ids.setdefault(message.body["file_info"]["name"], set()).add(
                str(message.properties["message_id"]))
    return ids


def status_of(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        view: dict[str, Any] = json.load(response)
    return view


def role_of(port: int) -> str | None:
    """Instance music's role in /status, None while it does not say."""
    try:
        return str(status_of(port)["instances"]["music"].get("role"))
    except (OSError, KeyError):
        return None


def readyz_code(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def start_pair(started: list[Multiwatch], ports: tuple[int, int], active: Path,
               standby: Path) -> tuple[Multiwatch, Multiwatch]:
    """Two replicas of instance music: the first started and watching (active), then the
    second, until each one's /status (on `ports`) says its role."""
    first = Multiwatch(["-c", str(active)])
    started.append(first)
    first.wait_watching("music")
    second = Multiwatch(["-c", str(standby)])
    started.append(second)
    wait_for(lambda: role_of(ports[0]) == "active" and role_of(ports[1]) == "standby", 15,
             message="roles in /status")
    return first, second
