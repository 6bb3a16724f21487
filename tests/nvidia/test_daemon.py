# SPDX-License-Identifier: LGPL-2.1-or-later
"""NVIDIA vGPUs on SR-IOV virtual functions through the real daemon (docs/nvidia-vf.md).

The emulated kernel serves the per-VF `nvidia/` files as the note describes them
(tests/sim/test_nvidia_vf.py shows each behaviour against its source), beside an mdev parent.
What these tests hold the daemon to is the issue's list: definitions survive a daemon restart
(adopted, not recreated) and a driver reload (autostarted once), a second size is refused with
the reason, a VF in use is Busy, another tool's VF is left alone, and every client sees the same
objects as for mdevs.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mdevd.bus import names
from tests.daemon.harness import BusClient, DaemonError, device_path, new_uuid
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.sim import RunningSim, running_sim
from tests.support.waiting import wait_until

SCENARIO = Path(__file__).with_name("scenario.toml")
GPU = "0000:3d:00.0"
VFS = ["0000:3d:00.4", "0000:3d:00.5", "0000:3d:00.6", "0000:3d:00.7"]
GPU_B = "0000:5e:00.0"
TIMEOUT = 30


class VfStack:
    """A bus, the emulated kernel and the daemon, which a test may restart on the same kernel
    and the same definition and state directories."""

    def __init__(self, address: str, sim: RunningSim, workdir: Path) -> None:
        self.address = address
        self.sim = sim
        self.devices_dir = workdir / "devices.d"
        self.devices_dir.mkdir()
        self.state_dir = workdir / "state"
        self.config = "# defaults\n"
        self.daemon: DaemonProcess | None = None

    @contextmanager
    def running(self, config: str | None = None) -> Iterator[DaemonProcess]:
        with running_daemon(
            self.address,
            self.sim.root,
            [self.devices_dir],
            config_text=config or self.config,
            extra_args=["--state-dir", str(self.state_dir)],
        ) as daemon:
            self.daemon = daemon
            yield daemon

    def vf_type(self, vf: str) -> str:
        return self.vf_file(vf, "current_vgpu_type").read_text().strip()

    def vf_file(self, vf: str, name: str) -> Path:
        return self.sim.root / "bus" / "pci" / "devices" / vf / "nvidia" / name


@pytest.fixture
def vf(tmp_path: Path) -> Iterator[VfStack]:
    with private_bus([PROJECT_POLICY]) as address, running_sim(SCENARIO) as sim:
        yield VfStack(address, sim, tmp_path)


class VfClient(BusClient):
    """The harness's client, answering UUIDs where the methods answer object paths."""

    def create_device(self, parent: str, type_id: str, **opts: Any) -> str:
        return uuid_of(super().create_device(parent, type_id, **opts))

    def define_device(self, parent: str, type_id: str, **opts: Any) -> str:
        return uuid_of(super().define_device(parent, type_id, **opts))


def uuid_of(path: str) -> str:
    return path.rsplit("/", 1)[-1].replace("_", "-")


@contextmanager
def client_of(stack: VfStack) -> Iterator[VfClient]:
    client = VfClient(stack.address)
    try:
        yield client
    finally:
        client.close()


def ctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon.ctl(*args, timeout=TIMEOUT)


def started_lines(daemon: DaemonProcess, uuid: str, reason: str) -> int:
    return daemon.log().count(f"device {uuid}: started ({reason})")


def test_a_numeric_id_defines_the_nvidia_type_and_starts_on_the_first_free_vf(
    vf: VfStack,
) -> None:
    with vf.running(), client_of(vf) as client:
        uuid = client.define_device(GPU, "1145", autostart=True)
        client.start(uuid)
        props = client.device(uuid)
        assert (props["Type"], props["Backend"], props["Placement"]) == (
            "nvidia-1145",
            "nvidia-vf",
            VFS[0],
        )
        assert props["SysfsPath"].endswith("/" + VFS[0])
        assert vf.vf_type(VFS[0]) == "1145"
        # Stored as the parent lists it: the file says what `types` shows.
        assert 'type = "nvidia-1145"' in (vf.devices_dir / f"{uuid}.toml").read_text()
        client.stop(uuid)
        assert vf.vf_type(VFS[0]) == "0"
        assert client.device(uuid)["Backend"] == "nvidia-vf"  # its parent's, while inactive


def test_a_restarted_daemon_adopts_its_vgpus_on_the_same_vfs(vf: VfStack) -> None:
    with vf.running() as daemon, client_of(vf) as client:
        first = client.define_device(GPU, "nvidia-1145", autostart=True, start=True)
        second = client.define_device(GPU, "nvidia-1147", autostart=True, start=True)
        placed = {u: client.device(u)["Placement"] for u in (first, second)}
    assert sorted(placed.values()) == VFS[:2]
    # Any write to a VF from now on fails: a daemon that cleared or set a type would show it.
    for address in VFS:
        vf.sim.control.fault_vgpu_type(address, "EIO", 10)
    with vf.running() as daemon, client_of(vf) as client:
        for uuid, address in placed.items():
            props = client.device(uuid)
            assert (props["Active"], props["Placement"], props["Status"]) == (
                True,
                address,
                "active",
            )
            assert started_lines(daemon, uuid, "autostart") == 0
        assert "autostart failed" not in daemon.log()
    vf.sim.control.clear()


def test_a_driver_reload_autostarts_each_vgpu_once_on_its_vf(vf: VfStack) -> None:
    with vf.running() as daemon, client_of(vf) as client:
        uuids = [client.define_device(GPU, "1145", autostart=True, start=True) for _ in range(2)]
        placed = {u: client.device(u)["Placement"] for u in uuids}
        vf.sim.control.nvidia_unload(GPU)
        wait_until(lambda: not any(client.device(u)["Active"] for u in uuids), TIMEOUT)
        assert client.device(uuids[0])["Status"] == "waiting"
        vf.sim.control.nvidia_load(GPU)
        wait_until(lambda: all(client.device(u)["Active"] for u in uuids), TIMEOUT)
        time.sleep(0.5)  # a second autostart would come now
        for uuid in uuids:
            assert started_lines(daemon, uuid, "autostart") == 1
            # The same VF as before the reload: the record's preference.
            assert client.device(uuid)["Placement"] == placed[uuid]


def test_another_size_is_refused_with_the_reason(vf: VfStack) -> None:
    with vf.running(), client_of(vf) as client:
        client.create_device(GPU, "nvidia-1145")
        with pytest.raises(DaemonError) as refused:
            client.create_device(GPU, "nvidia-1148")
        assert refused.value.name == names.error_name("NoInstancesAvailable")
        message = str(refused.value)
        assert "nvidia-1145 (NVIDIA L40S-1B) running" in message
        assert "same size" in message
        # The GPU still lists the type it offered before, with nothing available.
        shown = ctl_json(vf, "types")
        assert isinstance(shown, dict)
        (gpu,) = [p for p in shown["parents"] if p["name"] == GPU]
        assert gpu["backend"] == "nvidia-vf"
        available = {t["type"]: t["available_instances"] for t in gpu["types"]}
        assert available == {"nvidia-1145": 3, "nvidia-1147": 3, "nvidia-1148": 0}


def ctl_json(vf: VfStack, *args: str) -> object:
    assert vf.daemon is not None
    result = ctl(vf.daemon, *args, "--json", "--schema", "1")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_full_gpu_says_so(vf: VfStack) -> None:
    with vf.running(), client_of(vf) as client:
        for _ in range(4):
            client.create_device(GPU, "nvidia-1145")
        with pytest.raises(DaemonError) as refused:
            client.create_device(GPU, "nvidia-1145")
        assert refused.value.name == names.error_name("NoInstancesAvailable")
        assert "no free VF" in str(refused.value)


def test_a_vf_in_use_is_busy_and_clearing_waits_out_a_late_release(vf: VfStack) -> None:
    with vf.running(), client_of(vf) as client:
        uuid = client.create_device(GPU, "nvidia-1145")
        vf.sim.control.hold_vf(VFS[0])
        with pytest.raises(DaemonError) as busy:
            client.stop(uuid)
        assert busy.value.name == names.error_name("Busy")
        assert vf.vf_type(VFS[0]) == "1145"
        # QEMU is gone, but the driver answers EBUSY a little longer (Proxmox 48ada698).
        vf.sim.control.delay("vf-release", 1.0)
        vf.sim.control.release_vf(VFS[0])
        client.stop(uuid)
        assert vf.vf_type(VFS[0]) == "0"


def test_a_vf_that_stays_busy_is_busy_after_the_retries(vf: VfStack) -> None:
    config = "[nvidia_vf]\nremove_retry_seconds = 0.5\n"
    with vf.running(config), client_of(vf) as client:
        uuid = client.create_device(GPU, "nvidia-1145")
        vf.sim.control.delay("vf-release", 30.0)
        vf.sim.control.hold_vf(VFS[0])
        vf.sim.control.release_vf(VFS[0])
        with pytest.raises(DaemonError) as busy:
            client.stop(uuid)
        assert busy.value.name == names.error_name("Busy")
        assert "stayed busy" in str(busy.value)
        assert client.device(uuid)["Active"] is True
    vf.sim.control.clear()


def test_another_tools_vgpu_is_shown_and_left_alone(vf: VfStack) -> None:
    # Another tool (a site's unit, Proxmox) set VF 0 before the daemon started.
    vf.vf_file(VFS[0], "current_vgpu_type").write_text("1147")
    with vf.running(), client_of(vf) as client:
        shown = [
            props
            for props in (client.device(u) for u in _uuids(client))
            if props["Placement"] == VFS[0]
        ]
        assert len(shown) == 1 and shown[0]["Defined"] is False
        assert shown[0]["Type"] == "nvidia-1147"
        mine = client.define_device(GPU, "nvidia-1145", autostart=True, start=True)
        assert client.device(mine)["Placement"] == VFS[1]
        # A pinned definition on the foreign VF is refused, naming it; nothing is written.
        with pytest.raises(DaemonError) as taken:
            client.create_device(GPU, "nvidia-1145", placement=VFS[0])
        assert taken.value.name == names.error_name("NoInstancesAvailable")
        assert VFS[0] in str(taken.value)
        assert vf.vf_type(VFS[0]) == "1147"
    # After a restart the foreign VF is still someone else's: same UUID, not defined.
    with vf.running(), client_of(vf) as client:
        again = [client.device(u) for u in _uuids(client)]
        assert any(p["Placement"] == VFS[0] and not p["Defined"] for p in again)
        assert vf.vf_type(VFS[0]) == "1147"


def _uuids(client: BusClient) -> list[str]:
    objects = client.managed_objects()
    return [
        props[names.DEVICE_INTERFACE]["UUID"]
        for props in objects.values()
        if names.DEVICE_INTERFACE in props
    ]


def test_a_pinned_placement_is_kept(vf: VfStack) -> None:
    with vf.running(), client_of(vf) as client:
        uuid = client.define_device(GPU, "nvidia-1145", placement=VFS[2], start=True)
        assert client.device(uuid)["Placement"] == VFS[2]
        assert vf.vf_type(VFS[2]) == "1145" and vf.vf_type(VFS[0]) == "0"
        with pytest.raises(DaemonError) as refused:
            client.create_device(GPU, "nvidia-1145", placement="0000:3d:01.0")
        assert refused.value.name == names.error_name("InvalidArgument")


def test_enable_sriov_enables_a_gpus_vfs_at_start_only_when_none_are(vf: VfStack) -> None:
    numvfs = vf.sim.root / "bus" / "pci" / "devices" / GPU_B / "sriov_numvfs"
    assert numvfs.read_text().strip() == "0"
    config = f'[nvidia_vf]\nenable_sriov = ["{GPU_B}", "{GPU}"]\n'
    with vf.running(config) as daemon, client_of(vf) as client:
        assert numvfs.read_text().strip() == "2"
        wait_until(lambda: GPU_B in ctl(daemon, "types").stdout, TIMEOUT)
        uuid = client.create_device(GPU_B, "1145")
        assert client.device(uuid)["Placement"] == "0000:5e:00.4"
    # GPU A had its VFs: never resized.
    assert (vf.sim.root / "bus/pci/devices" / GPU / "sriov_numvfs").read_text().strip() == "4"


def test_both_backends_side_by_side_for_every_client(vf: VfStack) -> None:
    with vf.running() as daemon, client_of(vf) as client:
        mdev = client.create_device("mtty", "mtty-1")
        vgpu = client.create_device(GPU, "nvidia-1145")
        listed = ctl(daemon, "list").stdout
        assert mdev in listed and f"{vgpu} {GPU} nvidia-1145 manual (active) on {VFS[0]}" in listed
        types = ctl(daemon, "types").stdout
        assert "mtty" in types and f"{GPU} (nvidia-vf)" in types
        # The same interfaces and property names on both device objects, for busctl and gdbus.
        objects = client.managed_objects()
        mdev_props = objects[device_path(mdev)][names.DEVICE_INTERFACE]
        vgpu_props = objects[device_path(vgpu)][names.DEVICE_INTERFACE]
        assert set(mdev_props) == set(vgpu_props)
        assert (mdev_props["Backend"], vgpu_props["Backend"]) == ("mdev", "nvidia-vf")
        for tool in (
            ["busctl", f"--address={vf.address}", "get-property", names.BUS_NAME],
            ["gdbus", "call", "--address", vf.address, "--dest", names.BUS_NAME, "--object-path"],
        ):
            if tool[0] == "busctl":
                argv = [*tool, device_path(vgpu), names.DEVICE_INTERFACE, "Backend"]
            else:
                argv = [
                    *tool,
                    device_path(vgpu),
                    "--method",
                    "org.freedesktop.DBus.Properties.Get",
                    names.DEVICE_INTERFACE,
                    "Placement",
                ]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
            assert result.returncode == 0, result.stderr
            assert ("nvidia-vf" if tool[0] == "busctl" else VFS[0]) in result.stdout


def test_attributes_are_refused_on_a_vgpu_and_nothing_stays(vf: VfStack) -> None:
    with vf.running(), client_of(vf) as client:
        with pytest.raises(DaemonError) as refused:
            client.create_device(GPU, "nvidia-1145", attributes=[("vgpu_params", "x")])
        assert refused.value.name == names.error_name("AttributeRejected")
        assert all(vf.vf_type(address) == "0" for address in VFS)


def test_a_uuid_is_never_placed_twice(vf: VfStack) -> None:
    with vf.running(), client_of(vf) as client:
        uuid = new_uuid()
        client.create_device(GPU, "nvidia-1145", uuid=uuid)
        with pytest.raises(DaemonError) as again:
            client.create_device(GPU, "nvidia-1147", uuid=uuid)
        assert again.value.name == names.error_name("Exists")
        assert [vf.vf_type(a) for a in VFS] == ["1145", "0", "0", "0"]
