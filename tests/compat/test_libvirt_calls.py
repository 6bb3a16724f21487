# SPDX-License-Identifier: LGPL-2.1-or-later
"""libvirt's exact mdevctl calls (tests/data/libvirt-mdevctl-calls/) through the front end.

Each `.argv` file holds command lines exactly as libvirt's node-device driver builds them, and
`.json` the JSON it writes to `--jsonfile=/dev/stdin`. They run against the daemon on the
emulated kernel, with `mdevctl` first in PATH as libvirtd would find it; the checks are what
libvirt itself reads back: exit status, stdout (a generated UUID), stderr (shown verbatim),
`list --dumpjson [--defined]`, and the kernel's and mdevctl's directory's state.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import CompatStack, StackFactory

pytestmark = pytest.mark.timeout(240, method="thread")

CALLS = Path(__file__).resolve().parents[1] / "data" / "libvirt-mdevctl-calls"
U = "d069d019-36ea-4111-8f0a-8c9a70e21366"
CCW = "c60cc60c-c60c-c60c-c60c-c60cc60cc60c"
GPU = "0000:00:02.0"

SCENARIO = """
[[parent]]
name = "0000:00:02.0"
devpath = "devices/pci0000:00/0000:00:02.0"
subsystem = "pci"
subsystem_path = "bus/pci"
driver = "i915"
owned_by_driver = false
max_instances = 4

[[parent.type]]
id = "i915-GVTg_V5_4"
name = "GVTg_V5_4"
device_api = "vfio-pci"

[[parent.type]]
id = "i915-GVTg_V5_8"
name = "GVTg_V5_8"
device_api = "vfio-pci"

[[parent]]
name = "0.0.0052"
devpath = "devices/css0/0.0.0052"
subsystem = "css"
subsystem_path = "bus/css"
driver = "vfio_ccw_mdev"
owned_by_driver = false
max_instances = 1

[[parent.type]]
id = "vfio_ccw-io"
name = "I/O subchannel (Non-QDIO)"
device_api = "vfio-ccw"

[[parent.type.attribute]]
name = "add_attr_1"
accept = ".*"

[[parent.type.attribute]]
name = "add_attr_2"
accept = ".*"
"""


def _commands(name: str) -> list[list[str]]:
    """The command lines of an .argv file (`\\` continues a line), without `mdevctl`."""
    text = (CALLS / name).read_text()
    lines = re.split(r"(?<!\\)\n", text.replace("\\\n", "\\"))
    commands = []
    for line in lines:
        words = [w for w in line.replace("\\", " ").split() if w]
        if words:
            assert words[0] == "mdevctl"
            commands.append(words[1:])
    return commands


def _stdin(name: str) -> list[str]:
    return [line for line in (CALLS / name).read_text().splitlines() if line.strip()]


def _defined(stack: CompatStack) -> Any:
    """`mdevctl list --defined --dumpjson`, parsed."""
    done = stack.mdevctl(*_commands("mdevctl-list-defined.argv")[0])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _ok(done: object) -> None:
    assert getattr(done, "returncode", None) == 0, getattr(done, "stderr", done)


def test_define_start_autostart_destroy_undefine(start_stack: StackFactory) -> None:
    stack = start_stack(scenario_text=SCENARIO)
    assert _defined(stack) == []
    [define] = _commands(f"mdev_{U.replace('-', '_')}-define.argv")
    assert define == ["define", f"--parent={GPU}", "--jsonfile=/dev/stdin", f"--uuid={U}"]
    payload = (CALLS / f"mdev_{U.replace('-', '_')}-create.json").read_text()
    done = stack.mdevctl(*define, stdin=payload)
    _ok(done)
    assert done.stdout == ""
    assert _defined(stack) == [
        {GPU: [{U: {"mdev_type": "i915-GVTg_V5_8", "start": "manual", "attrs": []}}]}
    ]
    assert json.loads(stack.file(GPU, U).read_text())["mdev_type"] == "i915-GVTg_V5_8"

    [start] = _commands(f"mdev_{U.replace('-', '_')}-start.argv")
    _ok(stack.mdevctl(*start))
    assert (stack.sim.root / "bus/mdev/devices" / U).exists()
    again = stack.mdevctl(*start)
    assert (again.returncode, again.stdout, again.stderr) == (
        1,
        "",
        "Error: Device already exists\n",
    )
    active = json.loads(stack.mdevctl("list", "--dumpjson").stdout)
    assert active == [{GPU: [{U: {"mdev_type": "i915-GVTg_V5_8", "start": "manual", "attrs": []}}]}]

    auto, manual = _commands("mdevctl-autostart.argv")
    _ok(stack.mdevctl(*auto))
    assert json.loads(stack.file(GPU, U).read_text())["start"] == "auto"
    _ok(stack.mdevctl(*manual))
    assert json.loads(stack.file(GPU, U).read_text())["start"] == "manual"

    _ok(stack.mdevctl("stop", f"--uuid={U}"))  # nodedev-destroy
    assert not (stack.sim.root / "bus/mdev/devices" / U).exists()

    [undefine] = _commands(f"mdev_{U.replace('-', '_')}-undefine.argv")
    _ok(stack.mdevctl(*undefine))
    assert not stack.file(GPU, U).exists()
    assert _defined(stack) == []


def _open_group(node: Path) -> int:
    """Open a vfio group as libvirt does, waiting out the release of an earlier opener (FUSE
    releases a closed file asynchronously)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return os.open(node, os.O_RDONLY)
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def test_destroy_while_the_caller_holds_the_vfio_group(start_stack: StackFactory) -> None:
    """libvirt's nodedev-destroy opens the device's vfio group (vfio allows one opener, so no
    VM can take the device meanwhile), keeps it open while `mdevctl stop --uuid=U` runs, and
    fails if mdevctl does. The daemon must not take that open for a VM's: the device goes.
    A group another process holds open still refuses the stop."""
    stack = start_stack(scenario_text=SCENARIO)
    _ok(stack.mdevctl("start", "-u", U, "-p", GPU, "-t", "i915-GVTg_V5_8"))
    device = stack.sim.root / "bus/mdev/devices" / U
    node = stack.sim.control.vfio_group_path(int(Path(os.readlink(device / "iommu_group")).name))

    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.open(sys.argv[1], os.O_RDONLY); "
         "print('open', flush=True); sys.stdin.read()", str(node)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        refused = stack.mdevctl("stop", f"--uuid={U}")
        assert refused.returncode == 1
        assert f"device {U} is in use (vfio group" in refused.stderr
        assert device.exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)

    group = _open_group(node)
    try:
        _ok(stack.mdevctl("stop", f"--uuid={U}"))
    finally:
        os.close(group)
    assert not device.exists()


def test_create_transient_and_define_without_uuid(start_stack: StackFactory) -> None:
    stack = start_stack(scenario_text=SCENARIO)
    [create] = _commands(f"mdev_{U.replace('-', '_')}-create.argv")
    payload = (CALLS / f"mdev_{U.replace('-', '_')}-create.json").read_text()
    done = stack.mdevctl(*create, stdin=payload)  # nodedev-create
    _ok(done)
    assert done.stdout == ""
    device = stack.sim.root / "bus/mdev/devices" / U
    assert device.exists() and (device / "mdev_type").resolve().name == "i915-GVTg_V5_8"
    assert _defined(stack) == []
    again = stack.mdevctl(*create, stdin=payload)
    assert again.returncode == 1 and again.stderr == "Error: Device already exists\n"

    # nodedev-define without <uuid>: libvirt reads the generated UUID from stdout.
    done = stack.mdevctl("define", f"--parent={GPU}", "--jsonfile=/dev/stdin", stdin=payload)
    _ok(done)
    generated = done.stdout.strip()
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", generated
    )
    assert done.stdout == generated + "\n"
    assert stack.file(GPU, generated).exists()
    assert list(_defined(stack)[0][GPU][0]) == [generated]


def test_nodedev_update_defined_live_and_both(start_stack: StackFactory) -> None:
    stack = start_stack(scenario_text=SCENARIO)
    # libvirt checks that mdevctl knows these options before it uses them.
    probe = stack.mdevctl("modify", "--defined", "--live", "--jsonfile", "b", "--help")
    assert probe.returncode == 0
    for word in ("--defined", "--live", "--jsonfile"):
        assert word in probe.stdout

    _ok(stack.mdevctl("define", "-u", CCW, "-p", "0.0.0052", "-t", "vfio_ccw-io"))
    _ok(stack.mdevctl("start", "-u", CCW))
    commands = _commands("mdevctl-modify.argv")
    payloads = _stdin("mdevctl-modify.json")
    assert len(commands) == len(payloads) == 4
    device = stack.sim.root / "bus/mdev/devices" / CCW
    config = stack.file("0.0.0052", CCW)

    # An attribute write that fails once shows when the running device is written to.
    stack.sim.control.fault_attribute(CCW, "add_attr_1", "EIO")
    # --defined: the definition only (the fault stays armed: nothing was written).
    _ok(stack.mdevctl(*commands[0], stdin=payloads[0]))
    assert json.loads(config.read_text())["attrs"] == []
    # --defined --live: the running device first; its refusal leaves the definition alone.
    failed = stack.mdevctl(*commands[3], stdin=payloads[3])
    assert failed.returncode == 1 and "add_attr_1" in failed.stderr, failed
    assert json.loads(config.read_text())["attrs"] == []
    # --live: the running device only.
    _ok(stack.mdevctl(*commands[1], stdin=payloads[1]))
    assert json.loads(config.read_text())["attrs"] == []
    _ok(stack.mdevctl(*commands[2], stdin=payloads[2]))
    # --defined --live: both.
    _ok(stack.mdevctl(*commands[3], stdin=payloads[3]))
    assert json.loads(config.read_text())["attrs"] == [
        {"add_attr_1": "val1"},
        {"add_attr_2": "val2"},
    ]
    assert device.exists()
