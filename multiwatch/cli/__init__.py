"""The `multiwatch` command: run | check | tail | state | status | health | export.

`main(argv)` returns the exit status, so tests call it directly.  User mistakes print one
paragraph on stderr and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

from multiwatch import __version__

if TYPE_CHECKING:
    from multiwatch.config import Roster
    from multiwatch.supervisor.prestart import PrestartedWatcher

EXIT_USAGE = 2
EXIT_BROKER = 1
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE's: see main

_CONFIG_HELP = (
    "roster file (YAML). Default: $MULTIWATCH_CONFIG; if that is unset too, one instance is "
    "built from the environment (DATA_DIR, INSTANCE_ID, RABBITMQ_HOST, ...)."
)
_DESCRIPTION = """\
Watch many directories from one process and announce every fully written file on
RabbitMQ (or an embedded spool) with its SHA-256 and XXH128 hashes.
"""
_PROBE_CONFIG_HELP = (
    "roster file whose http.listen names the endpoint. Default: $MULTIWATCH_CONFIG; if that "
    "is unset too, $MULTIWATCH_HTTP_LISTEN, else 127.0.0.1:9120."
)
_URL_HELP = (
    "base URL of the supervisor's endpoint, e.g. http://127.0.0.1:9120. Default: from the "
    "roster's http.listen"
)


class _CommandListFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists the commands as options are listed: one line per command at the options'
    indent, without argparse's COMMAND placeholder line above them (whose deeper indent
    it also leaves out of the column width, wrapping "completion")."""

    def _iter_indented_subactions(
            self, action: argparse.Action) -> Generator[argparse.Action, None, None]:
        yield from getattr(action, "_get_subactions", list)()

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(command)
                           for command in self._iter_indented_subactions(action))
        return super()._format_action(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multiwatch", description=_DESCRIPTION,
        formatter_class=_CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"multiwatch {__version__}")
    # One list of commands, argparse's own ("commands:"): each add_parser's help= is its line.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    run = commands.add_parser(
        "run", help="run the supervisor and one watcher per roster instance",
        description="Run the supervisor: one watcher child per roster instance, restarted if it "
        "crashes or hangs. Logs are JSON lines on stdout. SIGTERM/SIGINT stop gracefully; "
        "SIGHUP re-reads the roster file and starts, stops or restarts only what changed.",
    )
    run.add_argument("-c", "--config", metavar="PATH", help=_CONFIG_HELP)
    run.add_argument("--only", metavar="ID", action="append",
                     help="run only this instance of the roster (repeatable)")
    run.add_argument("--http-listen", metavar="HOST:PORT|off",
                     help="serve the HTTP endpoint here instead of the roster's http.listen; "
                     "off: none (several `run --only` processes on one roster need their own)")

    check = commands.add_parser(
        "check", help="validate a roster and print the effective configuration",
        description="Validate a roster and print the effective configuration (defaults applied, "
        "${VAR} expanded, passwords masked). Exit status 0 if valid, 2 if not.",
    )
    check.add_argument("-c", "--config", metavar="PATH", help=_CONFIG_HELP)
    check.add_argument("--connect", action="store_true",
                       help="also log in to every broker URL, declare the exchange and queue "
                       "passively, try writing the state directory and compare the inotify "
                       "limits with the trees; one line per problem, exit 2")

    tail = commands.add_parser(
        "tail", help="print events from the queue (or the embedded spool), one JSON "
        "per line",
        description="Consume events from the roster's queue (or the embedded spool when no "
        "broker is configured) and print each message body as one JSON line. Consumed "
        "messages are acknowledged, i.e. taken off the queue; use --tap to watch a copy "
        "instead (RabbitMQ only).",
    )
    tail.add_argument("-c", "--config", metavar="PATH", help=_CONFIG_HELP)
    tail.add_argument("--queue", metavar="NAME", help="queue to consume (default: broker.queue)")
    tail.add_argument("--tap", action="store_true",
                      help="bind a private, auto-deleted queue to the exchange and print copies, "
                      "leaving the configured queue untouched (RabbitMQ only)")
    tail.add_argument("-n", "--count", type=int, metavar="N",
                      help="exit after printing N events")
    tail.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="exit after SECONDS without a new event")
    state = commands.add_parser(
        "state", help="export or back up the tracked-file state of instances",
        description="Read each instance's state database (tracked files and their hashes). "
        "Safe while multiwatch runs.",
    )
    state_commands = state.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    export = state_commands.add_parser(
        "export", help="print tracked files as JSON lines",
        description="Print every tracked file as one JSON object per line: instance_id, path, "
        "relative_path, size, mtime_ns, inode, sha256_hash, xxh128_hash.",
    )
    backup = state_commands.add_parser(
        "backup", help="copy state databases (sqlite online backup)",
        description="Write a consistent copy of each instance's state database to "
        "DIR/<instance_id>.state.db, safe while multiwatch runs. To restore: stop multiwatch, "
        "copy the file to <state_dir>/instances/<instance_id>/state.db (delete state.db-wal and "
        "state.db-shm there), start multiwatch; its startup scan announces whatever changed "
        "since the backup.",
    )
    backup.add_argument("--to", required=True, metavar="DIR", help="directory for the copies")
    forget_mount = state_commands.add_parser(
        "forget-mount", help="forget the filesystem an instance remembers (stopped instances)",
        description="A watcher remembers the mount its directory was on and, while that mount "
        "is gone, waits (WAITING, directory unmounted) instead of announcing every file "
        "deleted. When the directory moved to another filesystem for good, stop multiwatch "
        "and run this: the next start watches the directory on whatever filesystem it is.",
    )
    for action in (export, backup, forget_mount):
        action.add_argument("-c", "--config", metavar="PATH", help=_CONFIG_HELP)
        action.add_argument("--instance", metavar="ID", action="append",
                            help="only this instance (repeatable; default: all)")

    status = commands.add_parser(
        "status", help="print a running supervisor's fleet as a table (from its HTTP "
        "endpoint)",
        description="Ask a running supervisor (GET /status on its http.listen endpoint) and "
        "print one row per instance: state, pid, restarts, uptime, outbox depth, broker link, "
        "CPU, RSS, last exit or reason. Exit status 0, or 1 if the endpoint cannot be reached.",
    )
    status.add_argument("--json", action="store_true", help="print the raw /status JSON")
    health = commands.add_parser(
        "health", help="exit 0 if a running supervisor is ready (or alive), 1 if not",
        description="Exit 0 if the running supervisor's /readyz answers 200 (every instance "
        "RUNNING with its broker connected), 1 otherwise, printing one line. For Docker "
        "HEALTHCHECK and Kubernetes exec probes; no curl needed.",
    )
    health.add_argument("--live", action="store_true",
                        help="probe /healthz instead: is the supervisor loop turning?")
    for probe in (status, health):
        probe.add_argument("-c", "--config", metavar="PATH", help=_PROBE_CONFIG_HELP)
        probe.add_argument("--url", metavar="URL", help=_URL_HELP)
    _add_control(commands)
    _add_export(commands)
    _add_resync_explain(commands)
    _add_deletions(commands)
    from multiwatch.cli.completion import add_commands as add_completion_and_man

    add_completion_and_man(commands)
    return parser


def _add_resync_explain(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    resync = commands.add_parser(
        "resync", help="re-announce an instance's tracked files (or a subtree, or one file)",
        description="Queue a file_discovered event for every tracked file of instance ID (or "
        "those at or under PATH: absolute, or relative to the instance's directory), as the "
        "state database recorded them (nothing is re-hashed; files changed on disk since are "
        "left to the watcher). They carry the AMQP header x-multiwatch-resync and message_ids "
        "of their own. A running multiwatch publishes them within seconds; otherwise they go "
        "out at its next start.",
    )
    resync.add_argument("-c", "--config", metavar="PATH", help=_CONFIG_HELP)
    resync.add_argument("instance_id", metavar="ID", help="the instance to re-announce")
    resync.add_argument("path", metavar="PATH", nargs="?",
                        help="only this file or directory (default: the whole instance)")
    explain = commands.add_parser(
        "explain", help="say which instance watches a path and what it would announce",
        description="Read-only: which instance watches PATH (or the nearest ones), whether its "
        "filters exclude it and by which pattern, what kind of file it is, what the state "
        "database knows of it (announced version, events waiting in the outbox) and what "
        "would be announced now. Never writes; hashes only with --hash.",
    )
    explain.add_argument("-c", "--config", metavar="PATH", help=_CONFIG_HELP)
    explain.add_argument("path", metavar="PATH", help="a file (or directory) path")
    explain.add_argument("--hash", action="store_true",
                         help="also hash the file when its size, mtime or inode changed, to "
                         "tell a modification from a touch")


def _add_deletions(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    deletions = commands.add_parser(
        "deletions", help="show, release or re-check the deletions a scan held",
        description="A scan (at start, after lost events, the periodic one) that finds more "
        "tracked files gone than the instance's max_scan_deletions holds their deletions "
        "instead of announcing them (an unmounted share looks like that). Without an option, "
        "print how many instance ID holds. The running watcher serves --release and --recheck "
        "within seconds (this command waits for it); otherwise its next start does.",
    )
    deletions.add_argument("-c", "--config", metavar="PATH", help=_CONFIG_HELP)
    deletions.add_argument("instance_id", metavar="ID", help="the instance")
    action = deletions.add_mutually_exclusive_group()
    action.add_argument("--list", dest="action", action="store_const", const="list",
                        help="print the held paths, one per line")
    action.add_argument("--release", dest="action", action="store_const", const="release",
                        help="announce them: file_deleted once for each file still gone")
    action.add_argument("--recheck", dest="action", action="store_const", const="recheck",
                        help="rescan: files there again are no longer held, the others stay")


def _add_control(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    found = ("It finds the supervisor through the lock it holds under the roster's state_dir "
             "(supervisors/<pid>.lock), and signals only a multiwatch supervisor that holds it "
             "now (never a reused pid).")
    reload = commands.add_parser(
        "reload", help="make the running supervisor re-read its roster (SIGHUP)",
        description="Send SIGHUP to the supervisor running this roster: it re-reads the roster "
        f"and starts, stops or restarts only what changed. {found} Exit status 0 when "
        "signalled, 1 when no supervisor of this roster runs, 2 for a roster error.",
    )
    stop = commands.add_parser(
        "stop", help="stop the running supervisor (SIGTERM) and wait for it",
        description="Send SIGTERM to the supervisor running this roster and wait until it has "
        f"exited. {found} Exit status 0 once stopped, 1 when no supervisor of this roster "
        "runs, 2 for a roster error, 3 when it still runs after --timeout.",
    )
    stop.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="wait at most this long (default: the roster's "
                      "supervisor.stop_timeout_seconds + 10)")
    for control in (reload, stop):
        control.add_argument("-c", "--config", metavar="PATH", help=_CONFIG_HELP)
        control.add_argument("--only", metavar="ID", action="append",
                             help="only the supervisor running this instance (repeatable; "
                             "default: every supervisor of the roster)")


def _add_export(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    export = commands.add_parser(
        "export", help="write supervisord or systemd configuration, one process per "
        "instance",
        description="Write a process manager's configuration with one process per roster "
        "instance, each running `multiwatch run -c ROSTER --only ID`. The processes share the "
        "roster's state_dir (each instance has its own state there) but not its HTTP port: "
        "each runs with --http-listen off, or on its own port with --http-port-base.",
    )
    targets = export.add_subparsers(dest="export_target", metavar="TARGET", required=True)
    supervisord = targets.add_parser(
        "supervisord", help="a supervisord configuration file",
        description="Write a supervisord configuration: one [program:multiwatch-<id>] per "
        "instance (autorestart, SIGTERM, stop timeout above the roster's), plus the "
        "[supervisord], [unix_http_server], [supervisorctl] and [rpcinterface:supervisor] "
        "sections unless --programs-only. Programs inherit supervisord's environment.",
    )
    supervisord.add_argument("-o", "--output", metavar="FILE",
                             help="write here instead of stdout (creates --run-dir)")
    supervisord.add_argument("--programs-only", action="store_true",
                             help="only the [program:...] sections, to include in an "
                             "existing supervisord configuration")
    supervisord.add_argument("--run-dir", metavar="DIR",
                             help="supervisord's socket, pid file and logs "
                             "(default: <state_dir>/supervisord, or <state_dir>-supervisord "
                             "when programs run as another --user)")
    systemd = targets.add_parser(
        "systemd", help="one systemd unit per instance",
        description="Write multiwatch-<id>.service for every instance: Restart=on-failure, "
        "ExecReload sends SIGHUP, the roster unit's sandbox (ProtectSystem=strict, the watched "
        "directory read-only, NoNewPrivileges) and the state directory writable.",
    )
    systemd.add_argument("-o", "--output", metavar="DIR",
                         help="write the unit files into DIR instead of printing them")
    for target in (supervisord, systemd):
        target.add_argument("-c", "--config", metavar="PATH", help=_CONFIG_HELP)
        target.add_argument("--python", metavar="PATH",
                            help=f"interpreter the processes run (default: {sys.executable})")
        target.add_argument("--http-port-base", type=int, metavar="PORT",
                            help="give instance N the HTTP endpoint on PORT+N (roster order) "
                            "instead of none")
    supervisord.add_argument("--user", metavar="NAME",
                             help="user= of every program (default: multiwatch when exporting "
                             "as root, else none: supervisord's own user)")
    systemd.add_argument("--user", metavar="NAME",
                         help="User= of every unit (default: multiwatch, the user "
                         "systemd/multiwatch.sysusers creates)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a reader that stops early (`| head -1`) ends it quietly.

    When stdout's reader goes away, the rest of the output has nowhere to go: stdout is
    pointed at /dev/null (so flushing at exit cannot fail again, the Python docs'
    recipe) and the status is 141, what a shell reports for a program killed by SIGPIPE
    (`seq 1000000 | head -1` under `set -o pipefail`), so scripts see multiwatch like any
    other Unix tool.  Whatever was running unwinds first (tail closes its connection)."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # inside the try: buffered output may meet the closed pipe here
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `multiwatch`: the help, as a usage error
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command in ("completion", "man"):  # from the parser alone: no roster
        from multiwatch.cli import completion as completion_command

        return completion_command.run(parser, args)
    if args.command == "run":
        # What sqlite, kombu's spool and the lock files create is ours alone whatever the
        # umask we were started with; set before the first watcher is spawned (it inherits
        # it).  multiwatch.state_dir sets the modes of what it creates explicitly too.
        os.umask(0o077)
    # Before the configuration code is even imported: the first watcher imports its own
    # while the roster is read (supervisor/prestart.py).
    prestarted = _prestart_watcher() if args.command == "run" else None
    from multiwatch.config import ConfigError, load_roster, render_effective

    try:
        if args.command in ("status", "health"):
            return _ask_endpoint(args)
        roster = load_roster(args.config, os.environ)
        if args.command == "check":
            _check_state(roster, create=False)
            print(render_effective(roster), end="")
            if args.connect:
                from multiwatch.cli.preflight import check_connect

                return check_connect(roster)
            return 0
        if args.command == "tail":
            from multiwatch.cli.tail import tail

            if roster.broker.embedded:  # its spool lives under state_dir: look, create nothing
                _check_state(roster, create=False, instances=False)
            return tail(roster, args)
        if args.command == "export":
            return _export(roster, args)
        if args.command in ("reload", "stop"):
            from multiwatch.cli import control

            _only(roster, args.only)  # an unknown id is a ConfigError naming the instances
            if args.command == "reload":
                return control.reload_command(roster, args.only)
            return control.stop_command(roster, args.only, args.timeout)
        if args.command == "resync":
            from multiwatch.cli.resync import resync

            return resync(roster, args.instance_id, args.path)
        if args.command == "deletions":
            from multiwatch.cli.deletions import deletions

            return deletions(roster, args.instance_id, action=args.action, out=sys.stdout)
        if args.command == "explain":
            from multiwatch.cli.explain import explain

            return explain(roster, args.path, hash_changed=args.hash)
        if args.command == "state":
            from multiwatch.cli import state as state_commands

            if args.state_command == "export":
                return state_commands.export_state(roster, args.instance)
            if args.state_command == "forget-mount":
                from multiwatch.cli.forget_mount import forget_mount

                return forget_mount(roster, args.instance)
            return state_commands.backup_state(roster, args.instance, args.to)
        return _run(roster, args, prestarted)
    except ConfigError as exc:
        print(f"multiwatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    finally:
        if prestarted is not None:
            prestarted.discard()  # (a no-op once an instance took it)


def _prestart_watcher() -> PrestartedWatcher | None:
    import multiprocessing

    from multiwatch.supervisor.prestart import PrestartedWatcher

    _spawn_as_if_run_with_dash_m()
    try:
        return PrestartedWatcher(multiprocessing.get_context("spawn"))
    except OSError:  # (no process to spare now): the supervisor spawns every watcher itself
        return None


def _export(roster: Roster, args: argparse.Namespace) -> int:
    from multiwatch.cli import export as ex

    options = ex.options_for(roster, args.python, args.http_port_base, args.user)
    if args.export_target == "systemd":
        return ex.export_systemd(roster, options, output=args.output)
    return ex.export_supervisord(roster, options, output=args.output, run_dir=args.run_dir,
                                 programs_only=args.programs_only)


def _ask_endpoint(args: argparse.Namespace) -> int:
    from multiwatch.cli import status as status_commands
    from multiwatch.config import ConfigError

    try:
        endpoint = status_commands.resolve_endpoint(args.url, args.config, os.environ)
    except ConfigError as exc:
        print(f"multiwatch: error: {exc}", file=sys.stderr)
        # Docker reads a health check's exit status 2 as "reserved": unhealthy is 1.
        return 1 if args.command == "health" else EXIT_USAGE
    if args.command == "health":
        return status_commands.health_command(endpoint.url, live=args.live)
    return status_commands.status_command(endpoint, as_json=args.json)


def _run(roster: Roster, args: argparse.Namespace,
         prestarted: PrestartedWatcher | None = None) -> int:
    import dataclasses

    from multiwatch.config import http_override, load_roster
    from multiwatch.logs import setup_logging
    from multiwatch.supervisor.fleet import Supervisor

    http = http_override(args.http_listen) if args.http_listen is not None else None

    def narrow(roster: Roster) -> Roster:
        roster = _only(roster, args.only)
        if http is None:
            return roster  # --http-listen replaces the listen address, not allowed_hosts
        return dataclasses.replace(roster, http=dataclasses.replace(roster.http,
                                                                   listen=http.listen))

    roster = narrow(roster)
    config_path = args.config or os.environ.get("MULTIWATCH_CONFIG") or None
    setup_logging(roster.log_level, "supervisor", roster.log_format)
    _check_state(roster, create=True)

    def reload() -> Roster:
        return narrow(load_roster(config_path, os.environ))

    return Supervisor(roster, reload=reload if config_path else None,
                      prestarted=prestarted, only=args.only).run()


def _check_state(roster: Roster, *, create: bool, instances: bool = True) -> None:
    """The state directory is ours alone (check: look only; run: create and tighten)."""
    from multiwatch import state_dir
    from multiwatch.config import ConfigError

    ids = [i.id for i in roster.instances] if instances else []
    from multiwatch.cli.preflight import unwritable

    if instances and (why := unwritable(roster.state_dir)):  # run would write there at once
        raise ConfigError(f"cannot use the state directory {roster.state_dir}: {why}")
    try:
        state_dir.prepare(roster.state_dir, ids,
                          embedded=roster.broker.embedded,
                          policy=state_dir.CREATE if create else state_dir.VERIFY)
    except state_dir.UnsafeStateError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot use the state directory {roster.state_dir}: "
                          f"{exc.strerror or exc}") from None


def _spawn_as_if_run_with_dash_m() -> None:
    """Spare each watcher child a second run of the `multiwatch` console script.

    A spawned child first recreates the parent's `__main__` (multiprocessing.spawn
    `prepare`).  The console script is a file with no module spec, so the child runs it again
    as `__mp_main__`, which imports this module, argparse and the roster code for nothing:
    the child only needs `run_child`.  Under `python -m multiwatch`, `__main__.__spec__`
    names `multiwatch.__main__`, and spawn skips any `<package>.__main__` in the child.  The
    console script is that same program, so its `__main__` gets that spec too (the spec is
    how Python records what `__main__` was loaded from: -m sets it, a script leaves it None).
    Only a script whose `main` is ours is changed: never a test runner's `__main__`.
    """
    program = sys.modules["__main__"]
    if getattr(program, "__spec__", None) is None and getattr(program, "main", None) is main:
        program.__spec__ = importlib.util.find_spec("multiwatch.__main__")


def _only(roster: Roster, ids: list[str] | None) -> Roster:
    import dataclasses
    import difflib

    from multiwatch.config import ConfigError

    if not ids:
        return roster
    known = {instance.id for instance in roster.instances}
    unknown = [i for i in ids if i not in known]
    if unknown:
        guesses = [f"{i}: did you mean {close[0]}?" for i in unknown
                   if (close := difflib.get_close_matches(i, known, n=1))]
        raise ConfigError(
            f"--only {', '.join(unknown)}: no such instance in {roster.source} "
            f"(instances: {', '.join(sorted(known))})"
            + "".join(f"; {guess}" for guess in guesses)
        )
    chosen = tuple(i for i in roster.instances if i.id in ids)
    return dataclasses.replace(roster, instances=chosen)
