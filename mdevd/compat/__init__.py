# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl compatibility in the daemon: what lets libvirt, OpenStack and the s390 tools use
mdevd unchanged.

- `directory`: mdevctl's definitions directory (`/etc/mdevctl.d/<parent>/<uuid>`), read with
  mdevctl's rules and written in its exact format.
- `store`: that directory as a live source beside the TOML drop-ins, and the mirror that keeps
  it equal to what mdevd holds.
- `callouts`, `hooks`: mdevctl's callout and notifier protocol around every operation.
- `setup`: building the above from the configuration.

mdevctl's JSON is built in `mdevd.mdevctl_format`, shared with the `mdevctl` command line, which
runs in its own process: `mdevd.cli.mdevctl`.
"""
