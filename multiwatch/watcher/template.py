"""The template process: every watcher child is forked from it.

Runs in the template process only, imported once as the preload of multiprocessing's
`forkserver` (started by supervisor/template.py).  Importing this module is the whole
preparation: it imports everything a watcher runs (the watcher itself, and what the
watcher would otherwise import later: the broker transports, the lock module, the IDNA
codec a connection's host name goes through), then moves every object it made into the
permanent generation (`gc.freeze`), so a child's collections never write to those
objects' pages: they stay shared with the template, copy-on-write, and a child pays only
for the pages it writes itself (bench/README.md has the figures).  The collector is off
while it imports (the gc module's documented recipe for forking servers): a collection
there would free objects between the ones kept, and a child's new objects would fill those
holes, copying the template's page around each.  The forkserver then forks one child per
request, which runs `watcher.spec.run_child`.

The template has no threads (forking a process with threads is unsafe) and never reads
a roster or opens a connection: a child builds all of that after the fork.
"""

from __future__ import annotations

import gc

gc.disable()  # until gc.freeze() below: no holes among the objects the children share

import importlib  # noqa: E402 - after gc.disable(), like every import below
import os  # noqa: E402
import signal  # noqa: E402

import setproctitle  # noqa: E402

from multiwatch.watcher import spec  # noqa: E402
from multiwatch.watcher.spec import GROUP_SIGNALS  # noqa: E402

# What a watcher imports only once it runs (kombu picks its transport by name, the lock
# module is imported where it is used, socket encodes the broker's host name with the IDNA
# codec): imported here too, so every child shares them.
LATER_IMPORTS = ("kombu.transport.filesystem", "kombu.transport.pyamqp",
                 "multiwatch.supervisor.run_lock", "multiprocessing.popen_forkserver",
                 "encodings.idna")

# Signals to the whole process group (Ctrl-C, a hangup, a SIGTERM to the group) are the
# supervisor's to act on: it stops the watchers, and the template exits after it (its
# "alive" pipe closes).  A template gone first would report every watcher as exited while
# they still flush.  A child inherits this: run_child restores SIGTERM and SIGHUP.
for _signum in GROUP_SIGNALS:
    signal.signal(_signum, signal.SIG_IGN)

spec.TEMPLATE_PID = os.getpid()  # a child reads it (same memory): the parent to outlive

spec.import_watcher()
for _name in LATER_IMPORTS:
    importlib.import_module(_name)

setproctitle.setproctitle("multiwatch: template")

gc.freeze()  # (the imports' few cycles of garbage stay, shared: cheaper than the holes)
gc.enable()  # for the children (and the template's own loop)
