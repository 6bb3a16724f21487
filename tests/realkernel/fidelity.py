# SPDX-License-Identifier: LGPL-2.1-or-later
"""The same probe of the mdev sysfs interface, run on the real kernel and on the emulated one.

`probe(kernel)` does a fixed sequence of things to mtty, mdpy and mbochs (the layout of parents,
types and devices, file modes, what `create` and `remove` accept and the errno of everything
they refuse, the instance pools, full types, the uevents of create, remove, unregistering and
registering a parent) and returns what it observed as plain JSON data, with the run-dependent
parts (iommu group numbers, vfio minors, sequence numbers) normalized. `test_fidelity.py` runs
it in the guest (`python -m tests.realkernel.fidelity OUT.json`, the real kernel, events from
its netlink group) and on the host against `mdevd-sim` (events from udev's group, stripped of
what udevd adds), and compares the two: every difference is either an emulator bug or a
documented difference (`docs/emulated-kernel.md`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pyudev

A = "0a1b2c3d-0000-4000-8000-00000000000a"
B = "0a1b2c3d-0000-4000-8000-00000000000b"
C = "0a1b2c3d-0000-4000-8000-00000000000c"
PARENTS = ("mtty", "mdpy", "mbochs")
#: Subsystems whose uevents the emulator models (the kernel also sends `module` events).
MODELLED_SUBSYSTEMS = {"mdev", "vfio", "vfio-dev", "mtty", "mdpy", "mbochs"}
#: What udevd adds to an event; the kernel's netlink group has none of it.
UDEV_ADDED = {"SEQNUM", "USEC_INITIALIZED"}


class Kernel(Protocol):
    root: Path

    def register(self, parent: str) -> None: ...

    def unregister(self, parent: str) -> None: ...

    def events(self) -> list[dict[str, str]]:
        """The uevents since the last call, in order, each as the kernel's properties."""
        ...

    def vfio_node(self, group: int) -> Path:
        """The device node of vfio group `group` (`/dev/vfio/N`)."""
        ...


def _errno_of(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def _write(path: Path, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


class Normalizer:
    """Run-dependent numbers in the order first seen: the first iommu group is g0, and so on."""

    def __init__(self) -> None:
        self.groups: dict[str, str] = {}
        self.vfio_devs: dict[str, str] = {}
        self.minors: dict[str, str] = {}

    def group(self, number: str) -> str:
        return self.groups.setdefault(number, f"g{len(self.groups)}")

    def vfio_dev(self, number: str) -> str:
        return self.vfio_devs.setdefault(number, f"d{len(self.vfio_devs)}")

    def text(self, value: str) -> str:
        value = re.sub(r"iommu_groups/(\d+)", lambda m: f"iommu_groups/{self.group(m[1])}", value)
        value = re.sub(r"(^|/)vfio/(\d+)", lambda m: f"{m[1]}vfio/{self.group(m[2])}", value)
        return re.sub(r"(^|/)vfio(\d+)", lambda m: f"{m[1]}vfio{self.vfio_dev(m[2])}", value)

    def event(self, event: dict[str, str]) -> dict[str, str]:
        out = {k: self.text(v) for k, v in event.items() if k not in UDEV_ADDED}
        if "MINOR" in out:
            out["MINOR"] = self.minors.setdefault(out["MINOR"], f"m{len(self.minors)}")
        if "MAJOR" in out:  # vfio's is dynamic: whatever the kernel's char devices left free
            out["MAJOR"] = "dynamic"
        return out


class Probe:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.root = kernel.root
        self.norm = Normalizer()
        self.seen: dict[str, Any] = {}

    def type_dir(self, parent: str, type_id: str) -> Path:
        return self.root / "class/mdev_bus" / parent / "mdev_supported_types" / type_id

    def types(self, parent: str) -> list[str]:
        return sorted(os.listdir(self.root / "class/mdev_bus" / parent / "mdev_supported_types"))

    def available(self, parent: str) -> dict[str, int]:
        return {
            t: int((self.type_dir(parent, t) / "available_instances").read_text())
            for t in self.types(parent)
        }

    def create(self, parent: str, type_id: str, payload: bytes) -> str:
        return _errno_of(lambda: _write(self.type_dir(parent, type_id) / "create", payload))

    def remove(self, uuid: str, payload: bytes = b"1") -> str:
        return _errno_of(lambda: _write(self.root / "bus/mdev/devices" / uuid / "remove", payload))

    def events(self) -> list[dict[str, str]]:
        return [
            self.norm.event(e)
            for e in self.kernel.events()
            if e.get("SUBSYSTEM") in MODELLED_SUBSYSTEMS
        ]

    def listing(self, directory: Path) -> dict[str, str]:
        """Files of a directory with their modes, and their contents where readable."""
        found: dict[str, str] = {}
        if not directory.is_dir():
            return found
        for name in sorted(os.listdir(directory)):
            path = directory / name
            try:
                content = self.norm.text(path.read_text().replace(A, "<uuid>"))
            except OSError as exc:
                content = errno.errorcode.get(exc.errno or 0, "?")
            found[name] = f"{self.mode(path)} {content}"
        return found

    def mode(self, path: Path) -> str:
        return oct(stat.S_IMODE(os.stat(path).st_mode))

    # ---- the probe ---------------------------------------------------------------------------

    def layout(self) -> None:
        for parent in PARENTS:
            link = self.root / "class/mdev_bus" / parent
            types = {}
            for type_id in self.types(parent):
                directory = self.type_dir(parent, type_id)
                files = sorted(os.listdir(directory))
                types[type_id] = {
                    "files": files,
                    "modes": {f: self.mode(directory / f) for f in files},
                    "content": {
                        f: (directory / f).read_text()
                        for f in ("name", "device_api", "description", "available_instances")
                        if f in files
                    },
                }
            self.seen[f"layout {parent}"] = {
                "class/mdev_bus link": os.readlink(link),
                "parent files": sorted(os.listdir(link)),
                "parent power/": self.listing(link / "power"),
                "subsystem link": os.readlink(link / "subsystem"),
                "uevent": (link / "uevent").read_text(),
                "types": types,
            }

    def device(self) -> None:
        before = self.available("mtty")
        result = self.create("mtty", "mtty-2", A.encode())
        events = self.events()
        device = self.root / "bus/mdev/devices" / A
        files = sorted(os.listdir(device))
        self.seen["device"] = {
            "create": result,
            "available before, after": [before, self.available("mtty")],
            "bus/mdev/devices link": self.norm.text(os.readlink(device)),
            "files": files,
            "links": {
                f: self.norm.text(os.readlink(device / f))
                for f in files
                if (device / f).is_symlink()
            },
            "modes": {f: self.mode(device / f) for f in files if not (device / f).is_symlink()},
            "uevent": self.norm.text((device / "uevent").read_text()),
            "vfio-dev": [self.norm.text(n) for n in sorted(os.listdir(device / "vfio-dev"))],
            "subdirectories": {
                f: self.listing(device / f)
                for f in files
                if (device / f).is_dir() and not (device / f).is_symlink() and f != "vfio-dev"
            },
            "vfio-dev device files": sorted(os.listdir(next((device / "vfio-dev").iterdir()))),
            "vfio group device files": sorted(
                os.listdir(
                    self.root / "class/vfio" / Path(os.readlink(device / "iommu_group")).name
                )
            ),
            "type devices/": sorted(os.listdir(self.type_dir("mtty", "mtty-2") / "devices")),
            "iommu group devices/": sorted(os.listdir(device / "iommu_group" / "devices")),
            "read remove": _errno_of(lambda: _read(device / "remove")),
            "read create": _errno_of(lambda: _read(self.type_dir("mtty", "mtty-1") / "create")),
            "write available_instances": _errno_of(
                lambda: _write(self.type_dir("mtty", "mtty-1") / "available_instances", b"1")
            ),
            "events of create": events,
        }
        removed = self.remove(A)
        self.seen["device"]["remove"] = removed
        self.seen["device"]["events of remove"] = self.events()
        self.seen["device"]["remove again"] = self.remove(A)

    def create_payloads(self) -> None:
        upper = B.upper().encode()
        payloads = {
            "36 bytes": B.encode(),
            "newline": B.encode() + b"\n",
            "space": B.encode() + b" ",
            "37th byte x": B.encode() + b"x",
            "38 bytes": B.encode() + b"\n\n",
            "35 bytes": B.encode()[:35],
            "not hex": B.replace("b", "g").encode(),
            "no dashes": B.replace("-", "").encode() + b"0000",
            "upper case": upper,
            "empty": b"",
        }
        results = {}
        for name, payload in payloads.items():
            result = self.create("mtty", "mtty-1", payload)
            names = sorted(os.listdir(self.root / "bus/mdev/devices"))
            results[name] = [result, names]
            for uuid in names:
                self.remove(uuid)
        self.events()
        self.seen["create payloads"] = results

    def duplicates(self) -> None:
        self.create("mtty", "mtty-1", B.encode())
        self.events()
        self.seen["duplicates"] = {
            "same type": self.create("mtty", "mtty-1", B.encode()),
            "other type": self.create("mtty", "mtty-2", B.encode()),
            "other parent": self.create("mdpy", "mdpy-vga", B.encode()),
            "upper case of it": self.create("mdpy", "mdpy-vga", B.upper().encode()),
            "unknown type": _errno_of(lambda: _write(self.type_dir("mtty", "mtty-9"), b"")),
            "unknown type create": self.create("mtty", "mtty-9", B.encode()),
            "events": self.events(),
        }
        self.remove(B)
        self.events()

    def remove_payloads(self) -> None:
        results = {}
        for payload in (b"0", b"abc", b"", b" 1", b"1\n", b"0x1", b"-1", b"2", b"1"):
            self.create("mtty", "mtty-1", C.encode())
            result = self.remove(C, payload)
            still = (self.root / "bus/mdev/devices" / C).exists()
            results[payload.decode()] = [result, "still there" if still else "removed"]
            if still:
                self.remove(C)
        self.events()
        self.seen["remove payloads"] = results

    def pools(self) -> None:
        seen: dict[str, Any] = {}
        self.create("mtty", "mtty-1", A.encode())
        seen["mtty after one mtty-1"] = self.available("mtty")
        self.remove(A)
        self.create("mbochs", "mbochs-large", A.encode())
        seen["mbochs after one large"] = self.available("mbochs")
        seen["mbochs-large vendor/"] = self.listing(self.root / "bus/mdev/devices" / A / "vendor")
        self.remove(A)
        self.create("mdpy", "mdpy-hd", A.encode())
        seen["mdpy after one hd"] = self.available("mdpy")
        seen["mdpy-hd vendor/"] = self.listing(self.root / "bus/mdev/devices" / A / "vendor")
        self.remove(A)
        self.events()
        self.seen["pools"] = seen

    def full(self) -> None:
        seen: dict[str, Any] = {}
        for parent, type_id in (
            ("mtty", "mtty-2"),
            ("mdpy", "mdpy-vga"),
            ("mbochs", "mbochs-large"),
        ):
            made: list[str] = []
            while self.available(parent)[type_id] > 0 and len(made) < 30:
                uuid = f"0a1b2c3d-0000-4000-8000-{len(made):012x}"
                self.create(parent, type_id, uuid.encode())
                made.append(uuid)
            self.events()
            refused = f"0a1b2c3d-0000-4000-9000-{0:012x}"
            seen[f"{parent} full"] = {
                "made": len(made),
                "available": self.available(parent),
                "create": self.create(parent, type_id, refused.encode()),
                "left behind": (self.root / "bus/mdev/devices" / refused).exists(),
                "events": self.events(),
            }
            for uuid in made:
                self.remove(uuid)
            self.events()
        self.seen["full"] = seen

    def vfio_group(self) -> None:
        """One opener of a group at a time; a group open without the device (libvirt's check
        that no VM uses it) does not hold up the device's removal."""
        self.create("mtty", "mtty-1", A.encode())
        device = self.root / "bus/mdev/devices" / A
        node = self.kernel.vfio_node(int(Path(os.readlink(device / "iommu_group")).name))
        first = os.open(node, os.O_RDONLY)
        try:
            self.seen["vfio group"] = {
                "second open": _errno_of(lambda: os.close(os.open(node, os.O_RDWR))),
                "remove while open": self.remove(A),
                "device after remove": device.exists(),
            }
        finally:
            os.close(first)
        self.events()

    def registration(self) -> None:
        self.create("mtty", "mtty-1", A.encode())
        self.create("mtty", "mtty-2", B.encode())
        self.events()
        self.kernel.unregister("mtty")
        unregistered = {
            "events": self.events(),
            "class/mdev_bus/mtty": (self.root / "class/mdev_bus/mtty").exists(),
            "devices left": sorted(os.listdir(self.root / "bus/mdev/devices")),
        }
        self.kernel.register("mtty")
        self.seen["registration"] = {
            "unregister with two devices": unregistered,
            "register": {"events": self.events(), "available": self.available("mtty")},
        }

    def run(self) -> dict[str, Any]:
        for step in (
            self.layout,
            self.device,
            self.create_payloads,
            self.duplicates,
            self.remove_payloads,
            self.pools,
            self.full,
            self.vfio_group,
            self.registration,
        ):
            try:
                step()
            except Exception as exc:
                self.seen[f"{step.__name__} failed"] = repr(exc)
        return self.seen


def probe(kernel: Kernel) -> dict[str, Any]:
    return Probe(kernel).run()


class MonitorEvents:
    """uevents from a pyudev monitor: drained until the kernel has been quiet for a moment."""

    def __init__(self, source: str) -> None:
        self.monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
        self.monitor.start()

    def events(self, quiet: float = 0.5) -> list[dict[str, str]]:
        found: list[dict[str, str]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            device = self.monitor.poll(timeout=quiet)
            if device is None:
                break
            found.append(dict(device.properties))
        return found


class GuestKernel(MonitorEvents):
    """The real kernel in the guest: its netlink group, modprobe and rmmod."""

    root = Path("/sys")

    def __init__(self) -> None:
        super().__init__("kernel")

    def register(self, parent: str) -> None:
        subprocess.run(["modprobe", parent], check=True)

    def vfio_node(self, group: int) -> Path:
        return Path("/dev/vfio") / str(group)

    def unregister(self, parent: str) -> None:
        subprocess.run(["rmmod", parent], check=True)


def main(argv: list[str]) -> int:
    output = Path(argv[0])
    kernel = GuestKernel()
    subprocess.run(["modprobe", "-a", *PARENTS], check=True)
    kernel.events()
    output.write_text(json.dumps(probe(kernel), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
