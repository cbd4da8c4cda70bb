"""`multiwatch resync`: re-announcements on a real RabbitMQ, while running and at the next start."""

from __future__ import annotations

from pathlib import Path

from tests.support.consumer import Received, collect, declare_queue
from tests.support.process import Multiwatch, run_cli, write_roster

QUEUE = "resync-test"


def _roster(tmp_path: Path, broker_url: str, inbox: Path) -> Path:
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker_url},
        "defaults": {"settle_seconds": 0.2},
        "supervisor": {"stop_timeout_seconds": 5},
        "instances": [{"id": "inbox", "directory": str(inbox)}],
    })


def _tree(inbox: Path) -> None:
    (inbox / "top.txt").write_bytes(b"top")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "one.txt").write_bytes(b"one")
    (inbox / "sub" / "two.txt").write_bytes(b"two")


def _paths(messages: list[Received]) -> list[str]:
    return sorted(m.body["file_info"]["relative_path"] for m in messages)


def test_resync_while_running_reannounces_with_header_and_new_ids(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """A running watcher publishes a resync: same files and hashes, new message_ids, the header."""
    declare_queue(broker_url, QUEUE)
    _tree(inbox)
    roster = _roster(tmp_path, broker_url, inbox)
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("inbox")
        first = collect(broker_url, QUEUE, until=lambda r: len(r) >= 3, timeout=30)
        assert _paths(first) == ["sub/one.txt", "sub/two.txt", "top.txt"]

        done = run_cli("resync", "-c", str(roster), "inbox")
        assert done.returncode == 0, done.stderr
        assert "3 events queued for instance inbox" in done.stderr
        again = collect(broker_url, QUEUE, until=lambda r: len(r) >= 3, timeout=30)
        assert _paths(again) == _paths(first)
        assert all(m.headers.get("x-multiwatch-resync") is True for m in again)
        assert all(m.body["resync"] is True and m.body["event_type"] == "file_discovered"
                   for m in again)
        old = {m.body["file_info"]["relative_path"]: m for m in first}
        for message in again:
            before = old[message.body["file_info"]["relative_path"]]
            assert message.properties["message_id"] != before.properties["message_id"]
            assert message.body["file_info"]["sha256_hash"] == \
                before.body["file_info"]["sha256_hash"]
        assert len({m.properties["message_id"] for m in again}) == 3

        subtree = run_cli("resync", "-c", str(roster), "inbox", str(inbox / "sub"))
        assert subtree.returncode == 0, subtree.stderr
        only_sub = collect(broker_url, QUEUE, until=lambda r: len(r) >= 2, timeout=30)
        assert _paths(only_sub) == ["sub/one.txt", "sub/two.txt"]
        # Nothing else follows (the whole tree was not re-announced).
        assert collect(broker_url, QUEUE, until=lambda r: False, timeout=1.5) == []
        # A second request gets ids of its own: a deduplicating consumer keeps both.
        assert {m.properties["message_id"] for m in only_sub}.isdisjoint(
            m.properties["message_id"] for m in again)
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def test_resync_while_stopped_is_published_at_next_start(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """Queued while multiwatch is stopped, one file's re-announcement goes out when it starts."""
    declare_queue(broker_url, QUEUE)
    _tree(inbox)
    roster = _roster(tmp_path, broker_url, inbox)
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("inbox")
        assert len(collect(broker_url, QUEUE, until=lambda r: len(r) >= 3, timeout=30)) == 3
        assert mw.terminate() == 0
    finally:
        mw.cleanup()

    done = run_cli("resync", "-c", str(roster), "inbox", "sub/two.txt")
    assert done.returncode == 0, done.stderr
    assert "1 event queued for instance inbox" in done.stderr
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("inbox")
        after = collect(broker_url, QUEUE, until=lambda r: len(r) >= 1, timeout=30)
        assert _paths(after) == ["sub/two.txt"]
        assert after[0].headers.get("x-multiwatch-resync") is True
        assert collect(broker_url, QUEUE, until=lambda r: False, timeout=1.5) == []
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def test_resync_refuses_unknown_ids_and_outside_paths(tmp_path: Path, inbox: Path) -> None:
    """A typo gets a did-you-mean, a path outside the directory a one-line error; exit 2."""
    roster = _roster(tmp_path, "amqp://guest:guest@127.0.0.1:1//", inbox)
    typo = run_cli("resync", "-c", str(roster), "inbx")
    assert typo.returncode == 2 and "did you mean inbox?" in typo.stderr
    outside = run_cli("resync", "-c", str(roster), "inbox", str(tmp_path))
    assert outside.returncode == 2 and "not inside" in outside.stderr
    for result in (typo, outside):
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
