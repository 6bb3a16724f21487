# SPDX-License-Identifier: LGPL-2.1-or-later
"""The mdevctl front end lists only mdevs, as mdevctl does (docs/mdevctl-compat.md, "NVIDIA
vGPUs on virtual functions").

NVIDIA vGPUs on SR-IOV virtual functions (the `nvidia-vf` backend, docs/nvidia-vf.md) are not
mdevs: the real mdevctl's `types` never sees the GPU (no /sys/class/mdev_bus entry) and its
`list` never sees the vGPUs (no /sys/bus/mdev/devices entry). libvirt makes an mdev node device
of everything `list --dumpjson [--defined]` prints, so the front end's listings leave them out.
Commands that name a vGPU's UUID (start, stop, modify, undefine, define) or its GPU
(define, start, start-parent-mdevs) keep acting on them.

The stack is the shipped scenario config/sim/nvidia-vf.toml (an L40S-like GPU with its VFs
enabled, a second GPU without VFs, and an mtty parent registered here, absent at mount) plus
the i915 parent libvirt's recorded calls name, so those calls run as libvirt wrote them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import CompatStack, StackFactory
from tests.compat.reference import REAL_MDEVCTL, run_reference
from tests.support.paths import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(240, method="thread")

CALLS = Path(__file__).resolve().parents[1] / "data" / "libvirt-mdevctl-calls"
#: The GPU with VFs enabled at mount, and one without (a definition on it has no backend).
GPU = "0000:3d:00.0"
GPU_NO_VFS = "0000:5e:00.0"
#: libvirt's recorded calls name this parent and UUID.
I915 = "0000:00:02.0"
U = "d069d019-36ea-4111-8f0a-8c9a70e21366"

VGPU_DEFINED = "11111111-1111-4111-8111-111111111111"  # defined, autostart, running
VGPU_PINNED = "22222222-2222-4222-8222-222222222222"  # defined with a placement, not running
VGPU_TRANSIENT = "33333333-3333-4333-8333-333333333333"  # created, not defined
MDEV = "44444444-4444-4444-8444-444444444444"  # an mtty mdev, defined and running
WAITING = "55555555-5555-4555-8555-555555555555"  # defined on the GPU without VFs
VGPUS = (VGPU_DEFINED, VGPU_PINNED, VGPU_TRANSIENT)

SCENARIO = (
    (REPO / "config" / "sim" / "nvidia-vf.toml").read_text()
    + f"""
[[parent]]
name = "{I915}"
devpath = "devices/pci0000:00/{I915}"
subsystem = "pci"
subsystem_path = "bus/pci"
driver = "i915"
owned_by_driver = false
max_instances = 4

[[parent.type]]
id = "i915-GVTg_V5_8"
name = "GVTg_V5_8"
device_api = "vfio-pci"
"""
)

MTTY_TYPES = {
    "mtty": [
        {
            "mtty-1": {
                "available_instances": 23,
                "device_api": "vfio-pci",
                "name": "Single port serial",
            }
        }
    ]
}
I915_TYPES = {
    I915: [
        {
            "i915-GVTg_V5_8": {
                "available_instances": 4,
                "device_api": "vfio-pci",
                "name": "GVTg_V5_8",
            }
        }
    ]
}


def _config(type_id: str, start: str = "manual") -> dict[str, Any]:
    return {"mdev_type": type_id, "start": start, "attrs": []}


def _ok(stack: CompatStack, *args: str, stdin: str | None = None) -> str:
    done = stack.mdevctl(*args, stdin=stdin)
    assert done.returncode == 0, (args, done.stderr)
    assert done.stderr == "", (args, done.stderr)
    return done.stdout


def _json(stack: CompatStack, *args: str) -> Any:
    return json.loads(_ok(stack, *args))


def _ctl(stack: CompatStack, *args: str) -> str:
    done = stack.daemon.ctl(*args)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def _show(stack: CompatStack, uuid: str) -> Any:
    """The daemon's view of one device (mdevdctl's JSON schema 1)."""
    return json.loads(_ctl(stack, "show", uuid, "--schema", "1"))["device"]


def _commands(name: str) -> list[list[str]]:
    """libvirt's command lines in an .argv file (`\\` continues a line), without `mdevctl`."""
    text = (CALLS / name).read_text()
    commands = []
    for line in re.split(r"(?<!\\)\n", text):
        words = line.replace("\\\n", " ").split()
        if words:
            assert words[0] == "mdevctl"
            commands.append(words[1:])
    return commands


@pytest.fixture
def stack(start_stack: StackFactory) -> CompatStack:
    """Both backends, each with devices: nvidia-vf vGPUs defined, pinned, transient and
    waiting, and an mtty mdev on the parent that registers after the daemon started."""
    stack = start_stack(scenario_text=SCENARIO)
    stack.sim.control.register("mtty")
    wait_until(lambda: "mtty" in _ctl(stack, "types"), 30, "mtty registered")
    _ctl(stack, "define", "-u", VGPU_DEFINED, "--autostart", "--start", GPU, "nvidia-1145")
    _ctl(stack, "define", "-u", VGPU_PINNED, "--placement", "0000:3d:00.6", GPU, "1145")
    _ctl(stack, "create", "-u", VGPU_TRANSIENT, GPU, "1145")
    _ctl(stack, "define", "-u", WAITING, GPU_NO_VFS, "nvidia-1145")
    _ok(stack, "start", "-p", "mtty", "-t", "mtty-1", "-u", MDEV)
    _ok(stack, "define", "-u", MDEV)
    # The daemon has them all, with their backends.
    listed = {line.split()[0]: line for line in _ctl(stack, "list").splitlines() if line}
    assert set(listed) == {*VGPUS, MDEV, WAITING}, listed
    assert _show(stack, VGPU_DEFINED)["backend"] == "nvidia-vf"
    assert _show(stack, MDEV)["backend"] == "mdev"
    assert _show(stack, WAITING)["backend"] == ""
    return stack


def test_listings_show_the_mdevs_and_not_the_vgpus_on_virtual_functions(
    stack: CompatStack,
) -> None:
    assert _ok(stack, "list") == f"{MDEV} mtty mtty-1 manual (defined)\n\n"
    assert _ok(stack, "list", "-v") == f"{MDEV} mtty mtty-1 manual (defined)\n\n"
    assert _json(stack, "list", "--dumpjson") == [{"mtty": [{MDEV: _config("mtty-1")}]}]
    # A definition whose parent is not there has no backend: mdevctl lists every definition
    # in its directory, whatever its parent, and so does the front end.
    assert _ok(stack, "list", "--defined") == (
        f"{WAITING} {GPU_NO_VFS} nvidia-1145 manual\n{MDEV} mtty mtty-1 manual (active)\n\n"
    )
    assert _ok(stack, "list", "-d", "-v") == _ok(stack, "list", "--defined")
    assert _json(stack, "list", "--defined", "--dumpjson") == [
        {
            GPU_NO_VFS: [{WAITING: _config("nvidia-1145")}],
            "mtty": [{MDEV: _config("mtty-1")}],
        }
    ]
    # Asked by parent or by UUID: a listing still, as empty as mdevctl's.
    for uuid in VGPUS:
        for args in (
            ["list"],
            ["list", "-d"],
            ["list", "--dumpjson"],
            ["list", "-d", "--dumpjson"],
        ):
            out = _ok(stack, *args, "-u", uuid)
            assert out == ("[]\n" if "--dumpjson" in args else "\n"), (args, uuid, out)
    assert _ok(stack, "list", "-p", GPU) == "\n"
    assert _ok(stack, "list", "-d", "-p", GPU, "--dumpjson") == "[]\n"
    assert _ok(stack, "list", "-u", MDEV, "--dumpjson") == _ok(
        stack, "list", "-u", MDEV, "-d", "--dumpjson"
    )
    assert _json(stack, "list", "-u", MDEV, "--dumpjson") == _config("mtty-1")


def test_types_show_the_mdev_parents_and_not_the_gpu(stack: CompatStack) -> None:
    assert _json(stack, "types", "--dumpjson") == [{**I915_TYPES, **MTTY_TYPES}]
    text = _ok(stack, "types")
    assert GPU not in text and "nvidia" not in text
    assert text.startswith(f"{I915}\n  i915-GVTg_V5_8\n") and "\nmtty\n  mtty-1\n" in text
    assert _ok(stack, "types", "-p", GPU) == "\n"
    assert _ok(stack, "types", "-p", GPU, "--dumpjson") == "[]\n"
    assert _json(stack, "types", "-p", "mtty", "--dumpjson") == [MTTY_TYPES]


def test_libvirts_calls_see_only_mdevs_beside_the_vgpus(stack: CompatStack) -> None:
    """libvirt's recorded calls, as it makes them, on a host that also runs vGPUs on VFs."""
    [list_defined] = _commands("mdevctl-list-defined.argv")
    assert list_defined == ["list", "--dumpjson", "--defined"]
    mtty_and_waiting = {
        GPU_NO_VFS: [{WAITING: _config("nvidia-1145")}],
        "mtty": [{MDEV: _config("mtty-1")}],
    }
    assert _json(stack, *list_defined) == [mtty_and_waiting]

    name = f"mdev_{U.replace('-', '_')}"
    payload = (CALLS / f"{name}-create.json").read_text()
    [define] = _commands(f"{name}-define.argv")
    assert _ok(stack, *define, stdin=payload) == ""
    assert _json(stack, *list_defined) == [
        {I915: [{U: _config("i915-GVTg_V5_8")}], **mtty_and_waiting}
    ]
    [start] = _commands(f"{name}-start.argv")
    _ok(stack, *start)
    assert (stack.sim.root / "bus/mdev/devices" / U).exists()
    assert _json(stack, "list", "--dumpjson") == [
        {I915: [{U: _config("i915-GVTg_V5_8")}], "mtty": [{MDEV: _config("mtty-1")}]}
    ]
    auto, manual = _commands("mdevctl-autostart.argv")
    _ok(stack, *auto)
    assert _json(stack, *list_defined)[0][I915] == [{U: _config("i915-GVTg_V5_8", "auto")}]
    _ok(stack, *manual)
    _ok(stack, "stop", f"--uuid={U}")  # nodedev-destroy
    [undefine] = _commands(f"{name}-undefine.argv")
    _ok(stack, *undefine)
    assert _json(stack, *list_defined) == [mtty_and_waiting]

    [create] = _commands(f"{name}-create.argv")  # nodedev-create: a transient device
    assert _ok(stack, *create, stdin=payload) == ""
    assert _json(stack, "list", "--dumpjson") == [
        {I915: [{U: _config("i915-GVTg_V5_8")}], "mtty": [{MDEV: _config("mtty-1")}]}
    ]
    _ok(stack, "stop", f"--uuid={U}")
    # The vGPUs were never touched.
    for uuid in (VGPU_DEFINED, VGPU_TRANSIENT):
        assert _show(stack, uuid)["active"] is True


def test_commands_naming_a_vgpu_or_its_gpu_still_act_on_it(stack: CompatStack) -> None:
    """Not what mdevctl could do (it would not find the parent), but asked for explicitly."""

    def show(uuid: str) -> Any:
        return _show(stack, uuid)

    # `define -u U` of the running transient vGPU defines it as it runs; `undefine` drops that.
    _ok(stack, "define", "-u", VGPU_TRANSIENT)
    assert (show(VGPU_TRANSIENT)["defined"], show(VGPU_TRANSIENT)["type"]) == (True, "nvidia-1145")
    _ok(stack, "undefine", "-u", VGPU_TRANSIENT)
    assert show(VGPU_TRANSIENT)["defined"] is False
    vf = show(VGPU_TRANSIENT)["placement"]
    _ok(stack, "stop", "-u", VGPU_TRANSIENT)
    assert stack.daemon.ctl("show", VGPU_TRANSIENT).returncode == 5  # gone
    vgpu_type = stack.sim.root / "bus/pci/devices" / vf / "nvidia/current_vgpu_type"
    assert vgpu_type.read_text().strip() == "0"
    _ok(stack, "stop", "-u", VGPU_DEFINED)
    assert show(VGPU_DEFINED)["active"] is False
    _ok(stack, "start-parent-mdevs", GPU)  # the GPU named: its autostart vGPU starts
    assert show(VGPU_DEFINED)["active"] is True
    _ok(stack, "stop", "-u", VGPU_DEFINED)
    _ok(stack, "start", "-u", VGPU_DEFINED)
    assert show(VGPU_DEFINED)["active"] is True
    _ok(stack, "modify", "-u", VGPU_DEFINED, "--manual")
    assert show(VGPU_DEFINED)["autostart"] is False
    _ok(stack, "undefine", "-u", VGPU_PINNED)
    assert stack.daemon.ctl("show", VGPU_PINNED).returncode == 5
    # Defined and started through the front end with the GPU named: a numeric id is NVIDIA's.
    new = "66666666-6666-4666-8666-666666666666"
    assert _ok(stack, "define", "-p", GPU, "-t", "1147", "-u", new) == ""
    assert (show(new)["type"], show(new)["backend"]) == ("nvidia-1147", "nvidia-vf")
    transient = _ok(stack, "start", "-p", GPU, "-t", "1147").strip()
    assert (show(transient)["active"], show(transient)["backend"]) == (True, "nvidia-vf")
    # After all that, the listings are still the mdev's alone.
    assert new not in _ok(stack, "list", "-d")
    assert _json(stack, "list", "--dumpjson") == [{"mtty": [{MDEV: _config("mtty-1")}]}]


@pytest.mark.skipif(REAL_MDEVCTL is None, reason="mdevctl is not installed")
def test_the_real_mdevctl_on_the_same_kernel_and_directory(stack: CompatStack) -> None:
    """`types` and `list` of running devices are the real mdevctl's, byte for byte. Its
    `list --defined` also shows the vGPUs' definitions that mdevd keeps in mdevctl's directory
    (an unpinned one is written there, a pinned one mirrored): the known limit the docs name."""
    same = [
        ["types", "--dumpjson"],
        ["types"],
        ["types", "-p", GPU],
        ["list"],
        ["list", "--dumpjson"],
        ["list", "-u", VGPU_DEFINED, "--dumpjson"],
    ]
    defined = ["list", "--defined", "--dumpjson"]
    ran = run_reference(
        stack.sim.root,
        stack.dirs.mdevctl,
        [["mdevctl", *args] for args in [*same, defined]]
        + [["mdevctl", "start", "-u", VGPU_PINNED], ["mdevctl", "start-parent-mdevs", GPU]],
    )
    for args, real in zip(same, ran, strict=False):
        mine = stack.mdevctl(*args)
        assert (mine.returncode, mine.stdout, mine.stderr) == (
            real.returncode,
            real.stdout,
            real.stderr,
        ), args
    real_defined = json.loads(ran[len(same)].stdout)[0]
    assert sorted(real_defined) == [GPU, GPU_NO_VFS, "mtty"]
    assert real_defined[GPU] == [
        {VGPU_DEFINED: _config("nvidia-1145", "auto")},
        {VGPU_PINNED: _config("nvidia-1145")},
    ]
    assert (stack.dirs.mdevctl / GPU / VGPU_DEFINED).exists()  # its own file, not a copy
    assert VGPU_PINNED in json.loads((stack.dirs.mdevctl / ".mdevd-mirrors.json").read_text())
    assert not (stack.dirs.mdevctl / GPU / VGPU_TRANSIENT).exists()
    # The real mdevctl cannot start it: the GPU is no mdev parent.
    start, at_gpu_add = ran[-2:]
    assert (start.returncode, start.stderr) == (1, f"Error: Unable to find parent device '{GPU}'\n")
    # What mdevctl's udev rule runs when the GPU is added (TEST=="/etc/mdevctl.d/$kernel"):
    # it tries the autostart definition as an mdev, and logs a warning.
    assert at_gpu_add.returncode == 0
    assert f"WARN  mdevctl] Unable to find parent device '{GPU}'" in at_gpu_add.stderr
    mine = json.loads(_ok(stack, *defined))[0]
    assert sorted(mine) == [GPU_NO_VFS, "mtty"]
