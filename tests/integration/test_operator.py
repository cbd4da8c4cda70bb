"""Operating a real fleet: /metrics, /readyz, /status, `status`, `health`, limits, mounts."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.support.consumer import collect, wait_for
from tests.support.faults import FAST_BROKER, broker_stopped
from tests.support.process import Multiwatch, free_port, run_cli, write_roster


def _roster(tmp_path: Path, port: int, instances: list[dict[str, Any]],
            broker_url: str | None = None) -> Path:
    roster: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": f"127.0.0.1:{port}"},
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"stop_timeout_seconds": 3, "restart_backoff_seconds": 0.3,
                       "restart_backoff_max_seconds": 1},
        "instances": instances,
    }
    if broker_url:
        roster["broker"] = {"url": broker_url, **FAST_BROKER}
    return write_roster(tmp_path / "roster.yaml", roster)


def _get(port: int, path: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError:
        return 0, ""  # not listening (yet)


def _status(port: int) -> dict[str, Any]:
    code, body = _get(port, "/status")
    return json.loads(body) if code == 200 else {}


def _state(port: int, instance_id: str) -> str | None:
    return _status(port).get("instances", {}).get(instance_id, {}).get("state")


def _dirs(tmp_path: Path, *names: str) -> list[dict[str, Any]]:
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
    return [{"id": name, "directory": str(tmp_path / name)} for name in names]


def test_metrics_count_the_files_dropped(tmp_path: Path, broker_url: str) -> None:
    """/metrics (Prometheus text) counts each instance's announced files and broker link."""
    port = free_port()
    mw = Multiwatch(["-c", str(_roster(tmp_path, port, _dirs(tmp_path, "music", "docs"),
                                       broker_url))])
    try:
        mw.wait_watching("music")
        mw.wait_watching("docs")
        for i in range(3):
            (tmp_path / "music" / f"{i}.mp3").write_bytes(b"x" * (i + 1))
        (tmp_path / "docs" / "a.txt").write_bytes(b"doc")
        collect(broker_url, "file_events", timeout=30, until=lambda ms: len(ms) >= 4)

        def discovered() -> dict[str, float]:
            families = text_string_to_metric_families(_get(port, "/metrics")[1])
            return {s.labels["instance_id"]: s.value for f in families for s in f.samples
                    if s.name == "multiwatch_files_discovered_total"}

        wait_for(lambda: discovered() == {"music": 3.0, "docs": 1.0}, timeout=15,
                 message=f"metrics never counted the files: {discovered()}")
        families = {f.name: f for f in text_string_to_metric_families(_get(port, "/metrics")[1])}
        up = {s.labels["instance_id"]: s.value for s in families["multiwatch_broker_connected"]
              .samples}
        assert up == {"music": 1.0, "docs": 1.0}
        assert "multiwatch_event_latency_seconds" in families
    finally:
        mw.cleanup()


def test_readyz_follows_the_broker(tmp_path: Path, broker_url: str, rabbitmq) -> None:
    """/readyz is 200 while connected, 503 while RabbitMQ is down, 200 again after."""
    port = free_port()
    mw = Multiwatch(["-c", str(_roster(tmp_path, port, _dirs(tmp_path, "inbox"), broker_url))])
    try:
        wait_for(lambda: _get(port, "/readyz")[0] == 200, timeout=30, message="never ready")
        assert _get(port, "/healthz")[0] == 200
        with broker_stopped(rabbitmq, broker_url):
            wait_for(lambda: _get(port, "/readyz")[0] == 503, timeout=30,
                     message="still ready with the broker down")
            assert "inbox" in _get(port, "/readyz")[1]
            assert _get(port, "/healthz")[0] == 200  # the supervisor itself is fine
        wait_for(lambda: _get(port, "/readyz")[0] == 200, timeout=60,
                 message="not ready again after the broker returned")
    finally:
        mw.cleanup()


def test_status_and_health_commands_against_a_running_supervisor(tmp_path: Path) -> None:
    """`status` prints a table (or JSON) of the fleet; `health` exits 0 when ready, 1 when not."""
    port = free_port()
    roster = _roster(tmp_path, port, _dirs(tmp_path, "alpha", "beta"))
    mw = Multiwatch(["-c", str(roster)])
    try:
        wait_for(lambda: _get(port, "/readyz")[0] == 200, timeout=30, message="never ready")
        table = run_cli("status", "-c", str(roster))
        assert table.returncode == 0, table.stderr
        assert "alpha" in table.stdout and "beta" in table.stdout and "RUNNING" in table.stdout
        as_json = json.loads(run_cli("status", "-c", str(roster), "--json").stdout)
        assert set(as_json["instances"]) == {"alpha", "beta"}
        assert as_json["instances"]["alpha"]["resources"]["rss_bytes"] > 0
        assert run_cli("health", "-c", str(roster)).returncode == 0
        assert mw.terminate() == 0
        down = run_cli("health", "-c", str(roster))
        assert down.returncode == 1
        assert "Traceback" not in down.stderr
    finally:
        mw.cleanup()


def test_memory_limit_restarts_a_child_gracefully(tmp_path: Path) -> None:
    """A child above its memory_limit is restarted, with the reason logged."""
    port = free_port()
    instances = _dirs(tmp_path, "greedy", "modest")
    instances[0]["memory_limit"] = "1MiB"  # any Python process is above this
    mw = Multiwatch(["-c", str(_roster(tmp_path, port, instances))])
    try:
        first = mw.wait_watching("greedy")
        line = mw.wait_for_log(lambda x: x.get("instance_id") == "greedy"
                               and "memory limit exceeded" in str(x.get("message")), timeout=30)
        assert "memory_limit 1048576 bytes" in line["message"]
        second = mw.wait_for_log(lambda x: x.get("message") == "watching"
                                 and x.get("instance_id") == "greedy"
                                 and x.get("pid") != first["pid"], timeout=30)
        assert psutil.pid_exists(second["pid"])
        assert not [x for x in mw.lines if x.get("instance_id") == "modest"
                    and "memory limit" in str(x.get("message"))]
    finally:
        mw.cleanup()


def test_missing_and_vanishing_directories_are_reported_and_retried(tmp_path: Path) -> None:
    """An optional directory absent at start is WAITING until it appears; a directory that
    vanishes is retried (BACKOFF, "directory missing") while other instances keep RUNNING."""
    port = free_port()
    instances = _dirs(tmp_path, "share", "local")
    instances.append({"id": "late", "directory": str(tmp_path / "late"), "optional": True})
    mw = Multiwatch(["-c", str(_roster(tmp_path, port, instances))])
    try:
        wait_for(lambda: _state(port, "late") == "WAITING", timeout=30, message="not WAITING")
        assert _status(port)["instances"]["late"]["reason"] == "directory missing"
        (tmp_path / "late").mkdir()
        wait_for(lambda: _state(port, "late") == "RUNNING", timeout=30, message="not RUNNING")

        shutil.rmtree(tmp_path / "share")  # an unmounted share
        wait_for(lambda: _status(port).get("instances", {}).get("share", {}).get("reason")
                 == "directory missing",
                 timeout=30, message="vanished directory not reported")
        assert _state(port, "share") in ("BACKOFF", "STARTING")
        assert _state(port, "local") == "RUNNING"
        (tmp_path / "share").mkdir()
        wait_for(lambda: _state(port, "share") == "RUNNING", timeout=30,
                 message="share did not come back")
    finally:
        mw.cleanup()
