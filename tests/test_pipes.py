"""`multiwatch ... | head -1`: a reader that stops early ends multiwatch quietly (exit 141,
as for any Unix tool killed by SIGPIPE), without a traceback, and tail leaves no queue."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from amqp.exceptions import NotFound, ResourceLocked
from kombu import Connection, Exchange, Producer

from multiwatch.cli import EXIT_BROKEN_PIPE
from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.state import StateStore, state_db_path
from tests.support.process import multiwatch_command, write_roster

DEADLINE_SECONDS = 30.0


class Pipeline:
    """`multiwatch ARGS | head -1`, with multiwatch's stderr collected as it comes."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MULTIWATCH_CONFIG"}
        env["MULTIWATCH_HTTP_LISTEN"] = "off"
        self.writer = subprocess.Popen(multiwatch_command(*args), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env=env, start_new_session=True)
        assert self.writer.stdout is not None and self.writer.stderr is not None
        self.head = subprocess.Popen(["head", "-1"], stdin=self.writer.stdout,
                                     stdout=subprocess.PIPE, text=True)
        self.writer.stdout.close()  # head alone reads it: its exit breaks the pipe
        self.stderr = ""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(self.writer.stderr,),
                                        daemon=True)
        self._reader.start()

    def _read(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            with self._changed:
                self.stderr += raw.decode(errors="replace")
                self._changed.notify_all()

    def wait_for_stderr(self, text: str) -> str:
        with self._changed:
            assert self._changed.wait_for(lambda: text in self.stderr, DEADLINE_SECONDS), \
                self.stderr
            return self.stderr

    def finish(self) -> tuple[str, int]:
        """head's output and multiwatch's exit status, both within the deadline."""
        try:
            out, _ = self.head.communicate(timeout=DEADLINE_SECONDS)
            status = self.writer.wait(timeout=DEADLINE_SECONDS)
        finally:
            for process in (self.writer, self.head):
                if process.poll() is None:
                    process.kill()
                    process.wait()
        self._reader.join(DEADLINE_SECONDS)
        return out, status


def _assert_quiet(stderr: str) -> None:
    for word in ("Traceback", "BrokenPipeError", "Exception ignored"):
        assert word not in stderr, stderr


def test_state_export_into_head_ends_quietly(tmp_path: Path) -> None:
    """`state export | head -1` on a real state database of 20,000 files (far more than
    a pipe holds): head prints one line, multiwatch exits 141 with nothing on stderr."""
    watched = tmp_path / "w"
    watched.mkdir()
    state = tmp_path / "state"
    roster = write_roster(tmp_path / "r.yaml", {
        "state_dir": str(state), "instances": [{"id": "w", "directory": str(watched)}]})
    store = StateStore(state_db_path(str(state), "w"))
    store.commit({f"album/track-{n:05d}.flac": Hashed(FileVersion(n, n, n), "a" * 64, "b" * 32,
                                                      ctime_ns=n)
                  for n in range(20_000)}, [])
    store.close()

    pipeline = Pipeline("state", "export", "-c", str(roster))
    out, status = pipeline.finish()
    assert out.count("\n") == 1 and '"instance_id": "w"' in out
    assert status == EXIT_BROKEN_PIPE == 141
    _assert_quiet(pipeline.stderr)
    assert pipeline.stderr == ""


def _queue_exists(broker_url: str, name: str) -> bool:
    with Connection(broker_url) as connection:
        try:
            connection.default_channel.queue_declare(name, passive=True)
        except ResourceLocked:  # (405: another connection's exclusive queue, so it exists)
            return True
        except NotFound:
            return False
        return True


def _tap_name(stderr: str) -> str:
    return stderr.split("tailing ", 1)[1].split(" ", 1)[0]


# One event: tail must notice head left while idle.  3,000 (120 kB, more than a pipe
# holds): a print meets the closed pipe.
@pytest.mark.parametrize("events", [1, 3000])
def test_tail_tap_into_head_ends_quietly_and_leaves_no_queue(
        tmp_path: Path, inbox: Path, broker_url: str, events: int) -> None:
    """`tail --tap | head -1` on the real broker: after head has its line, tail exits 141
    with no traceback (whether more events come, or none: it notices the reader left),
    and its private queue is gone from the broker."""
    roster = write_roster(tmp_path / "r.yaml", {
        "state_dir": str(tmp_path / "state"), "broker": {"url": broker_url},
        "instances": [{"id": "inbox", "directory": str(inbox)}]})
    pipeline = Pipeline("tail", "-c", str(roster), "--tap")
    tap = _tap_name(pipeline.wait_for_stderr(" (Ctrl-C to stop)"))
    assert tap.startswith("multiwatch-tail-") and _queue_exists(broker_url, tap)
    exchange = Exchange("file_events", type="topic", durable=True)
    with Connection(broker_url) as connection:
        producer = Producer(connection.channel(), exchange)
        for n in range(events):
            producer.publish({"event_type": "file_created", "n": n},
                             routing_key="file.created")
    started = time.monotonic()
    out, status = pipeline.finish()
    assert out == '{"event_type": "file_created", "n": 0}\n'
    assert status == EXIT_BROKEN_PIPE
    assert time.monotonic() - started < 5, "tail kept running after head left"
    _assert_quiet(pipeline.stderr)
    assert not _queue_exists(broker_url, tap)


def test_run_into_head_goes_on_announcing_without_a_traceback(tmp_path: Path,
                                                             inbox: Path) -> None:
    """`run | head -1`: once head has its line, the supervisor and its watcher say once each
    on stderr that their log lines are discarded, print no "Logging error" traceback, keep
    announcing files, and stop cleanly on SIGTERM (exit 0)."""
    roster = write_roster(tmp_path / "r.yaml", {
        "state_dir": str(tmp_path / "state"), "defaults": {"settle_seconds": 0.1},
        "supervisor": {"report_interval_seconds": 1},  # a supervisor line every second
        "instances": [{"id": "inbox", "directory": str(inbox)}]})
    pipeline = Pipeline("run", "-c", str(roster))
    try:
        assert pipeline.head.stdout is not None
        assert "supervisor started" in pipeline.head.stdout.read()  # head's one line
        pipeline.head.wait(DEADLINE_SECONDS)
        (inbox / "after-head.txt").write_bytes(b"x")  # (logged by the watcher)
        pipeline.wait_for_stderr("multiwatch: inbox: stdout's reader went away")
        pipeline.wait_for_stderr("multiwatch: supervisor: stdout's reader went away")
        tail = subprocess.run(multiwatch_command("tail", "-c", str(roster), "-n", "1",
                                                 "--timeout", str(DEADLINE_SECONDS)),
                              capture_output=True, text=True, timeout=60)
        assert '"relative_path": "after-head.txt"' in tail.stdout, tail.stderr
        os.killpg(pipeline.writer.pid, signal.SIGTERM)
        _, status = pipeline.finish()
    finally:
        if pipeline.writer.poll() is None:
            os.killpg(pipeline.writer.pid, signal.SIGKILL)
            pipeline.writer.wait()
    assert status == 0
    _assert_quiet(pipeline.stderr)
    assert pipeline.stderr.count("reader went away") == 2, pipeline.stderr
