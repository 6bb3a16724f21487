# SPDX-License-Identifier: LGPL-2.1-or-later
"""The real-kernel scenarios, run inside one guest boot as a scripted sequence of checks.

    python -m tests.realkernel.guest.scenarios      # in the guest, as root, from the checkout

Starts the guest's system services (systemd-udevd, the system bus, polkitd: `stack.py`), then
mdevd from the checkout with its production defaults, and runs, in order:

1. autostart    definitions in /etc/mdevd/devices.d, then `modprobe mtty mdpy`
2. lifecycle    create/define/start/stop/undefine through mdevdctl, the kernel's errors
                (EEXIST, ENOSPC, EUSERS) through mdevdctl and gdbus
3. unprivileged user `nobody` is refused every change, and nothing changes
4. restart      mdevd restarted with devices running: none removed or recreated
5. hot-unplug   `rmmod mtty` with devices running, then `modprobe mtty`
6. handoff      Device.Open's fd used by a user in group mdevd to drive an mtty through VFIO
                (`handoff.py`, `vfio_probe.py`); `nobody` refused, a held group Busy
7. handoff-cdev the same through the VFIO device node where the kernel has one (6.6+)

Each check is recorded in `$REALKERNEL_SHARED/report.json` (`report.py`); a scenario that
raises is recorded as failed and the next one still runs. What mdevd says over D-Bus is always
compared with what the kernel says in /sys (`sysfs.py`), never with mdevd's own code. Waits
poll a condition with a generous timeout: the guest runs under emulation, ten times slower
than the host, and shares the host's cores with other work.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pyudev

from mdevd.client import Client, DaemonError, DeviceInfo, Event
from tests.realkernel.guest import sysfs
from tests.realkernel.guest.bench import short_bench_after_scenarios
from tests.realkernel.guest.handoff import scenario_handoff, scenario_handoff_cdev
from tests.realkernel.guest.report import Report
from tests.realkernel.guest.stack import DEVICES_DIR, LOGS, SHARED, GuestStack, run
from tests.support.paths import REPO
from tests.support.waiting import came_true_async, wait_until_async

ERROR = "org.mdevd.Mdevd1.Error."
MANAGER = "/org/mdevd/Mdevd1/Manager"
#: How long anything the daemon does in reaction to the kernel may take under emulation.
WAIT = 60.0
#: How often a wait asks again: each time is D-Bus calls and sysfs reads, slow under emulation.
POLL = 0.2
#: After an action, how long to keep watching for something that must *not* happen.
GRACE = 3.0

# Defined in scenario 1 and used throughout.
AUTO_MTTY = "a1000000-0000-4000-8000-000000000001"  # mtty-2, autostart
AUTO_MDPY = "a2000000-0000-4000-8000-000000000002"  # mdpy-xga, autostart
MANUAL_MTTY = "a3000000-0000-4000-8000-000000000003"  # mtty-1, defined, not autostart

DEFINITIONS = f"""# Written by the real-kernel scenarios before mdevd starts and any driver loads.
[[device]]
uuid = "{AUTO_MTTY}"
parent = "mtty"
type = "mtty-2"
autostart = true

[[device]]
uuid = "{AUTO_MDPY}"
parent = "mdpy"
type = "mdpy-xga"
autostart = true

[[device]]
uuid = "{MANUAL_MTTY}"
parent = "mtty"
type = "mtty-1"
autostart = false
"""


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def device_path(uuid: str) -> str:
    return "/org/mdevd/Mdevd1/devices/" + uuid.replace("-", "_")


def error_name(text: str) -> str:
    """The contract's short error name in mdevdctl's or gdbus's message, or ''."""
    match = re.search(r"\[(\w+)\]\s*$", text.strip()) or re.search(
        r"GDBus\.Error:org\.mdevd\.Mdevd1\.Error\.(\w+)", text
    )
    return match.group(1) if match else ""


class Guest:
    """What the scenarios share: the stack, a D-Bus client, the events it saw, the kernel's."""

    def __init__(self, report: Report, stack: GuestStack) -> None:
        self.report = report
        self.stack = stack
        self.client: Client | None = None
        self.events: list[Event] = []
        self.uevents: list[tuple[str, str]] = []  # (action, device name) of subsystem mdev
        self._tasks: list[asyncio.Task[None]] = []
        self.monitor: subprocess.Popen[bytes] | None = None

    # ---- processes -------------------------------------------------------------------------

    async def sh(
        self, *argv: str, user: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a program without blocking the loop (the event collector keeps reading)."""
        return await asyncio.to_thread(self._run, list(argv), user, timeout)

    def _run(
        self, argv: list[str], user: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return run(argv, check=False, timeout=timeout, cwd=REPO, env=self._env(), user=user)

    @staticmethod
    def _env() -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO)}

    async def ctl(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """`mdevdctl ARGS`, the checkout's command-line client."""
        return await self.sh(sys.executable, "-m", "mdevd.cli.mdevdctl", *args, user=user)

    async def gdbus(
        self, path: str, method: str, *args: str, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A method call from gdbus: a client we did not write, seeing the error names raw."""
        return await self.sh(
            "gdbus",
            "call",
            "--system",
            "--dest",
            "org.mdevd.Mdevd1",
            "--object-path",
            path,
            "--method",
            method,
            *args,
            user=user,
        )

    # ---- waiting ---------------------------------------------------------------------------

    async def settle(self) -> None:
        """Let the kernel's and udevd's events reach the daemon, and watch for a while."""
        await self.sh("udevadm", "settle", "--timeout=60")
        await asyncio.sleep(GRACE)

    # ---- the daemon's view -----------------------------------------------------------------

    def dbus(self) -> Client:
        assert self.client is not None
        return self.client

    async def devices(self) -> dict[str, DeviceInfo]:
        return {d.uuid: d for d in await self.dbus().devices()}

    async def device(self, uuid: str) -> DeviceInfo | None:
        return (await self.devices()).get(uuid)

    async def absent(self, uuid: str) -> bool:
        return await self.device(uuid) is None

    async def parent_names(self) -> list[str]:
        return [p.name for p in await self.dbus().parents()]

    async def active_views(self) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
        """(parent, type) of every active device, as the kernel and as the daemon see it."""
        kernel = {u: (d.parent, d.type_id) for u, d in sysfs.devices().items()}
        daemon = {u: (d.parent, d.type_id) for u, d in (await self.devices()).items() if d.active}
        return kernel, daemon

    async def agrees_with_kernel(self) -> bool:
        kernel, daemon = await self.active_views()
        return kernel == daemon

    async def check_agrees_with_kernel(self) -> None:
        agreed = await came_true_async(self.agrees_with_kernel, WAIT, interval=POLL)
        kernel, daemon = await self.active_views()
        self.report.check(
            "the daemon's active devices are the kernel's",
            agreed,
            f"kernel {kernel}, mdevd {daemon}",
        )

    # ---- events ----------------------------------------------------------------------------

    def mark(self) -> tuple[int, int]:
        return len(self.events), len(self.uevents)

    def events_since(
        self, mark: tuple[int, int], uuid: str | None = None, event: str | None = None
    ) -> list[Event]:
        return [
            e
            for e in self.events[mark[0] :]
            if e.kind == "device-event"
            and (uuid is None or e.uuid == uuid)
            and (event is None or e.event == event)
        ]

    def uevents_since(self, mark: tuple[int, int], uuid: str) -> list[str]:
        return [action for action, name in self.uevents[mark[1] :] if name == uuid]

    async def start_watching(self) -> None:
        """Connect the D-Bus client, collect its signals and the kernel's mdev uevents, start
        `mdevdctl monitor` as a second client, and wait until both clients see events."""
        self.client = await Client.connect()
        self._tasks.append(asyncio.create_task(self._collect_signals()))
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        monitor.filter_by("mdev")
        monitor.start()
        asyncio.get_running_loop().add_reader(monitor.fileno(), self._read_uevents, monitor)
        with (LOGS / "mdevdctl-monitor.jsonl").open("wb") as out:
            self.monitor = subprocess.Popen(
                [sys.executable, "-m", "mdevd.cli.mdevdctl", "monitor", "--json"],
                cwd=REPO,
                env=self._env(),
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        # Neither client says when its subscription is in place: make events until both saw one.
        probe = new_uuid()

        async def both_saw_one() -> bool:
            await self.dbus().define_device("mtty", "mtty-1", uuid=probe)
            await self.dbus().undefine(probe)
            await asyncio.sleep(0.5)
            return bool(self.events_since((0, 0), probe)) and probe in self.monitor_text()

        await wait_until_async(
            both_saw_one, 120, "the event clients to see an event", interval=POLL
        )

    async def _collect_signals(self) -> None:
        async for event in self.dbus().events():
            self.events.append(event)

    def _read_uevents(self, monitor: pyudev.Monitor) -> None:
        while (device := monitor.poll(timeout=0)) is not None:
            self.uevents.append((device.action or "", device.sys_name))

    def monitor_text(self) -> str:
        return (LOGS / "mdevdctl-monitor.jsonl").read_text(errors="replace")

    def monitor_events(self, uuid: str, event: str) -> list[dict[str, object]]:
        """What `mdevdctl monitor --json` printed for `uuid`'s `event`."""
        found = []
        for line in self.monitor_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("uuid") == uuid and record.get("event") == event:
                found.append(record)
        return found

    def stop_watching(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.monitor is not None:
            self.monitor.terminate()
            self.monitor.wait()
        if self.client is not None:
            self.client.close()


# ---- 1. autostart ---------------------------------------------------------------------------


async def scenario_autostart(g: Guest) -> None:
    r = g.report
    DEVICES_DIR.mkdir(parents=True, exist_ok=True)
    (DEVICES_DIR / "realkernel.toml").write_text(DEFINITIONS)
    r.check("no mdev parent before the drivers load", not sysfs.parents(), sysfs.parents())
    r.check("the mdev core is not loaded yet", not Path("/sys/module/mdev").exists())
    g.stack.mdevd.start()  # raises if it exits or never owns its name
    await g.start_watching()
    devices = await g.devices()
    for uuid in (AUTO_MTTY, AUTO_MDPY, MANUAL_MTTY):
        d = devices.get(uuid)
        r.check(
            f"{uuid} is defined and inactive before its parent exists",
            d is not None and d.defined and not d.active and d.parent_object == "/",
            d,
        )

    mark = g.mark()
    loaded = await g.sh("modprobe", "-a", "mtty", "mdpy")
    r.check("modprobe mtty mdpy", loaded.returncode == 0, loaded.stderr)
    expected = {AUTO_MTTY: ("mtty", "mtty-2"), AUTO_MDPY: ("mdpy", "mdpy-xga")}

    def autostarted() -> bool:
        kernel = sysfs.devices()
        return all(
            u in kernel and (kernel[u].parent, kernel[u].type_id) == want
            for u, want in expected.items()
        )

    r.check(
        "both autostart devices appear in the kernel with their parent and type",
        await came_true_async(autostarted, WAIT, interval=POLL),
        sysfs.devices(),
    )
    await g.settle()
    kernel = sysfs.devices()
    devices = await g.devices()
    for uuid, (parent, type_id) in expected.items():
        d = devices.get(uuid)
        ok = (
            d is not None
            and d.active
            and d.defined
            and (d.parent, d.type_id) == (parent, type_id)
            and d.iommu_group == kernel[uuid].iommu_group
            and Path(d.sysfs_path).resolve() == (sysfs.DEVICES / uuid).resolve()
        )
        r.check(f"D-Bus shows {uuid} active as {parent}/{type_id}, with its sysfs path", ok, d)
        group = kernel[uuid].iommu_group if uuid in kernel else -1
        r.check(f"{uuid} has its vfio node", sysfs.vfio_node(group).exists(), group)
        started = g.events_since(mark, uuid, "started")
        r.check(
            f"the D-Bus client saw {uuid} started once, by autostart",
            [e.details.get("reason") for e in started] == ["autostart"],
            started,
        )
        r.check(
            f"mdevdctl monitor saw {uuid} started",
            len(g.monitor_events(uuid, "started")) == 1,
            g.monitor_text()[-2000:],
        )
    r.check("the manual definition was not started", MANUAL_MTTY not in kernel, kernel)
    parents = {p.name: p for p in await g.dbus().parents()}
    for parent, types in (
        ("mtty", {"mtty-1", "mtty-2"}),
        ("mdpy", {"mdpy-vga", "mdpy-xga", "mdpy-hd"}),
    ):
        p = parents.get(parent)
        r.check(
            f"Parent object {parent} with its types",
            p is not None and set(p.types) == types,
            p,
        )

    async def counts_agree() -> bool:
        parents = {p.name: p for p in await g.dbus().parents()}
        return all(
            parents[p].types[t].available_instances == sysfs.available(p, t)
            for p, t in (("mtty", "mtty-1"), ("mtty", "mtty-2"), ("mdpy", "mdpy-vga"))
            if p in parents
        )

    r.check(
        "available_instances on D-Bus match the kernel's after the autostarts",
        await came_true_async(counts_agree, WAIT, interval=POLL),
        {t: sysfs.available("mtty", t) for t in ("mtty-1", "mtty-2")},
    )
    await g.check_agrees_with_kernel()


# ---- 2. lifecycle and the kernel's errors ---------------------------------------------------


async def expect_error(
    g: Guest, what: str, result: subprocess.CompletedProcess[str], name: str
) -> None:
    got = error_name(result.stderr + result.stdout)
    g.report.check(
        f"{what} -> {name}",
        result.returncode != 0 and got == name,
        f"exit {result.returncode}, error {got!r}: {result.stderr.strip()[-600:]}",
    )


async def scenario_lifecycle(g: Guest) -> None:
    r = g.report
    transient, defined = new_uuid(), new_uuid()

    created = await g.ctl("create", "mtty", "mtty-1", "--uuid", transient)
    r.check("mdevdctl create", created.returncode == 0, created.stderr)
    kernel = sysfs.devices()
    r.check(
        "the created device is in the kernel as mtty/mtty-1 when mdevdctl returns",
        transient in kernel
        and (kernel[transient].parent, kernel[transient].type_id) == ("mtty", "mtty-1"),
        kernel,
    )
    d = await g.device(transient)
    r.check("it is active and not defined", d is not None and d.active and not d.defined, d)
    again = await g.ctl("create", "mtty", "mtty-1", "--uuid", transient)
    r.check("the same create again is a retry, not an error", again.returncode == 0, again.stderr)

    result = await g.ctl("define", "mdpy", "mdpy-vga", "--uuid", defined)
    r.check("mdevdctl define", result.returncode == 0, result.stderr)
    # Where a new definition goes: mdevd's own directory, or, in mdevctl compatibility mode
    # (on by default where /etc/mdevctl.d exists, as the host's mdevctl package made it),
    # mdevctl's directory.
    wanted = {str(DEVICES_DIR / f"{defined}.toml"), f"/etc/mdevctl.d/mdpy/{defined}"}
    d = await g.device(defined)
    config = Path(d.config_file if d is not None else DEVICES_DIR / f"{defined}.toml")
    r.check(
        "the definition is on disk where mdevd says",
        str(config) in wanted and config.exists(),
        (str(config), sorted(os.listdir(DEVICES_DIR))),
    )
    r.check("defining did not start it", defined not in sysfs.devices(), sysfs.devices())
    result = await g.ctl("start", defined)
    r.check("mdevdctl start", result.returncode == 0, result.stderr)
    kernel = sysfs.devices()
    r.check(
        "started: in the kernel as mdpy/mdpy-vga",
        defined in kernel and kernel[defined].type_id == "mdpy-vga",
        kernel,
    )
    await expect_error(
        g,
        "Start of a running device (gdbus)",
        await g.gdbus(device_path(defined), "org.mdevd.Mdevd1.Device.Start", "{}"),
        "AlreadyActive",
    )
    result = await g.ctl("stop", defined)
    r.check("mdevdctl stop", result.returncode == 0, result.stderr)
    r.check("stopped: gone from the kernel", defined not in sysfs.devices(), sysfs.devices())
    d = await g.device(defined)
    r.check("stopped: still defined, inactive", d is not None and d.defined and not d.active, d)
    await expect_error(
        g,
        "Stop of a stopped device (gdbus)",
        await g.gdbus(device_path(defined), "org.mdevd.Mdevd1.Device.Stop", "{}"),
        "NotActive",
    )
    result = await g.ctl("undefine", defined)
    r.check("mdevdctl undefine", result.returncode == 0, result.stderr)
    r.check("undefined: the file is gone", not config.exists(), sorted(os.listdir(DEVICES_DIR)))
    r.check(
        "undefined: the object is gone", await g.device(defined) is None, await g.device(defined)
    )
    result = await g.ctl("stop", transient)
    r.check("mdevdctl stop of the transient device", result.returncode == 0, result.stderr)
    r.check("it is gone from the kernel", transient not in sysfs.devices(), sysfs.devices())
    r.check("and from D-Bus", await g.device(transient) is None, await g.device(transient))

    # A UUID the daemon knows, asked for on another parent: its own check.
    await expect_error(
        g,
        "create with the UUID of a running device on another parent (mdevdctl)",
        await g.ctl("create", "mdpy", "mdpy-vga", "--uuid", AUTO_MTTY),
        "Exists",
    )
    await exists_from_the_kernel(g)
    await full_mtty(g)
    await full_mdpy(g)
    await g.check_agrees_with_kernel()


async def exists_from_the_kernel(g: Guest) -> None:
    """A UUID the daemon cannot know yet: udevd is paused, so only the kernel says EEXIST."""
    r = g.report
    foreign = new_uuid()
    udevd = g.stack.processes["udevd"]
    udevd.send_signal(signal.SIGSTOP)
    try:
        sysfs.create("mtty", "mtty-1", foreign)
        try:
            await g.dbus().create_device("mdpy", "mdpy-vga", uuid=foreign)
            name = "(no error)"
        except DaemonError as exc:
            name = exc.short_name
        r.equal(
            "create of a UUID the kernel has but mdevd has not seen: EEXIST -> Exists",
            name,
            "Exists",
        )
        kernel = sysfs.devices()
        r.check(
            "the other tool's device was left alone",
            foreign in kernel and kernel[foreign].parent == "mtty",
            kernel,
        )
    finally:
        udevd.send_signal(signal.SIGCONT)

    async def adopted() -> bool:
        d = await g.device(foreign)
        return d is not None and d.active and d.type_id == "mtty-1" and not d.defined

    r.check(
        "once udevd delivers the events, mdevd adopts it",
        await came_true_async(adopted, WAIT, interval=POLL),
    )
    sysfs.remove(foreign)
    r.check(
        "its removal behind mdevd's back drops the object",
        await came_true_async(lambda: g.absent(foreign), WAIT, interval=POLL),
    )


async def full_mtty(g: Guest) -> None:
    """mtty's own port pool (24 ports, shared by mtty-1 and mtty-2): ENOSPC when full."""
    r = g.report
    fillers: list[str] = []
    while sysfs.available("mtty", "mtty-1") > 0:
        filler = new_uuid()
        sysfs.create("mtty", "mtty-1", filler)
        fillers.append(filler)
    try:
        r.check(
            "the mtty pool is full (both types at 0)",
            sysfs.available("mtty", "mtty-2") == 0,
            {t: sysfs.available("mtty", t) for t in ("mtty-1", "mtty-2")},
        )
        refused = new_uuid()
        mark = g.mark()
        await expect_error(
            g,
            "create on a full mtty (ENOSPC, mdevdctl)",
            await g.ctl("create", "mtty", "mtty-2", "--uuid", refused),
            "NoInstancesAvailable",
        )
        await expect_error(
            g,
            "create on a full mtty (ENOSPC, gdbus)",
            await g.gdbus(MANAGER, "org.mdevd.Mdevd1.Manager.CreateDevice", "mtty", "mtty-1", "{}"),
            "NoInstancesAvailable",
        )
        await g.settle()
        # The kernel sends add then remove for a create that fails with ENOSPC.
        r.check(
            "the kernel's add/remove of the refused device leaves no object behind",
            await g.device(refused) is None and not g.events_since(mark, refused, "started"),
            (
                await g.device(refused),
                g.events_since(mark, refused),
                g.uevents_since(mark, refused),
            ),
        )
    finally:
        for filler in fillers:
            sysfs.remove(filler)
    await came_true_async(g.agrees_with_kernel, WAIT, interval=POLL)


async def full_mdpy(g: Guest) -> None:
    """mdpy is counted by the mdev core (max_instances 4 per parent): EUSERS when full."""
    r = g.report
    made: list[str] = []
    try:
        while sysfs.available("mdpy", "mdpy-vga") > 0 and len(made) < 8:
            made.append(await g.dbus().create_device_path("mdpy", "mdpy-vga"))
        r.equal("mdpy-vga is full after the creates", sysfs.available("mdpy", "mdpy-vga"), 0)
        await expect_error(
            g,
            "create on a full mdpy (EUSERS, mdevdctl)",
            await g.ctl("create", "mdpy", "mdpy-hd"),
            "NoInstancesAvailable",
        )
        await expect_error(
            g,
            "create on a full mdpy (EUSERS, gdbus)",
            await g.gdbus(
                MANAGER, "org.mdevd.Mdevd1.Manager.CreateDevice", "mdpy", "mdpy-vga", "{}"
            ),
            "NoInstancesAvailable",
        )
    finally:
        for path in made:
            await g.dbus().stop(path.rsplit("/", 1)[-1].replace("_", "-"))


# ---- 3. unprivileged ------------------------------------------------------------------------


async def snapshot(g: Guest) -> tuple[object, ...]:
    files = {p.name: p.read_text() for p in sorted(DEVICES_DIR.iterdir())}
    return sysfs.devices(), files, sorted((await g.devices()).values(), key=lambda d: d.uuid)


def refused(result: subprocess.CompletedProcess[str]) -> tuple[bool, str]:
    name = error_name(result.stderr + result.stdout)
    return result.returncode != 0 and name.startswith("NotAuthorized"), (
        f"exit {result.returncode}, error {name!r}: {result.stderr.strip()[-400:]}"
    )


async def scenario_unprivileged(g: Guest) -> None:
    r = g.report
    before = await snapshot(g)
    listing = await g.ctl("list", user="nobody")
    r.check(
        "nobody may read: mdevdctl list shows the devices",
        listing.returncode == 0 and AUTO_MTTY in listing.stdout,
        listing.stdout + listing.stderr,
    )
    attempt = new_uuid()
    for what, result in (
        ("mdevdctl create", await g.ctl("create", "mtty", "mtty-1", "-u", attempt, user="nobody")),
        (
            "mdevdctl define --start",
            await g.ctl("define", "mdpy", "mdpy-vga", "-u", attempt, "--start", user="nobody"),
        ),
        (
            "Stop (gdbus)",
            await g.gdbus(
                device_path(AUTO_MTTY), "org.mdevd.Mdevd1.Device.Stop", "{}", user="nobody"
            ),
        ),
        (
            "Undefine (gdbus)",
            await g.gdbus(
                device_path(AUTO_MDPY), "org.mdevd.Mdevd1.Device.Undefine", "{}", user="nobody"
            ),
        ),
        (
            "Reload (gdbus)",
            await g.gdbus(MANAGER, "org.mdevd.Mdevd1.Manager.Reload", "{}", user="nobody"),
        ),
    ):
        ok, detail = refused(result)
        r.check(f"nobody's {what} is refused with NotAuthorized*", ok, detail)
        if what.startswith("mdevdctl"):
            r.equal(f"nobody's {what}: mdevdctl exits 4 (not authorized)", result.returncode, 4)
    await g.settle()
    after = await snapshot(g)
    r.check(
        "nothing changed: kernel devices, definition files, D-Bus objects",
        after == before,
        (before, after),
    )


# ---- 4. restart -----------------------------------------------------------------------------


async def scenario_restart(g: Guest) -> None:
    r = g.report
    transient, manual = new_uuid(), new_uuid()
    await g.dbus().create_device("mtty", "mtty-1", uuid=transient)
    await g.dbus().define_device("mdpy", "mdpy-vga", uuid=manual, start=True)
    running = (AUTO_MTTY, AUTO_MDPY, transient, manual)
    kernel_before = sysfs.devices()
    r.check(
        "four devices run before the restart",
        all(u in kernel_before for u in running),
        kernel_before,
    )
    dbus_before = await g.devices()
    await g.settle()
    mark = g.mark()
    code = g.stack.mdevd.stop()
    r.equal("mdevd exits 0 on SIGTERM", code, 0)
    r.equal("its devices keep running while it is down", set(sysfs.devices()), set(kernel_before))
    g.stack.mdevd.start()
    await g.settle()
    r.equal("no device was removed or recreated (kernel state)", sysfs.devices(), kernel_before)
    r.check(
        "no mdev uevent during the restart",
        not [u for u in g.uevents[mark[1] :]],
        g.uevents[mark[1] :],
    )
    r.check(
        "no started/stopped signal during the restart",
        not [e for e in g.events_since(mark) if e.event in ("started", "stopped", "start-failed")],
        g.events_since(mark),
    )
    dbus_after = await g.devices()
    for uuid in running:
        before, after = dbus_before.get(uuid), dbus_after.get(uuid)
        r.check(
            f"{uuid} is adopted as it was", after is not None and after == before, (before, after)
        )
    await g.dbus().stop(transient)
    await g.dbus().stop(manual)
    await g.dbus().undefine(manual)
    await g.check_agrees_with_kernel()


# ---- 5. hot-unplug --------------------------------------------------------------------------


async def scenario_hot_unplug(g: Guest) -> None:
    r = g.report
    transient, manual = new_uuid(), new_uuid()
    await g.dbus().create_device("mtty", "mtty-1", uuid=transient)
    await g.dbus().define_device("mtty", "mtty-1", uuid=manual, start=True)
    on_mtty = (AUTO_MTTY, transient, manual)
    r.check(
        "three devices run on mtty", all(u in sysfs.devices() for u in on_mtty), sysfs.devices()
    )
    await g.settle()

    mark = g.mark()
    unloaded = await g.sh("rmmod", "mtty")
    r.check("rmmod mtty with devices running", unloaded.returncode == 0, unloaded.stderr)

    async def unplugged() -> bool:
        devices = await g.devices()
        return "mtty" not in await g.parent_names() and all(
            u not in devices or not devices[u].active for u in on_mtty
        )

    r.check(
        "the Parent object and the devices go",
        await came_true_async(unplugged, WAIT, interval=POLL),
    )
    r.check(
        "the kernel has no mtty device left",
        not any(d.parent == "mtty" for d in sysfs.devices().values()),
        sysfs.devices(),
    )
    devices = await g.devices()
    for uuid in (AUTO_MTTY, manual):
        d = devices.get(uuid)
        r.check(
            f"defined {uuid} stays, inactive, without a parent object",
            d is not None
            and d.defined
            and not d.active
            and d.parent_object == "/"
            and d.sysfs_path == "",
            d,
        )
    r.check(
        "the transient device's object is gone", transient not in devices, devices.get(transient)
    )
    for uuid in on_mtty:
        stopped = g.events_since(mark, uuid, "stopped")
        r.check(
            f"{uuid}: a stopped signal (reason kernel)",
            [e.details.get("reason") for e in stopped] == ["kernel"],
            g.events_since(mark, uuid),
        )
    mdpy = devices.get(AUTO_MDPY)
    r.check("the mdpy device is untouched", mdpy is not None and mdpy.active, mdpy)

    mark = g.mark()
    loaded = await g.sh("modprobe", "mtty")
    r.check("modprobe mtty again", loaded.returncode == 0, loaded.stderr)

    def back() -> bool:
        kernel = sysfs.devices()
        return AUTO_MTTY in kernel and kernel[AUTO_MTTY].type_id == "mtty-2"

    r.check(
        "autostart brings the autostart device back",
        await came_true_async(back, WAIT, interval=POLL),
        sysfs.devices(),
    )
    await g.settle()
    await g.settle()
    started = g.events_since(mark, AUTO_MTTY, "started")
    r.check(
        "it was started once, by autostart",
        [e.details.get("reason") for e in started] == ["autostart"],
        g.events_since(mark, AUTO_MTTY),
    )
    r.equal("the kernel created it once", g.uevents_since(mark, AUTO_MTTY).count("add"), 1)
    r.check("no start failed", not g.events_since(mark, event="start-failed"), g.events_since(mark))
    kernel = sysfs.devices()
    r.check("the manual device stays stopped", manual not in kernel, kernel)
    r.check("the transient device does not come back", transient not in kernel, kernel)
    r.check("the Parent object is back", "mtty" in await g.parent_names(), await g.parent_names())
    d = await g.device(AUTO_MTTY)
    r.check("D-Bus shows it active again", d is not None and d.active and d.type_id == "mtty-2", d)
    await g.dbus().undefine(manual)
    await g.check_agrees_with_kernel()


SCENARIOS: Sequence[tuple[str, Callable[[Guest], Awaitable[None]]]] = (
    ("autostart", scenario_autostart),
    ("lifecycle", scenario_lifecycle),
    ("unprivileged", scenario_unprivileged),
    ("restart", scenario_restart),
    ("hot-unplug", scenario_hot_unplug),
    ("handoff", scenario_handoff),
    ("handoff-cdev", scenario_handoff_cdev),
)


async def run_scenarios(report: Report, names: Sequence[str], bench: bool = False) -> None:
    """The scenarios named (all if none); with `bench`, then the benchmark's short run on the
    same services (CI's check that it still runs, without a boot of its own)."""
    stack = GuestStack()
    guest = Guest(report, stack)
    with report.scenario("system"):
        stack.start_system()
        report.check("udevd, the system bus and polkitd run", True)
    try:
        for name, scenario in SCENARIOS:
            if names and name not in names:
                continue
            with report.scenario(name):
                if name != "autostart" and guest.client is None:
                    raise RuntimeError("the autostart scenario did not get the daemon going")
                await scenario(guest)
    finally:
        guest.stop_watching()
        try:
            if bench:
                await short_bench_after_scenarios(report, stack)
        finally:
            stack.stop_all()


def main(argv: Sequence[str]) -> int:
    report = Report(SHARED / "report.json")
    names = [name for name in argv if name != "--bench"]
    asyncio.run(run_scenarios(report, names, bench="--bench" in argv))
    failed = [c for s in report.scenarios.values() for c in s.failed]
    print(f"{len(failed)} failed checks")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
