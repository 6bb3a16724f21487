# SPDX-License-Identifier: LGPL-2.1-or-later
"""libvirt itself, unchanged, managing mediated devices through mdevd (with the front end as
its `mdevctl`), and seeing changes made through mdevd directly.

The issue's libvirt-in-a-guest test needs the real-kernel harness; this one runs Debian's
libvirtd on the host, in a private mount namespace over the emulated kernel
(tests/compat/libvirtd.py). It is skipped where libvirt-daemon and libvirt-clients are not
installed.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat import libvirtd
from tests.compat.conftest import CompatStack, StackFactory
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.timeout(300, method="thread"),
    pytest.mark.skipif(not libvirtd.available(), reason="libvirt-daemon is not installed"),
]

U1 = "c0ffee00-1111-4222-8333-444444444444"
U2 = "c0ffee00-2222-4222-8333-444444444444"
U3 = "c0ffee00-3333-4222-8333-444444444444"


def _name(uuid: str) -> str:
    return f"mdev_{uuid.replace('-', '_')}_mtty"


def _xml(type_id: str, uuid: str | None = None) -> str:
    uuid_element = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (
        "<device><parent>mtty_mtty</parent><capability type='mdev'>"
        f"<type id='{type_id}'/>{uuid_element}</capability></device>"
    )


class Events:
    """`virsh nodedev-event --event lifecycle --loop`, read on a thread."""

    def __init__(self, daemon: libvirtd.Libvirtd) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [libvirtd.VIRSH or "virsh", "-c", daemon.uri, "nodedev-event", "--event", "lifecycle",
             "--loop"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())

    def seen(self, device: str) -> list[str]:
        """The lifecycle events of `device`, in order (Created, Deleted, Defined, ...)."""
        found = []
        for line in self.lines:
            match = re.search(rf"node device {re.escape(device)}: (\w+)", line)
            if match:
                found.append(match[1])
        return found

    def wait(self, device: str, event: str, count: int = 1, timeout: float = 30) -> None:
        wait_until(lambda: self.seen(device).count(event) >= count, timeout,
                   f"{event} x{count} for {device} (saw {self.lines})")  # fmt: skip

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def world(start_stack: StackFactory) -> Iterator[tuple[CompatStack, libvirtd.Libvirtd, Events]]:
    stack = start_stack(scenario="mtty")
    with libvirtd.running_libvirtd(
        stack.sim.root, stack.dirs.mdevctl, stack.address, stack.dirs.bin
    ) as daemon:
        events = Events(daemon)
        time.sleep(0.5)  # nodedev-event registers its callback before the first change
        try:
            yield stack, daemon, events
        finally:
            events.close()
            print(f"--- libvirtd log ---\n{daemon.log()[-20000:]}")


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def _listed(daemon: libvirtd.Libvirtd) -> set[str]:
    return set(_ok(daemon.virsh("nodedev-list", "--cap", "mdev", "--all")).split())


def test_libvirt_manages_mdevs_through_mdevd(
    world: tuple[CompatStack, libvirtd.Libvirtd, Events], tmp_path: Path
) -> None:
    stack, daemon, events = world
    xml = tmp_path / "device.xml"

    # nodedev-create: a transient device, through `mdevctl start --jsonfile=/dev/stdin`.
    xml.write_text(_xml("mtty-2", U1))
    _ok(daemon.virsh("nodedev-create", str(xml)))
    assert (stack.sim.root / "bus/mdev/devices" / U1).exists()
    events.wait(_name(U1), "Created")
    dumped = _ok(daemon.virsh("nodedev-dumpxml", _name(U1)))
    assert "<type id='mtty-2'/>" in dumped and f"<uuid>{U1}</uuid>" in dumped
    again = daemon.virsh("nodedev-create", str(xml))
    assert again.returncode != 0 and "Device already exists" in again.stderr

    # nodedev-define with and without a UUID; start; autostart on and off; destroy; undefine.
    xml.write_text(_xml("mtty-1", U2))
    _ok(daemon.virsh("nodedev-define", str(xml)))
    events.wait(_name(U2), "Defined")
    assert stack.file("mtty", U2).exists()
    xml.write_text(_xml("mtty-1"))
    defined = _ok(daemon.virsh("nodedev-define", str(xml)))
    generated = re.search(r"mdev_([0-9a-f_]{36})_mtty", defined)
    assert generated is not None, defined
    generated_uuid = generated[1].replace("_", "-")
    assert stack.file("mtty", generated_uuid).exists()

    _ok(daemon.virsh("nodedev-start", _name(U2)))
    events.wait(_name(U2), "Created")
    assert (stack.sim.root / "bus/mdev/devices" / U2).exists()
    _ok(daemon.virsh("nodedev-autostart", _name(U2)))
    wait_until(
        lambda: '"auto"' in stack.file("mtty", U2).read_text(), timeout=20, what="autostart on"
    )
    info = _ok(daemon.virsh("nodedev-info", _name(U2)))
    assert re.search(r"Autostart:\s+yes", info), info
    _ok(daemon.virsh("nodedev-autostart", "--disable", _name(U2)))
    wait_until(
        lambda: '"manual"' in stack.file("mtty", U2).read_text(), timeout=20, what="autostart off"
    )
    assert {_name(U1), _name(U2), _name(generated_uuid)} <= _listed(daemon)

    _ok(daemon.virsh("nodedev-destroy", _name(U2)))
    events.wait(_name(U2), "Deleted")
    assert not (stack.sim.root / "bus/mdev/devices" / U2).exists()
    _ok(daemon.virsh("nodedev-undefine", _name(U2)))
    events.wait(_name(U2), "Undefined")
    assert not stack.file("mtty", U2).exists()
    wait_until(lambda: _name(U2) not in _listed(daemon), timeout=20, what="U2 gone from libvirt")

    # Changes made through mdevd directly reach libvirt too.
    _ok(stack.daemon.ctl("define", "mtty", "mtty-1", "--uuid", U3))
    events.wait(_name(U3), "Defined")
    _ok(stack.daemon.ctl("start", U3))
    events.wait(_name(U3), "Created")
    _ok(stack.daemon.ctl("stop", U3))
    events.wait(_name(U3), "Deleted")
    _ok(stack.daemon.ctl("undefine", U3))
    events.wait(_name(U3), "Undefined")

    # Autostart after the driver goes away and comes back brings the device back, once.
    _ok(daemon.virsh("nodedev-autostart", _name(generated_uuid)))
    wait_until(
        lambda: '"auto"' in stack.file("mtty", generated_uuid).read_text(), timeout=20, what="auto"
    )
    stack.sim.control.unregister("mtty")
    stack.sim.control.register("mtty")
    wait_until(lambda: (stack.sim.root / "bus/mdev/devices" / generated_uuid).exists(), timeout=20,
               what="autostart")  # fmt: skip
    events.wait(_name(generated_uuid), "Created")
    time.sleep(1)
    creates = [e for e in stack.sim.control.uevents()
               if e.action == "add" and e.devpath.endswith(generated_uuid)
               and e.subsystem == "mdev"]  # fmt: skip
    assert len(creates) == 1
