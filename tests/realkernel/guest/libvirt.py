# SPDX-License-Identifier: LGPL-2.1-or-later
"""Debian's libvirtd, unchanged, managing mdevs through mdevd on the real kernel (one guest boot).

    python -m tests.realkernel.guest.libvirt      # in the guest, as root, from the checkout

The guest's system services (`stack.py`: systemd-udevd, the system bus with the project's
policy, polkitd), mdevd from the checkout with its production defaults (mdevctl compatibility
is on: the guest has mdevctl's /etc/mdevctl.d), `modprobe mtty`, then libvirtd with only its
node-device driver, run the way the host's tests/compat/libvirtd.py runs it (no systemd:
`LIBVIRT_DRIVER_DIR`, no authentication on its socket), with a directory holding only an
`mdevctl` that is mdevd's front end first in its PATH. libvirt finds the parent and the mdevs
through the real udevd, and definition changes through its file monitor on /etc/mdevctl.d.
`virsh nodedev-event --loop` records the lifecycle events from the start. Scenarios:

1. through-libvirt    nodedev-create, -define (with and without a UUID), -start, -autostart
                      on and off, -list --cap mdev [--all], -dumpxml, -destroy, -undefine
2. through-mdevdctl   define, start, stop, undefine through mdevd's own client: libvirt's
                      events follow
3. driver-reload      an autostart device defined through libvirt comes back, once, after
                      `rmmod mtty; modprobe mtty`

Each check goes to `$REALKERNEL_SHARED/report.json` (`report.py`); the kernel's state is read
from /sys (`sysfs.py`). Each libvirt operation runs the front end at least once (a Python
program, seconds under emulation) and libvirt re-reads the definitions after each change
there, so the operations are few and the waits generous.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyudev

from tests.realkernel.guest import sysfs
from tests.realkernel.guest.report import Report
from tests.realkernel.guest.stack import LOGS, SHARED, GuestStack, StackError, run
from tests.support.paths import REPO
from tests.support.waiting import came_true, wait_until

LIBVIRTD = Path("/usr/sbin/libvirtd")
NODEDEV_DRIVER = Path(
    "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_nodedev.so"
)
WORK = Path("/run/mdevd-libvirt")
MDEVCTL_DIR = Path("/etc/mdevctl.d")
URI = f"nodedev:///system?socket={WORK}/libvirt-sock"
#: How long anything may take under emulation: a libvirt operation runs the front end (seconds)
#: and libvirt re-reads the definitions after it (seconds more).
WAIT = 180.0
#: After an action, how long to keep watching for an event that must not come.
GRACE = 5.0

CREATED = "c1000000-0000-4000-8000-000000000001"  # nodedev-create, transient
DEFINED = "c2000000-0000-4000-8000-000000000002"  # nodedev-define with a UUID
BY_MDEVDCTL = "c3000000-0000-4000-8000-000000000003"  # mdevdctl's changes


def nodedev(uuid: str) -> str:
    """libvirt's name of an mdev on the mtty parent."""
    return f"mdev_{uuid.replace('-', '_')}_mtty"


def device_xml(type_id: str, uuid: str | None = None) -> str:
    uuid_element = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (
        "<device><parent>mtty_mtty</parent><capability type='mdev'>"
        f"<type id='{type_id}'/>{uuid_element}</capability></device>"
    )


def definition_file(uuid: str) -> Path:
    return MDEVCTL_DIR / "mtty" / uuid


def definition_text(uuid: str) -> str:
    try:
        return definition_file(uuid).read_text()
    except OSError:
        return ""


def in_kernel(uuid: str, type_id: str) -> bool:
    device = sysfs.devices().get(uuid)
    return device is not None and device.type_id == type_id


class Libvirt:
    """libvirtd (node-device driver only), `virsh` against it, and its lifecycle events."""

    def __init__(self) -> None:
        self.daemon: subprocess.Popen[bytes] | None = None
        self.events: subprocess.Popen[bytes] | None = None
        self.events_log = LOGS / "nodedev-events.log"

    def start(self) -> None:
        bindir, drivers = WORK / "bin", WORK / "drivers"
        bindir.mkdir(parents=True, exist_ok=True)
        drivers.mkdir(exist_ok=True)
        (drivers / NODEDEV_DRIVER.name).symlink_to(NODEDEV_DRIVER)
        # mdevd's front end as `mdevctl`, alone in a directory first in libvirtd's PATH.
        front_end = bindir / "mdevctl"
        front_end.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
            "from mdevd.cli.mdevctl import main\nsys.exit(main())\n"
        )
        front_end.chmod(0o755)
        LOGS.mkdir(parents=True, exist_ok=True)
        (WORK / "libvirtd.conf").write_text(
            'auth_unix_ro = "none"\nauth_unix_rw = "none"\n'
            f'unix_sock_dir = "{WORK}"\n'
            # conf.object_event logs each event callback registered (virsh nodedev-event's).
            'log_filters = "1:node_device 1:util.command 1:conf.object_event"\n'
            f'log_outputs = "1:file:{LOGS}/libvirtd.log"\n'
        )
        env = {
            "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
            "LIBVIRT_DRIVER_DIR": str(drivers),
            "HOME": str(WORK),
        }
        with (LOGS / "libvirtd.stderr").open("wb") as stderr:
            self.daemon = subprocess.Popen(
                [str(LIBVIRTD), "-f", str(WORK / "libvirtd.conf")],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        daemon = self.daemon

        def serving() -> bool:
            if daemon.poll() is not None:
                raise StackError(f"libvirtd exited with {daemon.returncode}")
            return (WORK / "libvirt-sock").exists() and self.virsh("nodedev-list").returncode == 0

        wait_until(serving, WAIT, "libvirtd to answer")
        with self.events_log.open("wb") as out:
            self.events = subprocess.Popen(
                ["virsh", "-c", URI, "nodedev-event", "--event", "lifecycle", "--loop"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # `nodedev-event` says nothing once its callback is in place; libvirtd's log does.
        wait_until(lambda: "virObjectEventCallbackListAddID" in self.log(), WAIT, "nodedev-event")

    def log(self) -> str:
        try:
            return (LOGS / "libvirtd.log").read_text(errors="replace")
        except OSError:
            return ""

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["virsh", "-c", URI, *args], check=False, timeout=WAIT)

    def listed(self, *options: str) -> set[str]:
        done = self.virsh("nodedev-list", "--cap", "mdev", *options)
        return set(done.stdout.split()) if done.returncode == 0 else set()

    def seen(self, device: str) -> list[str]:
        """The lifecycle events `virsh nodedev-event` printed for `device`, in order."""
        try:
            text = self.events_log.read_text(errors="replace")
        except OSError:
            return []
        pattern = rf"node device {re.escape(device)}: (\w+)"
        return [match[1] for match in re.finditer(pattern, text)]

    def shows_autostart(self, uuid: str, shown: str) -> bool:
        """Wait until `nodedev-info` says `Autostart: <shown>`: libvirt re-reads the
        definitions after every change in /etc/mdevctl.d, so an earlier change's re-read may
        still be answering."""

        def shows() -> bool:
            info = self.virsh("nodedev-info", nodedev(uuid)).stdout
            return bool(re.search(rf"Autostart:\s+{shown}\b", info))

        return came_true(shows, WAIT)

    def saw(self, uuid: str, event: str, count: int = 1) -> bool:
        """Wait until libvirt reported `event` for `uuid` `count` times in all."""
        return came_true(lambda: self.seen(nodedev(uuid)).count(event) >= count, WAIT)

    def stop(self) -> None:
        for process in (self.events, self.daemon):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def outcome(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}: {done.stdout.strip()[-600:]} {done.stderr.strip()[-600:]}"


# ---- the system ---------------------------------------------------------------------------


def start_everything(r: Report, stack: GuestStack, libvirt: Libvirt) -> None:
    MDEVCTL_DIR.mkdir(exist_ok=True)  # as the mdevctl package leaves it: compatibility is on
    stack.start_system()
    stack.mdevd.start(timeout=WAIT)
    loaded = run(["modprobe", "mtty"], check=False)
    r.check("modprobe mtty", loaded.returncode == 0, loaded.stderr)
    run(["udevadm", "settle", "--timeout=60"], check=False, timeout=90)
    libvirt.start()
    r.check(
        "libvirt sees the mtty parent",
        came_true(lambda: "mtty_mtty" in libvirt.virsh("nodedev-list").stdout.split(), WAIT),
        libvirt.virsh("nodedev-list").stdout,
    )


# ---- 1. through libvirt -------------------------------------------------------------------


def through_libvirt(r: Report, libvirt: Libvirt) -> str:
    """The libvirt operations; the UUID libvirt generated for a definition without one."""
    xml = WORK / "device.xml"

    xml.write_text(device_xml("mtty-2", CREATED))
    done = libvirt.virsh("nodedev-create", str(xml))
    r.check("nodedev-create", done.returncode == 0, outcome(done))
    r.check("the device is in the kernel as mtty-2", in_kernel(CREATED, "mtty-2"), sysfs.devices())
    r.check(
        "nodedev-event: Created", libvirt.saw(CREATED, "Created"), libvirt.seen(nodedev(CREATED))
    )
    done = libvirt.virsh("nodedev-dumpxml", nodedev(CREATED))
    r.check(
        "nodedev-dumpxml shows its parent, type and UUID",
        done.returncode == 0
        and "<parent>mtty_mtty</parent>" in done.stdout
        and "<type id='mtty-2'/>" in done.stdout
        and f"<uuid>{CREATED}</uuid>" in done.stdout,
        outcome(done),
    )
    done = libvirt.virsh("nodedev-create", str(xml))
    r.check(
        "nodedev-create of a running UUID fails with mdevctl's text",
        done.returncode != 0 and "Device already exists" in done.stderr,
        outcome(done),
    )

    xml.write_text(device_xml("mtty-1", DEFINED))
    done = libvirt.virsh("nodedev-define", str(xml))
    r.check("nodedev-define with a UUID", done.returncode == 0, outcome(done))
    r.check(
        "nodedev-event: Defined", libvirt.saw(DEFINED, "Defined"), libvirt.seen(nodedev(DEFINED))
    )
    text = definition_text(DEFINED)
    r.check(
        "mdevd wrote it to /etc/mdevctl.d, manual, not started",
        '"mtty-1"' in text and '"manual"' in text and DEFINED not in sysfs.devices(),
        (text, sysfs.devices()),
    )
    xml.write_text(device_xml("mtty-1"))
    done = libvirt.virsh("nodedev-define", str(xml))
    match = re.search(r"mdev_([0-9a-f_]{36})_mtty", done.stdout)
    generated = match[1].replace("_", "-") if match else ""
    r.check(
        "nodedev-define without a UUID names the device mdevd generated",
        done.returncode == 0 and bool(generated) and definition_file(generated).exists(),
        outcome(done),
    )

    done = libvirt.virsh("nodedev-start", nodedev(DEFINED))
    r.check("nodedev-start", done.returncode == 0, outcome(done))
    r.check("it is in the kernel as mtty-1", in_kernel(DEFINED, "mtty-1"), sysfs.devices())
    r.check(
        "nodedev-event: Created", libvirt.saw(DEFINED, "Created"), libvirt.seen(nodedev(DEFINED))
    )

    done = libvirt.virsh("nodedev-autostart", nodedev(DEFINED))
    r.check(
        "nodedev-autostart: the definition says auto",
        done.returncode == 0 and came_true(lambda: '"auto"' in definition_text(DEFINED), WAIT),
        (outcome(done), definition_text(DEFINED)),
    )
    r.check("libvirt shows autostart on", libvirt.shows_autostart(DEFINED, "yes"))
    done = libvirt.virsh("nodedev-autostart", "--disable", nodedev(DEFINED))
    r.check(
        "nodedev-autostart --disable: the definition says manual",
        done.returncode == 0 and came_true(lambda: '"manual"' in definition_text(DEFINED), WAIT),
        (outcome(done), definition_text(DEFINED)),
    )
    r.check("libvirt shows autostart off", libvirt.shows_autostart(DEFINED, "no"))

    everything = {nodedev(CREATED), nodedev(DEFINED), nodedev(generated)}
    r.equal("nodedev-list --cap mdev --all: every device", libvirt.listed("--all"), everything)
    r.equal(
        "nodedev-list --cap mdev: the running ones",
        libvirt.listed(),
        {nodedev(CREATED), nodedev(DEFINED)},
    )

    done = libvirt.virsh("nodedev-destroy", nodedev(DEFINED))
    r.check("nodedev-destroy", done.returncode == 0, outcome(done))
    r.check("it is gone from the kernel", DEFINED not in sysfs.devices(), sysfs.devices())
    r.check(
        "nodedev-event: Deleted", libvirt.saw(DEFINED, "Deleted"), libvirt.seen(nodedev(DEFINED))
    )
    r.check("and still defined", definition_file(DEFINED).exists())
    done = libvirt.virsh("nodedev-undefine", nodedev(DEFINED))
    r.check("nodedev-undefine", done.returncode == 0, outcome(done))
    r.check("its file is gone", not definition_file(DEFINED).exists())
    r.check(
        "nodedev-event: Undefined",
        libvirt.saw(DEFINED, "Undefined"),
        libvirt.seen(nodedev(DEFINED)),
    )
    r.check(
        "libvirt no longer lists it",
        came_true(lambda: nodedev(DEFINED) not in libvirt.listed("--all"), WAIT),
        libvirt.listed("--all"),
    )
    return generated


# ---- 2. through mdevdctl ------------------------------------------------------------------


def through_mdevdctl(r: Report, stack: GuestStack, libvirt: Libvirt) -> None:
    name = nodedev(BY_MDEVDCTL)
    steps: Sequence[tuple[tuple[str, ...], str, Callable[[], bool]]] = (
        (("define", "mtty", "mtty-1", "--uuid", BY_MDEVDCTL), "Defined", lambda: True),
        (("start", BY_MDEVDCTL), "Created", lambda: in_kernel(BY_MDEVDCTL, "mtty-1")),
        (("stop", BY_MDEVDCTL), "Deleted", lambda: BY_MDEVDCTL not in sysfs.devices()),
        (("undefine", BY_MDEVDCTL), "Undefined", lambda: True),
    )
    for args, event, done_when in steps:
        done = stack.mdevdctl(*args)
        r.check(f"mdevdctl {args[0]}", done.returncode == 0 and done_when(), outcome(done))
        r.check(
            f"libvirt reports {event}",
            libvirt.saw(BY_MDEVDCTL, event),
            libvirt.seen(name),
        )
    r.check(
        "libvirt no longer lists it",
        came_true(lambda: name not in libvirt.listed("--all"), WAIT),
        libvirt.listed("--all"),
    )


# ---- 3. the driver goes and comes back ----------------------------------------------------


def driver_reload(r: Report, libvirt: Libvirt, autostart: str) -> None:
    done = libvirt.virsh("nodedev-autostart", nodedev(autostart))
    r.check(
        "nodedev-autostart of the device defined without a UUID",
        done.returncode == 0 and came_true(lambda: '"auto"' in definition_text(autostart), WAIT),
        (outcome(done), definition_text(autostart)),
    )
    r.check("it is not running", autostart not in sysfs.devices(), sysfs.devices())
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
    monitor.filter_by("mdev")
    monitor.start()
    created_before = libvirt.seen(nodedev(autostart)).count("Created")

    done = run(["rmmod", "mtty"], check=False)
    r.check("rmmod mtty", done.returncode == 0, done.stderr)
    r.check(
        "libvirt: the transient device is Deleted",
        libvirt.saw(CREATED, "Deleted"),
        libvirt.seen(nodedev(CREATED)),
    )
    r.check(
        "libvirt: the parent is gone",
        came_true(lambda: "mtty_mtty" not in libvirt.virsh("nodedev-list").stdout.split(), WAIT),
    )
    done = run(["modprobe", "mtty"], check=False)
    r.check("modprobe mtty", done.returncode == 0, done.stderr)
    r.check(
        "the autostart device is back in the kernel",
        came_true(lambda: in_kernel(autostart, "mtty-1"), WAIT),
        sysfs.devices(),
    )
    r.check(
        "libvirt reports it Created",
        libvirt.saw(autostart, "Created", created_before + 1),
        libvirt.seen(nodedev(autostart)),
    )
    run(["udevadm", "settle", "--timeout=60"], check=False, timeout=90)
    time.sleep(GRACE)
    adds = []
    while (event := monitor.poll(timeout=0)) is not None:
        if event.action == "add":
            adds.append(event.sys_name)
    r.equal("the kernel created it once", adds.count(autostart), 1)
    r.equal(
        "libvirt reported it Created once",
        libvirt.seen(nodedev(autostart)).count("Created"),
        created_before + 1,
    )
    r.check("the transient device did not come back", CREATED not in sysfs.devices())
    r.check(
        "libvirt lists it running",
        came_true(lambda: nodedev(autostart) in libvirt.listed(), WAIT),
        libvirt.listed(),
    )


SCENARIOS = ("through-libvirt", "through-mdevdctl", "driver-reload")


def main(argv: Sequence[str]) -> int:
    report = Report(SHARED / "report.json")
    stack = GuestStack()
    libvirt = Libvirt()
    generated = ""
    try:
        with report.scenario("system"):
            start_everything(report, stack, libvirt)
        if not report.scenarios["system"].failed:
            with report.scenario("through-libvirt"):
                generated = through_libvirt(report, libvirt)
            with report.scenario("through-mdevdctl"):
                through_mdevdctl(report, stack, libvirt)
            with report.scenario("driver-reload"):
                if not generated:
                    raise RuntimeError("nodedev-define without a UUID gave no device to use")
                driver_reload(report, libvirt, generated)
    finally:
        libvirt.stop()
        stack.stop_all()
    failed = [c for s in report.scenarios.values() for c in s.failed]
    print(f"{len(failed)} failed checks")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
