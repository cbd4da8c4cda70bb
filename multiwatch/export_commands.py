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
import re
import shlex
import sys
from dataclasses import dataclass

from multiwatch.config import ENV_SOURCE, ConfigError, InstanceConfig, Roster, split_listen

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
STOP_MARGIN_SECONDS = 5  # the process manager waits this much longer than multiwatch itself


@dataclass(frozen=True)
class ExportOptions:
    """What every exporter needs besides the roster."""

    roster_file: str  # absolute
    python: str = sys.executable
    http_port_base: int | None = None  # None: --http-listen off


def options_for(roster: Roster, python: str | None, http_port_base: int | None) -> ExportOptions:
    """Check that there is a roster file to point at; ConfigError if not."""
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
    return ExportOptions(os.path.abspath(roster.source), python or sys.executable, http_port_base)


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


def _ini(value: str) -> str:
    """A value for supervisord's config: `%` starts an expansion there."""
    return value.replace("%", "%%")


def supervisord_config(roster: Roster, options: ExportOptions, *, run_dir: str,
                       programs_only: bool = False) -> str:
    """A supervisord configuration with one [program:multiwatch-<id>] per instance."""
    lines = [
        f"; multiwatch instances of {options.roster_file}, one supervisord program each,",
        "; written by `multiwatch export supervisord`. Re-export after adding or removing",
        "; instances; other roster changes need only `supervisorctl signal HUP multiwatch-<id>`.",
        ";",
        "; Environment: programs inherit supervisord's environment. Start supervisord with",
        "; whatever the roster and multiwatch read from it (RABBITMQ_PASS_FILE, ...), or add an",
        '; environment=NAME="value" line to a program.',
    ]
    if variables := roster_variables(options.roster_file):
        lines.append(f"; This roster reads: {', '.join(variables)}.")
    if options.http_port_base is None:
        lines.append("; HTTP endpoint: off in every program (they would all bind the roster's "
                     "http.listen);")
        lines.append("; supervisorctl status shows their state.")
    else:
        lines.append(f"; HTTP endpoint: each program on its own port from "
                     f"{options.http_port_base} (multiwatch status --url ...).")
    lines.append("")
    if not programs_only:
        socket = os.path.join(run_dir, "supervisor.sock")
        lines += [
            f"; Control socket, pid file and logs live in {run_dir} (it must exist).",
            "[unix_http_server]",
            f"file={_ini(socket)}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={_ini(os.path.join(run_dir, 'supervisord.log'))}",
            f"pidfile={_ini(os.path.join(run_dir, 'supervisord.pid'))}",
            f"childlogdir={_ini(run_dir)}",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{_ini(socket)}",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
        ]
    for index, instance in enumerate(roster.instances):
        command = shlex.join(run_arguments(roster, options, index))
        lines += [
            f"[program:{program_name(instance)}]",
            f"command={_ini(command)}",
            f"directory={_ini(os.path.dirname(options.roster_file))}",
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


def _unit_word(value: str) -> str:
    """One word of a unit file command line or path list: `%` and `$` escaped, quoted if needed."""
    value = value.replace("%", "%%").replace("$", "$$")
    if value and not re.search(r"[\s\"'\\;]", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _under(path: str, *roots: str) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def systemd_unit(roster: Roster, options: ExportOptions, index: int) -> str:
    """`multiwatch-<id>.service`: the roster-mode unit's sandbox, for a single instance."""
    instance = roster.instances[index]
    state = roster.state_dir
    command = " ".join(_unit_word(arg) for arg in run_arguments(roster, options, index))
    lines = [
        f"# multiwatch instance {instance.id} of {options.roster_file}, written by",
        "# `multiwatch export systemd`. Install:",
        "#   install -m 0644 multiwatch-*.service /etc/systemd/system/",
        f"#   systemctl daemon-reload && systemctl enable --now {program_name(instance)}",
        "# Runs as the user multiwatch (systemd/multiwatch.sysusers creates it); it must be able",
        "# to read the roster, the watched directory and any password file.",
        "# Environment: /etc/multiwatch/multiwatch.env (mode 0600), e.g. RABBITMQ_PASS_FILE=...",
    ]
    if variables := roster_variables(options.roster_file):
        lines.append(f"# This roster reads: {', '.join(variables)}.")
    if state.startswith("/var/lib/") and len(state) > len("/var/lib/"):
        state_lines = [f"StateDirectory={_unit_word(state[len('/var/lib/'):])}",
                       "StateDirectoryMode=0750"]
    else:
        state_lines = [f"ReadWritePaths={_unit_word(state)}"]
    paths = [instance.directory, state, options.roster_file]
    private_tmp = not any(_under(p, "/tmp", "/var/tmp") for p in paths)
    lines += [
        "",
        "[Unit]",
        f"Description=multiwatch instance {instance.id}: announce files landing in "
        f"{instance.directory.replace('%', '%%')} on RabbitMQ",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "User=multiwatch",
        "Group=multiwatch",
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=5s",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_wait_seconds(roster)}s",
        "Environment=PYTHONDONTWRITEBYTECODE=1",
        "EnvironmentFile=-/etc/multiwatch/multiwatch.env",
        *state_lines,
        "UMask=0027",
        "",
        "# Sandbox: read-only system, no privileges; only the state directory is writable.",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        f"ReadOnlyPaths=-{_unit_word(instance.directory)}",
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
    run_dir = os.path.abspath(run_dir or os.path.join(roster.state_dir, "supervisord"))
    text = supervisord_config(roster, options, run_dir=run_dir, programs_only=programs_only)
    if output is None:
        sys.stdout.write(text)
        return 0
    if not programs_only:
        _makedirs(run_dir, "--run-dir")
    _write(output, text)
    print(f"wrote {output}: {len(roster.instances)} programs", file=sys.stderr)
    return 0


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
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create directory: {exc.strerror}") from None


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None

