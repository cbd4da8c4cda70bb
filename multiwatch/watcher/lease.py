"""The lease of an instance's replicas (roster `ha`): only its holder publishes.

Runs in the publisher thread of a watcher child (watcher/publisher.py takes and probes the
lease); the main loop only reads `RoleState` (the role its heartbeat reports, and when it
may start watching).

- **With a broker** the lease is an exclusive queue, `multiwatch.lease.<instance_id>`,
  declared on the very connection that publishes.  RabbitMQ lets one connection at a time
  declare an exclusive queue and deletes it when that connection closes or dies (a missed
  heartbeat, a cut network, a killed process): a replica whose connection the broker has
  closed therefore holds no lease and cannot publish either, whatever it believes.  Another
  connection's declaration fails with RESOURCE_LOCKED (405), which closes only that channel:
  that answer means "another replica is active", not a broker failure.
  Why not a single-active-consumer queue: RabbitMQ does not tell a consumer that it became
  the active one (it only starts delivering), so the lease would need a token message kept
  unacked and re-published after every failover, and a durable queue left behind; the
  exclusive queue answers yes or no at once and leaves nothing.
  A refused declaration is a channel error in the broker's log, so a standby does not ask
  that way while the lease is held: the holder also consumes, as the one exclusive consumer,
  from a second queue `multiwatch.lease.<instance_id>.held` (not exclusive, auto-deleted),
  and a standby looks at that queue's consumer count with a passive declare, which is
  answered without an error.  It tries the exclusive queue only when nobody consumes there
  (the holder is gone: the broker deleted the queue with its last consumer), so the broker
  logs one error per takeover rather than one per `lease_retry_seconds` per standby.
- **With the embedded spool** (no broker) the lease is an flock on
  `instances/<id>/lease.lock` under the shared state_dir: the kernel drops it when its
  holder dies.  So replicas that share a lease must share a host and a state_dir; replicas
  on different hosts need a broker.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import amqp
from kombu import Connection

log = logging.getLogger(__name__)

LEASE_QUEUE_PREFIX = "multiwatch.lease."
HELD_SUFFIX = ".held"


def _ignore(_message_or_tag: object) -> None:
    """Nothing is published to the .held queue (anything that is anyway is dropped), and
    the end of our consumer there (the queue deleted by let_go) changes nothing we hold."""


class Role(enum.Enum):
    ACTIVE = "active"  # holds (or last held and is re-taking) the lease: announces
    STANDBY = "standby"  # another replica holds the lease, or it was never taken: silent


class Lease(Protocol):
    def take(self, connection: Connection) -> bool:
        """True if this replica now holds the lease (on `connection`, for the broker's);
        False if another replica holds it.  Raises on a broker or socket failure."""

    def let_go(self, connection: Connection) -> None:
        """Give the lease up on `connection` at once (before closing it): free for the
        next taker when this returns."""

    def close(self) -> None:
        """Let go of what the lease holds outside the connection (the embedded flock)."""


def lease_queue_name(instance_id: str) -> str:
    return f"{LEASE_QUEUE_PREFIX}{instance_id}"


class BrokerLease:
    """The exclusive queue `multiwatch.lease.<instance_id>` on the publishing connection,
    and the `.held` queue its holder consumes from (see the module)."""

    def __init__(self, instance_id: str) -> None:
        self.name = lease_queue_name(instance_id)
        self.held_name = f"{self.name}{HELD_SUFFIX}"
        self._probe: tuple[Connection, Any] | None = None  # (connection, its probe channel)

    def take(self, connection: Connection) -> bool:
        # Each read is bounded by the connection's read_timeout (broker.open_connection).
        if self.held_by_another(connection):
            return False
        channel = connection.channel()
        try:
            # Not durable, auto-deleted, exclusive: nothing is left once we are gone.  No
            # binding: no message ever reaches it.
            channel.queue_declare(queue=self.name, exclusive=True, auto_delete=True,
                                  durable=False)
        except amqp.exceptions.ResourceLocked:
            return False  # the broker closed this channel only; the connection is fine
        # Consumed by us alone (exclusive consumer), deleted with our consumer: what a
        # standby looks at.  The channel stays open until the connection ends.
        channel.queue_declare(queue=self.held_name, auto_delete=True, durable=False)
        channel.basic_consume(queue=self.held_name, exclusive=True, no_ack=True,
                              callback=_ignore, on_cancel=_ignore)
        return True

    def held_by_another(self, connection: Connection) -> bool:
        """True while another replica holds the lease, as far as its `.held` queue tells:
        a passive declare, answered without a channel error while that queue exists (a 404
        once its holder is gone closes only the probe channel)."""
        if self._probe is None or self._probe[0] is not connection:
            self._probe = (connection, connection.channel())
        try:
            _name, _messages, consumers = self._probe[1].queue_declare(
                queue=self.held_name, passive=True)
        except amqp.exceptions.NotFound:
            self._probe = None  # (the broker closed that channel)
            return False
        return bool(consumers)

    def let_go(self, connection: Connection) -> None:
        # Delete-Ok comes once the queue is gone; a close alone removes it a moment later.
        # The .held queue first: a standby seeing it gone finds the lease free.
        channel = connection.channel()
        channel.queue_delete(queue=self.held_name)
        channel.queue_delete(queue=self.name)

    def close(self) -> None:
        pass  # the queue ends with the connection


class FileLease:
    """flock on instances/<id>/lease.lock: held from take() until close() or death."""

    def __init__(self, state_dir: str, instance_id: str) -> None:
        self._state_dir = state_dir
        self._instance_id = instance_id
        self._fd: int | None = None
        self._held = False

    def take(self, connection: Connection) -> bool:
        from multiwatch.supervisor.run_lock import open_lease_lock, try_lock_exclusive

        if self._held:
            return True
        if self._fd is None:
            self._fd = open_lease_lock(self._state_dir, self._instance_id)
        self._held = try_lock_exclusive(self._fd)
        return self._held

    def let_go(self, connection: Connection) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # (the last descriptor: the flock goes)
            self._fd, self._held = None, False


class RoleState:
    """What this replica is, written by the publisher thread, read by the main loop.

    Invariants: `role` is ACTIVE from the first time the lease is taken until another
    replica is found holding it (`demoted`, after which the watcher restarts as a standby);
    `holding` is true only while the lease is held on the connection in use, and the
    publisher publishes only then.  A lone replica (ha off) is ACTIVE and holding from the
    start and never changes."""

    def __init__(self, *, replicated: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.replicated = replicated
        self.role = Role.STANDBY if replicated else Role.ACTIVE
        self.holding = not replicated
        self.demoted = False
        self.promoted = threading.Event()  # set the first time the lease is held
        if not replicated:
            self.promoted.set()
        self.on_change: Callable[[], None] = lambda: None  # wakes the main loop
        self._clock = clock
        self._seen_held_at: float | None = None  # another replica held it (last probe)
        self._dropped_at: float | None = None  # we lost our connection while holding it
        self._standby_logged = False
        self._expect_active = False  # won the lease on a connection labelled standby

    @property
    def active(self) -> bool:
        return self.role is Role.ACTIVE

    def label(self) -> str:
        """The role a new connection announces in its client properties: the one it is
        expected to end up in (a mismatch is corrected by reconnecting)."""
        if self.role is Role.ACTIVE or self._seen_held_at is None or self._expect_active:
            return Role.ACTIVE.value
        return Role.STANDBY.value

    def won_unlabelled(self) -> None:
        """Free on a connection labelled standby: it is let go of and taken again on one
        labelled active, so the broker's connection list never shows the wrong role."""
        self._expect_active = True

    def took(self) -> None:
        """The lease is held on the current connection: publishing may start."""
        now = self._clock()
        if self.role is Role.STANDBY and self._seen_held_at is not None:
            log.warning("took over as the active replica of this instance", extra={
                "no_active_replica_seconds": round(now - self._seen_held_at, 2)})
        elif self.role is Role.STANDBY:
            log.info("holding the lease: the active replica of this instance")
        elif self._dropped_at is not None:
            log.info("holding the lease again", extra={
                "no_active_replica_seconds": round(now - self._dropped_at, 2)})
        self.role, self.holding = Role.ACTIVE, True
        self._seen_held_at = self._dropped_at = None
        self._standby_logged = self._expect_active = False
        self.promoted.set()
        self.on_change()

    def refused(self) -> None:
        """Another replica holds the lease."""
        self._seen_held_at = self._clock()
        self._expect_active = False
        if self.role is Role.ACTIVE:
            log.warning("another replica holds the lease now; this one stops announcing and "
                        "restarts as a standby")
            self.role, self.holding, self.demoted = Role.STANDBY, False, True
            self.on_change()
        elif not self._standby_logged:
            self._standby_logged = True
            log.info("another replica is active; standing by", extra={"role": "standby"})

    def dropped(self) -> None:
        """The connection the lease was held on is gone (and with it the lease)."""
        if self.holding and self.replicated:
            self.holding = False
            self._dropped_at = self._clock()
