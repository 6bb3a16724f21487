# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd-sim: an emulated kernel serving the mdev sysfs interface through FUSE.

`scenario` describes parents and types, `state` holds the kernel's behaviour (create, remove,
registration, faults), `tree` renders it as a sysfs directory tree, `fs` serves that tree through
mfusepy, `uevent` sends events the way udevd rebroadcasts them, `control` is the test side's
client, and `cli` the `mdevd-sim` command. docs/emulated-kernel.md says what differs from Linux.
"""
