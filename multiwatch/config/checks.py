"""Checks that need the whole roster: directories exist, do not overlap, and hold no state.

Each check raises `ConfigError` pointing at the offending line via the instance's `Origin`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from multiwatch.config import source as cs
from multiwatch.config.environment import ENV_NAME
from multiwatch.config.roster import InstanceConfig, Roster
from multiwatch.config.source import Where


@dataclass(frozen=True)
class Origin:
    """Where one instance's id and directory were written, for errors that point back."""

    id: Where
    directory: Where


def check_roster(roster: Roster, origins: list[Origin], state_where: Where) -> None:
    """Raise `ConfigError` for the first problem found; `origins` parallel `roster.instances`."""
    check_directories(roster.instances, origins)
    _check_overlaps(roster.instances, origins)
    _check_state_dir(roster, origins, state_where)


def check_directories(instances: tuple[InstanceConfig, ...], origins: list[Origin]) -> None:
    for inst, origin in zip(instances, origins, strict=True):
        shown = cs.show(inst.directory)
        hint = "" if origin.directory.source == ENV_NAME else "; set optional: true to wait for it"
        if not os.path.exists(inst.directory):
            if not inst.optional:
                raise origin.directory.error(f"directory {shown} does not exist{hint}")
        elif not os.path.isdir(inst.directory):
            raise origin.directory.error(f"{shown} is not a directory")
        elif not (inst.optional or _waits_for_mount(inst)) and not os.access(
                inst.directory, os.R_OK | os.X_OK):
            raise origin.directory.error(
                f"directory {shown} is not readable by this user (needs read and execute){hint}"
            )


def _waits_for_mount(inst: InstanceConfig) -> bool:
    """A mount_required directory that is a bare mount point now: its permissions are the
    mount's to give (the watcher waits for it, scanning nothing)."""
    return inst.mount_required and not os.path.ismount(inst.directory)


def _real(directory: str) -> str:
    # Symlinks resolved where the directory exists, so two spellings of one tree still clash.
    return os.path.realpath(directory) if os.path.exists(directory) else directory


def _inside(child: str, parent: str) -> bool:
    return child != parent and os.path.commonpath([child, parent]) == parent


def _check_overlaps(instances: tuple[InstanceConfig, ...], origins: list[Origin]) -> None:
    """One tree, one watcher: otherwise every file there is published twice."""
    reals = [_real(inst.directory) for inst in instances]
    for j, (inst, origin) in enumerate(zip(instances, origins, strict=True)):
        for i, other in enumerate(instances[:j]):
            other_ref = f"instance {cs.show(other.id)}{origins[i].directory.at}"
            if reals[i] == reals[j]:
                raise origin.directory.error(
                    f"{cs.show(inst.directory)} is the same directory as {other_ref}; "
                    "each directory needs exactly one instance or its files are published twice"
                )
            if other.recursive and _inside(reals[j], reals[i]):
                raise origin.directory.error(
                    f"{cs.show(inst.directory)} is inside {cs.show(other.directory)}, which "
                    f"{other_ref} watches recursively, so its files would be published twice; "
                    f"set recursive: false on {cs.show(other.id)} or drop one of them"
                )
            if inst.recursive and _inside(reals[i], reals[j]):
                raise origin.directory.error(
                    f"{cs.show(inst.directory)} is watched recursively and contains "
                    f"{cs.show(other.directory)} of {other_ref}, so those files would be "
                    f"published twice; set recursive: false here or drop one of them"
                )


def _check_state_dir(roster: Roster, origins: list[Origin], where: Where) -> None:
    """State and spool writes inside a watched tree would turn into events about themselves."""
    state = os.path.realpath(roster.state_dir)
    for inst, origin in zip(roster.instances, origins, strict=True):
        watched = _real(inst.directory)
        if state == watched or _inside(state, watched):
            relation = "is" if state == watched else "is inside"
            raise where.error(
                f"state directory {cs.show(roster.state_dir)} {relation} "
                f"{cs.show(inst.directory)}, "
                f"watched by instance {cs.show(inst.id)}{origin.directory.at}; put the state "
                "directory outside every watched tree (state_dir or MULTIWATCH_STATE_DIR)"
            )
