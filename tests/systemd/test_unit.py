# SPDX-License-Identifier: LGPL-2.1-or-later
"""The unit file: readiness type, hardening score, and a sandbox that fits what mdevd does."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mdevd.bus.names import BUS_NAME
from mdevd.config import Config
from mdevd.mdevctl_format import DEFAULT_MDEVCTL_DIR
from tests.support.paths import REPO
from tests.systemd.unitfile import read_unit

UNIT = REPO / "systemd" / "mdevd.service"
ACTIVATION = REPO / "dbus" / "org.mdevd.Mdevd1.service"
#: The issue's bar; systemd-analyze prints one decimal.
MAX_EXPOSURE = 2.0


def service() -> dict[str, list[str]]:
    return read_unit(UNIT)["Service"]


def test_the_security_exposure_is_at_most_2() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    match = re.search(r"Overall exposure level for mdevd\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_readiness_is_notify_from_the_main_process_only() -> None:
    unit = service()
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]  # callout scripts cannot report for the daemon
    assert unit["BusName"] == [BUS_NAME]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert read_unit(UNIT)["Install"]["WantedBy"] == ["multi-user.target"]
    assert read_unit(UNIT)["Unit"]["Requires"] == ["dbus.socket"]


def test_bus_activation_starts_this_unit() -> None:
    activation = read_unit(ACTIVATION)["D-BUS Service"]
    assert activation["Name"] == [BUS_NAME]
    assert activation["SystemdService"] == [UNIT.name]


def test_what_must_stay_off_for_mdevd_to_work_stays_off() -> None:
    unit = service()
    # Writing create/remove/attributes needs a writable /sys.
    assert unit.get("ProtectKernelTunables", ["no"]) == ["no"]
    # udev's events come over netlink in the host's network namespace.
    assert unit.get("PrivateNetwork", ["no"]) == ["no"]
    assert "AF_NETLINK" in " ".join(unit["RestrictAddressFamilies"]).split()
    # /dev/vfio/<group> must open (EBUSY tells a VM holds the device); vfio's major can appear
    # after mdevd started, so no device allow-list.
    assert unit.get("PrivateDevices", ["no"]) == ["no"]
    assert unit.get("DevicePolicy", ["auto"]) == ["auto"]
    assert "DeviceAllow" not in unit
    # Opening a group node libvirt gave to the VM's user needs DAC override.
    assert "CAP_DAC_OVERRIDE" in " ".join(unit["CapabilityBoundingSet"]).split()


def _writable(unit: dict[str, list[str]]) -> list[Path]:
    paths = [Path("/etc", d) for v in unit.get("ConfigurationDirectory", []) for d in v.split()]
    paths += [Path("/run", d) for v in unit.get("RuntimeDirectory", []) for d in v.split()]
    paths += [Path(p.lstrip("-")) for v in unit.get("ReadWritePaths", []) for p in v.split()]
    return paths


def test_every_directory_mdevd_writes_is_writable_in_the_sandbox() -> None:
    unit = service()
    assert unit["ProtectSystem"] == ["strict"]  # everything else is read-only
    writable = _writable(unit)
    store = Config().store
    must_write = [
        store.devices_dir,  # the admin's and the API's definitions
        store.runtime_devices_dir,  # updates of runtime definitions
        DEFAULT_MDEVCTL_DIR,  # mdevctl compatibility: definitions mirrored for libvirt
        Path("/run/lock/s390apconfig.lock"),  # s390-tools' ap-check callout takes its lock here
    ]
    for path in must_write:
        assert any(path.is_relative_to(w) for w in writable), f"{path} not writable: {writable}"
    assert store.vendor_devices_dir not in writable


def test_runtime_definitions_survive_a_restart() -> None:
    # A provisioning tool may have written /run/mdevd/devices.d before mdevd started.
    assert service()["RuntimeDirectoryPreserve"] == ["yes"]


def test_libvirt_starts_after_mdevd_monolithic_or_modular() -> None:
    # libvirt's node-device driver runs `mdevctl list` when it starts: inside libvirtd
    # (monolithic, Debian 12) or virtnodedevd (modular: Fedora, RHEL, Debian 13); VMs that
    # autostart run in libvirtd or virtqemud. Each must find mdevd's devices and name there.
    before = " ".join(read_unit(UNIT)["Unit"]["Before"]).split()
    for unit in ("libvirtd.service", "virtnodedevd.service", "virtqemud.service"):
        assert unit in before, f"{unit} may start before mdevd: {before}"
    # and never the other way round, which would make a cycle
    after = " ".join(read_unit(UNIT)["Unit"].get("After", [])).split()
    assert not {"libvirtd.service", "virtnodedevd.service", "virtqemud.service"} & set(after)
