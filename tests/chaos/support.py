# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the chaos tests share: how long to run, and the emulated kernel's devices."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.sim import RunningSim

#: `MDEVD_CHAOS=long` (by hand): many more trials and rounds than CI can afford.
LONG = os.environ.get("MDEVD_CHAOS") == "long"


def _devices_dir(sim: RunningSim) -> Path:
    return sim.root / "bus" / "mdev" / "devices"


def kernel_devices(sim: RunningSim) -> set[str]:
    """The UUIDs of the mdevs in the emulated kernel."""
    directory = _devices_dir(sim)
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def remove_kernel_devices(sim: RunningSim) -> None:
    """Remove every mdev from the emulated kernel, as `echo 1 > remove` does."""
    for uuid in kernel_devices(sim):
        (_devices_dir(sim) / uuid / "remove").write_text("1")
