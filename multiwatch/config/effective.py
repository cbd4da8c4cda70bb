"""`multiwatch check`'s effective configuration: the roster as YAML, passwords masked."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from multiwatch.config import keys
from multiwatch.config.roster import Roster
from multiwatch.config.urls import mask_url


def render_effective(roster: Roster) -> str:
    """The effective configuration as YAML, passwords masked (what `multiwatch check` prints)."""
    broker: dict[str, Any] = dataclasses.asdict(roster.broker)
    spool = os.path.join(roster.state_dir, "spool")
    url = roster.broker.url
    if url is None:
        broker["url"] = f"embedded (spool: {spool})"
    else:  # several URLs as a list, like a failover list is written in the roster
        masked = [mask_url(part) for part in roster.broker.urls]
        broker["url"] = masked[0] if len(masked) == 1 else masked
    doc = {
        "source": roster.source,
        "state_dir": roster.state_dir,
        "log_level": roster.log_level,
        "log_format": roster.log_format,
        "broker": broker,
        "supervisor": keys.effective(roster.supervisor),
        "http": {"listen": roster.http.listen or "off",
                 **({"allowed_hosts": list(roster.http.allowed_hosts)}
                    if roster.http.allowed_hosts else {})},
        "instances": [keys.effective(instance) for instance in roster.instances],
    }
    import yaml  # only `multiwatch check` writes YAML

    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
