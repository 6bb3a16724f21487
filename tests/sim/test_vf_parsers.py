# SPDX-License-Identifier: LGPL-2.1-or-later
"""The emulated `creatable_vgpu_types` and `current_vgpu_type` read by the parsers real
consumers use (note §2 and §3 of the research note on NVIDIA's vendor VFIO interface).

Each parser is written out in Python from the code the note quotes, and each must read exactly
the (id, name) pairs the emulation serves, from a mounted emulated kernel.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mdevd.sim import scenario
from tests.sim.conftest import SimFactory
from tests.sim.helpers import write
from tests.support.sim import RunningSim

pytestmark = pytest.mark.timeout(60, method="thread")

PF = "0000:3d:00.0"
VF0, VF1 = "0000:3d:00.4", "0000:3d:00.5"
Pairs = list[tuple[int, str]]


def proxmox(text: str) -> Pairs:
    """pve-common SysFSTools.pm @dc023d60: `next if $line =~ m/^ID/; next if $line !~
    m/^(.*?)\\s*:\\s*(.*)$/;` gives type "nvidia-$1" and name $2."""
    types: list[tuple[str, str]] = []  # (type, name); every one `available => 1`
    for line in text.split("\n"):
        if re.match(r"ID", line):
            continue
        match = re.match(r"(.*?)\s*:\s*(.*)$", line)
        if match is None:
            continue
        types.append((f"nvidia-{match[1]}", match[2]))
    return [(int(kind.removeprefix("nvidia-")), name) for kind, name in types]


def kubevirt_device_plugin(text: str) -> Pairs:
    """kubevirt-gpu-device-plugin PR #192 @158ffef9: `^\\s*([0-9]+)\\s*:\\s*(.+?)\\s*$`."""
    pattern = re.compile(r"^\s*([0-9]+)\s*:\s*(.+?)\s*$")
    pairs = []
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            pairs.append((int(match[1]), match[2]))
    return pairs


def kubevirt_resource_name(name: str) -> str:
    """PR #192: the resource name replaces white space with `_`."""
    return "nvidia.com/" + re.sub(r"\s", "_", name)


def vgpu_device_manager(text: str) -> Pairs:
    """vgpu-device-manager PR #195 @4d31dc65 pkg/vgpu/vfio/types.go: strings.Cut(line, ":"),
    lines without a numeric id skipped."""
    pairs = []
    for line in text.split("\n"):
        before, found, after = line.partition(":")
        if not found:
            continue
        identifier = before.strip()
        if not identifier.isdigit():
            continue
        pairs.append((int(identifier), after.strip()))
    return pairs


def vgpu_device_manager_short_name(name: str) -> str:
    """PR #195: the short name is the last token (`NVIDIA H200X-1-18C` -> `H200X-1-18C`)."""
    return name.split()[-1]


def vgpu_device_manager_fields(text: str) -> list[tuple[int, str]]:
    """PR #139 @6c21213d: strings.Fields; fields[0] is the id, the last field the (short)
    name; lines whose first field is not a number are skipped."""
    pairs = []
    for line in text.split("\n"):
        fields = line.split()
        if fields and fields[0].isdigit():
            pairs.append((int(fields[0]), fields[-1]))
    return pairs


def opennebula(text: str) -> Pairs:
    """OpenNebula pci.rb @f847cf2e: split(':'), the id `ID` skipped."""
    pairs = []
    for line in text.split("\n"):
        parts = line.split(":")
        if len(parts) < 2:
            continue
        identifier = parts[0].strip()
        if identifier == "ID":
            continue
        pairs.append((int(identifier), parts[1].strip()))
    return pairs


def opennebula_first_type(text: str) -> str:
    """OpenNebula's vgpu script without a profile: `sed -n '2p'`, the line after the header."""
    lines = text.split("\n")
    return lines[1] if len(lines) > 1 else ""


def harvester(text: str) -> Pairs:
    """harvester/pcidevices gpuhelper.go @5c3f5c34: Split(":"), exactly 2 fields, the key
    `vGPU Name` dropped (a map from name to id)."""
    types: dict[str, str] = {}
    for line in text.split("\n"):
        fields = line.split(":")
        if len(fields) != 2:
            continue
        types[fields[1].strip()] = fields[0].strip()
    types.pop("vGPU Name", None)
    return [(int(identifier), name) for name, identifier in types.items()]


def hypeman(text: str) -> Pairs:
    """kernel/hypeman vendor_vfio_linux.go @0d87fe24: Cut(":"), `ID` skipped, any other
    malformed line is an error."""
    pairs = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        before, found, after = line.partition(":")
        identifier = before.strip()
        if identifier == "ID":
            continue
        if not found or not identifier.isdigit() or not after.strip():
            raise ValueError(f"malformed creatable_vgpu_types line {line!r}")
        pairs.append((int(identifier), after.strip()))
    return pairs


PARSERS: dict[str, Callable[[str], Pairs]] = {
    "proxmox": proxmox,
    "kubevirt-device-plugin": kubevirt_device_plugin,
    "vgpu-device-manager": vgpu_device_manager,
    "opennebula": opennebula,
    "harvester": harvester,
    "hypeman": hypeman,
}

#: A GPU with 3-digit ids (RFC v2's sample, 941..950) beside 4-digit ones, and a name with
#: more than one space-separated word after the vendor.
SMALL = """
[[nvidia_gpu]]
name = "0000:81:00.0"
devpath = "devices/pci0000:80/0000:80:01.0/0000:81:00.0"
first_vf = "0000:81:00.4"
total_vfs = 2
framebuffer = 48

[[nvidia_gpu.type]]
id = 941
name = "NVIDIA RTX6000-Ada-1Q"
size = 1

[[nvidia_gpu.type]]
id = 950
name = "NVIDIA RTX6000-Ada-48Q"
size = 48

[[nvidia_gpu.type]]
id = 1561
name = "NVIDIA H200X-1-18C"
size = 18
"""


def _types(path: Path, gpu: int = 0) -> Pairs:
    return [(t.type_id, t.name) for t in scenario.load(path).nvidia_gpus[gpu].types]


def _vf_file(sim: RunningSim, vf: str, name: str) -> Path:
    return sim.root / "bus/pci/devices" / vf / "nvidia" / name


@pytest.fixture
def sim(start_sim: SimFactory) -> RunningSim:
    return start_sim("nvidia-vf")


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_every_parser_reads_the_full_list(sim: RunningSim, parser: str) -> None:
    # note §2: "an emulator that keeps the exact header plus `%-5d : name\n` satisfies every
    # parser seen".
    text = _vf_file(sim, VF0, "creatable_vgpu_types").read_text()
    assert PARSERS[parser](text) == _types(sim.scenario)


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_every_parser_reads_3_digit_ids(start_sim: SimFactory, parser: str) -> None:
    # note §2: RFC v2's "941   : NVIDIA RTX6000-Ada-1Q" (three spaces under %-5d).
    sim = start_sim(scenario_text=SMALL)
    text = _vf_file(sim, "0000:81:00.4", "creatable_vgpu_types").read_text()
    assert PARSERS[parser](text) == [
        (941, "NVIDIA RTX6000-Ada-1Q"),
        (950, "NVIDIA RTX6000-Ada-48Q"),
        (1561, "NVIDIA H200X-1-18C"),
    ]


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_every_parser_reads_the_collapsed_list(sim: RunningSim, parser: str) -> None:
    # note §4, cubecos PR #1338: after the first vGPU only its size is listed.
    write(_vf_file(sim, VF0, "current_vgpu_type"), "1149\n")
    text = _vf_file(sim, VF1, "creatable_vgpu_types").read_text()
    assert PARSERS[parser](text) == [(1149, "NVIDIA L40S-3Q"), (2164, "NVIDIA L40S-3B")]
    # A VF with a type lists the header only: no types for anyone.
    assert PARSERS[parser](_vf_file(sim, VF0, "creatable_vgpu_types").read_text()) == []


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_every_parser_reads_no_types_from_a_full_gpu(sim: RunningSim, parser: str) -> None:
    # note §4, PR #192 README: a fully consumed card shows the header only.
    write(_vf_file(sim, VF0, "current_vgpu_type"), "1156\n")
    assert PARSERS[parser](_vf_file(sim, VF1, "creatable_vgpu_types").read_text()) == []


def test_secondary_names(start_sim: SimFactory) -> None:
    # note §2: KubeVirt's resource names, vgpu-device-manager's short names (both PRs), and
    # OpenNebula's first type.
    sim = start_sim(scenario_text=SMALL)
    text = _vf_file(sim, "0000:81:00.4", "creatable_vgpu_types").read_text()
    names = [name for _, name in kubevirt_device_plugin(text)]
    assert kubevirt_resource_name(names[2]) == "nvidia.com/NVIDIA_H200X-1-18C"
    assert [vgpu_device_manager_short_name(n) for _, n in vgpu_device_manager(text)] == [
        "RTX6000-Ada-1Q",
        "RTX6000-Ada-48Q",
        "H200X-1-18C",
    ]
    assert vgpu_device_manager_fields(text) == [
        (941, "RTX6000-Ada-1Q"),
        (950, "RTX6000-Ada-48Q"),
        (1561, "H200X-1-18C"),
    ]
    assert opennebula(opennebula_first_type(text)) == [(941, "NVIDIA RTX6000-Ada-1Q")]
    # On a full GPU line 2 is empty: OpenNebula has no type to take.
    write(_vf_file(sim, "0000:81:00.4", "current_vgpu_type"), "950")
    full = _vf_file(sim, "0000:81:00.5", "creatable_vgpu_types").read_text()
    assert opennebula_first_type(full) == ""


def test_current_type_compares_equal_to_0_when_free(sim: RunningSim) -> None:
    # note §3: KubeVirt HasVGPUProfile (`vgpuType != "" && vgpuType != "0"` on the trimmed
    # value) and Proxmox (`eq "0"` after chomp) tell a free VF by the text "0".
    def has_vgpu_profile(raw: str) -> bool:
        value = raw.strip()
        return value not in ("", "0")

    def proxmox_is_free(raw: str) -> bool:
        return raw.removesuffix("\n") == "0"

    path = _vf_file(sim, VF0, "current_vgpu_type")
    assert not has_vgpu_profile(path.read_text())
    assert proxmox_is_free(path.read_text())
    write(path, "1145\n")
    assert has_vgpu_profile(path.read_text())
    assert not proxmox_is_free(path.read_text())
    # hypeman reads the id back after writing it.
    assert int(path.read_text()) == 1145
