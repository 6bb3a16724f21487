# SPDX-License-Identifier: LGPL-2.1-or-later
"""The shipped mdevd.service under systemd as PID 1, on the real kernel (a guest booted with
`systemd=True`), after the Debian package's scenario in the same boot (`systemd_boot.py`).

mdevd is installed into the guest's overlay the way the README says (`make install
PREFIX=/usr`, for the system Python, with the dependencies copied from the checkout's venv
where that Python finds them: a Python under /root could not run behind the unit's
`ProtectHome=yes`), and started as an admin starts it: `systemctl start mdevd`. So what runs
is the installed unit with its whole sandbox, the installed launcher and package, policy and
polkit actions, beside systemd's own systemd-udevd, the socket-activated system bus and a
bus-activated polkitd. Checks go to the same report format as the scenarios (`report.py`),
under the scenario `systemd`; the daemon's journal (this scenario's records only: the .deb's
mdevd.service ran before it) to `<shared>/logs/mdevd.log`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyudev

from tests.realkernel.guest import sysfs
from tests.realkernel.guest.report import Report
from tests.realkernel.guest.stack import (
    BUS_NAME,
    DEVICES_DIR,
    LOGS,
    name_has_owner,
    run,
)
from tests.support.paths import REPO
from tests.support.waiting import came_true
from tests.systemd.container import copy_dependencies

AUTOSTART = "b1000000-0000-4000-8000-000000000001"
DEFINED = "b2000000-0000-4000-8000-000000000002"
UNIT = "mdevd.service"
SYSTEM_PYTHON = f"/usr/bin/python3.{sys.version_info.minor}"
MDEVCTL_DIR = Path("/etc/mdevctl.d")
#: The sandbox's capability set: CAP_DAC_OVERRIDE (bit 1) alone.
ONLY_DAC_OVERRIDE = f"{1 << 1:016x}"
#: How long the daemon's reactions may take under emulation, on a machine shared with others.
WAIT = 120.0


def install() -> str:
    """`make install PREFIX=/usr` in the guest's overlay; '' or what went wrong."""
    installed = run(
        ["make", "-s", "-C", str(REPO), "install", "PREFIX=/usr", f"PYTHON={SYSTEM_PYTHON}"],
        check=False,
        timeout=600,
    )
    if installed.returncode:
        return installed.stdout + installed.stderr
    copy_dependencies(bytecode=True)
    run(["systemctl", "daemon-reload"], timeout=120)
    # The bus was socket-activated before the policy and activation file were there.
    run(["systemctl", "reload", "dbus.service"], timeout=120)
    return ""


def systemctl(*args: str) -> str:
    """`systemctl ARGS`; '' or its output when it fails."""
    done = run(["systemctl", *args], check=False, timeout=300)
    return done.stdout + done.stderr if done.returncode else ""


def show(*properties: str) -> dict[str, str]:
    shown = run(["systemctl", "show", UNIT, *(f"--property={p}" for p in properties)]).stdout
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def main_process(pid: str) -> tuple[list[str], dict[str, str]]:
    """The argv and the /proc status fields of the unit's main process."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return argv, dict(line.split(":\t", 1) for line in status if ":\t" in line)


def journal_mark() -> int:
    """The time (µs since the epoch) of the journal's newest record, 0 if none: this scenario
    reads only later records, not those of an mdevd.service that ran earlier in the boot.
    (Filtered here: `journalctl --after-cursor=` with field matches found none of the records
    after the cursor in this guest, systemd 252, where the same query without it found them.)"""
    return max((int(e["__REALTIME_TIMESTAMP"]) for e in journal_entries(0, "-n", "1")), default=0)


def journal_entries(since: int, *args: str) -> list[dict[str, str]]:
    """The journal's records later than `since` (a `journal_mark`) that `journalctl ARGS`
    shows (`FIELD=value` matches, `-u UNIT`), as journalctl's JSON."""
    shown = run(["journalctl", "--no-pager", "-o", "json", *args], check=False).stdout
    records = [json.loads(line) for line in shown.splitlines() if line.startswith("{")]
    return [r for r in records if int(r["__REALTIME_TIMESTAMP"]) > since]


def unit_journal(since: int) -> str:
    """`journalctl -u mdevd`, the records later than `since` only."""
    return "".join(
        f"{e.get('SYSLOG_IDENTIFIER', '?')}[{e.get('_PID', '?')}]: {e.get('MESSAGE', '')}\n"
        for e in journal_entries(since, "-u", UNIT)
    )


def mdevdctl(*args: str) -> tuple[int, str]:
    """The installed mdevdctl (the system Python's launcher), as an admin runs it."""
    done = run(["/usr/bin/mdevdctl", *args], check=False, timeout=WAIT)
    return done.returncode, done.stdout + done.stderr


def check_start(r: Report, expected_status: str) -> None:
    """`systemctl start mdevd`, and what must hold as soon as it returns."""
    # For Type=notify, systemctl returns when READY=1 arrived (or the start failed).
    failure = systemctl("start", UNIT)
    r.check("systemctl start mdevd", not failure, failure)
    owned = name_has_owner(BUS_NAME)
    state = show("ActiveState", "SubState", "StatusText", "MainPID")
    r.equal(
        "active as soon as the start job is done, with the device counts",
        (state.get("ActiveState"), state.get("SubState"), state.get("StatusText")),
        ("active", "running", expected_status),
    )
    r.check(f"and {BUS_NAME} is owned by then", owned)
    argv, status = main_process(state.get("MainPID", "0"))
    r.equal("the main process is the installed launcher", argv, [SYSTEM_PYTHON, "/usr/bin/mdevd"])
    r.equal(
        "it runs in the unit's sandbox (capabilities, no_new_privs, seccomp)",
        {f: status.get(f) for f in ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp")},
        {
            "CapEff": ONLY_DAC_OVERRIDE,
            "CapBnd": ONLY_DAC_OVERRIDE,
            "NoNewPrivs": "1",
            "Seccomp": "2",
        },
    )


def started_records(since: int) -> list[dict[str, str]]:
    return journal_entries(since, f"MDEV_UUID={AUTOSTART}", "MDEVD_EVENT=started")


def scenario(r: Report, since: int) -> None:
    """The checks; the journal's records up to `since` (a `journal_mark`) are not its own."""
    r.equal("PID 1 is systemd", Path("/proc/1/comm").read_text().strip(), "systemd")
    began = time.monotonic()
    failure = install()
    r.check("make install PREFIX=/usr in the guest", not failure, failure)
    print(f"make install took {time.monotonic() - began:.1f} s", flush=True)
    r.check(
        "systemd loads the installed unit",
        show("LoadState", "FragmentPath")
        in (
            {"LoadState": "loaded", "FragmentPath": f"{prefix}/systemd/system/{UNIT}"}
            for prefix in ("/lib", "/usr/lib")
        ),
        show("LoadState", "FragmentPath"),
    )
    DEVICES_DIR.mkdir(parents=True, exist_ok=True)
    (DEVICES_DIR / "under-systemd.toml").write_text(
        f'[[device]]\nuuid = "{AUTOSTART}"\nparent = "mtty"\ntype = "mtty-1"\nautostart = true\n'
    )
    r.check("mtty is not loaded yet", "mtty" not in sysfs.parents(), sysfs.parents())
    check_start(r, "Ready: 1 defined, 0 active")
    mirror = MDEVCTL_DIR / "mtty" / AUTOSTART
    r.check(
        "the sandboxed daemon mirrored its definition into /etc/mdevctl.d (ReadWritePaths=)",
        mirror.exists() and '"auto"' in mirror.read_text(),
        mirror,
    )

    run(["modprobe", "mtty"])

    def autostarted() -> bool:
        device = sysfs.devices().get(AUTOSTART)
        return device is not None and device.type_id == "mtty-1"

    r.check(
        "modprobe mtty: autostart through systemd's udevd",
        came_true(autostarted, WAIT),
        sysfs.devices(),
    )
    r.check(
        "the status follows: 1 defined, 1 active",
        came_true(
            lambda: show("StatusText").get("StatusText") == "Ready: 1 defined, 1 active", WAIT
        ),
        show("StatusText"),
    )
    records = started_records(since)
    fields = ("MESSAGE", "MDEV_PARENT", "MDEV_TYPE", "PRIORITY", "_TRANSPORT", "_SYSTEMD_UNIT")
    r.equal(
        "the journal has one started record for it, with the device's fields",
        [{f: record.get(f) for f in fields} for record in records],
        [
            {
                "MESSAGE": f"device {AUTOSTART}: started (autostart)",
                "MDEV_PARENT": "mtty",
                "MDEV_TYPE": "mtty-1",
                "PRIORITY": "6",
                "_TRANSPORT": "journal",
                "_SYSTEMD_UNIT": UNIT,
            }
        ],
    )
    journal = unit_journal(since)
    r.check("journalctl -u mdevd has its log", f"ready on {BUS_NAME}" in journal, journal[-2000:])

    # The daemon's work through the sandbox: sysfs writes, /dev/vfio, a definition file.
    code, output = mdevdctl("define", "mtty", "mtty-2", "--uuid", DEFINED, "--start")
    device = sysfs.devices().get(DEFINED)
    r.check(
        "the installed mdevdctl: define --start creates the device in the kernel",
        code == 0 and device is not None and device.type_id == "mtty-2",
        (code, output, sysfs.devices()),
    )
    definition = MDEVCTL_DIR / "mtty" / DEFINED
    r.check("its definition is written in /etc/mdevctl.d", definition.exists(), output)
    code, output = mdevdctl("stop", DEFINED)
    r.check(
        "mdevdctl stop removes it from the kernel",
        code == 0 and DEFINED not in sysfs.devices(),
        (code, output),
    )
    code, output = mdevdctl("undefine", DEFINED)
    r.check("mdevdctl undefine removes the file", code == 0 and not definition.exists(), output)

    failure = systemctl("stop", UNIT)
    r.check("systemctl stop mdevd", not failure, failure)
    state = show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    r.equal(
        "stopped cleanly: inactive, result success",
        (state.get("ActiveState"), state.get("Result")),
        ("inactive", "success"),
    )
    # Code 2 is CLD_KILLED: SIGTERM's default action, not the daemon's own exit.
    r.check(
        "the daemon exited by itself, not killed by the signal",
        state.get("ExecMainCode") != "2" and state.get("ExecMainStatus") == "0",
        state,
    )
    before = sysfs.devices()
    r.check("the device keeps running without the daemon", AUTOSTART in before, before)

    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
    monitor.filter_by("mdev")
    monitor.start()
    check_start(r, "Ready: 1 defined, 1 active")
    run(["udevadm", "settle", "--timeout=60"], check=False, timeout=90)
    time.sleep(3)  # watching for a removal or creation that must not come
    uevents = []
    while (event := monitor.poll(timeout=0)) is not None:
        uevents.append((event.action, event.sys_name))
    r.equal("restarted: the kernel's devices are as they were", sysfs.devices(), before)
    r.equal("no mdev uevent during the restart", uevents, [])
    code, output = mdevdctl("show", AUTOSTART, "--json")
    shown = json.loads(output) if code == 0 else {}
    r.check(
        "the device is adopted, active, with its definition",
        shown.get("active") is True and shown.get("defined") is True,
        output,
    )
    r.equal("no second started record: it was not recreated", len(started_records(since)), 1)
    systemctl("stop", UNIT)


def write_log(since: int) -> None:
    """The unit's journal after `since`, where the host looks for it when a check failed."""
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / "mdevd.log").write_text(unit_journal(since))
