"""What `multiwatch check` says about replicas (roster `ha`), beside the effective
configuration: where replicas may run, and how soon a standby takes over.  Runs in the CLI
process; pure (reads the roster only).

- With the embedded spool the lease is an flock under the state_dir: replicas must share
  this host and that state_dir (a replica elsewhere would announce on its own).
- With a broker, a standby takes over within 2 x heartbeat_seconds + lease_retry_seconds
  of the active replica being frozen or cut off (lease_retry_seconds when killed); with
  heartbeats off the broker never notices a silent replica, so no takeover happens until
  its TCP connection fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multiwatch.config import Roster


@dataclass
class HaFindings:
    warnings: list[str] = field(default_factory=list)  # likely mistakes
    notes: list[str] = field(default_factory=list)  # what a user of replicas should know


def ha_findings(roster: Roster) -> HaFindings:
    """Warnings and notes about the instances with ha enabled (none without any)."""
    found = HaFindings()
    replicas = [i for i in roster.instances if i.ha.enabled]
    if not replicas:
        return found
    names = ", ".join(i.id for i in replicas)
    which = f"instance{'s' if len(replicas) > 1 else ''} {names}"
    broker = roster.broker
    if broker.embedded:
        found.notes.append(
            f"ha ({which}) with the embedded spool: the lease is an flock under "
            f"{roster.state_dir}, so replicas must run on this host with this same state_dir; "
            "replicas on different hosts need a broker (broker.url)")
        return found
    if broker.heartbeat_seconds == 0:
        found.warnings.append(
            f"ha ({which}) with broker.heartbeat_seconds 0: the broker never notices a frozen "
            "or cut-off active replica, so no standby takes over until its TCP connection "
            "fails (minutes or more); set heartbeat_seconds (a replica asks for half of it)")
        return found
    for retry in sorted({i.ha.lease_retry_seconds for i in replicas}):
        ids = ", ".join(i.id for i in replicas if i.ha.lease_retry_seconds == retry)
        bound = 2 * broker.heartbeat_seconds + retry
        found.notes.append(
            f"ha ({ids}): one replica announces, the others stand by; a standby takes over "
            f"within {bound:g} s (2 x heartbeat_seconds + lease_retry_seconds) of the active "
            f"one being frozen or cut off from the broker, within {retry:g} s when it is killed")
    return found
