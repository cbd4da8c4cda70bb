"""Per-instance resource limits through a real `multiwatch run`: read_rate_limit throttles one
watcher's hashing (and only its), nice and ionice are the watcher's, /status shows them."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import psutil

from tests.integration.test_operator import _get, _status
from tests.support.consumer import Received, collect, wait_for
from tests.support.faults import FAST_BROKER
from tests.support.process import Multiwatch, free_port, write_roster

MIB = 1 << 20


def _roster(tmp_path: Path, port: int, broker_url: str, instances: list[dict[str, Any]],
            **supervisor: float) -> Path:
    for entry in instances:
        Path(entry["directory"]).mkdir(exist_ok=True)
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": f"127.0.0.1:{port}"},
        "broker": {"url": broker_url, **FAST_BROKER},
        "defaults": {"settle_seconds": 0.3},
        "supervisor": {"stop_timeout_seconds": 5, **supervisor},
        "instances": instances,
    })


def _write(path: Path, size: int) -> str:
    """Write `size` random bytes and close the file; the sha256 of the content."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _names(messages: list[Received]) -> set[str]:
    return {m.body["file_info"]["name"] for m in messages}


def _arrival(broker_url: str, name: str, got: list[Received], timeout: float) -> float:
    """Consume until `name` is announced (keeping every message in `got`); when it came."""
    if name not in _names(got):
        got += collect(broker_url, "file_events", timeout=timeout,
                       until=lambda ms: name in _names(got) | _names(ms))
    assert name in _names(got), f"{name} was never announced"
    return time.monotonic()


def _ready(port: int) -> dict[str, Any]:
    wait_for(lambda: _get(port, "/readyz")[0] == 200, timeout=30, message="never ready")
    return _status(port)["instances"]  # type: ignore[no-any-return]


def _thread_nice_values(pid: int) -> set[int]:
    """The nice value of every thread of `pid`, from /proc/<pid>/task/*/stat (field 19)."""
    values = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as stat:
            values.add(int(stat.read().rsplit(")", 1)[1].split()[16]))
    return values


def test_a_rate_limited_instance_hashes_slowly_and_holds_up_nobody_else(
        tmp_path: Path, broker_url: str) -> None:
    """With read_rate_limit: 4MiB a 16 MiB file is announced no sooner than ~3.75 s after it
    was written, while an unlimited instance's small and big files written after it arrive
    first; both are announced with their right hashes."""
    port = free_port()
    nas, local = tmp_path / "nas", tmp_path / "local"
    mw = Multiwatch(["-c", str(_roster(tmp_path, port, broker_url, [
        {"id": "nas", "directory": str(nas), "read_rate_limit": "4MiB"},
        {"id": "local", "directory": str(local)}]))])
    try:
        _ready(port)
        slow_sha = _write(nas / "slow.bin", 16 * MIB)
        written = time.monotonic()
        for number in range(5):
            (local / f"small-{number}.txt").write_text(f"small file {number}")
        fast_sha = _write(local / "fast.bin", 16 * MIB)

        got: list[Received] = []
        local_done = max(_arrival(broker_url, name, got, 30)
                         for name in [f"small-{n}.txt" for n in range(5)] + ["fast.bin"])
        assert "slow.bin" not in _names(got), "the throttled file came before the others"
        slow_done = _arrival(broker_url, "slow.bin", got, 60)
        assert slow_done - written >= 3.5, f"16 MiB at 4 MiB/s took {slow_done - written:.2f} s"
        assert local_done < slow_done
        hashes = {m.body["file_info"]["name"]: m.body["file_info"]["sha256_hash"] for m in got}
        assert (hashes["slow.bin"], hashes["fast.bin"]) == (slow_sha, fast_sha)
    finally:
        mw.cleanup()


def test_nice_and_ionice_are_the_watchers_and_status_shows_the_limits(
        tmp_path: Path, broker_url: str) -> None:
    """The watcher of an instance with nice: 10 and ionice: idle runs so, on every thread;
    one without them inherits the supervisor's; /status and the page show each one's."""
    port = free_port()
    mw = Multiwatch(["-c", str(_roster(tmp_path, port, broker_url, [
        {"id": "backup", "directory": str(tmp_path / "backup"), "nice": 10, "ionice": "idle",
         "read_rate_limit": "50MiB/s", "memory_limit": "512MiB"},
        {"id": "music", "directory": str(tmp_path / "music"), "ionice": "best-effort:7"},
        {"id": "docs", "directory": str(tmp_path / "docs")}]))])
    try:
        entries = _ready(port)
        limits = {ident: {key: entry[key] for key in
                          ("read_rate_limit", "nice", "ionice", "memory_limit")}
                  for ident, entry in entries.items()}
        assert limits == {
            "backup": {"read_rate_limit": 50 * MIB, "nice": 10, "ionice": "idle",
                       "memory_limit": 512 * MIB},
            "music": {"read_rate_limit": 0, "nice": None, "ionice": "best-effort:7",
                      "memory_limit": 0},
            "docs": {"read_rate_limit": 0, "nice": None, "ionice": None, "memory_limit": 0},
        }
        backup, music, docs = (psutil.Process(entries[i]["pid"])
                               for i in ("backup", "music", "docs"))
        supervisor = psutil.Process(mw.pid)
        assert _thread_nice_values(backup.pid) == {10}
        assert _thread_nice_values(docs.pid) == {supervisor.nice()}
        assert backup.ionice().ioclass == psutil.IOPRIO_CLASS_IDLE
        assert tuple(music.ionice()) == (psutil.IOPRIO_CLASS_BE, 7)
        assert docs.ionice() == supervisor.ionice()
        for thread in backup.threads():  # the publisher, observer... inherited it
            assert psutil.Process(thread.id).ionice().ioclass == psutil.IOPRIO_CLASS_IDLE
        page = _get(port, "/")[1]
        assert "read 50.0 MiB/s, RSS 512.0 MiB, nice 10, ionice idle" in page
    finally:
        mw.cleanup()


def test_a_throttled_hash_keeps_heartbeating_and_stops_at_sigterm(
        tmp_path: Path, broker_url: str) -> None:
    """A small file hashed on the watcher's own loop at 256 KiB/s takes ~12 s, far past a
    3 s hang_timeout: the watcher is not taken for hung (no restart) and announces it.  A
    64 MiB file that would take minutes at that rate does not hold up a SIGTERM."""
    port = free_port()
    slow = tmp_path / "slow"
    mw = Multiwatch(["-c", str(_roster(tmp_path, port, broker_url, [
        {"id": "slow", "directory": str(slow), "read_rate_limit": 256 * 1024}],
        hang_timeout_seconds=3))])
    try:
        _ready(port)
        sha = _write(slow / "three.bin", 3 * MIB)  # below the pool's 4 MiB: hashed inline
        written = time.monotonic()
        got: list[Received] = []
        done = _arrival(broker_url, "three.bin", got, 60)
        assert not [line for line in mw.lines if "heartbeating" in str(line.get("message"))]
        entry = _status(port)["instances"]["slow"]
        assert (entry["state"], entry["restarts"]) == ("RUNNING", 0)
        assert done - written >= 10, f"3 MiB at 256 KiB/s took {done - written:.2f} s"
        assert [m.body["file_info"]["sha256_hash"] for m in got] == [sha]

        _write(slow / "huge.bin", 64 * MIB)
        mw.wait_for_log(lambda line: line.get("message") == "hashing big file")
        time.sleep(1)  # well into its throttled read
        asked = time.monotonic()
        assert mw.terminate(timeout=30) == 0
        assert time.monotonic() - asked < 5, "the throttled hash held the stop up"
        assert [line for line in mw.lines if line.get("message") == "stopped"
                and line.get("instance_id") == "slow"]
    finally:
        mw.cleanup()
