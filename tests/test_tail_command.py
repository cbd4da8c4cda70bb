"""`multiwatch tail` against what a hostile publisher can put on the queue: bodies that try
to drive the terminal, a refused content type (pickle), invalid JSON or UTF-8."""

from __future__ import annotations

import json
import pickle
import select
import subprocess
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer, Queue

from multiwatch.cli.tail import escape_controls, printable_event
from tests.support.process import (
    Multiwatch,
    free_port,
    multiwatch_command,
    run_cli,
    write_roster,
)

TERMINAL_TRICKS = "\x1b]0;owned\x07\x1b[2J\u009b31m\u202eevil\u2028\x7f"


def test_escape_controls_leaves_nothing_a_terminal_acts_on() -> None:
    """ESC, BEL, C1 (8-bit CSI), DEL, bidi overrides and line separators become \\uXXXX."""
    escaped = escape_controls(f"ok é {TERMINAL_TRICKS}")
    assert escaped.startswith("ok é ")
    assert all(c.isprintable() and c not in "\u202e\u2028" for c in escaped)
    assert "\\u001b]0;owned\\u0007" in escaped and "\\u009b31m" in escaped


@pytest.mark.parametrize("body, content_type, encoding, why", [
    (pickle.dumps({"x": 1}), "application/x-python-serialize", "binary", "not JSON, refused"),
    (b'{"path": "\x1b[31m"}', "application/json", "utf-8", "the body is not JSON"),
    (b'{"path": "\xff"}', "application/json", "utf-8", "not UTF-8 (byte 10)"),
    (b"{}", "application/json", "latin-1", "not UTF-8, refused"),
])
def test_a_body_that_is_not_utf8_json_is_refused(
        body: bytes, content_type: str, encoding: str, why: str) -> None:
    """Anything but UTF-8 JSON is refused with the reason."""
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        printable_event(body, content_type, encoding)


def test_tail_escapes_hostile_bodies_and_rejects_what_it_cannot_decode_once(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """A pickle message, invalid JSON with raw escape sequences, bad UTF-8 and two JSON
    events whose strings hold terminal controls: tail prints the two escaped, reports the
    three on stderr in one line each, exits 0; a second run sees none of them again."""
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker_url, "queue": "tail_hostile"},
        "instances": [{"id": "inbox", "directory": str(inbox)}],
    })
    events = [{"event_type": "file_created", "path": f"/in/{TERMINAL_TRICKS}"},
              {"event_type": "file_created", "path": "/in/caf\u00e9 \\u001b plain"}]
    bodies = [
        (pickle.dumps({"boom": True}), "application/x-python-serialize", "binary"),
        (json.dumps(events[0], ensure_ascii=False).encode(), "application/json", "utf-8"),
        (b'{"path": "\x1b]0;owned\x07\x1b[2J"}', "application/json", "utf-8"),
        (b'{"path": "\xff\xfe"}', "application/json", "utf-8"),
        (json.dumps(events[1]).encode(), "application/json", "utf-8"),
    ]
    exchange = Exchange("file_events", type="topic", durable=True)
    queue = Queue("tail_hostile", exchange, routing_key="file.#", durable=True)
    with Connection(broker_url) as connection:
        producer = Producer(connection.channel(), exchange)
        for body, content_type, encoding in bodies:
            producer.publish(body, routing_key="file.created", content_type=content_type,
                             content_encoding=encoding, declare=[queue], message_id="m")

    first = run_cli("tail", "-c", str(roster), "-n", "2", "--timeout", "20", timeout=60)
    assert first.returncode == 0, first.stderr
    for stream in (first.stdout, first.stderr):
        assert not any(c in stream for c in "\x1b\x07\x7f\u009b\u202e\u2028"), repr(stream)
    assert [json.loads(line) for line in first.stdout.splitlines()] == events
    skipped = [line for line in first.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 3, first.stderr
    assert all(line.endswith("rejected without requeue") for line in skipped)
    assert "'application/x-python-serialize' is not JSON" in skipped[0]
    assert "Traceback" not in first.stderr

    second = run_cli("tail", "-c", str(roster), "--timeout", "2", timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "" and "skipped" not in second.stderr


def test_tail_before_run_waits_for_the_spool_then_prints_events(tmp_path: Path,
                                                                 inbox: Path) -> None:
    """Embedded spool: `tail` started before `run` says there is nothing to tail yet and
    creates nothing; once `run` starts, the file dropped is printed and tail exits 0."""
    state = tmp_path / "state"
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(state), "defaults": {"settle_seconds": 0.1},
        "instances": [{"id": "inbox", "directory": str(inbox)}]})
    tail = subprocess.Popen(multiwatch_command("tail", "-c", str(roster), "-n", "1",
                                               "--timeout", "60"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    mw: Multiwatch | None = None
    try:
        assert tail.stderr is not None
        ready, _, _ = select.select([tail.stderr], [], [], 30)
        assert ready, "tail said nothing within 30 s"
        assert "nothing to tail yet" in tail.stderr.readline()
        assert not state.exists() and tail.poll() is None
        mw = Multiwatch(["-c", str(roster)])
        mw.wait_watching("inbox")
        (inbox / "late.txt").write_bytes(b"late")
        out, _ = tail.communicate(timeout=60)
        assert tail.returncode == 0
        assert json.loads(out)["file_info"]["path"] == str(inbox / "late.txt")
        assert mw.terminate() == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
        if mw is not None:
            mw.cleanup()


def test_a_broker_that_cannot_be_reached_is_named_in_words(tmp_path: Path) -> None:
    """tail against a closed port says "connection refused" with the masked URL: no Python
    exception name, no password."""
    (tmp_path / "w").mkdir()
    url = f"amqp://bob:S3cret@127.0.0.1:{free_port()}/"
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": url, "connect_timeout_seconds": 2},
        "instances": [{"id": "w", "directory": str(tmp_path / "w")}]})
    result = run_cli("tail", "-c", str(roster), "--tap", "-n", "1")
    assert result.returncode == 1
    assert "connection refused" in result.stderr, result.stderr
    assert "bob:****@127.0.0.1" in result.stderr and "S3cret" not in result.stderr
    assert "Error" not in result.stderr and "Traceback" not in result.stderr
