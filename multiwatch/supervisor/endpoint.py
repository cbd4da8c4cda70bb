"""The supervisor's operator endpoint: started, restarted on reload and stopped by the
supervisor loop; served by the HTTP threads (http.py, http_server.py).

A port that cannot be bound is logged and the fleet keeps watching: files matter more than
probes.  Once listening, the endpoint's identity is published under the state_dir, which
`multiwatch status` checks (identity.py).  The HTTP and identity modules are imported at
the first start, after the first watcher has been started.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from multiwatch.config import HttpConfig
from multiwatch.status_view import ViewSource

if TYPE_CHECKING:
    from multiwatch.supervisor.http import HttpServer
    from multiwatch.supervisor.identity import EndpointIdentity

log = logging.getLogger("multiwatch.supervisor.fleet")  # (the logger these lines always had)


class OperatorEndpoint:
    """The endpoint of one supervisor, serving `fleet_view`."""

    def __init__(self, state_dir: str, fleet_view: ViewSource) -> None:
        self._state_dir = state_dir
        self._fleet_view = fleet_view
        self._http: HttpServer | None = None
        self._identity: EndpointIdentity | None = None

    def serve(self, http: HttpConfig | None) -> None:
        """(Re)start the endpoint as `http` says; None (or no listen address) stops it."""
        from multiwatch.supervisor import identity

        if self._http is not None:
            self._http.close()
            self._http = None
        if self._identity is not None:
            identity.withdraw_identity(self._identity)
            self._identity = None
        if http is None or http.listen is None:
            return
        from multiwatch.supervisor.http import start_http_server

        secret = identity.new_secret()
        try:
            self._http = start_http_server(http.listen, self._fleet_view,
                                           allowed_hosts=http.allowed_hosts, secret=secret)
        except (OSError, ValueError) as exc:
            log.error("HTTP endpoint not started: %s", exc)
            return
        log.info("HTTP endpoint listening", extra={"url": self._http.url})
        try:
            self._identity = identity.publish_identity(self._state_dir, http.listen,
                                                       os.getpid(), secret)
        except OSError as exc:
            log.error("cannot publish the HTTP endpoint's identity; `multiwatch status` will "
                      "refuse it", extra={"error": f"{exc.filename}: {exc.strerror}"})

    def close(self) -> None:
        self.serve(None)
