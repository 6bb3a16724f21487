"""mdevd supervised by systemd as PID 1, on the real kernel (run in a guest booted `systemd=True`).

    python -m tests.realkernel.guest.under_systemd

systemd's own systemd-udevd and the socket-activated system bus run; polkitd is activated by
the bus on first use. mdevd runs as a `Type=notify` service (a transient unit made by
`systemd-run`, with the checkout's interpreter), so readiness is the daemon's own READY=1, its
log goes to journald, and stopping is systemd's SIGTERM. Checks go to the same report format as
the scenarios (`report.py`), under the scenario `systemd`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.realkernel.guest import sysfs
from tests.realkernel.guest.report import Report
from tests.realkernel.guest.stack import (
    BUS_NAME,
    DEVICES_DIR,
    LOGS,
    REPO,
    SHARED,
    StackError,
    install_bus_policy,
    install_polkit_files,
    name_has_owner,
    run,
    wait_for,
)

AUTOSTART = "b1000000-0000-4000-8000-000000000001"
UNIT = "mdevd.service"


def start_mdevd() -> str:
    """`systemd-run` returns once the start job is done: for Type=notify, after READY=1."""
    started = run(
        [
            "systemd-run",
            f"--unit={UNIT}",
            "--service-type=notify",
            "--property=NotifyAccess=main",
            f"--working-directory={REPO}",
            f"--setenv=PYTHONPATH={REPO}",
            sys.executable,
            "-m",
            "mdevd",
            "--log-level",
            "debug",
        ],
        check=False,
        timeout=180,
    )
    return started.stdout + started.stderr if started.returncode else ""


def main() -> int:
    report = Report(SHARED / "report.json")
    with report.scenario("systemd"):
        r = report
        r.equal("PID 1 is systemd", Path("/proc/1/comm").read_text().strip(), "systemd")
        install_bus_policy()
        install_polkit_files()
        # The bus was socket-activated before the policy was there: make it read it.
        run(["systemctl", "reload", "dbus.service"], check=False)
        DEVICES_DIR.mkdir(parents=True, exist_ok=True)
        (DEVICES_DIR / "under-systemd.toml").write_text(
            f'[[device]]\nuuid = "{AUTOSTART}"\nparent = "mtty"\ntype = "mtty-1"\n'
            "autostart = true\n"
        )
        failure = start_mdevd()
        r.check("systemd-run starts mdevd as a Type=notify service", not failure, failure)
        active = run(["systemctl", "is-active", UNIT], check=False).stdout.strip()
        r.equal("the unit is active once the start job is done", active, "active")
        r.check("and the bus name is owned by then", name_has_owner(BUS_NAME))
        run(["modprobe", "mtty"])

        def autostarted() -> bool:
            device = sysfs.devices().get(AUTOSTART)
            return device is not None and device.type_id == "mtty-1"

        try:
            wait_for(autostarted, 60, "the autostart device")
            came = True
        except StackError:
            came = False
        r.check("modprobe mtty: autostart through systemd's udevd", came, sysfs.devices())
        journal = run(["journalctl", "--no-pager", "-u", UNIT, "-o", "cat"], check=False).stdout
        r.check("mdevd's log is in the journal", f"ready on {BUS_NAME}" in journal, journal[-2000:])
        stopped = run(["systemctl", "stop", UNIT], check=False, timeout=120)
        r.check("systemctl stop", stopped.returncode == 0, stopped.stderr)
        state = run(["systemctl", "show", "-P", "Result", UNIT], check=False).stdout.strip()
        r.check("it stopped cleanly (no failure result)", state in ("", "success"), state)
        r.check("the device keeps running without the daemon", AUTOSTART in sysfs.devices())
        before = sysfs.devices()
        failure = start_mdevd()
        r.check("started again", not failure, failure)
        listing = run(
            [sys.executable, "-m", "mdevd.ctl", "list", "--json"],
            check=False,
            cwd=REPO,
        )
        r.check(
            "the running device is adopted, not recreated",
            sysfs.devices() == before and AUTOSTART in listing.stdout,
            listing.stdout + listing.stderr,
        )
        run(["systemctl", "stop", UNIT], check=False, timeout=120)
    # Where the host looks for the daemon's log when a check failed.
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / "mdevd.log").write_text(
        run(["journalctl", "--no-pager", "-u", UNIT], check=False).stdout
    )
    failed = [c for s in report.scenarios.values() for c in s.failed]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
