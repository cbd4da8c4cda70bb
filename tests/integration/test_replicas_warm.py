"""A warm standby (roster `ha`): it applies the active replica's events to a state database of
its own, so that at takeover it announces only what the active one had not announced, and
hashes nothing it already knows.  Real processes, a real RabbitMQ, every file counted by a
consumer."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import urllib.parse
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.support.consumer import (
    _json_array,
    collect,
    declare_queue,
    vhost_of,
    wait_for,
)
from tests.support.frozen import FreezableProxy, url_via
from tests.support.process import LogLine, Multiwatch, free_port, run_cli
from tests.support.rabbitmq import RabbitMQ
from tests.support.replicas import (
    QUEUE,
    TAKEOVER,
    ids_by_name,
    readyz_code,
    replica_roster,
    role_of,
    start_pair,
    status_of,
    write_numbered,
)

SCAN_COMPLETE = "startup scan complete"
REANNOUNCED = "re-announcing the previous active replica's in-flight window"



def _export(roster: Path) -> dict[str, dict[str, Any]]:
    """relative path → its row, as `multiwatch state export` prints the instance's state.db."""
    out = run_cli("state", "export", "-c", str(roster), timeout=30)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    return {row["relative_path"]: row for row in rows}


def _ready_now(port: int) -> int:
    """/readyz's status, 0 while the supervisor does not answer yet."""
    try:
        return readyz_code(port)
    except OSError:
        return 0


def _heartbeat(port: int) -> dict[str, Any]:
    try:
        return dict(status_of(port)["instances"]["music"].get("heartbeat") or {})
    except (OSError, KeyError):
        return {}


def _standby_objects(rabbitmq: RabbitMQ, vhost: str) -> list[str]:
    """The standby queues and exchanges left in the vhost."""
    names = []
    for kind in ("list_queues", "list_exchanges"):
        out = rabbitmq.rabbitmqctl(kind, "-p", vhost, "name", "--formatter", "json")
        names += [str(row.get("name")) for row in _json_array(out)
                  if str(row.get("name", "")).startswith("multiwatch.standby.")]
    return names


def test_a_warm_standby_takes_over_announcing_only_what_is_new_and_hashing_nothing_known(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ,
        started: list[Multiwatch]) -> None:
    """Two supervisors on two state_dirs (two hosts): the standby's own state database follows
    what the active replica announces (discoveries, a modification, a deletion, a rename);
    after kill -9 of the active one, the standby announces only the files written since, and
    hashes none of the others."""
    declare_queue(broker_url, QUEUE)
    declare_queue(broker_url, "everything", binding_key="#")  # a catch-all consumer
    ports = free_port(), free_port()
    rosters = [replica_roster(tmp_path, name, inbox, state=tmp_path / name, port=port,
                       broker_url=broker_url) for name, port in zip("ab", ports, strict=True)]
    first, second = start_pair(started, ports, *rosters)
    wait_for(lambda: _ready_now(ports[1]) == 200, 15,
             message="a warm standby is ready")
    assert _heartbeat(ports[1]).get("standby_warm") is True
    assert len(_standby_objects(rabbitmq, vhost_of(broker_url))) == 2  # a queue, an exchange

    before = write_numbered(inbox, range(0, 20))
    received = collect(broker_url, QUEUE, timeout=30,
                       until=lambda got: set(ids_by_name(got)) >= before)
    (inbox / "f000.txt").write_text("changed content")
    (inbox / "f001.txt").unlink()
    (inbox / "f002.txt").rename(inbox / "g002.txt")
    received += collect(broker_url, QUEUE, timeout=30, until=lambda got: (
        "f000.txt" in ids_by_name(got, "file_modified")
        and "f001.txt" in ids_by_name(got, "file_deleted")
        and "g002.txt" in ids_by_name(got, "file_moved")))
    expected = (before - {"f001.txt", "f002.txt"}) | {"g002.txt"}
    wait_for(lambda: set(_export(rosters[1])) == expected, 30,
             message="the standby's state database follows the announcements")
    mine, theirs = _export(rosters[1]), _export(rosters[0])
    assert mine == {path: row for path, row in theirs.items()}, \
        "the standby tracks the very versions the active replica announced"
    # The active replica drained its outbox, every event confirmed: its settled marker
    # empties the standby's in-flight window.
    wait_for(lambda: _db_count(tmp_path / "b", "in_flight") == 0, 15,
             message="the standby's in-flight window is emptied by the settled marker")

    first.cleanup()  # kill -9 of the active supervisor's process group
    after = write_numbered(inbox, range(20, 30))
    second.wait_for_log(lambda line: line.get("message") == TAKEOVER, timeout=30)
    window = second.wait_for_log(lambda line: line.get("message", "").startswith(
        REANNOUNCED), timeout=30)
    scan = second.wait_for_log(lambda line: line.get("message") == SCAN_COMPLETE, timeout=60)
    since = collect(broker_url, QUEUE, timeout=60,
                    until=lambda got: set(ids_by_name(got)) >= after)
    published = {m.properties["message_id"] for m in received}
    new = [m for m in since if m.properties["message_id"] not in published]
    again = [m for m in since if m.properties["message_id"] in published]
    assert set(ids_by_name(new)) == after, "only the files written since the kill are new"
    assert {m.body["event_type"] for m in new} == {"file_discovered"}
    # The active replica had seen every confirm (its settled marker): nothing it
    # announced is published again, though the takeover comes seconds after its events.
    assert again == [] and window["events"] == 0, "nothing announced before is repeated"
    assert scan["files_hashed"] <= len(after), "none of the files it knew were hashed"
    assert scan["bytes_hashed"] <= sum((inbox / name).stat().st_size for name in after)
    assert all(len(ids) == 1 for ids in ids_by_name(received + since).values())
    everything = collect(broker_url, "everything", binding_key="#", timeout=30,
                         until=lambda got: len(got) >= len(received) + len(since))
    assert len(everything) >= len(received) + len(since), \
        "a catch-all consumer gets events only (no settled marker: collect checks each)"
    wait_for(lambda: role_of(ports[1]) == "active", 15, message="the survivor shows active")
    assert _standby_objects(rabbitmq, vhost_of(broker_url)) == [], \
        "the active replica's standby queue (and its exchange) are gone"
    assert second.terminate() == 0


def test_events_the_killed_active_replica_had_not_sent_are_announced_by_the_new_one(
        tmp_path: Path, inbox: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """One host, one state_dir: the active replica's link to the broker freezes, it records
    new files in its outbox and cannot send them, and is killed (-9).  The warm standby takes
    over once the broker drops the silent connection: its reconcile finds the unsent files
    on disk (its own state lacks them) and announces them; nothing is lost."""
    declare_queue(broker_url, QUEUE)
    state = tmp_path / "state"
    parts = urllib.parse.urlsplit(broker_url)
    proxy = FreezableProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    try:
        ports = free_port(), free_port()
        first = Multiwatch(["-c", str(replica_roster(
            tmp_path, "a", inbox, state=state, port=ports[0],
            broker_url=url_via(broker_url, proxy.port)))])
        started.append(first)
        first.wait_watching("music")
        second = Multiwatch(["-c", str(replica_roster(tmp_path, "b", inbox, state=state,
                                               port=ports[1], broker_url=broker_url))])
        started.append(second)
        wait_for(lambda: role_of(ports[0]) == "active" and _ready_now(ports[1]) == 200, 15,
                 message="active, and a warm standby")
        before = write_numbered(inbox, range(0, 10))
        received = collect(broker_url, QUEUE, timeout=30,
                           until=lambda got: set(ids_by_name(got)) >= before)
        wait_for(lambda: _heartbeat(ports[1]).get("files_tracked") == len(before), 30,
                 message="the standby applied the announcements")

        proxy.freeze()
        unsent = write_numbered(inbox, range(10, 15))
        for name in unsent:
            first.wait_for_log(partial(_discovered, name), timeout=30)
        first.cleanup()  # kill -9, its events still in the outbox of state.db
        db = state / "instances" / "music" / "state.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] >= len(unsent)
        second.wait_for_log(lambda line: line.get("message") == TAKEOVER, timeout=60)
        received += collect(broker_url, QUEUE, timeout=60,
                            until=lambda got: set(ids_by_name(received + got)) >= before | unsent)
        announced = ids_by_name(received)
        assert set(announced) == before | unsent, "nothing lost"
        assert all(len(ids) == 1 for ids in announced.values()), \
            "known files announced again only from the in-flight window, same message ids"
        assert second.terminate() == 0
    finally:
        for mw in started:
            mw.cleanup()
        proxy.close()
    assert os.path.exists(state / "instances" / "music" / "state.1.db"), \
        "the standby kept a database of its own beside the active replica's"


def test_a_replica_that_was_never_warm_announces_again_under_the_same_message_ids(
        tmp_path: Path, inbox: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """A standby started after the files were announced (a new replica, its own state_dir)
    never saw them: taking over after kill -9, it announces each again, under the message
    id the first replica used, so a consumer deduplicating on message_id sees each once."""
    declare_queue(broker_url, QUEUE)
    ports = free_port(), free_port()
    first = Multiwatch(["-c", str(replica_roster(tmp_path, "a", inbox, state=tmp_path / "a",
                                          port=ports[0], broker_url=broker_url))])
    started.append(first)
    first.wait_watching("music")
    before = write_numbered(inbox, range(0, 10))
    received = collect(broker_url, QUEUE, timeout=30,
                       until=lambda got: set(ids_by_name(got)) >= before)
    second = Multiwatch(["-c", str(replica_roster(tmp_path, "b", inbox, state=tmp_path / "b",
                                           port=ports[1], broker_url=broker_url))])
    started.append(second)
    wait_for(lambda: _ready_now(ports[1]) == 200, 15, message="the new standby is ready")
    assert _heartbeat(ports[1]).get("files_tracked") == 0

    first.cleanup()  # kill -9
    second.wait_for_log(lambda line: line.get("message") == TAKEOVER, timeout=30)
    again = collect(broker_url, QUEUE, timeout=60,
                    until=lambda got: set(ids_by_name(got)) >= before)
    assert set(ids_by_name(again)) == before, "every file announced again"
    assert ids_by_name(again) == ids_by_name(received), "under the same message ids"
    assert second.terminate() == 0


@pytest.mark.parametrize("fault", ["kill -9", "SIGSTOP"])
def test_events_the_standby_applied_but_the_active_never_saw_confirmed_are_announced_again(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ,
        started: list[Multiwatch], fault: str) -> None:
    """The active replica's last events reach the standby's queue, but not the consumers'
    (a policy makes it refuse every message: the broker nacks them), and the active replica
    is killed (-9) or frozen (SIGSTOP) before any is confirmed.  The warm standby applied
    them, so its reconcile finds nothing to announce: it publishes its in-flight window
    again (those events only: the earlier ones were settled), and the consumer gets every
    file, under the message ids the failed replica used."""
    declare_queue(broker_url, QUEUE)
    vhost = vhost_of(broker_url)
    ports = free_port(), free_port()
    rosters = [replica_roster(tmp_path, name, inbox, state=tmp_path / name, port=port,
                       broker_url=broker_url) for name, port in zip("ab", ports, strict=True)]
    first = Multiwatch(["-c", str(rosters[0])])
    started.append(first)
    first.wait_watching("music")
    second = Multiwatch(["-c", str(rosters[1])])
    started.append(second)
    wait_for(lambda: role_of(ports[0]) == "active" and _ready_now(ports[1]) == 200, 15,
             message="active, and a warm standby")
    before = write_numbered(inbox, range(0, 5))
    received = collect(broker_url, QUEUE, timeout=30,
                       until=lambda got: set(ids_by_name(got)) >= before)

    rabbitmq.rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "refuse",
                         f"^{QUEUE}$", json.dumps({"max-length": 0,
                                                   "overflow": "reject-publish"}))
    try:
        refused = write_numbered(inbox, range(5, 10))
        first.wait_for_log(lambda line: str(line.get("message", "")).startswith(
            "event rejected by the broker"), timeout=30)
        # The refused event is held at the head of the active replica's outbox, so the
        # events written behind it are published only if they rode in its batch: what the
        # standby applied is fixed once its queue is drained (retries of the held event
        # change nothing), and that is the window.
        wait_for(lambda: _db_count(tmp_path / "b", "files") > len(before)
                 and _standby_queue_drained(rabbitmq, vhost), 30,
                 message="the standby applied the events the consumers' queue refused")
        applied = _db_count(tmp_path / "b", "files") - len(before)
        if fault == "SIGSTOP":  # frozen, not dead: the broker drops it after heartbeats
            os.killpg(first.pid, signal.SIGSTOP)
        else:
            first.cleanup()  # kill -9: none of them confirmed
    finally:
        rabbitmq.rabbitmqctl("clear_policy", "-p", vhost, "refuse")
    second.wait_for_log(lambda line: line.get("message") == TAKEOVER, timeout=30)
    window = second.wait_for_log(lambda line: line.get("message", "").startswith(
        REANNOUNCED), timeout=30)
    assert window["events"] == applied, "only the events never confirmed"
    received += collect(broker_url, QUEUE, timeout=60,
                        until=lambda got: set(ids_by_name(received + got)) >= before | refused)
    announced = ids_by_name(received)
    assert set(announced) == before | refused, "nothing lost"
    assert all(len(ids) == 1 for ids in announced.values()), "one message id per file"
    assert second.terminate() == 0


def _standby_queue_drained(rabbitmq: RabbitMQ, vhost: str) -> bool:
    """Every standby queue of the vhost holds no message, delivered or not."""
    out = rabbitmq.rabbitmqctl("list_queues", "-p", vhost, "name", "messages",
                               "--formatter", "json")
    queues = [q for q in json.loads(out or "[]")
              if str(q.get("name", "")).startswith("multiwatch.standby.")]
    return bool(queues) and all(int(q.get("messages", 1)) == 0 for q in queues)


def _db_count(state_dir: Path, table: str) -> int:
    """Rows of a table in a replica's state.db, read as they are committed (not a heartbeat
    later); -1 if unreadable."""
    db = state_dir / "instances" / "music" / "state.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return -1


def _discovered(name: str, line: LogLine) -> bool:
    """A log line announcing a file whose path ends with `name`."""
    return line.get("message") == "file discovered" and str(line.get("path", "")).endswith(name)
