# SPDX-License-Identifier: LGPL-2.1-or-later
"""The `mdevd-sim` command: `mount` serves an emulated kernel, `ctl` drives a mounted one.

`mount` runs in the foreground. libfuse's loop runs in a thread; the main thread owns the signals
(blocked everywhere, taken with sigtimedwait), so that on SIGTERM/SIGINT/SIGHUP it can first
unblock every operation that is waiting (a removal held by a "VM") and only then end the loop:
libfuse joins its workers on exit and would wait forever for one blocked in Python.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from mdevd.sim import control, scenario, uevent
from mdevd.sim.state import Kernel

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_SHUTDOWN_TIMEOUT = 10.0


def _log(message: str) -> None:
    print(f"mdevd-sim: {message}", file=sys.stderr, flush=True)


def _mount(args: argparse.Namespace) -> int:
    # Imported here so that `ctl` works without mfusepy and libfuse3. A wheel installed without
    # the `sim` extra still has this command (a console script cannot depend on an extra), so a
    # missing mfusepy is a message, not a traceback (mfusepy raises OSError without libfuse3).
    try:
        from mdevd.sim import fs
    except (ImportError, OSError) as exc:
        _log(f"mount needs mfusepy and libfuse3 (pip install 'mdevd[sim]'): {exc}")
        return 2

    try:
        loaded = scenario.load(args.scenario)
        mode, warning = uevent.choose_mode(args.uevents, uevent.in_private_netns())
    except (scenario.ScenarioError, ValueError) as exc:
        _log(str(exc))
        return 2
    if warning:
        _log(f"warning: {warning}")
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        _log(f"{mountpoint} is not a directory")
        return 2

    sender = uevent.UeventSender(netlink=mode == "netlink")
    kernel = Kernel(loaded, sender)
    ready = threading.Event()
    operations = fs.SysfsOperations(kernel, on_ready=ready.set)
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            fs.mount(kernel, mountpoint, operations=operations)
        except BaseException as exc:
            failures.append(exc)

    # Blocked before the thread starts, so every thread inherits the mask and only
    # sigtimedwait below sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    thread = threading.Thread(target=serve, name="fuse", daemon=True)
    thread.start()
    announced = False
    received: int | None = None
    while thread.is_alive():
        info = signal.sigtimedwait(_SIGNALS, 0.1)
        if info is not None:
            received = info.si_signo
            break
        if ready.is_set() and not announced:
            announced = True
            _log(f"serving {loaded.source} on {mountpoint} (uevents: {mode})")
    if received is not None:
        _log(f"{signal.Signals(received).name}: unmounting {mountpoint}")
        kernel.stop()
        operations.request_exit()
        if ready.wait(_SHUTDOWN_TIMEOUT):
            # Any request reaches a worker, which sees the exit request and ends the loop.
            with contextlib.suppress(OSError):
                os.stat(os.path.join(mountpoint, control.CONTROL_PATH))
        thread.join(_SHUTDOWN_TIMEOUT)
    sender.close()
    if thread.is_alive():
        _log("the FUSE loop did not end; detaching the mount")
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False)
        return 1
    if failures:
        _log(f"mount failed: {failures[0]}")
        return 1
    return 0


def _ctl(args: argparse.Namespace) -> int:
    client = control.SimControl(args.mountpoint)
    try:
        client.command(*args.words)
    except control.CommandError as exc:
        _log(str(exc))
        return 2
    except OSError as exc:
        _log(str(exc.strerror or exc))
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdevd-sim", description="An emulated kernel mdev sysfs, served through FUSE."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    mount = commands.add_parser("mount", help="serve an emulated kernel (foreground)")
    mount.add_argument("mountpoint", help="directory to mount on; it plays /sys")
    mount.add_argument("--scenario", required=True, help="scenario TOML file (config/sim/)")
    mount.add_argument(
        "--uevents",
        choices=("auto", "netlink", "none"),
        default="auto",
        help="send uevents on the udev netlink group (only in a private network namespace)",
    )
    mount.set_defaults(run=_mount)
    ctl = commands.add_parser(
        "ctl",
        help="send a control command to a mounted emulated kernel",
        description=control.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_argument("mountpoint")
    ctl.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND ...")
    ctl.set_defaults(run=_ctl)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
