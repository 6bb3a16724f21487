# SPDX-License-Identifier: LGPL-2.1-or-later
"""The command-line programs: clients of the daemon, run in their own short-lived processes.

- `mdevdctl` (with `mdevdctl_status`, what needs attention, and `mdevdctl_json`, its `--json`
  shapes): mdevd's own command line.
- `mdevctl` (with `mdevctl_output`, its listings byte for byte): mdevctl's command line,
  carried out by the daemon (`/usr/sbin/mdevctl` in the mdevd-mdevctl package).

They start like small programs: every command but `mdevdctl monitor` talks to the daemon through
`mdevd.wire` (blocking, the standard library alone), never importing asyncio or dbus-fast. So
this package imports nothing itself, and nothing of the daemon's side (`mdevd.compat` is the
daemon's mdevctl compatibility).
"""
