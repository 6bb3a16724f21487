# SPDX-License-Identifier: LGPL-2.1-or-later
"""The one guest boot with systemd as PID 1 (`systemd=True`): two scenario sets, in this order.

    python -m tests.realkernel.guest.systemd_boot [debian] [systemd]

`debian` (`debian_package.py`): the .deb the host put in the shared folder, installed with apt,
then purged. `systemd` (`under_systemd.py`): mdevd installed from the checkout with `make
install`, started with `systemctl start mdevd`. Each is a scenario of its own in the report,
asserted by its own test (test_debian_package.py, test_systemd.py). They share a boot: each
boot of systemd costs some 20 s under emulation, and the host's preparation of the run.

Why the .deb goes first: its scenario needs the system as booted. It proves `/usr/bin/python3`
imports none of mdevd's dependencies before apt installs them, which the copies `make install`
leaves in /usr/local would defeat, and that purging leaves none of the package's files, which
`make install` puts at the same paths. The checkout's scenario needs little: `make install`
and `systemctl daemon-reload` put back everything the purge removed (unit, bus policy and
activation file, polkit actions, /etc/mdevd), its Python dependencies are its own copies in
/usr/local, ahead of Debian's on `sys.path` (so the Debian packages the .deb scenario purged
and apt installed again change nothing), and it reads only the journal's records later than
its beginning (`under_systemd.journal_mark`). The rest, `debian_package.undo` takes away
between the two, as checks of the `systemd` scenario (they are its preconditions): the device
the .deb's mdevd autostarted, mtty (the `systemd` scenario proves autostart on `modprobe
mtty`), the definition mirrored into /etc/mdevctl.d (purge keeps mdevctl's directory; it would
be counted as defined), and the package itself if its purge failed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tests.realkernel.guest import debian_package, under_systemd
from tests.realkernel.guest.report import CHECKS_FAILED, Report
from tests.realkernel.guest.stack import SHARED

SETS = ("debian", "systemd")


def main(argv: Sequence[str]) -> int:
    if not argv or any(name not in SETS for name in argv):
        print(f"usage: python -m tests.realkernel.guest.systemd_boot {SETS}...", file=sys.stderr)
        return 2
    report = Report(SHARED / "report.json")
    mdevctl_before = debian_package.mdevctl_files()
    if "debian" in argv:
        with report.scenario("debian"):
            debian_package.scenario(report)
    if "systemd" in argv:
        since = 0
        with report.scenario("systemd"):
            if "debian" in argv:
                debian_package.undo(report, mdevctl_before)
            since = under_systemd.journal_mark()
            under_systemd.scenario(report, since)
        under_systemd.write_log(since)
    failed = [c for s in report.scenarios.values() for c in s.failed]
    return CHECKS_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
