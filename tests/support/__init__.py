# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the tests share, one module a concern, none of them needing pytest unless said:

- `paths`: `REPO`, `TEST_DATA`, said once.
- `waiting`: `wait_until`, the one way a test waits for something asynchronous; `came_true`
  for a check that records a timeout as False, and their async forms for the guest's code.
- `bus`: a private system-type dbus-daemon (`private_bus`), the project's bus policy, a Python
  that runs as nobody (`unprivileged_python`).
- `sim`: the emulated kernel (`running_sim`), mounted with FUSE for a `with` block.
- `daemon`: the real mdevd as a subprocess (`running_daemon`, `DaemonProcess`).
- `stack`: the three together (`running_stack`, `Stack`); test packages extend `Stack` under
  their own names (`ClientStack` in tests/daemon, `CompatStack` in tests/compat).
- `signals`: the daemon's signals recorded from the bus (`SignalRecorder`, `Signal`), shown as
  `mdevd.client.Event`s.
- `golden`: golden files, compared or (with `MDEVD_REGENERATE_GOLDEN=1`) rewritten.
- `logs`: the log files of the processes under test; `report_logs` (a pytest plugin, loaded by
  tests/conftest.py) attaches what they wrote during a failing test to its report.
- `polkit`: a real polkitd on the private bus, with the project's actions and rules, and test
  accounts.
- `namespaces`: the private network and mount namespaces the suite runs in.
"""
