"""Replicas (roster `ha`): two supervisors run one instance, one announces, the other stands
by and takes over when the first is killed.  Real processes, a real RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.consumer import (
    _json_array,
    _table,
    collect,
    declare_queue,
    vhost_of,
    wait_for,
)
from tests.support.frozen import FreezableProxy, url_via
from tests.support.process import Multiwatch, free_port, run_cli, write_roster
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


def _demoted(port: int) -> dict[str, Any]:
    """Instance music in /status once its watcher has exited as a demoted replica."""
    def entry() -> dict[str, Any] | None:
        music: dict[str, Any] = status_of(port)["instances"]["music"]
        return music if music.get("last_exit") == "lost the lease to another replica" else None

    found: dict[str, Any] | None = wait_for(entry, 30,
                                            message="the demoted replica's exit in /status")
    assert found is not None
    return found


def _readyz(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return str(response.read())
    except urllib.error.HTTPError as exc:
        return str(exc.read())


def _connection_roles(rabbitmq: RabbitMQ, vhost: str) -> list[str]:
    out = rabbitmq.rabbitmqctl("list_connections", "vhost", "client_properties",
                               "--formatter", "json")
    roles = []
    for row in _json_array(out):
        properties = row.get("client_properties")
        table = dict(properties) if isinstance(properties, dict) else {
            str(entry[0]): entry[2] for entry in properties or [] if len(entry) == 3}
        if row.get("vhost") == vhost and table.get("connection_name") == "file_watcher_music":
            roles.append(str(table.get("role")))
    return sorted(roles)


def _connection_heartbeats(rabbitmq: RabbitMQ, vhost: str) -> list[int]:
    """The heartbeat each file_watcher_music connection negotiated (rabbitmqctl `timeout`)."""
    out = rabbitmq.rabbitmqctl("list_connections", "vhost", "client_properties", "timeout",
                               "--formatter", "json")
    return sorted(int(row["timeout"]) for row in _json_array(out)
                  if row.get("vhost") == vhost
                  and _table(row.get("client_properties")).get("connection_name")
                  == "file_watcher_music")


def _lease_queues(rabbitmq: RabbitMQ, vhost: str) -> list[str]:
    out = rabbitmq.rabbitmqctl("list_queues", "-p", vhost, "name", "--formatter", "json")
    return [str(row.get("name")) for row in _json_array(out)
            if str(row.get("name", "")).startswith("multiwatch.lease.")]


def test_one_replica_announces_and_the_standby_takes_over_after_kill_9(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ,
        started: list[Multiwatch]) -> None:
    """Two supervisors (two state_dirs, as on two hosts) run one instance: only one
    announces, the other shows standby; once the active one's process group is killed,
    the standby takes over and announces what was written after the kill, nothing lost."""
    vhost = vhost_of(broker_url)
    declare_queue(broker_url, QUEUE)
    ports = free_port(), free_port()
    first = Multiwatch(["-c", str(replica_roster(tmp_path, "a", inbox, state=tmp_path / "a",
                                          port=ports[0], broker_url=broker_url))])
    started.append(first)
    first.wait_watching("music")
    second = Multiwatch(["-c", str(replica_roster(tmp_path, "b", inbox, state=tmp_path / "b",
                                           port=ports[1], broker_url=broker_url))])
    started.append(second)
    second.wait_for_log(lambda line: line.get("message") == "another replica is active; "
                        "standing by")
    wait_for(lambda: role_of(ports[0]) == "active" and role_of(ports[1]) == "standby", 15,
             message="roles in /status")
    wait_for(lambda: readyz_code(ports[1]) == 200, 15,
             message=f"a standby connected to the broker is ready: {_readyz(ports[1])}")
    assert status_of(ports[1])["supervisor"]["role"] == "standby"
    wait_for(lambda: _connection_roles(rabbitmq, vhost) == ["active", "standby"], 15,
             message="each connection names its role in its client properties")
    # Half of heartbeat_seconds (2): a frozen active replica is dropped within 1-1.5 x 2 s.
    assert _connection_heartbeats(rabbitmq, vhost) == [1, 1]

    before = write_numbered(inbox, range(0, 20))
    received = collect(broker_url, QUEUE, timeout=30,
                       until=lambda got: set(ids_by_name(got)) >= before)
    announced = ids_by_name(received)
    assert set(announced) == before
    assert all(len(ids) == 1 for ids in announced.values())
    assert not [line for line in second.lines if line.get("message") == "watching"], \
        "the standby watched nothing"

    first.cleanup()  # kill -9 of the active supervisor's process group
    after = write_numbered(inbox, range(20, 40))
    took_over = second.wait_for_log(lambda line: line.get("message") == TAKEOVER, timeout=30)
    assert took_over["no_active_replica_seconds"] >= 0
    second.wait_watching("music")
    received += collect(broker_url, QUEUE, timeout=60,
                        until=lambda got: set(ids_by_name(received + got)) >= before | after)
    announced = ids_by_name(received)
    assert set(announced) == before | after, "nothing lost"
    # A replica that was never warm announces the files again, under the same message ids.
    assert all(len(ids) == 1 for ids in announced.values())
    wait_for(lambda: role_of(ports[1]) == "active", 15, message="the survivor shows active")
    assert not [line for line in second.lines if line.get("message") == "broker unavailable, "
                "retrying"], "standing by is not a broker failure"

    assert second.terminate() == 0
    assert _lease_queues(rabbitmq, vhost) == [], "the lease queue leaves with its connection"


def test_an_active_replica_cut_off_from_the_broker_hands_over_and_stands_by_once_back(
        tmp_path: Path, inbox: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """The active replica's link to the broker freezes: the broker closes its connection
    (missed heartbeats), the standby takes the lease; the cut-off one, reaching the broker
    again by another route, finds the lease held, stops announcing and comes back as a
    standby.  Every file is announced, each under one message id."""
    declare_queue(broker_url, QUEUE)
    parts = urllib.parse.urlsplit(broker_url)
    proxy = FreezableProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    try:
        ports = free_port(), free_port()
        # Through the proxy first; the direct URL is the route back once the proxy is cut.
        first, second = start_pair(
            started, ports,
            replica_roster(tmp_path, "a", inbox, state=tmp_path / "a", port=ports[0],
                    broker_url=[url_via(broker_url, proxy.port), broker_url]),
            replica_roster(tmp_path, "b", inbox, state=tmp_path / "b", port=ports[1],
                    broker_url=broker_url))
        before = write_numbered(inbox, range(0, 10))
        received = collect(broker_url, QUEUE, timeout=30,
                           until=lambda got: set(ids_by_name(got)) >= before)

        proxy.freeze()
        after = write_numbered(inbox, range(10, 20))
        second.wait_for_log(lambda line: line.get("message") == TAKEOVER, timeout=60)
        first.wait_for_log(lambda line: str(line.get("message", "")).startswith(
            "another replica holds the lease now"), timeout=60)
        received += collect(broker_url, QUEUE, timeout=60,
                            until=lambda got: set(ids_by_name(received + got)) >= before | after)
        announced = ids_by_name(received)
        assert set(announced) == before | after, "nothing lost"
        assert all(len(ids) == 1 for ids in announced.values())
        assert _demoted(ports[0])["restarts"] == 0  # an expected outcome, not a crash
        wait_for(lambda: role_of(ports[0]) == "standby" and role_of(ports[1]) == "active", 90,
                 message="the cut-off replica came back as a standby")
    finally:
        for mw in started:
            mw.cleanup()
        proxy.close()


def test_a_frozen_active_replica_on_the_same_state_dir_is_replaced_and_later_stands_by(
        tmp_path: Path, inbox: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """SIGSTOP of the active supervisor's process group (one host, one state_dir): the broker
    closes its silent connection, the standby takes over with a state database of its own
    (the frozen one still holds the instance's), and announces what was written meanwhile;
    continued, the old one finds the lease held and comes back as a standby."""
    declare_queue(broker_url, QUEUE)
    state = tmp_path / "state"
    ports = free_port(), free_port()
    first, second = start_pair(started, ports, *(
        replica_roster(tmp_path, name, inbox, state=state, port=port, broker_url=broker_url)
        for name, port in zip("ab", ports, strict=True)))
    before = write_numbered(inbox, range(0, 10))
    received = collect(broker_url, QUEUE, timeout=30,
                       until=lambda got: set(ids_by_name(got)) >= before)
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        after = write_numbered(inbox, range(10, 20))
        second.wait_for_log(lambda line: line.get("message") == TAKEOVER, timeout=60)
        second.wait_for_log(lambda line: str(line.get("message", "")).startswith(
            "the instance's state database is still held"), timeout=30)
        received += collect(broker_url, QUEUE, timeout=60,
                            until=lambda got: set(ids_by_name(received + got)) >= before | after)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    announced = ids_by_name(received)
    assert set(announced) == before | after, "nothing lost"
    assert all(len(ids) == 1 for ids in announced.values())
    first.wait_for_log(lambda line: str(line.get("message", "")).startswith(
        "another replica holds the lease now"), timeout=60)
    assert _demoted(ports[0])["restarts"] == 0  # an expected outcome, not a crash
    wait_for(lambda: role_of(ports[0]) == "standby" and role_of(ports[1]) == "active", 60,
             message="the thawed replica came back as a standby")
    # The active replica goes on from state.1.db (the frozen one held state.db): the
    # commands read that one, and say so.
    export = run_cli("state", "export", "-c", str(tmp_path / "a.yaml"))
    assert "music: reading state.1.db, the active replica's" in export.stderr, export.stderr
    assert {json.loads(line)["relative_path"] for line in export.stdout.splitlines()} \
        >= before | after


def test_embedded_replicas_on_one_state_dir_share_an_flock_lease(
        tmp_path: Path, inbox: Path, started: list[Multiwatch]) -> None:
    """With the embedded spool, a second supervisor on the same state_dir stands by (the
    run lock lets a replica in) and takes over from the killed first one."""
    state = tmp_path / "state"
    ports = free_port(), free_port()
    rosters = [replica_roster(tmp_path, name, inbox, state=state, port=port, broker_url=None)
               for name, port in zip("ab", ports, strict=True)]
    first, second = start_pair(started, ports, *rosters)
    before = write_numbered(inbox, range(0, 5))
    tail = run_cli("tail", "-c", str(rosters[0]), "--count", "5", "--timeout", "30")
    assert {json.loads(line)["file_info"]["name"] for line in tail.stdout.splitlines()} \
        == before

    first.cleanup()  # kill -9: the kernel drops its flock
    after = write_numbered(inbox, range(5, 10))
    second.wait_for_log(lambda line: line.get("message") == TAKEOVER, timeout=30)
    tail = run_cli("tail", "-c", str(rosters[1]), "--count", "5", "--timeout", "30")
    # The new active replica continues from the instance's own state database (the killed
    # one let go of it): only the files written since are announced.
    assert {json.loads(line)["file_info"]["name"] for line in tail.stdout.splitlines()} \
        == after
    assert second.terminate() == 0


def test_without_ha_a_second_supervisor_is_still_refused(
        tmp_path: Path, inbox: Path, started: list[Multiwatch]) -> None:
    """A supervisor without ha is refused beside replicas of the instance, and they beside it."""
    state = tmp_path / "state"
    replica = replica_roster(tmp_path, "a", inbox, state=state, port=free_port(), broker_url=None)
    lone = write_roster(tmp_path / "lone.yaml", {
        "state_dir": str(state), "instances": [{"id": "music", "directory": str(inbox)}]})
    first = Multiwatch(["-c", str(replica)])
    started.append(first)
    first.wait_watching("music")
    refused = run_cli("run", "-c", str(lone), timeout=30)
    assert refused.returncode == 2, refused.stderr
    assert "enable ha" in refused.stderr
    first.cleanup()
    alone = Multiwatch(["-c", str(lone)])
    started.append(alone)
    alone.wait_watching("music")
    refused = run_cli("run", "-c", str(replica), timeout=30)
    assert refused.returncode == 2, refused.stderr
    assert "without ha" in refused.stderr


def test_a_reload_toggling_ha_takes_the_run_lock_in_the_new_mode(
        tmp_path: Path, inbox: Path, started: list[Multiwatch]) -> None:
    """SIGHUP turning ha on lets a replica run beside the supervisor (embedded spool, one
    state_dir); turning it off while that replica runs is refused with an error naming it,
    the first one running on as a replica; the same SIGHUP once it has stopped applies, and
    replicas are refused again."""
    state = tmp_path / "state"

    def roster(name: str, *, ha: bool) -> Path:
        return write_roster(tmp_path / f"{name}.yaml", {
            "state_dir": str(state), "defaults": {"settle_seconds": 0.1},
            "supervisor": {"stop_timeout_seconds": 3},
            "ha": {"enabled": ha, "lease_retry_seconds": 0.5},
            "instances": [{"id": "music", "directory": str(inbox)}]})

    replica = roster("b", ha=True)
    first = Multiwatch(["-c", str(roster("a", ha=False))])
    started.append(first)
    first.wait_watching("music")
    assert run_cli("run", "-c", str(replica), timeout=30).returncode == 2

    mark = len(first.lines)
    roster("a", ha=True)
    first.process.send_signal(signal.SIGHUP)
    first.wait_watching("music", after=mark)  # restarted as a replica, the lease holder
    second = Multiwatch(["-c", str(replica)])
    started.append(second)
    second.wait_for_log(lambda line: line.get("message") == "another replica is active; "
                        "standing by", timeout=30)

    mark = len(first.lines)
    roster("a", ha=False)
    first.process.send_signal(signal.SIGHUP)
    refusal = first.wait_for_log(lambda line: line.get("level") == "ERROR" and str(
        line.get("message", "")).startswith("roster reload: ha turned off"), after=mark)
    assert f"pid {second.pid}" in refusal["message"]
    assert "goes on as a replica" in refusal["message"]
    assert second.terminate() == 0

    mark = len(first.lines)
    first.process.send_signal(signal.SIGHUP)
    first.wait_watching("music", after=mark)
    refused = run_cli("run", "-c", str(replica), timeout=30)
    assert refused.returncode == 2 and "without ha" in refused.stderr, refused.stderr
    assert first.process.poll() is None
