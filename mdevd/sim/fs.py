# SPDX-License-Identifier: LGPL-2.1-or-later
"""FUSE glue: serves the emulated kernel's tree (`tree.build`) through mfusepy and libfuse3.

FUSE holds an inode's lock for the whole of a write, so writes to one file are serialized even
where sysfs runs them in parallel. For the control file that would let a blocked `unregister`
(waiting for a held device) block the `release` meant to unblock it; hence unlisted aliases
(`control.is_control_alias`) that are separate inodes, which the client uses.

sysfs semantics carried over: each write(2) is one store() (no caching, `direct_io`), a read
at offset 0 renders the attribute afresh, files answer EACCES when opened in a direction they do
not support, and a file opened before its object went away answers ENODEV. The mount uses zero
entry/attribute/negative timeouts so the kernel never answers a lookup from a stale cache: a
device exists for every process the moment its create write returns.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mfusepy

from mdevd.sim import control, tree
from mdevd.sim.state import PAGE_SIZE, Kernel

#: Mount options: see the module docstring. `default_permissions` lets the kernel apply the
#: modes below (create and remove are root-only, as in sysfs), `allow_other` lets other users
#: read, as everyone can read /sys. `use_ino`: inode numbers come from `_inode`, like kernfs's:
#: a directory created anew with its object (a registration's types, a device) gets a new one.
MOUNT_OPTIONS: dict[str, Any] = {
    "use_ino": True,
    "fsname": "mdevd-sim",
    "subtype": "mdevd-sim",
    "allow_other": True,
    "default_permissions": True,
    "direct_io": True,
    "attr_timeout": 0,
    "entry_timeout": 0,
    "negative_timeout": 0,
}


def _inode(path: str, identity: int) -> int:
    """A stable inode number for a path, different for each identity of the object behind it."""
    digest = hashlib.blake2b(f"{path}\0{identity}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 1) or 1


def _node_inode(path: str, node: tree.Node) -> int:
    return _inode(path, node.identity if isinstance(node, tree.Directory) else 0)


def _type_bits(node: tree.Node) -> int:
    if isinstance(node, tree.Directory):
        return stat.S_IFDIR
    if isinstance(node, tree.Symlink):
        return stat.S_IFLNK
    return stat.S_IFREG


@dataclass(slots=True)
class _Handle:
    node: tree.Attribute
    content: bytes | None = None
    #: The message of the last failed write through this handle (control file only).
    last_error: str = ""


class SysfsOperations(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, kernel: Kernel, on_ready: Callable[[], None] | None = None) -> None:
        self._kernel = kernel
        self._on_ready = on_ready
        self._tree: tree.Tree = {}
        self._tree_generation = -1
        self._handles: dict[int, _Handle] = {}
        self._next_handle = itertools.count(1)
        self._mounted_at = time.time_ns()
        self._exit_requested = threading.Event()
        self._control = tree.Attribute(0o600, store=self._run_command, reports_errors=True)

    # -- plumbing ----------------------------------------------------------------------

    def request_exit(self) -> None:
        """Make the next request end the FUSE loop (libfuse's exit is only callable from one)."""
        self._exit_requested.set()

    def _current(self) -> tree.Tree:
        if self._exit_requested.is_set():
            mfusepy.fuse_exit()
        with self._kernel.lock:
            if self._kernel.generation != self._tree_generation:
                self._tree = tree.build(self._kernel, self._control)
                self._tree_generation = self._kernel.generation
            return self._tree

    def _lookup(self, path: str) -> tree.Node:
        relative = path.strip("/")
        node = self._current().get(relative)
        if node is None:
            if control.is_control_alias(relative):
                return self._control
            raise OSError(errno.ENOENT, path)
        return node

    def _handle(self, fh: int) -> _Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, "unknown file handle")
        return handle

    def _run_command(self, data: bytes) -> None:
        try:
            command = control.parse_line(data.decode())
        except (control.CommandError, UnicodeDecodeError) as exc:
            raise OSError(errno.EINVAL, str(exc)) from None
        self._kernel.execute(command)

    # -- FUSE operations ---------------------------------------------------------------

    def init(self, path: str) -> None:
        if self._on_ready is not None:
            self._on_ready()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        node = self._lookup(path)
        attrs: dict[str, Any] = {
            "st_ino": _node_inode(path.strip("/"), node),
            "st_uid": 0,
            "st_gid": 0,
            "st_nlink": 1,
            "st_atime": self._mounted_at,
            "st_mtime": self._mounted_at,
            "st_ctime": self._mounted_at,
        }
        if isinstance(node, tree.Directory):
            attrs.update(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        elif isinstance(node, tree.Symlink):
            attrs.update(st_mode=stat.S_IFLNK | 0o777, st_size=len(node.target))
        else:
            # sysfs reports a page for every attribute, whatever it holds.
            attrs.update(st_mode=stat.S_IFREG | node.mode, st_size=PAGE_SIZE)
        return attrs

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        relative = path.strip("/")
        current = self._current()
        node = self._lookup(path)
        if not isinstance(node, tree.Directory):
            raise OSError(errno.ENOTDIR, path)
        # With use_ino every entry needs its inode number: readdir(3) skips entries whose
        # d_ino is 0.
        above = relative.rpartition("/")[0]
        entries = [(".", relative, node), ("..", above, current.get(above, node))]
        for name in node.entries:
            child = f"{relative}/{name}" if relative else name
            child_node = current.get(child)
            if child_node is not None:
                entries.append((name, child, child_node))
        return [
            (name, {"st_ino": _node_inode(where, what), "st_mode": _type_bits(what)}, 0)
            for name, where, what in entries
        ]

    def readlink(self, path: str) -> str:
        node = self._lookup(path)
        if not isinstance(node, tree.Symlink):
            raise OSError(errno.EINVAL, path)
        return node.target

    def open(self, path: str, flags: int) -> int:
        node = self._lookup(path)
        if isinstance(node, tree.Directory):
            raise OSError(errno.EISDIR, path)
        if not isinstance(node, tree.Attribute):
            raise OSError(errno.ELOOP, path)
        access = flags & os.O_ACCMODE
        if node.on_open is not None:
            node.on_open()
        else:
            readable = node.show is not None or node.reports_errors
            if access in (os.O_RDONLY, os.O_RDWR) and not readable:
                raise OSError(errno.EACCES, path)
            if access in (os.O_WRONLY, os.O_RDWR) and node.store is None:
                raise OSError(errno.EACCES, path)
        fh = next(self._next_handle)
        self._handles[fh] = _Handle(node)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self._handle(fh)
        if handle.node.reports_errors:
            content = handle.last_error.encode()
        elif handle.node.show is None:
            raise OSError(errno.EINVAL, path)
        else:
            # Like sysfs's seq_file: render at the first read, serve later offsets from it.
            if offset == 0 or handle.content is None:
                handle.content = handle.node.show()
            content = handle.content
        return content[offset : offset + size]

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        handle = self._handle(fh)
        store = handle.node.store
        if store is None:
            raise OSError(errno.EINVAL, path)
        data = data[:PAGE_SIZE]
        try:
            store(data)
        except OSError as exc:
            if handle.node.reports_errors:
                handle.last_error = exc.strerror or os.strerror(exc.errno or errno.EIO)
            raise
        handle.last_error = ""
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        # O_TRUNC (a shell's `>`) arrives as a truncate; sysfs attributes ignore it.
        node = self._lookup(path)
        if not isinstance(node, tree.Attribute) or node.store is None:
            raise OSError(errno.EACCES, path)
        return 0

    def release(self, path: str, fh: int) -> int:
        handle = self._handles.pop(fh, None)
        if handle is not None and handle.node.on_release is not None:
            handle.node.on_release()
        return 0

    def create(self, path: str, mode: int, fi: int | None = None) -> int:
        raise OSError(errno.EACCES, path)

    def mkdir(self, path: str, mode: int) -> int:
        raise OSError(errno.EPERM, path)

    def rmdir(self, path: str) -> int:
        raise OSError(errno.EPERM, path)

    def unlink(self, path: str) -> int:
        raise OSError(errno.EPERM, path)

    def symlink(self, target: str, source: str) -> int:
        raise OSError(errno.EPERM, target)

    def rename(self, old: str, new: str) -> int:
        raise OSError(errno.EPERM, old)


def mount(
    kernel: Kernel,
    mountpoint: str,
    on_ready: Callable[[], None] | None = None,
    operations: SysfsOperations | None = None,
) -> None:
    """Serve `kernel` on `mountpoint` until the FUSE loop ends (blocks)."""
    ops = operations or SysfsOperations(kernel, on_ready)
    mfusepy.FUSE(ops, mountpoint, foreground=True, **MOUNT_OPTIONS)
