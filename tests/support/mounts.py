"""Real mounts for tests (root only): tmpfs, and ext4 images on loop devices.

Everything mounted or attached here is undone by `Mounts.cleanup` (a fixture's teardown),
lazily if something still holds it, so a failing test leaves no mount or loop device.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="mounting needs root (CI runs the tests as root)")


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


class Mounts:
    """Mounts and loop devices made by one test, all undone by cleanup()."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []
        self.loops: list[str] = []

    def tmpfs(self, where: Path) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", "size=16m", "multiwatch-test", str(where))
        self.mounted.append(where)
        return where

    def bind(self, source: Path, where: Path) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        _run("mount", "--bind", str(source), str(where))
        self.mounted.append(where)
        return where

    def ext4_image(self, image: Path, size_mib: int = 16) -> Path:
        """An empty ext4 filesystem in a file (mkfs.ext4 -F, quiet)."""
        with open(image, "wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0", str(image))
        return image

    def attach(self, image: Path) -> str:
        """A loop device of its own for `image` (detached by cleanup)."""
        device = _run("losetup", "--find", "--show", str(image))
        self.loops.append(device)
        return device

    def mount(self, device: str, where: Path) -> Path:
        """Mount an ext4 block device (a loop device) at `where`."""
        where.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "ext4", device, str(where))
        self.mounted.append(where)
        return where

    def umount(self, where: Path, *, lazy: bool = False) -> None:
        _run("umount", *(["-l"] if lazy else []), str(where))
        self.mounted.remove(where)

    def cleanup(self) -> None:
        for where in reversed(self.mounted):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)
        self.mounted.clear()
        for device in reversed(self.loops):
            subprocess.run(["losetup", "-d", device], capture_output=True)
        self.loops.clear()
