# SPDX-License-Identifier: LGPL-2.1-or-later
"""uevents of the emulated kernel: numbered, logged, and sent as udevd rebroadcasts them.

The real path is kernel -> udevd (rules) -> netlink multicast group 2 with a "libudev" header,
which is what a `pyudev.Monitor.from_netlink(ctx, source='udev')` receives. The emulated kernel
sends straight to group 2 in that format, so consumers see the events on their production path.

uevent multicast reaches every listener in the network namespace. Sending into the host's
namespace would feed invented devices to the host's udev consumers (libvirt, NetworkManager...),
so netlink is only used inside a private network namespace (tests and demos create one).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

NETLINK_KOBJECT_UEVENT = 15
UDEV_MONITOR_GROUP = 2
_UDEV_MONITOR_MAGIC = 0xFEEDCAFE
_HEADER_SIZE = 40

#: Properties a consumer needs to tell events apart but which would only be noise in the log.
_UNLOGGED = frozenset({"USEC_INITIALIZED"})


def murmur2(data: bytes, seed: int = 0) -> int:
    """MurmurHash2 (32-bit), the hash libudev puts in the header for its socket filter."""
    m = 0x5BD1E995
    mask = 0xFFFFFFFF
    h = (seed ^ len(data)) & mask
    whole = len(data) - len(data) % 4
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    rest = data[whole:]
    if len(rest) == 3:
        h ^= rest[2] << 16
    if len(rest) >= 2:
        h ^= rest[1] << 8
    if rest:
        h ^= rest[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def encode_udev_message(properties: Iterable[tuple[str, str]]) -> bytes:
    """A udev monitor message: the 40-byte `monitor_netlink_header`, then KEY=VALUE\\0 pairs."""
    props = dict(properties)
    body = b"".join(f"{key}={value}".encode() + b"\0" for key, value in props.items())
    subsystem_hash = murmur2(props["SUBSYSTEM"].encode()) if "SUBSYSTEM" in props else 0
    devtype_hash = murmur2(props["DEVTYPE"].encode()) if "DEVTYPE" in props else 0
    header = (
        b"libudev\0"
        + struct.pack(">I", _UDEV_MONITOR_MAGIC)
        + struct.pack("=III", _HEADER_SIZE, _HEADER_SIZE, len(body))
        # The filter hashes and the tag bloom filter are compared in network byte order by the
        # receivers' BPF filter; no tags, so an empty bloom filter.
        + struct.pack(">IIII", subsystem_hash, devtype_hash, 0, 0)
    )
    return header + body


def _netns(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _parent_pid(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("PPid:"):
                    return line.split()[1]
    except OSError:
        pass
    return None


#: Set by whoever unshared before starting us (`scripts/bench`): the inode numbers of the host's
#: mount and network namespaces, "MNT NET".
HOST_NAMESPACES_VARIABLE = "MDEVD_HOST_NAMESPACES"


def recorded_host_namespaces() -> tuple[int, int] | None:
    """The host's (mount, network) namespace inodes from `HOST_NAMESPACES_VARIABLE`, if set."""
    fields = os.environ.get(HOST_NAMESPACES_VARIABLE, "").split()
    if len(fields) != 2 or not all(f.isdigit() for f in fields):
        return None
    return int(fields[0]), int(fields[1])


def in_private_netns() -> bool:
    """True when this process's network namespace is not PID 1's.

    Some sandboxes deny reading PID 1's namespace links even to root. Then the host's is the
    one recorded in the environment (`HOST_NAMESPACES_VARIABLE`), or else the namespace counts
    as private when one of this process's ancestors lives in another one (whoever started us
    unshared it); if every readable ancestor shares it, it is treated as the host's. (An
    ancestor that exited breaks that walk: a benchmark run in the background found it.)
    """
    own = _netns("self")
    if own is None:
        return False
    init = _netns("1")
    if init is not None:
        return own != init
    recorded = recorded_host_namespaces()
    if recorded is not None:
        return own != recorded[1]
    pid = _parent_pid("self")
    while pid not in (None, "0", "1"):
        assert pid is not None
        ancestor = _netns(pid)
        if ancestor is not None and ancestor != own:
            return True
        pid = _parent_pid(pid)
    return False


def choose_mode(requested: str, private: bool) -> tuple[str, str | None]:
    """Resolve `--uevents auto|netlink|none` into ("netlink"|"none", warning or None).

    Raises ValueError when netlink is asked for in the host's network namespace.
    """
    if requested == "none":
        return "none", None
    if requested == "netlink":
        if not private:
            raise ValueError(
                "refusing to send uevents into the host's network namespace "
                "(run inside `unshare --net`, or use --uevents none)"
            )
        return "netlink", None
    if requested == "auto":
        if private:
            return "netlink", None
        return "none", (
            "not in a private network namespace: uevents are logged in .sim/uevents but not sent"
        )
    raise ValueError(f"unknown uevent mode {requested!r} (auto, netlink or none)")


@dataclass(frozen=True, slots=True)
class Uevent:
    seqnum: int
    action: str
    devpath: str
    properties: tuple[tuple[str, str], ...]  # everything but ACTION, DEVPATH and SEQNUM

    def log_line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.properties if k not in _UNLOGGED)
        return f"{self.seqnum} {self.action} {self.devpath}" + (f" {extra}" if extra else "")


class UeventSender:
    """Numbers, logs and (optionally) broadcasts uevents. Callers serialize `emit` themselves
    (the kernel model holds its lock), so sequence numbers go out in order."""

    def __init__(self, netlink: bool) -> None:
        self._socket: socket.socket | None = None
        if netlink:
            self._socket = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT
            )
            self._socket.bind((0, 0))
        self._seqnum = 0
        self._log: list[str] = []
        self._log_lock = threading.Lock()
        # udevd reports when it first saw a device; kept per devpath until the device goes.
        self._initialized: dict[str, int] = {}

    @property
    def netlink(self) -> bool:
        return self._socket is not None

    def emit(self, action: str, devpath: str, subsystem: str, **extra: str) -> Uevent:
        self._seqnum += 1
        properties: list[tuple[str, str]] = [("SUBSYSTEM", subsystem), *extra.items()]
        event = Uevent(self._seqnum, action, "/" + devpath, tuple(properties))
        with self._log_lock:
            self._log.append(event.log_line())
        if self._socket is not None:
            usec = self._initialized.setdefault(devpath, time.monotonic_ns() // 1000)
            if action == "remove":
                self._initialized.pop(devpath, None)
            message = encode_udev_message(
                [
                    ("ACTION", action),
                    ("DEVPATH", event.devpath),
                    *properties,
                    ("SEQNUM", str(event.seqnum)),
                    ("USEC_INITIALIZED", str(usec)),
                ]
            )
            try:
                self._socket.sendto(message, (0, UDEV_MONITOR_GROUP))
            except OSError as exc:
                # Losing an event is what a full receive buffer does on a real system too;
                # the log still has it, and the emulated operation must not fail because of it.
                print(f"mdevd-sim: uevent {event.seqnum} not sent: {exc}", file=sys.stderr)
        return event

    def log_text(self) -> bytes:
        with self._log_lock:
            return "".join(line + "\n" for line in self._log).encode()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
