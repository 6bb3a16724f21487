# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fidelity: the unmodified Debian `mdevctl` binary, run against the emulated kernel.

mdevctl only knows the real paths (/sys, /etc/mdevctl.d). Each session runs in its own mount
namespace (`unshare --mount --propagation private`, nested inside the suite's private one) where
the mounted emulation is bound over /sys and a tmpfs covers /etc/mdevctl.d; the host's /sys and
/etc/mdevctl.d are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sim.helpers import available
from tests.support.sim import RunningSim

pytestmark = [
    pytest.mark.timeout(120, method="thread"),
    pytest.mark.skipif(shutil.which("mdevctl") is None, reason="mdevctl is not installed"),
]

U1 = "11111111-2222-3333-4444-555555555555"
U2 = "21111111-2222-3333-4444-555555555555"
U3 = "31111111-2222-3333-4444-555555555555"
U4 = "41111111-2222-3333-4444-555555555555"
AP = "51111111-2222-3333-4444-555555555555"
GPU = "0000:65:00.0"

# Runs inside the new mount namespace: mounts, then each command, results as JSON on stdout.
_SESSION = r"""
import json, os, subprocess, sys
root, commands = sys.argv[1], json.loads(sys.argv[2])
own = os.stat("/proc/self/ns/mnt").st_ino
if own == os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino:
    sys.exit("not in a mount namespace of its own: refusing to mount over /sys")
subprocess.run(["mount", "--bind", root, "/sys"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/etc/mdevctl.d"], check=True)
for sub in ("scripts.d/callouts", "scripts.d/notifiers"):
    os.makedirs(f"/etc/mdevctl.d/{sub}")
results = []
for argv in commands:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    results.append([done.returncode, done.stdout, done.stderr])
json.dump(results, sys.stdout)
"""


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _session(root: Path, *commands: list[str]) -> list[Ran]:
    """Run the commands in one private mount namespace with the emulation as /sys."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    done = subprocess.run(
        [*unshare, sys.executable, "-c", _SESSION, str(root), json.dumps(list(commands))],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [Ran(*result) for result in json.loads(done.stdout)]


def test_mdevctl_version() -> None:
    version = subprocess.run(["mdevctl", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == "mdevctl 1.2.0"


def test_types_shows_the_scenarios_types_and_counts(sim: RunningSim) -> None:
    text, dump = _session(
        sim.root, ["mdevctl", "types", "-p", "mtty"], ["mdevctl", "types", "--dumpjson"]
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        "mtty",
        "  mtty-1",
        "    Available instances: 24",
        "    Device API: vfio-pci",
        "    Name: Single port serial",
        "  mtty-2",
        "    Available instances: 12",
        "    Device API: vfio-pci",
        "    Name: Dual port serial",
        "",
    ]
    parents = {
        parent: {type_id: info for entry in types for type_id, info in entry.items()}
        for item in json.loads(dump.stdout)
        for parent, types in item.items()
    }
    assert set(parents) == {"mtty", "mdpy", "mbochs", GPU, "matrix"}
    assert parents[GPU]["nvidia-558"]["available_instances"] == 4
    assert "framebuffer=4096M" in parents[GPU]["nvidia-558"]["description"]
    assert parents["mdpy"]["mdpy-hd"]["available_instances"] == 4
    assert parents["mbochs"]["mbochs-medium"]["available_instances"] == 16
    assert parents["matrix"]["vfio_ap-passthrough"]["device_api"] == "vfio-ap"
    assert "description" not in parents["mtty"]["mtty-1"]


def test_start_exists_exhausted_list_and_stop(sim: RunningSim) -> None:
    start, listed, again, gpu_1, gpu_2, gpu_full, dumped = _session(
        sim.root,
        ["mdevctl", "start", "-p", "mtty", "-t", "mtty-2", "-u", U1],
        ["mdevctl", "list"],
        ["mdevctl", "start", "-p", "mtty", "-t", "mtty-2", "-u", U1],
        ["mdevctl", "start", "-p", GPU, "-t", "nvidia-559", "-u", U2],
        ["mdevctl", "start", "-p", GPU, "-t", "nvidia-559", "-u", U3],
        ["mdevctl", "start", "-p", GPU, "-t", "nvidia-559", "-u", U4],
        ["mdevctl", "list", "--dumpjson"],
    )
    assert start.returncode == 0, start.stderr
    # The device mdevctl created is in the emulated kernel, seen from outside the namespace.
    device = sim.root / "bus/mdev/devices" / U1
    assert os.path.basename(os.path.realpath(device / "mdev_type")) == "mtty-2"
    assert available(sim.root, "mtty", "mtty-1") == 22
    assert listed.stdout == f"{U1} mtty mtty-2 manual\n\n"
    assert again.returncode != 0
    assert again.stderr.strip() == "Error: Device already exists"
    assert (gpu_1.returncode, gpu_2.returncode) == (0, 0)
    assert gpu_full.returncode != 0
    assert gpu_full.stderr.strip() == f"Error: No available instances of nvidia-559 on {GPU}"
    assert not (sim.root / "bus/mdev/devices" / U4).exists()
    assert json.loads(dumped.stdout) == [
        {
            GPU: [
                {U2: {"mdev_type": "nvidia-559", "start": "manual", "attrs": []}},
                {U3: {"mdev_type": "nvidia-559", "start": "manual", "attrs": []}},
            ],
            "mtty": [{U1: {"mdev_type": "mtty-2", "start": "manual", "attrs": []}}],
        }
    ]

    stop, after = _session(sim.root, ["mdevctl", "stop", "-u", U1], ["mdevctl", "list"])
    assert stop.returncode == 0, stop.stderr
    assert not device.exists()
    assert U1 not in after.stdout
    assert available(sim.root, "mtty", "mtty-1") == 24
    actions = [e.action for e in sim.control.uevents() if e.devpath.endswith(U1)]
    assert actions == ["add", "bind", "unbind", "remove"]


def test_errors_for_unknown_parent_and_type(sim: RunningSim) -> None:
    no_parent, no_type = _session(
        sim.root,
        ["mdevctl", "start", "-p", "nope", "-t", "mtty-1", "-u", U1],
        ["mdevctl", "start", "-p", "mtty", "-t", "mtty-9", "-u", U1],
    )
    assert no_parent.stderr.strip() == "Error: Unable to find parent device 'nope'"
    assert no_type.stderr.strip() == "Error: Parent mtty does not support mdev type mtty-9"


def test_attributes_are_written_in_order_and_a_refusal_rolls_back(sim: RunningSim) -> None:
    results = _session(
        sim.root,
        ["mdevctl", "define", "-u", AP, "-p", "matrix", "-t", "vfio_ap-passthrough"],
        ["mdevctl", "modify", "-u", AP, "--addattr=assign_adapter", "--value=5"],
        ["mdevctl", "modify", "-u", AP, "--addattr=assign_domain", "--value=0x4"],
        ["mdevctl", "start", "-u", AP],
        ["cat", f"/sys/bus/mdev/devices/{AP}/matrix"],
        ["mdevctl", "stop", "-u", AP],
        # Above the highest domain: vfio-ap's ENODEV, and mdevctl removes the device again.
        ["mdevctl", "modify", "-u", AP, "--addattr=assign_domain", "--value=300"],
        ["mdevctl", "start", "-u", AP],
    )
    assert [r.returncode for r in results[:6]] == [0] * 6, [r.stderr for r in results]
    assert results[4].stdout == "05.0004\n"
    refused = results[7]
    assert refused.returncode != 0
    assert "Failed to write 300 to attribute assign_domain" in refused.stderr
    assert "No such device (os error 19)" in refused.stderr
    assert not (sim.root / "bus/mdev/devices" / AP).exists()
    actions = [e.action for e in sim.control.uevents() if e.devpath.endswith(AP)]
    assert actions == ["add", "bind", "unbind", "remove"] * 2
