# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl compatibility: what lets libvirt, OpenStack and the s390 tools use mdevd unchanged.

- `directory`: mdevctl's definitions directory (`/etc/mdevctl.d/<parent>/<uuid>`), read with
  mdevctl's rules and written in its exact format.
- `store`: that directory as a live source beside the TOML drop-ins, and the mirror that keeps
  it equal to what mdevd holds.
- `callouts`, `hooks`: mdevctl's callout and notifier protocol around every operation.
- `frontend`, `output`: the `mdevctl` command line, spoken over D-Bus to the daemon.
- `setup`: building the above from the configuration.
"""
