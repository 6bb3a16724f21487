"""`python -m tests.daemon.unfixed_daemon`: the real daemon without dbus-fast's send-buffer fix.

The control of tests/daemon/test_stress.py: the same daemon, with `mdevd.bus.sendfix.install`
replaced by a no-op before it starts, so that the test can show its load disconnects an unfixed
daemon. Test-only: nothing in mdevd itself can turn the fix off.
"""

from __future__ import annotations

import sys

from mdevd.bus import sendfix
from mdevd.main import main


def _not_installed() -> None:
    print("mdevd: WARNING: test run without the send-buffer fix", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sendfix.install = _not_installed
    sys.exit(main())
