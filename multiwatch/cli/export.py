"""`multiwatch export supervisord|systemd`: one supervised process per roster instance.

For sites whose process manager is supervisord or systemd rather than multiwatch's own
supervisor. Every program/unit runs `python -m multiwatch run -c ROSTER --only ID`: a
supervisor with a single watcher, so a crash of one instance restarts only that one, and the
roster stays the one place where instances are configured.

All these processes share the roster's state_dir; each instance keeps its own
`state_dir/instances/<id>/`, so that is safe. The HTTP endpoint is not: they would all bind
the roster's `http.listen`. So each runs with `--http-listen off` (supervisord and systemd
watch the processes), or with a port of its own from `--http-port-base`.
"""

from __future__ import annotations

import math
import os
import pwd
import re
import sys
from dataclasses import dataclass

from multiwatch.cli import export_quoting as q
from multiwatch.config import ENV_SOURCE, ConfigError, InstanceConfig, Roster, split_listen

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
STOP_MARGIN_SECONDS = 5  # the process manager waits this much longer than multiwatch itself
_PLAIN_STATE = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
DEFAULT_USER = "multiwatch"  # the system user systemd/multiwatch.sysusers creates
SUPERVISORD_UMASK = "077"  # state, spool and logs readable by the service user alone


@dataclass(frozen=True)
class ExportOptions:
    """What every exporter needs besides the roster."""

    roster_file: str  # absolute
    python: str = sys.executable
    http_port_base: int | None = None  # None: --http-listen off
    user: str | None = None  # --user; None: each exporter's default


def options_for(roster: Roster, python: str | None, http_port_base: int | None,
                user: str | None = None) -> ExportOptions:
    """Check the options and that there is a roster file to point at; ConfigError if not."""
    if roster.source == ENV_SOURCE:
        raise ConfigError(
            "export needs a roster file (-c PATH or MULTIWATCH_CONFIG): the exported programs "
            "run `multiwatch run -c ROSTER --only ID`. For one directory configured by "
            "environment variables use systemd/multiwatch@.service instead"
        )
    if http_port_base is not None and not 1 <= http_port_base <= 65535 - len(roster.instances):
        raise ConfigError(
            f"--http-port-base {http_port_base}: need {len(roster.instances)} consecutive "
            "ports from there, below 65536"
        )
    python = python or sys.executable
    if not os.path.isabs(python):
        # Also keeps ExecStart= free of systemd's prefixes (`-`, `+`, `!`...) on the program.
        raise ConfigError(f"--python {q.show(python)}: give an absolute path")
    if user is not None:
        q.check_user(user, "--user")
    for instance in roster.instances:
        q.check_name(instance.id, "instance id")
    return ExportOptions(os.path.abspath(roster.source), python, http_port_base, user)


def run_arguments(roster: Roster, options: ExportOptions, index: int) -> list[str]:
    """The command line of the process serving `roster.instances[index]`."""
    instance = roster.instances[index]
    if options.http_port_base is None:
        listen = "off"
    else:
        host = split_listen(roster.http.listen)[0] if roster.http.listen else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        listen = f"{host}:{options.http_port_base + index}"
    return [options.python, "-m", "multiwatch", "run", "-c", options.roster_file,
            "--only", instance.id, "--http-listen", listen]


def roster_variables(roster_file: str) -> list[str]:
    """The `${NAME}`s the roster text reads: the environment its processes must be given."""
    try:
        with open(roster_file, encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError:
        return []
    return sorted(set(_VAR_RE.findall(text.replace("$$", ""))))


def stop_wait_seconds(roster: Roster) -> int:
    return math.ceil(roster.supervisor.stop_timeout_seconds) + STOP_MARGIN_SECONDS


def program_name(instance: InstanceConfig) -> str:
    return f"multiwatch-{instance.id}"


# ---------------------------------------------------------------- supervisord


def supervisord_user(options: ExportOptions) -> str | None:
    """--user, else `multiwatch` when exporting as root; None: supervisord's own user.

    supervisord can only switch users when it runs as root, and it then should: a watcher
    needs no privileges, only read access to its tree."""
    if options.user is not None:
        return options.user
    return DEFAULT_USER if _euid() == 0 else None


def _euid() -> int:
    geteuid = getattr(os, "geteuid", None)  # absent on Windows
    return geteuid() if geteuid else -1


def _home_of(user: str) -> str:
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(
            f"--user {user}: no such user here; create it (systemd-sysusers "
            "systemd/multiwatch.sysusers, or useradd --system multiwatch) or pass --user NAME"
        ) from None
    return entry.pw_dir


def program_environment(roster: Roster, user: str | None) -> dict[str, str]:
    """What a program needs beyond supervisord's environment.

    The state_dir is pinned: with no state_dir in the roster, the default depends on the
    user (/var/lib/multiwatch for root, ~/.local/state for others). supervisord keeps its own
    HOME when it switches users, so the user's is given."""
    environment = {"MULTIWATCH_STATE_DIR": roster.state_dir}
    if user is not None:
        environment["HOME"] = _home_of(user)
    return environment


def supervisord_config(roster: Roster, options: ExportOptions, *, run_dir: str,
                       programs_only: bool = False) -> str:
    """A supervisord configuration with one [program:multiwatch-<id>] per instance."""
    user = supervisord_user(options)
    roster_file = q.check_line_safe(options.roster_file, "the roster path")
    environment = q.ini_environment(program_environment(roster, user), "state_dir or HOME")
    lines = [
        f"; multiwatch instances of {roster_file}, one supervisord program each,",
        "; written by `multiwatch export supervisord`. Re-export after adding or removing",
        "; instances; other roster changes need only `supervisorctl signal HUP multiwatch-<id>`.",
        ";",
        "; Environment: programs inherit supervisord's environment. Start supervisord with",
        "; whatever the roster and multiwatch read from it (RABBITMQ_PASS_FILE, ...), or add",
        "; to a program's environment= line.",
    ]
    if variables := roster_variables(options.roster_file):
        lines.append(f"; This roster reads: {', '.join(variables)}.")
    if user is not None:
        lines.append(f"; Programs run as {user} (umask {SUPERVISORD_UMASK}), which needs read "
                     "access to the roster, the watched")
        lines.append(f"; directories and any password file, and must own {roster.state_dir}:")
        lines.append(f";   install -d -o {user} -m 0700 {roster.state_dir}")
    if options.http_port_base is None:
        lines.append("; HTTP endpoint: off in every program (they would all bind the roster's "
                     "http.listen);")
        lines.append("; supervisorctl status shows their state.")
    else:
        lines.append(f"; HTTP endpoint: each program on its own port from "
                     f"{options.http_port_base} (multiwatch status --url ...).")
    lines.append("")
    if not programs_only:
        socket = q.ini_value(os.path.join(run_dir, "supervisor.sock"), "--run-dir")
        lines += [
            f"; Control socket, pid file and logs live in {q.check_line_safe(run_dir, '--run-dir')}"
            " (it must exist).",
            "[unix_http_server]",
            f"file={socket}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={q.ini_value(os.path.join(run_dir, 'supervisord.log'), '--run-dir')}",
            f"pidfile={q.ini_value(os.path.join(run_dir, 'supervisord.pid'), '--run-dir')}",
            f"childlogdir={q.ini_value(run_dir, '--run-dir')}",
            f"umask={SUPERVISORD_UMASK}",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{socket}",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
        ]
    for index, instance in enumerate(roster.instances):
        command = q.ini_command(run_arguments(roster, options, index), "the roster path")
        lines += [
            f"[program:{program_name(instance)}]",
            # No directory=: the roster path is absolute and multiwatch resolves the roster's
            # relative paths against the roster, never against the working directory.
            f"command={command}",
            f"environment={environment}",
            *([f"user={user}"] if user is not None else []),
            f"umask={SUPERVISORD_UMASK}",
            "autostart=true",
            "autorestart=true",
            "startsecs=3",
            "startretries=5",
            # SIGTERM to `multiwatch run` alone: it stops its watcher (which flushes) within
            # stop_timeout_seconds; SIGKILL to the whole group only if it overruns.
            "stopsignal=TERM",
            f"stopwaitsecs={stop_wait_seconds(roster)}",
            "stopasgroup=false",
            "killasgroup=true",
            "redirect_stderr=true",
            "stdout_logfile=AUTO",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=5",
            "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- systemd


def _under(path: str, *roots: str) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def systemd_unit(roster: Roster, options: ExportOptions, index: int) -> str:
    """`multiwatch-<id>.service`: the roster-mode unit's sandbox, for a single instance."""
    instance = roster.instances[index]
    state, directory = roster.state_dir, instance.directory
    user = options.user or DEFAULT_USER
    command = " ".join(q.unit_exec_word(arg, "the roster path or --python")
                       for arg in run_arguments(roster, options, index))
    lines = [
        f"# multiwatch instance {instance.id} of "
        f"{q.check_line_safe(options.roster_file, 'the roster path')}, written by",
        "# `multiwatch export systemd`. Install:",
        "#   install -m 0644 multiwatch-*.service /etc/systemd/system/",
        f"#   systemctl daemon-reload && systemctl enable --now {program_name(instance)}",
        f"# Runs as the user {user}"
        + (" (systemd/multiwatch.sysusers creates it)" if user == DEFAULT_USER else "")
        + "; it must be able",
        "# to read the roster, the watched directory and any password file.",
        "# Environment: /etc/multiwatch/multiwatch.env (mode 0600), e.g. RABBITMQ_PASS_FILE=...",
    ]
    if variables := roster_variables(options.roster_file):
        lines.append(f"# This roster reads: {', '.join(variables)}.")
    if state.startswith("/var/lib/") and _PLAIN_STATE.fullmatch(state[len("/var/lib/"):]):
        state_lines = [f"StateDirectory={state[len('/var/lib/'):]}", "StateDirectoryMode=0700"]
    else:  # (StateDirectory= also splits at `:` and unescapes twice: only plain names go there)
        state_lines = [f"ReadWritePaths={q.unit_path_word(state, 'state_dir')}"]
    paths = [directory, state, options.roster_file]
    private_tmp = not any(_under(p, "/tmp", "/var/tmp") for p in paths)
    lines += [
        "",
        "[Unit]",
        f"Description=multiwatch instance {instance.id}: announce files landing in "
        f"{q.unit_text(directory, 'the directory of instance ' + instance.id)} on RabbitMQ",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        *(["Group=multiwatch"] if user == DEFAULT_USER else []),
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=5s",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_wait_seconds(roster)}s",
        "Environment=PYTHONDONTWRITEBYTECODE=1",
        # Pinned: without a roster state_dir the default depends on the user running it.
        f"Environment={q.unit_environment('MULTIWATCH_STATE_DIR', state, 'state_dir')}",
        "EnvironmentFile=-/etc/multiwatch/multiwatch.env",
        *state_lines,
        "UMask=0077",
        "",
        "# Sandbox: read-only system, no privileges; only the state directory is writable.",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        f"ReadOnlyPaths=-{q.unit_path_word(directory, 'the directory of ' + instance.id)}",
        *(["PrivateTmp=yes"] if private_tmp else ["# PrivateTmp= off: a path is under /tmp"]),
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictSUIDSGID=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def systemd_units(roster: Roster, options: ExportOptions) -> dict[str, str]:
    """File name → unit text, one per instance."""
    return {f"{program_name(inst)}.service": systemd_unit(roster, options, i)
            for i, inst in enumerate(roster.instances)}


# ---------------------------------------------------------------- the commands


def export_supervisord(roster: Roster, options: ExportOptions, *, output: str | None,
                       run_dir: str | None, programs_only: bool) -> int:
    run_dir = supervisord_run_dir(roster, options, run_dir)
    text = supervisord_config(roster, options, run_dir=run_dir, programs_only=programs_only)
    if output is None:
        sys.stdout.write(text)
        return 0
    if not programs_only:
        _makedirs(run_dir, "--run-dir")
    _write(output, text)
    print(f"wrote {output}: {len(roster.instances)} programs", file=sys.stderr)
    return 0


def supervisord_run_dir(roster: Roster, options: ExportOptions, run_dir: str | None) -> str:
    """--run-dir, by default <state_dir>/supervisord, or beside state_dir when programs run
    as another user: that user owns state_dir and could swap a directory in it for a symlink,
    turning the logs root's supervisord writes there against any file."""
    state = roster.state_dir
    if supervisord_user(options) is None:
        return os.path.abspath(run_dir or os.path.join(state, "supervisord"))
    if run_dir is None:
        return f"{state.rstrip('/')}-supervisord"
    run_dir = os.path.abspath(run_dir)
    if _under(run_dir, state):
        raise ConfigError(
            f"--run-dir {q.show(run_dir)} is inside state_dir, which the programs' user owns: "
            "supervisord's logs and socket must live where only root can write"
        )
    return run_dir


def export_systemd(roster: Roster, options: ExportOptions, *, output: str | None) -> int:
    units = systemd_units(roster, options)
    if output is None:
        for name, text in units.items():
            sys.stdout.write(f"# ==> {name} <==\n{text}\n")
        return 0
    _makedirs(output, "-o")
    for name, text in units.items():
        _write(os.path.join(output, name), text)
    print(f"wrote {len(units)} units to {output}: {', '.join(units)}", file=sys.stderr)
    return 0


def _makedirs(path: str, option: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create directory: {exc.strerror}") from None


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None

