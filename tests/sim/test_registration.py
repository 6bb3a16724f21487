# SPDX-License-Identifier: LGPL-2.1-or-later
"""Parents registering and unregistering while mounted (a driver loaded or unloaded)."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from mdevd.sim.control import ControlError
from tests.sim.conftest import SimFactory
from tests.sim.helpers import UUID_A, UUID_B, UUID_C, available, create, write_errno
from tests.support.sim import RunningSim

pytestmark = pytest.mark.timeout(60, method="thread")

MTTY = "/devices/virtual/mtty/mtty"


def _events_after(sim: RunningSim, seqnum: int) -> list[tuple[str, str, dict[str, str]]]:
    return [(e.action, e.devpath, e.properties) for e in sim.control.uevents() if e.seqnum > seqnum]


def _last_seqnum(sim: RunningSim) -> int:
    events = sim.control.uevents()
    return events[-1].seqnum if events else 0


def test_unregistering_removes_the_parent_and_its_devices(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    create(sim.root, "mtty", "mtty-2", UUID_B)
    create(sim.root, "mdpy", "mdpy-vga", UUID_C)
    before = _last_seqnum(sim)
    sim.control.unregister("mtty")
    assert not (sim.root / "class/mdev_bus/mtty").exists()
    assert not (sim.root / "devices/virtual/mtty/mtty").exists()
    assert os.listdir(sim.root / "bus/mdev/devices") == [UUID_C]
    events = _events_after(sim, before)
    groups = [e[1] for e in events if e[2]["SUBSYSTEM"] == "vfio"]
    assert [(action, path, props["SUBSYSTEM"]) for action, path, props in events] == [
        ("remove", f"{MTTY}/{UUID_A}/vfio-dev/vfio0", "vfio-dev"),
        ("remove", groups[0], "vfio"),
        ("unbind", f"{MTTY}/{UUID_A}", "mdev"),
        ("remove", f"{MTTY}/{UUID_A}", "mdev"),
        ("remove", f"{MTTY}/{UUID_B}/vfio-dev/vfio1", "vfio-dev"),
        ("remove", groups[1], "vfio"),
        ("unbind", f"{MTTY}/{UUID_B}", "mdev"),
        ("remove", f"{MTTY}/{UUID_B}", "mdev"),
        ("change", MTTY, "mtty"),
        ("remove", MTTY, "mtty"),
    ]
    assert events[-2][2]["MDEV_STATE"] == "unregistered"


def test_registering_again_brings_the_parent_back_empty(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-2", UUID_A)
    sim.control.unregister("mtty")
    before = _last_seqnum(sim)
    sim.control.register("mtty")
    assert os.path.realpath(sim.root / "class/mdev_bus/mtty") == str(
        sim.root / "devices/virtual/mtty/mtty"
    )
    assert available(sim.root, "mtty", "mtty-2") == 12
    events = _events_after(sim, before)
    assert events == [
        ("add", MTTY, {"SUBSYSTEM": "mtty"}),
        ("change", MTTY, {"SUBSYSTEM": "mtty", "MDEV_STATE": "registered"}),
    ]
    create(sim.root, "mtty", "mtty-2", UUID_A)


def test_a_pci_parent_stays_when_its_driver_unregisters(sim: RunningSim) -> None:
    gpu = "0000:65:00.0"
    devpath = "devices/pci0000:64/0000:64:00.0/0000:65:00.0"
    create(sim.root, gpu, "nvidia-558", UUID_A)
    before = _last_seqnum(sim)
    sim.control.unregister(gpu)
    assert not (sim.root / "class/mdev_bus" / gpu).exists()
    assert (sim.root / devpath).is_dir()
    assert not (sim.root / devpath / "mdev_supported_types").exists()
    assert os.path.basename(os.path.realpath(sim.root / devpath / "subsystem")) == "pci"
    events = _events_after(sim, before)
    assert [e[0] for e in events] == ["remove", "remove", "unbind", "remove", "change"]
    change = events[-1]
    assert change[1] == "/" + devpath
    assert change[2]["SUBSYSTEM"] == "pci"
    assert change[2]["MDEV_STATE"] == "unregistered"
    assert change[2]["PCI_SLOT_NAME"] == gpu
    before = _last_seqnum(sim)
    sim.control.register(gpu)
    assert [e[0] for e in _events_after(sim, before)] == ["change"]
    assert available(sim.root, gpu, "nvidia-558") == 4


def test_a_parent_can_start_unregistered(start_sim: SimFactory) -> None:
    nvidia = start_sim("nvidia")
    second = "0000:66:00.0"
    assert sorted(os.listdir(nvidia.root / "class/mdev_bus")) == ["0000:65:00.0"]
    assert (nvidia.root / "devices/pci0000:64/0000:64:01.0" / second).is_dir()
    nvidia.control.register(second)
    assert available(nvidia.root, second, "nvidia-556") == 16


def test_unregistration_waits_for_held_devices_and_refuses_creates(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    sim.control.hold(UUID_A)
    failures: list[BaseException] = []

    def unregister() -> None:
        try:
            sim.control.unregister("mtty")
        except BaseException as exc:
            failures.append(exc)

    unloading = threading.Thread(target=unregister, daemon=True)
    unloading.start()
    # The compatibility link goes first; wait for it rather than for time to pass.
    link = sim.root / "class/mdev_bus/mtty"
    for _ in range(500):
        if not link.exists():
            break
        unloading.join(0.01)
    assert not link.exists()
    assert unloading.is_alive()
    # The types are still there while devices go, but the core refuses new ones.
    mtty_create = sim.root / "devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/create"
    assert mtty_create.exists()
    assert write_errno(mtty_create, UUID_B) == errno.ENODEV
    sim.control.release(UUID_A)
    unloading.join(10)
    assert not unloading.is_alive()
    assert failures == []
    assert not (sim.root / "devices/virtual/mtty/mtty").exists()


def test_registration_errors(sim: RunningSim) -> None:
    with pytest.raises(ControlError) as registered:
        sim.control.register("mtty")
    assert registered.value.errno == errno.EALREADY
    sim.control.unregister("mtty")
    with pytest.raises(ControlError) as unregistered:
        sim.control.unregister("mtty")
    assert unregistered.value.errno == errno.EALREADY
    with pytest.raises(ControlError) as unknown:
        sim.control.register("nope")
    assert unknown.value.errno == errno.ENOENT
    assert "nope" in str(unknown.value)
