# SPDX-License-Identifier: LGPL-2.1-or-later
"""`python -m tests.daemon.unfixed_daemon`: the real daemon without dbus-fast's send-buffer fix.

The control of tests/daemon/test_stress.py: the same daemon, with the pacing of
`mdevd.bus.sendfix.PacedMessageBus` replaced by dbus-fast's own `send` before it starts, so that
the test can show its load disconnects an unfixed daemon. Test-only: nothing in mdevd itself
can turn the fix off.
"""

from __future__ import annotations

import sys

from dbus_fast.aio import MessageBus

from mdevd.bus import sendfix
from mdevd.main import main

if __name__ == "__main__":
    print("mdevd: WARNING: test run without the send-buffer fix", file=sys.stderr, flush=True)
    sendfix.PacedMessageBus.send = MessageBus.send  # type: ignore[method-assign]
    sys.exit(main())
