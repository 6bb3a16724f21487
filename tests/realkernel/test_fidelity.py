# SPDX-License-Identifier: LGPL-2.1-or-later
"""The emulated kernel behaves like the real one: the same probe (`fidelity.py`) on both.

The probe runs in a guest on the real kernel with the sample drivers, and here against
`mdevd-sim`'s default scenario; the two records must be identical. A difference is an emulator
bug to fix in `mdevd/sim/` (with a test in `tests/sim/`), or a difference to document in
`docs/emulated-kernel.md` and take out of the probe.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.realkernel.fidelity import MonitorEvents, probe
from tests.realkernel.harness import RealKernel
from tests.support.sim import RunningSim, running_sim


class SimKernel(MonitorEvents):
    """mdevd-sim: events from udev's group (what it sends), parents through its control file."""

    def __init__(self, sim: RunningSim) -> None:
        super().__init__("udev")
        self.sim = sim
        self.root = sim.root

    def register(self, parent: str) -> None:
        self.sim.control.register(parent)

    def unregister(self, parent: str) -> None:
        self.sim.control.unregister(parent)

    def vfio_node(self, group: int) -> Path:
        return self.sim.control.vfio_group_path(group)


def _dump(record: dict[str, Any]) -> list[str]:
    return json.dumps(record, indent=1, sort_keys=True).splitlines(keepends=True)


def test_emulated_kernel_matches_the_real_one(
    real_kernel: RealKernel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    guest = real_kernel.run(
        [sys.executable, "-m", "tests.realkernel.fidelity", "/run/realkernel/real.json"],
        timeout=600,
        run_dir=tmp_path_factory.mktemp("realkernel-fidelity"),
    )
    assert guest.exit_status == 0, guest.describe()
    real = json.loads((guest.shared_dir / "real.json").read_text())
    with running_sim("default") as sim:
        emulated = probe(SimKernel(sim))
    failures = [key for key in real if key.endswith(" failed")]
    assert not failures, {key: real[key] for key in failures}
    assert real == emulated, "the emulated kernel differs from the real one:\n" + "".join(
        difflib.unified_diff(_dump(real), _dump(emulated), "real kernel", "mdevd-sim", n=4)
    )
