# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every default the daemon and its tools share, stated once.

The configuration file's sections (`mdevd.config`), the command lines (`mdevd.main`,
`mdevd.daemon`), the engine's settings (`mdevd.engine.EngineSettings`), the kernel layer and
the uevent source all read their defaults from here, so a documented default
(`docs/config-format.md`) has one place to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

# ---- where things are ----------------------------------------------------------------------

#: Where sysfs is mounted.
SYSFS_ROOT = Path("/sys")
#: Where the `vfio/<group>` device nodes are.
DEV_ROOT = Path("/dev")
#: The daemon's configuration file (optional: without it, every default here applies).
CONFIG_FILE = Path("/etc/mdevd/mdevd.toml")
#: The admin's and the API's definitions; new definitions are written here.
DEVICES_DIR = Path("/etc/mdevd/devices.d")
#: Runtime definitions (gone at reboot).
RUNTIME_DEVICES_DIR = Path("/run/mdevd/devices.d")
#: Definitions shipped by packages; read-only for mdevd.
VENDOR_DEVICES_DIR = Path("/usr/lib/mdevd/devices.d")
#: mdevctl's configuration directory: its definitions (`<parent>/<uuid>`) and admin scripts.
MDEVCTL_DIR = Path("/etc/mdevctl.d")
#: mdevctl's packaged callout and notifier scripts.
MDEVCTL_SCRIPTS_DIR = Path("/usr/lib/mdevctl/scripts.d")

# ---- the kernel and its events -------------------------------------------------------------

#: Where uevents come from: `udev` (after udevd processed them), `kernel` or `none`.
UEVENT_SOURCE: Final = "udev"
#: Bytes of kernel buffer for uevents not yet read: big enough for a driver reload with
#: hundreds of devices; on overflow the daemon rescans sysfs anyway.
UEVENT_RECEIVE_BUFFER = 16 * 1024 * 1024
#: Seconds one kernel or store operation may take before its caller gets `Timeout`.
IO_TIMEOUT = 30.0
#: Worker threads for sysfs and file I/O: more than the parents that can block at once.
IO_WORKERS = 16

# ---- nvidia-vf (docs/nvidia-vf.md) ---------------------------------------------------------

#: What the daemon keeps across its restarts and reboots that is not a definition (the
#: nvidia-vf placement record, `nvidia-vf.json`).
STATE_DIR = Path("/var/lib/mdevd")
#: The file in STATE_DIR that says which UUID mdevd placed on which virtual function.
NVIDIA_VF_STATE_NAME = "nvidia-vf.json"
#: Seconds a VF's clearing is retried while the driver answers EBUSY (Proxmox waits 10 s
#: after QEMU exits).
NVIDIA_VF_REMOVE_RETRY_SECONDS = 10.0

# ---- owners --------------------------------------------------------------------------------

#: The file in STATE_DIR that says who owns which device (dropped at reboot: its boot id).
OWNERS_STATE_NAME = "owners.json"
#: Seconds a device whose owner is gone waits to be released by whoever holds it open.
OWNER_GONE_RELEASE_WAIT = 600.0

# ---- autostart -----------------------------------------------------------------------------

#: Retries of an autostart that failed for a transient reason (EBUSY, types not listed yet).
AUTOSTART_RETRIES = 6
#: Seconds before the first retry; each further retry waits twice as long.
AUTOSTART_RETRY_DELAY = 0.25


def retry_delays(first_delay: float, retries: int) -> tuple[float, ...]:
    """The seconds before each retry: `first_delay`, then each twice the one before."""
    return tuple(first_delay * 2**attempt for attempt in range(retries))


#: Seconds before each autostart retry: 0.25, 0.5, 1, 2, 4, 8 (~16 s in all).
AUTOSTART_RETRY_DELAYS = retry_delays(AUTOSTART_RETRY_DELAY, AUTOSTART_RETRIES)

#: Seconds without an autostart attempt ending after which a long startup stops asking the
#: service manager for more time (the daemon computes it from the timeouts when it can).
STARTUP_STALL_LIMIT = 120.0

# ---- mdevctl compatibility -----------------------------------------------------------------

#: Seconds one callout or notifier script may run before it is killed (ap-check waits ~100 s
#: for its lock).
CALLOUT_TIMEOUT = 150.0
