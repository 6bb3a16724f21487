# SPDX-License-Identifier: LGPL-2.1-or-later
"""The Debian package, installed with apt on the real kernel, under systemd as PID 1.

Run first in the systemd guest's boot (`systemd_boot.py`, which says why first). The host
built `mdevd_*.deb` from the checkout and fetched the .debs of its Python dependencies from
Debian 12 into the shared folder (the `systemd_boot` fixture of tests/realkernel/conftest.py).
Here, in the guest's overlay (the host's own / underneath):

1. Debian's packages of mdevd's Python dependencies are purged, so `/usr/bin/python3` can
   import none of them: no copy from pip or from the checkout is visible to it.
2. `apt-get install ./mdevd_*.deb`, offline (the guest has no network; the dependency .debs
   are in apt's cache): apt itself resolves every dependency from Debian 12's package lists.
3. The service runs (`systemctl is-active mdevd`), `mdevdctl types` shows mtty, and an
   autostart definition dropped into /etc/mdevd/devices.d comes up after `modprobe mtty`.
4. `apt-get purge mdevd` leaves none of the package's files, no unit, no enablement, no
   /etc/mdevd: only what debian/README.Debian says purge keeps (mdevctl's own directory).

Checks go to the report format of the other guest scripts, under the scenario `debian`; the
daemon's journal to `<shared>/logs/mdevd-debian.log`. `undo` then takes away what the scenario
leaves that the next scenario of the boot would see.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.realkernel.guest import sysfs
from tests.realkernel.guest.report import Report
from tests.realkernel.guest.stack import LOGS, SHARED, run
from tests.support.waiting import came_true

#: The packages the .deb depends on or recommends that come from Debian 12's archive and are
#: not part of a base system (the host has them installed; the guest starts without them).
PYTHON_DEPENDENCIES = (
    "python3-dbus-fast",
    "python3-pyudev",
    "python3-tomli-w",
    "python3-tomlkit",
    "python3-systemd",
)
IMPORTS = ("dbus_fast", "pyudev", "tomli_w", "tomlkit", "systemd.journal", "mdevd")
UNIT = "mdevd.service"
UNIT_PATHS = (f"/lib/systemd/system/{UNIT}", f"/usr/lib/systemd/system/{UNIT}")
AUTOSTART = "d1000000-0000-4000-8000-000000000001"
DEVICES_DIR = Path("/etc/mdevd/devices.d")
DEBS = SHARED / "debs"
APT_CACHE = Path("/var/cache/apt/archives")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
MAN_DB_AUTO_UPDATE = Path("/var/lib/man-db/auto-update")
MDEVCTL_DIR = Path("/etc/mdevctl.d")
#: The daemon's journal, in the shared folder's logs (the checkout's scenario has mdevd.log).
LOG = "mdevd-debian.log"
WAIT = 120.0
#: An admin's environment: nothing of the harness's (which points Python at the checkout).
ADMIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
APT_ENV = {**ADMIN_ENV, "DEBIAN_FRONTEND": "noninteractive"}


def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    return run(["apt-get", "-y", *args], check=False, timeout=600, env=APT_ENV)


def system_python_imports(module: str) -> str | None:
    """Where Debian's /usr/bin/python3 finds `module`, or None if it cannot import it."""
    found = run(
        ["/usr/bin/python3", "-I", "-c", f"import {module} as m; print(m.__file__)"],
        check=False,
        cwd=Path("/"),
    )
    return found.stdout.strip() if found.returncode == 0 else None


def package_version(package: str) -> str:
    shown = run(["dpkg-query", "-W", "-f=${Version}", package], check=False)
    return shown.stdout if shown.returncode == 0 else ""


def dpkg_status(package: str) -> str:
    """dpkg's Status of `package`; '' or "unknown ok not-installed" once it is purged."""
    return run(["dpkg-query", "-W", "-f=${Status}", package], check=False).stdout


def systemctl_show(*properties: str) -> dict[str, str]:
    shown = run(
        ["systemctl", "show", UNIT, *(f"--property={p}" for p in properties)], check=False
    ).stdout
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def mdevdctl(*args: str) -> tuple[int, str]:
    """The packaged mdevdctl as an admin's shell runs it (no PYTHONPATH to the checkout)."""
    done = run(
        ["/usr/bin/mdevdctl", *args], check=False, timeout=WAIT, cwd=Path("/"), env=ADMIN_ENV
    )
    return done.returncode, done.stdout + done.stderr


def scenario(r: Report) -> None:
    r.equal("PID 1 is systemd", Path("/proc/1/comm").read_text().strip(), "systemd")

    # The host may be a container image whose /usr/sbin/policy-rc.d denies every service start
    # during package installation (Docker's does); an installed Debian system has none.
    POLICY_RC_D.unlink(missing_ok=True)
    # man-db's dpkg trigger rebuilds the index of every manual page after each install or
    # removal that touches /usr/share/man: 1.5 and 1 minute under emulation, more than half
    # of this scenario. Off, as `dpkg-reconfigure man-db` turns it off (man-db/auto-update):
    # that index is man's cache, not the package's (whose pages tests/packaging checks).
    MAN_DB_AUTO_UPDATE.unlink(missing_ok=True)
    purged = apt_get("purge", *PYTHON_DEPENDENCIES)
    r.check("Debian's Python dependencies purged first", purged.returncode == 0, purged.stdout)
    visible = {m: system_python_imports(m) for m in IMPORTS}
    r.equal(
        "/usr/bin/python3 then finds none of them (no pip or checkout copy is visible)",
        visible,
        dict.fromkeys(IMPORTS),
    )

    mdevd_debs = sorted(DEBS.glob("mdevd_*.deb"))
    if not r.equal("one mdevd .deb from the host", len(mdevd_debs), 1):
        return
    # apt takes archive packages from its cache when the file there is the candidate's.
    for deb in DEBS.glob("python3-*.deb"):
        shutil.copy(deb, APT_CACHE / deb.name)
    local = Path("/tmp") / mdevd_debs[0].name
    shutil.copy(mdevd_debs[0], local)
    local.chmod(0o644)
    # The guest has no network: apt finds the archive's packages in its cache or fails.
    installed = apt_get("install", str(local))
    r.check(
        "apt-get install ./mdevd_*.deb resolves everything from Debian 12, offline",
        installed.returncode == 0,
        installed.stdout[-3000:] + installed.stderr[-3000:],
    )
    r.equal(
        "the dependencies are Debian 12's packages",
        {p: package_version(p) for p in PYTHON_DEPENDENCIES[:4]},
        {
            "python3-dbus-fast": "1.84.2-1+b1",
            "python3-pyudev": "0.24.0-1",
            "python3-tomli-w": "1.0.0-2",
            "python3-tomlkit": "0.11.7-1",
        },
    )
    visible = {m: system_python_imports(m) for m in IMPORTS}
    r.check(
        "and /usr/bin/python3 imports each of them, mdevd included, from Debian's directory",
        all(
            path is not None and path.startswith("/usr/lib/python3/dist-packages/")
            for path in visible.values()
        ),
        visible,
    )
    files = run(["dpkg", "-L", "mdevd"], check=False).stdout.splitlines()

    active = run(["systemctl", "is-active", UNIT], check=False).stdout.strip()
    r.equal("the package started the service: systemctl is-active mdevd", active, "active")
    state = systemctl_show("UnitFileState", "FragmentPath", "StatusText")
    r.check(
        "enabled, from the packaged unit",
        state.get("UnitFileState") == "enabled"
        and state.get("FragmentPath")
        in (f"/lib/systemd/system/{UNIT}", f"/usr/lib/systemd/system/{UNIT}"),
        state,
    )

    DEVICES_DIR.mkdir(parents=True, exist_ok=True)
    (DEVICES_DIR / "from-the-admin.toml").write_text(
        f'[[device]]\nuuid = "{AUTOSTART}"\nparent = "mtty"\ntype = "mtty-1"\nautostart = true\n'
    )
    r.check("mtty is not loaded yet", "mtty" not in sysfs.parents(), sysfs.parents())
    r.check(
        "the daemon picks the dropped-in definition up",
        came_true(lambda: AUTOSTART in mdevdctl("list", "--defined")[1], WAIT),
        mdevdctl("list", "--defined"),
    )
    run(["modprobe", "mtty"])

    def autostarted() -> bool:
        device = sysfs.devices().get(AUTOSTART)
        return device is not None and device.type_id == "mtty-1"

    r.check(
        "modprobe mtty: the definition's device comes up",
        came_true(autostarted, WAIT),
        sysfs.devices(),
    )
    code, output = mdevdctl("types")
    r.check("mdevdctl types shows mtty", code == 0 and "mtty-1" in output, (code, output))
    code, output = mdevdctl("list")
    r.check("mdevdctl list shows it active", code == 0 and AUTOSTART in output, (code, output))
    version = run(["journalctl", "--no-pager", "-u", UNIT, "-o", "cat"], check=False).stdout
    r.check(
        "no warning about an untested dbus-fast in the journal",
        "is installed; mdevd was tested with" not in version,
        version[-2000:],
    )
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / LOG).write_text(version)

    purged = apt_get("purge", "mdevd")
    r.check("apt-get purge mdevd", purged.returncode == 0, purged.stdout[-3000:])
    # Directories count when they are the package's own (others are shared, e.g. /usr/bin).
    left = [
        f for f in files if Path(f).exists() and (not Path(f).is_dir() or "mdevd" in Path(f).name)
    ]
    r.equal("none of the package's files or own directories is left", left, [])
    r.check("/etc/mdevd is gone", not Path("/etc/mdevd").exists(), "")
    r.check("/run/mdevd is gone", not Path("/run/mdevd").exists(), "")
    r.equal(
        "systemd no longer knows the unit, and nothing enables it",
        (
            systemctl_show("LoadState").get("LoadState"),
            sorted(str(p) for p in Path("/etc/systemd/system").rglob("mdevd*")),
        ),
        ("not-found", []),
    )
    helper_state = Path("/var/lib/systemd/deb-systemd-helper-enabled")
    r.equal(
        "deb-systemd-helper forgot it",
        sorted(str(p) for p in helper_state.rglob("mdevd*")),
        [],
    )
    status = dpkg_status("mdevd")
    r.check("dpkg knows it only as purged", status in ("", "unknown ok not-installed"), status)
    r.check(
        "the running device stays (stopping mdevd never removes devices)",
        AUTOSTART in sysfs.devices(),
        sysfs.devices(),
    )


def mdevctl_files() -> set[Path]:
    """Everything under /etc/mdevctl.d (mdevctl's directory, which purging mdevd keeps)."""
    return set(MDEVCTL_DIR.rglob("*")) if MDEVCTL_DIR.is_dir() else set()


def undo(r: Report, mdevctl_before: set[Path]) -> None:
    """Take away what `scenario` leaves behind that a later scenario of the same boot would see,
    and check it is gone: the package if its purge failed, the device it autostarted, mtty (and
    the mdev core, if nothing else holds it: as booted), and the definition the daemon mirrored
    into /etc/mdevctl.d (files not in `mdevctl_before`, taken before `scenario`). What apt
    installed of Debian's Python packages stays: see `systemd_boot.py`."""
    if dpkg_status("mdevd") not in ("", "unknown ok not-installed"):
        purged = run(["dpkg", "--purge", "mdevd"], check=False, timeout=600, env=APT_ENV)
        r.check(
            "after the .deb's scenario: its failed purge done again with dpkg",
            purged.returncode == 0,
            purged.stdout[-3000:] + purged.stderr[-3000:],
        )
    if AUTOSTART in sysfs.devices():
        sysfs.remove(AUTOSTART)
    unloaded = run(["modprobe", "-r", "mtty"], check=False)
    r.check(
        "after the .deb's scenario: its device removed, mtty unloaded",
        AUTOSTART not in sysfs.devices() and "mtty" not in sysfs.parents(),
        (unloaded.stderr, sysfs.devices(), sysfs.parents()),
    )
    # Deepest first, so that a directory is empty when its turn comes.
    for path in sorted(mdevctl_files() - mdevctl_before, reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    r.equal(
        "after the .deb's scenario: /etc/mdevctl.d as it was before it",
        sorted(map(str, mdevctl_files())),
        sorted(map(str, mdevctl_before)),
    )
