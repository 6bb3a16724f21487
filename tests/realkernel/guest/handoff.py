# SPDX-License-Identifier: LGPL-2.1-or-later
"""The `handoff` scenario: Device.Open's fd used by an unprivileged user on the real kernel.

Run as the last scenario of `scenarios.py`'s boot (mdevd, polkitd with the project's actions and
its example rules `config/polkit/50-mdevd.rules`, which grant org.mdevd.mdevd1.configure-devices
and through it org.mdevd.mdevd1.use-device to group `mdevd`). Root creates an mtty device
through mdevd; its group node `/dev/vfio/<group>` stays 0600 root:root. A user in group
`mdevd` runs `mdevdctl open UUID -- vfio_probe.py`, which attaches the inherited group fd to a
container, gets the device fd by UUID, reads VFIO_DEVICE_GET_INFO and BAR0's region info, and
writes and reads mtty's UART registers, while opening the node by its name is EACCES for it.
While the probe holds the group: a second Open is `Busy`, so is `Stop`, the kernel says EBUSY,
and mdevd holds no fd to the node. Once it exits, Open succeeds again. `nobody` is refused
(exit 4, NotAuthorizedCanObtain: the action's default is auth_admin and no agent answers).
The VFIO device node (`--cdev`) is exercised where the kernel has one (6.6+ with
CONFIG_VFIO_DEVICE_CDEV); elsewhere Open answers NotSupported, and the report says why.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import json
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.realkernel.guest import sysfs
from tests.realkernel.guest.stack import as_user, run
from tests.support.paths import REPO

if TYPE_CHECKING:
    from tests.realkernel.guest.scenarios import Guest

PROBE = Path(__file__).resolve().with_name("vfio_probe.py")
GROUP = "mdevd"  # the group config/polkit/50-mdevd.rules grants
MEMBER = "vmuser"  # an account in it, as a VM manager's service user would be
OUTSIDER = "nobody"
#: How long the probe may take under emulation (a Python start, mdevdctl's D-Bus call).
PROBE_TIMEOUT = 180.0


def make_member() -> pwd.struct_passwd:
    """Group `mdevd` and a system user in it, as the rules file's comment says to make them."""
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        run(["groupadd", "--system", GROUP])
    try:
        pwd.getpwnam(MEMBER)
    except KeyError:
        run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--groups",
                GROUP,
                MEMBER,
            ]
        )
    return pwd.getpwnam(MEMBER)


def member_argv(*argv: str) -> list[str]:
    """`argv` as MEMBER with its groups from /etc/group (so in group mdevd), as a login has."""
    prefix = as_user(MEMBER)  # also opens /root up so the checkout's interpreter runs
    prefix = [word for word in prefix if word != "--clear-groups"] + ["--init-groups"]
    return [*prefix, *argv]


def mdevdctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "mdevd.cli.mdevdctl", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def open_errno(path: Path) -> str:
    """Root's open of `path`: 'opened' (and closed again) or the errno's name."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    os.close(fd)
    return "opened"


def fds_to(pid: int, path: Path) -> list[str]:
    """The fds of process `pid` open on `path`."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                found.append(fd)
        except OSError:
            continue
    return found


def mode_of(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid


class Probe:
    """`mdevdctl open UUID -- vfio_probe.py UUID --hold` as MEMBER, holding the fd meanwhile."""

    def __init__(self, uuid: str, *, cdev: bool = False, pass_fds: tuple[int, ...] = ()) -> None:
        self.uuid = uuid
        self.cdev = cdev
        self.pass_fds = pass_fds
        self.process: asyncio.subprocess.Process | None = None
        self.result: dict[str, Any] = {}
        self.stderr = ""

    async def start(self, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        """Start it and wait for its report (the fd is then held until `release`)."""
        argv = member_argv(
            *mdevdctl("open", *(["--cdev"] if self.cdev else []), self.uuid, "--"),
            sys.executable,
            str(PROBE),
            self.uuid,
            "--hold",
        )
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env={**env(), **(extra_env or {})},
            pass_fds=self.pass_fds,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), PROBE_TIMEOUT)
        try:
            self.result = json.loads(line)
        except ValueError:
            self.result = {"error": f"no report: stdout {line!r}"}
        return self.result

    async def release(self) -> int:
        """Close its standard input: it closes its fds and exits; mdevdctl's exit status."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()
        _, stderr = await asyncio.wait_for(self.process.communicate(), PROBE_TIMEOUT)
        self.stderr = stderr.decode(errors="replace")
        assert self.process.returncode is not None
        return self.process.returncode

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


Completed = subprocess.CompletedProcess[str]
AsMember = Callable[..., Awaitable[Completed]]


async def scenario_handoff(g: Guest) -> None:
    from tests.realkernel.guest.scenarios import new_uuid

    r = g.report
    member = make_member()
    mdevd_gid = grp.getgrnam(GROUP).gr_gid

    async def as_member(*argv: str) -> Completed:
        return await asyncio.to_thread(
            run, member_argv(*argv), check=False, timeout=PROBE_TIMEOUT, cwd=REPO, env=env()
        )

    uuid = new_uuid()
    created = await g.ctl("create", "mtty", "mtty-1", "--uuid", uuid)
    r.check("root creates an mtty device through mdevd", created.returncode == 0, created.stderr)
    device = sysfs.devices().get(uuid)
    if not r.check("it is in the kernel with an IOMMU group", device is not None, sysfs.devices()):
        return
    assert device is not None
    node = sysfs.vfio_node(device.iommu_group)
    r.equal(f"{node} is 0600 root:root", mode_of(node), ("0o600", 0, 0))
    r.equal("/dev/vfio/vfio (the container) is 0666", mode_of(Path("/dev/vfio/vfio"))[0], "0o666")
    denied = await as_member("sh", "-c", 'exec 3<>"$0"', str(node))
    r.check(
        f"{MEMBER} (in group {GROUP}) cannot open {node} by its name",
        denied.returncode != 0 and "denied" in denied.stderr.lower(),
        f"exit {denied.returncode}: {denied.stderr.strip()}",
    )

    # The user outside the group: refused before anything is opened.
    refused = await g.ctl("open", uuid, "--", "true", user=OUTSIDER)
    name = error_name_of(refused)
    r.check(
        f"{OUTSIDER}'s mdevdctl open -> exit 4, NotAuthorizedCanObtain (auth_admin, no agent)",
        refused.returncode == 4 and name == "NotAuthorizedCanObtain",
        f"exit {refused.returncode}, error {name!r}: {refused.stderr.strip()[-400:]}",
    )
    r.equal(f"after {OUTSIDER}'s refusal the group is free", open_errno(node), "opened")

    probe = Probe(uuid)
    try:
        result = await probe.start()
        r.check(
            f"{MEMBER}'s probe used the handed-over group fd without an error",
            "error" not in result,
            json.dumps(result),
        )
        check_probe_identity(g, result, member, mdevd_gid, node, "group")
        check_group_attach(g, result)
        check_device_use(g, result)

        # While the probe holds the group.
        assert g.stack.mdevd.process is not None
        held_by_mdevd = fds_to(g.stack.mdevd.process.pid, node)
        r.check("mdevd holds no fd to the node it handed over", not held_by_mdevd, held_by_mdevd)
        r.equal("the kernel: the group is taken (root's open is EBUSY)", open_errno(node), "EBUSY")
        second = await as_member(*mdevdctl("open", uuid, "--", "true"))
        name = error_name_of(second)
        r.check(
            "a second Open while the probe holds the group -> Busy (mdevdctl exit 1)",
            second.returncode == 1 and name == "Busy",
            f"exit {second.returncode}, error {name!r}: {second.stderr.strip()[-400:]}",
        )
        stop = await g.ctl("stop", uuid)
        name = error_name_of(stop)
        r.check(
            "Stop while the group is held -> Busy, and the device stays",
            stop.returncode != 0 and name == "Busy" and uuid in sysfs.devices(),
            f"exit {stop.returncode}, error {name!r}: {stop.stderr.strip()[-400:]}",
        )
        status = await probe.release()
        r.equal("the probe exits 0 once released (mdevdctl's exit status is its)", status, 0)
    finally:
        await probe.kill()

    r.equal("once the probe exited, the group is free", open_errno(node), "opened")
    again = await as_member(*mdevdctl("open", uuid, "--", "true"))
    r.check(
        f"{MEMBER}'s Open succeeds again",
        again.returncode == 0,
        f"exit {again.returncode}: {again.stderr.strip()[-400:]}",
    )
    stopped = await g.ctl("stop", uuid)
    r.check("the device stops once nobody holds it", stopped.returncode == 0, stopped.stderr)
    r.check("and is gone from the kernel", uuid not in sysfs.devices(), sysfs.devices())


def check_probe_identity(
    g: Guest,
    result: dict[str, Any],
    member: pwd.struct_passwd,
    mdevd_gid: int,
    node: Path,
    kind: str,
) -> None:
    r = g.report
    r.check(
        f"the probe runs as {MEMBER} (uid {member.pw_uid}, not root), in group {GROUP}",
        result.get("uid") == member.pw_uid
        and result.get("euid") == member.pw_uid
        and mdevd_gid in result.get("groups", []),
        {k: result.get(k) for k in ("uid", "euid", "gid", "groups")},
    )
    r.equal("MDEVD_VFIO_NODE", result.get("node_kind"), kind)
    fd_node = result.get("node", {})
    st = os.stat(node)
    r.check(
        f"the inherited fd ($MDEVD_VFIO_FD={result.get('fd')}) is {node}, read-write",
        fd_node.get("path") == str(node)
        and fd_node.get("is_char_device")
        and fd_node.get("rdev") == [os.major(st.st_rdev), os.minor(st.st_rdev)]
        and fd_node.get("read_write"),
        fd_node,
    )
    r.check(
        f"and the probe itself cannot open {node} by its name (EACCES)",
        fd_node.get("open_by_path") == "EACCES" and fd_node.get("access_by_path") is False,
        fd_node,
    )


def check_group_attach(g: Guest, result: dict[str, Any]) -> None:
    r = g.report
    r.equal("the probe opened /dev/vfio/vfio (0666)", result.get("container_mode"), "0o666")
    r.equal("VFIO_GET_API_VERSION", result.get("api_version"), 0)
    r.check(
        "VFIO_CHECK_EXTENSION: a type1 IOMMU (emulated for mdev; no hardware IOMMU here)",
        any(result.get("extensions", {}).values()),
        result.get("extensions"),
    )
    r.check(
        "VFIO_GROUP_GET_STATUS: viable; VFIO_GROUP_SET_CONTAINER sets the container",
        result.get("group_viable") is True
        and result.get("group_container_set_before") is False
        and result.get("group_container_set_after") is True,
        {k: v for k, v in result.items() if k.startswith("group_")},
    )
    r.check(
        f"VFIO_SET_IOMMU ({result.get('iommu_type')}), VFIO_GROUP_GET_DEVICE_FD by UUID",
        isinstance(result.get("device_fd"), int) and result["device_fd"] >= 0,
        result.get("device_fd"),
    )


def check_device_use(g: Guest, result: dict[str, Any]) -> None:
    r = g.report
    info = result.get("device_info", {})
    r.check(
        "VFIO_DEVICE_GET_INFO: a PCI device with regions and IRQs",
        info.get("pci") is True and info.get("num_regions", 0) > 0 and info.get("num_irqs", 0) > 0,
        info,
    )
    bar0 = result.get("bar0", {})
    r.check(
        "VFIO_DEVICE_GET_REGION_INFO(BAR0): mtty's 8 UART registers, readable and writable",
        bar0.get("index") == 0
        and bar0.get("size") == 8
        and bar0.get("readable") is True
        and bar0.get("writable") is True,
        bar0,
    )
    scratch = result.get("scratch", [])
    r.check(
        "the scratch register written through the region reads back (0x5a, 0xa5)",
        len(scratch) == 2
        and all(s["bytes_written"] == 1 and s["read"] == s["wrote"] for s in scratch),
        scratch,
    )
    loop = result.get("loopback", {})
    r.check(
        "bytes written to the transmit register come back from the receive register",
        loop.get("received") == loop.get("sent") == "hi"
        and loop.get("data_ready_before") is False
        and loop.get("data_ready_after") is True
        and loop.get("data_ready_at_end") is False,
        loop,
    )


async def scenario_handoff_cdev(g: Guest) -> None:
    """`mdevdctl open --cdev` where the kernel has VFIO device nodes (6.6+ with
    CONFIG_VFIO_DEVICE_CDEV); else what the kernel has instead and what Open answers."""
    from tests.realkernel.guest.scenarios import new_uuid

    r = g.report
    member = make_member()
    mdevd_gid = grp.getgrnam(GROUP).gr_gid

    async def as_member(*argv: str) -> Completed:
        return await asyncio.to_thread(
            run, member_argv(*argv), check=False, timeout=PROBE_TIMEOUT, cwd=REPO, env=env()
        )

    uuid = new_uuid()
    created = await g.ctl("create", "mtty", "mtty-1", "--uuid", uuid)
    r.check("root creates an mtty device through mdevd", created.returncode == 0, created.stderr)
    try:
        await cdev_handoff(g, uuid, member, mdevd_gid, as_member)
    finally:
        stopped = await g.ctl("stop", uuid)
        r.check("the device stops once nobody holds it", stopped.returncode == 0, stopped.stderr)


def cdev_names(uuid: str) -> tuple[list[str], dict[str, object]]:
    """The device's VFIO device nodes (`vfio-dev/vfioN` with a `dev` attribute and its node in
    /dev/vfio/devices), and what the kernel shows about them: 6.1 already lists `vfio-dev/vfioN`
    in sysfs, without a char device (that came with VFIO_DEVICE_CDEV in 6.6)."""
    vfio_dev = sysfs.DEVICES / uuid / "vfio-dev"
    listed = sorted(os.listdir(vfio_dev)) if vfio_dev.is_dir() else []
    with_dev = [n for n in listed if (vfio_dev / n / "dev").exists()]
    nodes = [n for n in with_dev if (Path("/dev/vfio/devices") / n).exists()]
    seen: dict[str, object] = {
        "kernel": os.uname().release,
        "vfio-dev entries": listed,
        "with a dev attribute": with_dev,
        "/dev/vfio/devices": sorted(os.listdir("/dev/vfio/devices"))
        if Path("/dev/vfio/devices").is_dir()
        else None,
        "/dev/iommu": Path("/dev/iommu").exists(),
    }
    return nodes, seen


async def cdev_handoff(
    g: Guest, uuid: str, member: pwd.struct_passwd, mdevd_gid: int, as_member: AsMember
) -> None:
    r = g.report
    release = os.uname().release
    names, seen = cdev_names(uuid)
    r.check(f"what kernel {release} has for VFIO device nodes", True, seen)
    if not names:
        r.check(
            "cdev handoff not exercised: this kernel has no VFIO device node",
            True,
            f"kernel {release}: {seen} (VFIO device nodes need 6.6+ with CONFIG_VFIO_DEVICE_CDEV)",
        )
        refused = await as_member(*mdevdctl("open", "--cdev", uuid, "--", "true"))
        name = error_name_of(refused)
        r.check(
            "open --cdev on a kernel without VFIO device nodes -> NotSupported (exit 1)",
            refused.returncode == 1 and name == "NotSupported",
            f"exit {refused.returncode}, error {name!r}: {refused.stderr.strip()[-400:]}",
        )
        return
    node = Path("/dev/vfio/devices") / names[0]
    r.check(f"cdev: kernel {release} has {node}", node.exists(), names)
    r.equal(f"{node} is 0600 root:root", mode_of(node), ("0o600", 0, 0))
    r.check("cdev: /dev/iommu exists (iommufd)", Path("/dev/iommu").exists(), mode_of_or_none())
    # /dev/iommu is root's too: a VMM gets it from its manager, as libvirt passes it to qemu.
    iommufd = os.open("/dev/iommu", os.O_RDWR)
    probe = Probe(uuid, cdev=True, pass_fds=(iommufd,))
    try:
        result = await probe.start({"VFIO_PROBE_IOMMUFD": str(iommufd)})
        os.close(iommufd)
        r.check(
            f"cdev: {MEMBER}'s probe used the handed-over device fd without an error",
            "error" not in result,
            json.dumps(result),
        )
        check_probe_identity(g, result, member, mdevd_gid, node, "cdev")
        r.check(
            "cdev: VFIO_DEVICE_BIND_IOMMUFD and ATTACH_IOMMUFD_PT to a new IOAS",
            "iommufd_devid" in result and result.get("attached_pt_id") == result.get("ioas_id"),
            {k: result.get(k) for k in ("ioas_id", "iommufd_devid", "attached_pt_id")},
        )
        check_device_use(g, result)
        group_node = sysfs.vfio_node(sysfs.devices()[uuid].iommu_group)
        second = await as_member(*mdevdctl("open", uuid, "--", "true"))
        r.check(
            "cdev: while the device node is bound, Open of the group -> Busy",
            second.returncode == 1 and error_name_of(second) == "Busy",
            f"exit {second.returncode}: {second.stderr.strip()[-400:]} ({group_node})",
        )
        r.equal("cdev: the probe exits 0 once released", await probe.release(), 0)
    finally:
        await probe.kill()


def error_name_of(result: Completed) -> str:
    from tests.realkernel.guest.scenarios import error_name

    return error_name(result.stderr + result.stdout)


def mode_of_or_none() -> object:
    try:
        return mode_of(Path("/dev/iommu"))
    except OSError as exc:
        return str(exc)
