# SPDX-License-Identifier: LGPL-2.1-or-later
"""The README's main job: mdevd on the emulated kernel, driven by `mdevdctl`, step by step.

Run it through `scripts/demo`, which installs what it needs and enters private network and
mount namespaces first (the emulated kernel's uevents must reach only this run's daemon).
Every command shown is run for real; its output follows it.

`scripts/demo --shell` instead leaves the same world running (emulated kernel, private bus,
daemon) and opens a shell inside it with `mdevdctl`, `mdevctl` (mdevd's front end) and
`mdevd-sim` on PATH; leaving the shell stops everything. A shell rather than a background
daemon: the emulated kernel's mount and uevents exist only in the demo's private mount and
network namespaces, where a command started from the host's own shell would not be.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.bus import private_bus  # noqa: E402
from tests.support.daemon import DaemonProcess, running_daemon  # noqa: E402
from tests.support.sim import RunningSim, running_sim  # noqa: E402

# Fixed, so that the walk-through reads the same every time.
VGPU_UUID = "7a3c1d52-0b8e-4c1f-9f62-3d1e5a4b7c90"
SERIAL_UUID = "0c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m" if sys.stdout.isatty() else f"\n== {title}", flush=True)


def ctl(daemon: DaemonProcess, *args: str) -> str:
    print(f"$ mdevdctl {shlex.join(args)}", flush=True)
    result = daemon.ctl(*args)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print(output, flush=True)
    if result.returncode != 0:
        print(f"(exit status {result.returncode})", flush=True)
    return result.stdout.strip()


def sim_ctl(sim: RunningSim, *args: str) -> None:
    print(f"$ mdevd-sim ctl {sim.root} {shlex.join(args)}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "mdevd.sim", "ctl", str(sim.root), *args], check=True, timeout=30
    )


def wait_for(daemon: DaemonProcess, uuid: str, active: bool, timeout: float = 15) -> None:
    """Wait until the daemon shows the device (in)active: kernel events arrive asynchronously."""
    wanted = "active" if active else "defined)"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = next(
            (x for x in daemon.ctl("list", "-u", uuid).stdout.splitlines() if uuid in x), ""
        )
        if (wanted in line) and (active or "active" not in line):
            return
        time.sleep(0.1)
    raise SystemExit(f"walkthrough: device {uuid} did not become {'in' * (not active)}active")


#: What the shell's banner suggests; each works on the default scenario.
SHELL_HINTS = (
    "mdevdctl types --parent mtty",
    "mdevdctl define mtty mtty-2 --autostart --start",
    "mdevdctl list",
    "mdevdctl monitor &        # lifecycle events as they happen, in the background",
    "mdevd-sim ctl $MDEVD_DEMO_SYSFS unregister mtty    # the driver goes; register brings it back",
    "mdevctl list --defined    # mdevctl's command line, carried out by mdevd",
)


def shell() -> int:
    """Keep the emulated kernel, the bus and the daemon running while a shell runs in their
    namespaces; they stop when it exits. Without a terminal the shell reads commands from
    stdin (how the test drives it)."""
    workdir = Path(tempfile.mkdtemp(prefix="mdevd-demo-"))
    devices_dir = workdir / "devices.d"
    devices_dir.mkdir()
    # Only the three programs, under the names a user types: the venv's other programs
    # (python, pip) must not shadow the system's in the shell.
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    venv_bin = Path(sys.executable).parent
    for name, target in (
        ("mdevdctl", "mdevdctl"),
        ("mdevctl", "mdevd-mdevctl"),
        ("mdevd-sim", "mdevd-sim"),
    ):
        (bin_dir / name).symlink_to(venv_bin / target)
    with (
        private_bus() as address,
        running_sim("default") as sim,
        running_daemon(address, sim.root, [devices_dir], print_log=False) as daemon,
    ):
        env = dict(daemon.env)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["MDEVD_DEMO_SYSFS"] = str(sim.root)
        env["PS1"] = "(mdevd demo) \\w# "
        rcfile = workdir / "bashrc"
        rcfile.write_text(f"PS1={shlex.quote(env['PS1'])}\n")
        print(
            "mdevd is running on an emulated kernel (mtty, mdpy, mbochs, a GPU, vfio-ap)\n"
            f"  sysfs: {sim.root}  (also $MDEVD_DEMO_SYSFS)\n"
            f"  bus:   {address}  (DBUS_SYSTEM_BUS_ADDRESS in this shell)\n"
            f"  log:   {daemon.log_path}\n"
            f"  definitions: {devices_dir}\n"
            "Try:\n"
            + "".join(f"  {hint}\n" for hint in SHELL_HINTS)
            + "Leave with `exit` (or Ctrl-D): the daemon stops, the emulated kernel unmounts.",
            flush=True,
        )
        argv = ["bash", "--rcfile", str(rcfile), "-i"]
        if not sys.stdin.isatty():
            argv = ["bash", "-s"]  # commands on stdin: no prompt, no job control
        # Ctrl-C in the shell reaches this process too (same process group): it must not tear
        # the world down under the shell. A handler, not SIG_IGN, which the shell's commands
        # would inherit (exec resets handlers, not ignored signals).
        previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
        try:
            status = subprocess.run(argv, env=env, check=False).returncode
        finally:
            signal.signal(signal.SIGINT, previous)
    print("Left the demo: the daemon stopped, the emulated kernel unmounted.", flush=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--shell",
        action="store_true",
        help="skip the walk-through; open a shell with the daemon, bus and emulated kernel "
        "running, and mdevdctl on PATH; leaving it stops them",
    )
    args = parser.parse_args()
    if args.shell:
        return shell()
    return walkthrough()


def walkthrough() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mdevd-demo-"))
    devices_dir = workdir / "devices.d"
    devices_dir.mkdir()
    with private_bus() as address, running_sim("default") as sim:
        step("An emulated kernel (mtty, mdpy, mbochs, a GPU, vfio-ap) and a private system bus")
        print(f"sysfs: {sim.root}   bus: {address}")
        with running_daemon(address, sim.root, [devices_dir], print_log=False) as daemon:
            monitor = subprocess.Popen(
                [sys.executable, "-m", "mdevd.cli.mdevdctl", "--address", address, "monitor"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=daemon.env,
            )
            time.sleep(1)  # let the monitor subscribe before anything happens

            step("What the kernel offers")
            ctl(daemon, "types", "--parent", "mtty")

            step("A persistent, autostarting device, and a transient one")
            ctl(daemon, "define", "mtty", "mtty-2", "--uuid", SERIAL_UUID, "--autostart", "--start")
            ctl(daemon, "create", "mdpy", "mdpy-vga", "--uuid", VGPU_UUID)
            ctl(daemon, "list")
            print(f"$ cat {devices_dir}/{SERIAL_UUID}.toml")
            print((devices_dir / f"{SERIAL_UUID}.toml").read_text().rstrip())

            step("The mtty driver unloads: its device goes, the definition stays")
            sim_ctl(sim, "unregister", "mtty")
            wait_for(daemon, SERIAL_UUID, active=False)
            ctl(daemon, "list")

            step("The driver loads again: mdevd starts the autostart device by itself")
            sim_ctl(sim, "register", "mtty")
            wait_for(daemon, SERIAL_UUID, active=True)
            ctl(daemon, "list")

            step("The daemon restarts: running devices are adopted, never recreated")
            daemon.stop()
        with running_daemon(address, sim.root, [devices_dir], print_log=False) as daemon:
            ctl(daemon, "list")

            step("Errors have names: the same UUID again, and a type that does not exist")
            ctl(daemon, "create", "mtty", "mtty-1", "--uuid", SERIAL_UUID)
            ctl(daemon, "create", "mtty", "mtty-9")

            step("Stop and undefine")
            ctl(daemon, "stop", VGPU_UUID)
            ctl(daemon, "stop", SERIAL_UUID)
            ctl(daemon, "undefine", SERIAL_UUID)
            ctl(daemon, "list")

            time.sleep(0.5)
            monitor.terminate()
            events, _ = monitor.communicate(timeout=10)
            step("What `mdevdctl monitor` saw meanwhile")
            print(events.rstrip())
    step("Done: the daemon stopped, the emulated kernel unmounted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
