"""`multiwatch resync` in process: what it queues, what it skips, its bound and its progress."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from multiwatch.cli import main
from multiwatch.cli import resync as resync_command
from multiwatch.watcher.state import DurableOutbox, state_db_path
from tests.support.process import write_roster
from tests.support.tracked_state import track_written


def _setup(tmp_path: Path, inbox: Path, names: list[str], **instance: object) -> Path:
    """A roster, and a state that announced `names` (their current versions)."""
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "instances": [{"id": "inbox", "directory": str(inbox), **instance}],
    })
    track_written(state_db_path(str(tmp_path / "state"), "inbox"), inbox, names)
    return roster


def _queued(tmp_path: Path) -> list[dict[str, object]]:
    outbox = DurableOutbox(state_db_path(str(tmp_path / "state"), "inbox"))
    try:
        return [json.loads(event.body) for _seq, event in outbox.peek(1000)]
    finally:
        outbox.close()


def test_files_changed_on_disk_are_skipped_and_counted(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only versions still on disk are re-announced, with the recorded hashes."""
    roster = _setup(tmp_path, inbox, ["a.txt", "b.txt", "c.txt"])
    (inbox / "b.txt").write_bytes(b"changed since")
    (inbox / "c.txt").unlink()
    assert main(["resync", "-c", str(roster), "inbox"]) == 0
    err = capsys.readouterr().err
    assert "1 event queued for instance inbox" in err and "2 skipped" in err
    (body,) = _queued(tmp_path)
    assert body["file_info"]["relative_path"] == "a.txt"  # type: ignore[index]
    assert body["file_info"]["sha256_hash"] == hashlib.sha256(b"a.txt").hexdigest()  # type: ignore[index]


def test_a_resync_beyond_the_outbox_bound_is_refused(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """More files than outbox_max_events: a one-line refusal, nothing queued."""
    roster = _setup(tmp_path, inbox, ["a", "b", "c"], outbox_max_events=2)
    assert main(["resync", "-c", str(roster), "inbox"]) == 2
    err = capsys.readouterr().err
    assert "exceed its outbox_max_events (2)" in err and len(err.splitlines()) == 1
    assert _queued(tmp_path) == []


def test_a_big_resync_shows_progress(tmp_path: Path, inbox: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress lines on stderr while it runs (here after every file), then the summary."""
    roster = _setup(tmp_path, inbox, [f"d/{n}.txt" for n in range(5)] + ["other.txt"])
    monkeypatch.setattr(resync_command, "PROGRESS_EVERY_SECONDS", 0.0)
    assert main(["resync", "-c", str(roster), "inbox", "d"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "resync inbox: 5 of 5 files looked at, 5 queued" in err
    assert err[-1].startswith("5 events queued for instance inbox")
    assert len(_queued(tmp_path)) == 5


def test_an_untracked_path_and_a_never_run_instance_are_clear_errors(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing tracked at PATH, or no state database yet: one line, exit 2."""
    roster = _setup(tmp_path, inbox, ["a.txt"])
    assert main(["resync", "-c", str(roster), "inbox", "nope.txt"]) == 2
    assert "tracks no file there" in capsys.readouterr().err
    other = write_roster(tmp_path / "other.yaml", {
        "state_dir": str(tmp_path / "other-state"),
        "instances": [{"id": "inbox", "directory": str(inbox)}]})
    assert main(["resync", "-c", str(other), "inbox"]) == 2
    assert "has this instance run yet?" in capsys.readouterr().err
    assert not (tmp_path / "other-state").exists()


def test_a_resync_longer_than_a_batch_survives_the_publisher_sending_meanwhile(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The running watcher commits between two batches (its publisher sends the first one):
    every file is still queued, not `database is locked` after the first batch."""
    names = [f"d/{n:05}.txt" for n in range(2 * resync_command.BATCH + 5)]
    roster = _setup(tmp_path, inbox, names)
    db = state_db_path(str(tmp_path / "state"), "inbox")
    real_queue = resync_command.queue_resync

    def queue_then_publisher_sends(conn: object, events: list[object]) -> None:
        real_queue(conn, events)  # type: ignore[arg-type]
        outbox = DurableOutbox(db)  # the watcher's publisher, another connection
        try:
            outbox.ack([seq for seq, _event in outbox.peek(len(events))])
        finally:
            outbox.close()

    monkeypatch.setattr(resync_command, "queue_resync", queue_then_publisher_sends)
    assert main(["resync", "-c", str(roster), "inbox"]) == 0, capsys.readouterr().err
    assert f"{len(names)} events queued for instance inbox" in capsys.readouterr().err


@pytest.mark.parametrize("follow_symlinks", [False, True])
def test_a_file_whose_directory_became_a_symlink_is_skipped(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str],
        follow_symlinks: bool) -> None:
    """d/a.txt announced, then `mv d moved; ln -s moved d`: d/a.txt names the very same
    file through a symlink, which the watcher never follows, so resync skips it instead of
    re-announcing a path that is no longer in the tree (with follow_symlinks too)."""
    roster = _setup(tmp_path, inbox, ["d/a.txt", "b.txt"], follow_symlinks=follow_symlinks)
    (inbox / "d").rename(inbox / "moved")
    (inbox / "d").symlink_to("moved")
    assert main(["resync", "-c", str(roster), "inbox"]) == 0
    assert "1 skipped" in capsys.readouterr().err
    assert [body["file_info"]["relative_path"] for body in _queued(tmp_path)] == [  # type: ignore[index]
        "b.txt"]


def test_a_failure_after_some_batches_says_how_many_were_queued(
        tmp_path: Path, inbox: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fails at the second batch: the error says the first batch is queued."""
    names = [f"d/{n:05}.txt" for n in range(resync_command.BATCH + 5)]
    roster = _setup(tmp_path, inbox, names)
    real_queue = resync_command.queue_resync
    calls: list[int] = []

    def fail_second(conn: object, events: list[object]) -> None:
        calls.append(len(events))
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        real_queue(conn, events)  # type: ignore[arg-type]

    monkeypatch.setattr(resync_command, "queue_resync", fail_second)
    assert main(["resync", "-c", str(roster), "inbox"]) == 2
    err = capsys.readouterr().err
    assert "disk I/O error" in err and f"1000 of {len(names)} events were queued" in err, err
    db = sqlite3.connect(state_db_path(str(tmp_path / "state"), "inbox"))
    try:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1000
    finally:
        db.close()
