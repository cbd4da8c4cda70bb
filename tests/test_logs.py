"""Logs are JSON lines with timestamp, level, instance_id and message, third-party ones too;
aligned console lines on a terminal (log_format auto), or as the roster says."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from multiwatch.config import ConfigError, load_roster, render_effective
from multiwatch.logs import lines_written_together, resolve_log_format, setup_logging
from tests.support.process import multiwatch_command, write_roster


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_own_and_third_party_records_are_json_with_instance_id(capsys, restore_logging) -> None:
    """multiwatch's and kombu's records both come out as JSON tagged with the instance."""
    setup_logging("INFO", "watcher-music")
    logging.getLogger("multiwatch.test").info("file discovered", extra={"path": "/data/a.mp3"})
    logging.getLogger("kombu.connection").warning("broker hiccup")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["message"] for line in lines] == ["file discovered", "broker hiccup"]
    for line in lines:
        assert line["instance_id"] == "watcher-music"
        assert line["timestamp"].endswith("Z")
    assert lines[0]["path"] == "/data/a.mp3"
    assert lines[1]["level"] == "WARNING"


def test_log_level_filters_lower_levels(capsys, restore_logging) -> None:
    """LOG_LEVEL=WARNING hides INFO lines."""
    setup_logging("WARNING", "supervisor")
    logging.getLogger("multiwatch.test").info("chatty")
    logging.getLogger("multiwatch.test").error("important")
    messages = [json.loads(line)["message"] for line in capsys.readouterr().out.splitlines()]
    assert messages == ["important"]


def test_undecodable_path_does_not_break_a_log_line(capsys, restore_logging) -> None:
    """A non-UTF-8 file name (surrogate escapes) still yields one valid JSON line."""
    setup_logging("INFO", "w")
    logging.getLogger("multiwatch.test").info("seen", extra={"path": b"caf\xe9".decode(
        "utf-8", "surrogateescape")})
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["path"] == "caf\udce9"


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_written_together_come_out_in_one_write_in_order(
        monkeypatch: pytest.MonkeyPatch, restore_logging) -> None:
    """A burst's per-file lines (and a line from another thread meanwhile) reach stdout in
    one write, in order; after the block, lines are written one by one again."""
    stream = _CountingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    setup_logging("INFO", "watcher-music")
    log = logging.getLogger("multiwatch.test")

    with lines_written_together():
        for index in range(50):
            log.info("file discovered", extra={"index": index})
        other = threading.Thread(target=lambda: log.warning("from the publisher"))
        other.start()
        other.join()
        assert stream.writes == 0, "lines were written before the block ended"
    assert stream.writes == 1
    log.info("after")

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("index") for line in lines[:50]] == list(range(50))
    assert [line["message"] for line in lines[50:]] == ["from the publisher", "after"]
    assert stream.writes == 2


def test_lines_held_are_written_when_the_block_raises(
        monkeypatch: pytest.MonkeyPatch, restore_logging) -> None:
    stream = _CountingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    setup_logging("INFO", "watcher-music")

    with pytest.raises(RuntimeError), lines_written_together():
        logging.getLogger("multiwatch.test").info("recorded before the failure")
        raise RuntimeError("commit failed")

    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == [
        "recorded before the failure"]


def test_warnings_are_counted_at_log_level_error_though_not_printed(
        capsys, restore_logging) -> None:
    """At log_level ERROR a warning is not printed, yet the errors count still sees it: what
    the instance reports as problems does not depend on the log level."""
    from multiwatch.watcher.stats import ProblemCounter

    setup_logging("ERROR", "watcher-music")
    problems = ProblemCounter()
    logging.getLogger().addHandler(problems)
    try:
        logging.getLogger("multiwatch.watcher.pipeline").warning("cannot read file")
        logging.getLogger("kombu.connection").warning("broker hiccup")  # third-party too
        logging.getLogger("multiwatch.watcher.pipeline").info("file discovered")
    finally:
        logging.getLogger().removeHandler(problems)
    assert problems.count == 2
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------ console lines

CONSOLE_LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (?P<level>[A-Z]+ *) (?P<id>\S+ *) "
    r"(?P<message>\S.*)")
MESSAGE_COLUMN = len("2026-12-05 03:34:48.048 WARNING  watcher-music      ")


def test_console_lines_are_aligned_with_fields_as_key_value(capsys, restore_logging) -> None:
    """log_format console: time, padded level and instance id, message, then the extra
    fields as key=value; messages start in one column whatever the level or id."""
    setup_logging("INFO", "watcher-music", "console")
    log = logging.getLogger("multiwatch.test")
    log.info("file discovered", extra={"path": "/data/a b.mp3", "size_bytes": 12})
    log.warning("child exited", extra={"instance_id": "watcher-books", "exitcode": 1})
    logging.getLogger("kombu.connection").error("broker hiccup")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    parsed = [CONSOLE_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [m["id"].strip() for m in parsed] == [  # type: ignore[index]
        "watcher-music", "watcher-books", "watcher-music"]
    assert {line.index(word) for line, word in zip(
        lines, ["file discovered", "child exited", "broker hiccup"], strict=True)} == {
        MESSAGE_COLUMN}
    assert lines[0].endswith('file discovered  path="/data/a b.mp3" size_bytes=12')
    assert lines[1].endswith("child exited  exitcode=1")
    assert lines[2].endswith("broker hiccup  logger=kombu.connection")


def test_console_lines_escape_what_a_file_name_could_do_to_a_terminal(
        capsys, restore_logging) -> None:
    """An escape sequence, a newline or an undecodable byte in a path is shown escaped: one
    line, no control character reaches the terminal."""
    setup_logging("INFO", "w", "console")
    name = "/data/\x1b[2Jred\nline" + b"\xe9".decode("utf-8", "surrogateescape")
    logging.getLogger("multiwatch.test").info("seen %s", name, extra={"path": name})
    out = capsys.readouterr().out
    [line] = out.splitlines()
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", line)
    assert "seen /data/\\u001b[2Jred\\u000aline\\udce9" in line
    assert line.endswith('path="/data/\\u001b[2Jred\\u000aline\\udce9"')


def test_auto_is_console_on_a_terminal_and_json_elsewhere(tmp_path: Path) -> None:
    """auto looks at the stream: a pseudo-terminal gives console, a pipe or a file JSON;
    console and json are taken as given."""
    leader, follower = os.openpty()
    read_end, write_end = os.pipe()
    try:
        with open(follower, "w", closefd=False) as terminal, \
                open(write_end, "w", closefd=False) as pipe, \
                open(tmp_path / "log", "w") as file:
            assert resolve_log_format("auto", terminal) == "console"
            assert resolve_log_format("auto", pipe) == "json"
            assert resolve_log_format("auto", file) == "json"
            assert resolve_log_format("json", terminal) == "json"
            assert resolve_log_format("console", pipe) == "console"
    finally:
        for descriptor in (leader, follower, read_end, write_end):
            os.close(descriptor)


def test_roster_and_environment_choose_the_format(tmp_path: Path) -> None:
    """log_format in the roster (any case), else $LOG_FORMAT, else auto; a wrong value is
    one clear error naming the choices."""
    watched = tmp_path / "w"
    watched.mkdir()
    roster = {"state_dir": str(tmp_path / "state"),
              "instances": [{"id": "a", "directory": str(watched)}]}
    path = write_roster(tmp_path / "r.yaml", roster)
    assert load_roster(str(path), {}).log_format == "auto"
    assert load_roster(str(path), {"LOG_FORMAT": "json"}).log_format == "json"
    path = write_roster(tmp_path / "r.yaml", {**roster, "log_format": "Console"})
    assert load_roster(str(path), {"LOG_FORMAT": "json"}).log_format == "console"
    assert "log_format: console\n" in render_effective(load_roster(str(path), {}))
    path = write_roster(tmp_path / "r.yaml", {**roster, "log_format": "pretty"})
    with pytest.raises(ConfigError, match=r'log_format: unknown log format "pretty"; '
                                          r"use one of auto, console, json"):
        load_roster(str(path), {})


class TerminalRun:
    """`multiwatch run` with its stdout on a pseudo-terminal (as in a shell), or on a pipe;
    stderr apart.  Lines are collected as they come; the process group is stopped at the end."""

    def __init__(self, roster: Path, *, terminal: bool) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("MULTIWATCH_CONFIG", "LOG_FORMAT")}
        env["MULTIWATCH_HTTP_LISTEN"] = "off"
        leader, follower = os.openpty() if terminal else os.pipe()
        self.process = subprocess.Popen(
            multiwatch_command("run", "-c", str(roster)), stdin=subprocess.DEVNULL,
            stdout=follower, stderr=subprocess.PIPE, env=env, start_new_session=True)
        os.close(follower)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(leader,), daemon=True)
        self._reader.start()

    def _read(self, descriptor: int) -> None:
        pending = b""
        try:
            while chunk := os.read(descriptor, 65536):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                with self._changed:  # a terminal ends lines with \r\n
                    self.lines += [line.decode().rstrip("\r") for line in complete]
                    self._changed.notify_all()
        except OSError:  # EIO: the terminal's last writer closed it
            pass
        finally:
            os.close(descriptor)

    def wait_for(self, *words: str) -> str:
        """The first line holding every word, within the deadline."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        with self._changed:
            while True:
                found = [line for line in self.lines if all(w in line for w in words)]
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                assert remaining > 0 and self.process.poll() is None, "\n".join(self.lines)
                self._changed.wait(min(remaining, 0.2))

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=DEADLINE_SECONDS)
        except ProcessLookupError:
            pass
        self._reader.join(DEADLINE_SECONDS)
        assert self.process.stderr is not None
        self.process.stderr.close()


DEADLINE_SECONDS = 30.0


def _run_and_announce(tmp_path: Path, *, terminal: bool, **settings: str) -> list[str]:
    """Run a one-instance roster, create a file, and return stdout's lines once the
    watcher announced it (the supervisor's and the watcher's lines both)."""
    watched = tmp_path / "music"
    watched.mkdir()
    roster = write_roster(tmp_path / "r.yaml", {
        "state_dir": str(tmp_path / "state"), **settings,
        "instances": [{"id": "watcher-music", "directory": str(watched)}]})
    run = TerminalRun(roster, terminal=terminal)
    try:
        run.wait_for("watching")
        (watched / "a b.flac").write_bytes(b"x" * 100)
        run.wait_for("file discovered")
        return list(run.lines)
    finally:
        run.stop()


def _json_lines(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines]


def test_run_on_a_terminal_prints_aligned_console_lines(tmp_path: Path) -> None:
    """`multiwatch run` in a terminal: no JSON; the supervisor's and the watcher child's
    lines are aligned console lines, the announcement's fields as key=value."""
    lines = _run_and_announce(tmp_path, terminal=True)
    assert lines and not any(line.startswith("{") for line in lines), lines
    parsed = [CONSOLE_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    ids = {m["id"].strip() for m in parsed if m}
    assert {"supervisor", "watcher-music"} <= ids
    assert {m.start("message") for m in parsed if m} == {MESSAGE_COLUMN}
    [announced] = [line for line in lines if "file discovered" in line]
    assert announced.split()[3] == "watcher-music"
    assert f'path="{tmp_path}/music/a b.flac"' in announced
    assert "event_type=file_discovered size_bytes=100" in announced


def test_run_into_a_pipe_prints_json_lines(tmp_path: Path) -> None:
    """The same run with stdout a pipe (log_format auto): every line is JSON, from the
    supervisor and from the watcher."""
    entries = _json_lines(_run_and_announce(tmp_path, terminal=False))
    assert {"supervisor", "watcher-music"} <= {entry["instance_id"] for entry in entries}
    assert any(entry["message"] == "file discovered" and entry["size_bytes"] == 100
               for entry in entries)


def test_log_format_json_on_a_terminal_prints_json_lines(tmp_path: Path) -> None:
    """`log_format: json` in the roster wins over the terminal: JSON lines from the
    supervisor and the watcher (for a terminal that is recorded, or a log shipper on a tty)."""
    entries = _json_lines(_run_and_announce(tmp_path, terminal=True, log_format="json"))
    assert {"supervisor", "watcher-music"} <= {entry["instance_id"] for entry in entries}
    assert any(entry["message"] == "file discovered" for entry in entries)
