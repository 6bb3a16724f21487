# SPDX-License-Identifier: LGPL-2.1-or-later
"""`scripts/demo --shell`: the first-contact mode that leaves the daemon, the bus and the
emulated kernel running with `mdevdctl` on PATH, and says how to leave (issue 19).

Run the way a newcomer runs it: the script itself (its bootstrap finds everything installed),
driven through what its banner printed, then left the way the banner says.
"""

from __future__ import annotations

import re
import subprocess
import threading

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(240, method="thread")


def test_the_demo_shell_runs_mdevdctl_and_is_left_as_it_says() -> None:
    demo = subprocess.Popen(
        [str(REPO / "scripts" / "demo"), "--shell"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
    )
    assert demo.stdin is not None and demo.stdout is not None
    # Bounded: whatever happens, the demo is killed after two minutes.
    watchdog = threading.Timer(120, demo.kill)
    watchdog.start()
    try:
        banner: list[str] = []
        for line in demo.stdout:
            banner.append(line)
            if line.startswith("Leave with"):
                break
        text = "".join(banner)
        leave = re.search(r"Leave with `([^`]+)`", text)
        assert leave is not None, text
        assert "mdevdctl types --parent mtty" in text, text
        # What it told us to try, then what it told us to leave with.
        demo.stdin.write(
            "command -v mdevdctl\nmdevdctl types --parent mtty\n"
            "mdevdctl define mtty mtty-2 --autostart --start\nmdevdctl list\n"
            "mdevctl list\n"
            f"{leave.group(1)}\n"
        )
        demo.stdin.close()
        rest = demo.stdout.read()
        status = demo.wait()
    finally:
        watchdog.cancel()
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert status == 0, text + rest
    lines = rest.splitlines()
    # mdevdctl is on PATH (the demo's own link to it), and talks to the demo's daemon.
    assert lines[0].endswith("/mdevdctl"), rest
    assert "  mtty-2" in lines and "    Available instances: 12" in lines, rest
    uuids = re.findall(r"^([0-9a-f-]{36}) mtty mtty-2 auto\b", rest, re.M)
    # mdevctl (the front end) lists the device mdevdctl defined and started (it printed the UUID)
    assert uuids and uuids[0] in lines, rest
    assert rest.rstrip().endswith(
        "Left the demo: the daemon stopped, the emulated kernel unmounted."
    ), rest
