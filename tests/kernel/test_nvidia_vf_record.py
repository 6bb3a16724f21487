# SPDX-License-Identifier: LGPL-2.1-or-later
"""The nvidia-vf backend's pure parts: type spellings, the `creatable_vgpu_types` parser, the
UUIDs of other tools' vGPUs, and the placement record's bounds (a damaged or hostile file
costs the adoption of earlier vGPUs, never the daemon)."""

from __future__ import annotations

import json
from pathlib import Path

from mdevd import nvidia_vf
from mdevd.nvidia_vf import Placed, PlacementRecord

UUID = "7c4e1d36-5a40-4b0e-9b52-8d16b1ad2e01"


def test_a_numeric_id_and_the_nvidia_spelling_are_one_type() -> None:
    assert nvidia_vf.canonical_type("1145") == "nvidia-1145"
    assert nvidia_vf.canonical_type("nvidia-1145") == "nvidia-1145"
    assert nvidia_vf.canonical_type("nvidia-0042") == "nvidia-42"
    # Anything else is not NVIDIA's id, and stays as written (an mdev type, a typo).
    for other in ("mtty-2", "nvidia-", "nvidia-1x", "١٢٣", "9" * 10):
        assert nvidia_vf.canonical_type(other) == other
        assert nvidia_vf.type_number(other) is None


def test_the_parser_reads_the_drivers_format_and_skips_the_rest() -> None:
    # Note §2: the R5xx source's header and `%-5d : %s` lines (3-digit ids get 3 spaces).
    text = (
        "ID    : vGPU Name\n"
        "941   : NVIDIA RTX6000-Ada-1Q\n"
        "1145  : NVIDIA L40S-1B\n"
        "garbage without a colon\n"
        "x : not a number\n"
    )
    assert nvidia_vf.parse_creatable(text) == {941: "NVIDIA RTX6000-Ada-1Q", 1145: "NVIDIA L40S-1B"}
    assert nvidia_vf.parse_creatable("ID    : vGPU Name\n") == {}  # a full GPU
    assert nvidia_vf.parse_creatable("") == {}  # RFC v2's empty buffer


def test_another_tools_vgpu_has_the_same_uuid_on_every_read() -> None:
    first = nvidia_vf.foreign_uuid("0000:3d:00.4")
    assert first == nvidia_vf.foreign_uuid("0000:3d:00.4")
    assert first != nvidia_vf.foreign_uuid("0000:3d:00.5")


def test_the_record_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nvidia-vf.json"
    record = PlacementRecord(path)
    record.put(UUID, Placed("0000:3d:00.4", "nvidia-1145", (23, 4567), True))
    again = PlacementRecord(path)
    again.load()
    assert again.records == {UUID: Placed("0000:3d:00.4", "nvidia-1145", (23, 4567), True)}


def test_a_damaged_record_is_read_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "nvidia-vf.json"
    damaged = [
        b"{not json",
        b"[]",
        json.dumps({"version": 2, "devices": {}}).encode(),
        json.dumps({"version": 1, "devices": {"../../etc": {}}}).encode(),
        json.dumps(
            {
                "version": 1,
                "devices": {
                    UUID: {
                        "vf": "../../../etc",
                        "type": "nvidia-1",
                        "identity": [1, 2],
                        "active": 1,
                    }
                },
            }
        ).encode(),
        json.dumps(
            {
                "version": 1,
                "devices": {
                    UUID: {"vf": "0000:3d:00.4", "type": "mtty-2", "identity": [1, 2], "active": 1}
                },
            }
        ).encode(),
        b" " * (nvidia_vf.MAX_RECORD_BYTES + 1),
    ]
    for data in damaged:
        path.write_bytes(data)
        record = PlacementRecord(path)
        record.load()
        assert record.records == {}, data[:80]


def test_the_record_is_bounded_dropping_the_oldest_inactive_first(tmp_path: Path) -> None:
    record = PlacementRecord(tmp_path / "nvidia-vf.json")
    record.save = lambda: None  # type: ignore[method-assign]  # thousands of fsyncs: not the point
    keep = f"{0:08x}-0000-4000-8000-000000000000"
    record.put(keep, Placed("0000:3d:00.4", "nvidia-1", (1, 1), True))
    for n in range(1, nvidia_vf.MAX_RECORDS + 10):
        record.put(
            f"{n:08x}-0000-4000-8000-000000000000",
            Placed("0000:3d:00.5", "nvidia-1", (1, 1), False),
        )
    assert len(record.records) == nvidia_vf.MAX_RECORDS
    assert keep in record.records  # an active placement outlives inactive ones
