# SPDX-License-Identifier: LGPL-2.1-or-later
"""Entering private network and mount namespaces from Python 3.11 (no os.unshare yet)."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_entered = False
#: The network namespace the process started in, kept open across the unshare (see below).
_host_netns_fd: int | None = None


def in_private_netns() -> bool:
    """True when this process does not share PID 1's network namespace."""
    try:
        return os.stat("/proc/self/ns/net").st_ino != os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return False


def enter_private_namespaces() -> None:
    """unshare(CLONE_NEWNET | CLONE_NEWNS) and make every mount private. Idempotent.

    Must run while the process has a single thread: unshare() changes only the calling thread.
    """
    global _entered, _host_netns_fd
    if _entered:
        return
    if os.geteuid() != 0:
        raise RuntimeError(
            "the test suite runs as root (it mounts FUSE filesystems and namespaces)"
        )
    # Kept so that the few steps that need a package registry (the real-kernel harness's
    # one-time preparation) can still reach the network from inside the test run.
    _host_netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET | CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET|CLONE_NEWNS): {os.strerror(err)}")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"making / a private mount: {os.strerror(err)}")
    _entered = True


def host_network_argv() -> list[str]:
    """The argv prefix that runs a command in the network namespace this process started in.

    Empty when the process never left it. `nsenter` joins the namespace through the kept fd.
    """
    if _host_netns_fd is None:
        return []
    return ["nsenter", f"--net=/proc/{os.getpid()}/fd/{_host_netns_fd}", "--"]


def shield_host_directory(path: str) -> None:
    """Cover an existing host directory with a tmpfs holding its empty subdirectories.

    Only inside the private mount namespace (refused otherwise): writes then land in memory,
    while the directory still exists, with the layout packages gave it, so code that decides by
    its presence behaves as on the host.
    """
    if not _entered:
        raise RuntimeError("shield_host_directory: enter the private namespaces first")
    directory = Path(path)
    if not directory.is_dir():
        return
    subdirectories = sorted(
        p.relative_to(directory) for p in directory.rglob("*") if p.is_dir() and not p.is_symlink()
    )
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(directory)],
        check=True,
        capture_output=True,
    )
    for sub in subdirectories:
        (directory / sub).mkdir(parents=True, exist_ok=True)
