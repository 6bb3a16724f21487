# SPDX-License-Identifier: LGPL-2.1-or-later
"""Booting a real Linux kernel under qemu and running one command in it: the harness's API.

    kernel = RealKernel.prepare()                # cached after the first time (prepare.py)
    result = kernel.run(["python3", "-c", "..."], timeout=300)
    result.exit_status                           # None if the guest never reported one
    result.output, result.console                # the command's stdout+stderr; the serial log
    result.shared_dir / "report.json"            # whatever the command wrote there

The guest is the Debian kernel with the mdev core and the mtty/mdpy/mbochs sample drivers
(not loaded: the command runs `modprobe`). Its root filesystem is the host's `/`, read-only
over virtio-9p with a tmpfs overlay on top, so the checkout, its `.venv` and every installed
program are there at the same paths and nothing the guest writes reaches the host, except in
the shared folder: `result.shared_dir` on the host is `/run/realkernel` in the guest (the
command finds it in `$REALKERNEL_SHARED`). The guest's PID 1 is `guest/init` (a shell: no
systemd, no udevd until the command starts one); it powers off when the command exits.

`/dev/kvm` on these machines is PVM, under which a stock kernel hangs at boot, so the guest
runs under TCG (software emulation) unless a usable KVM is found; `MDEVD_REALKERNEL_ACCEL`
(`tcg` or `kvm`) overrides the choice. A boot plus a trivial command takes about 5 s under TCG.

`python -m tests.realkernel.harness prepare` prepares; `... run CMD ARGS...` runs one command
and prints its output (a developer's shell into the real kernel, one command at a time).
"""

from __future__ import annotations

import compileall
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.realkernel.prepare import DEFAULT_CACHE_ROOT, PreparedKernel, prepare
from tests.support.paths import REPO

HERE = Path(__file__).resolve().parent
GUEST_INIT = HERE / "guest" / "init"
SYSTEMD = Path("/lib/systemd/systemd")
#: Where the shared folder is in the guest.
GUEST_SHARED = Path("/run/realkernel")


def choose_accelerator() -> str:
    """`kvm` when /dev/kvm is a usable KVM, else `tcg` (PVM's /dev/kvm hangs stock kernels)."""
    chosen = os.environ.get("MDEVD_REALKERNEL_ACCEL")
    if chosen in ("kvm", "tcg"):
        return chosen
    if Path("/sys/module/kvm_pvm").exists() or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    return "kvm"


@dataclass(frozen=True, slots=True)
class GuestResult:
    """What one guest run left behind."""

    #: The command's exit status; None when the guest never recorded one (timeout, crash).
    exit_status: int | None
    #: The command's standard output and error, interleaved.
    output: str
    #: The serial console (kernel messages, the init's progress lines).
    console: str
    #: The host side of the guest's /run/realkernel.
    shared_dir: Path
    timed_out: bool
    #: Wall-clock seconds from starting qemu to its exit.
    duration: float

    def describe(self) -> str:
        """Everything a failure message needs: status, output, console."""
        status = (
            "timed out"
            if self.timed_out
            else f"exit status {self.exit_status}"
            if self.exit_status is not None
            else "no exit status recorded"
        )
        return (
            f"guest run: {status} after {self.duration:.1f} s (shared folder {self.shared_dir})\n"
            f"--- command output ---\n{self.output}\n--- console ---\n{self.console}"
        )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


#: The unit a systemd guest boots into (`systemd.unit=`): the command, then power off. Only
#: the journal, udevd and the system bus come up before it, not all of sysinit.target and
#: basic.target (half a minute more under emulation).
COMMAND_UNIT = f"""[Unit]
Description=The real-kernel harness's command
DefaultDependencies=no
Wants=systemd-journald.socket systemd-udevd.service dbus.socket
After=systemd-journald.socket systemd-udevd.service dbus.socket
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
WorkingDirectory=/
Environment=HOME=/root LANG=C.UTF-8 REALKERNEL_SHARED={GUEST_SHARED}
ExecStart=/bin/sh {GUEST_SHARED}/.command
ExecStopPost=/bin/sh -c 'echo "$EXIT_STATUS" >{GUEST_SHARED}/exit-status'
StandardOutput=file:{GUEST_SHARED}/output.log
StandardError=inherit
TimeoutStartSec=infinity
"""
#: Kernel arguments of a systemd guest: boot into the command's unit, and skip the coldplug of
#: every device (a minute under emulation; the harness's users load their drivers later).
SYSTEMD_ARGS = (
    "systemd.unit=realkernel-command.service",
    "systemd.mask=systemd-udev-trigger.service",
    "systemd.show_status=false",
)


def _command_script(command: Sequence[str] | str, env: Mapping[str, str], cwd: str) -> str:
    """The shell script the guest init runs: the command, in `cwd`, with `env` added."""
    program = command if isinstance(command, str) else shlex.join(command)
    lines = ["set -e", f"cd {shlex.quote(cwd)}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines += ["set +e", program]
    return "\n".join(lines) + "\n"


def _compile_checkout() -> None:
    """Byte-compile the checkout's Python on the host, where it takes a second: the guest's
    Python (ten times slower under emulation) would otherwise compile it at every boot, into an
    overlay that is gone at the next."""
    for package in ("mdevd", "tests"):
        compileall.compile_dir(REPO / package, quiet=1, workers=1)


class RealKernel:
    def __init__(self, prepared: PreparedKernel) -> None:
        self.prepared = prepared

    @classmethod
    def prepare(cls, cache_root: Path = DEFAULT_CACHE_ROOT) -> RealKernel:
        """Prepare (or take from the cache) the kernel, modules and initramfs."""
        return cls(prepare(cache_root))

    def qemu_argv(
        self,
        run_dir: Path,
        shared_dir: Path,
        *,
        memory_mb: int,
        cpus: int,
        systemd: bool,
        kernel_args: Sequence[str],
    ) -> list[str]:
        accelerator = choose_accelerator()
        cmdline = [
            "console=ttyS0",
            "panic=-1",  # a dying PID 1 reboots, which -no-reboot turns into qemu's exit
            "quiet",
            "random.trust_cpu=on",
            f"rk_modules={self.prepared.modules_dir}",
            f"rk_init={SYSTEMD if systemd else GUEST_INIT}",
            f"rk_repo={REPO}",
            *(SYSTEMD_ARGS if systemd else ()),
            *kernel_args,
        ]
        virtfs = "local,security_model=none,multidevs=remap"
        return [
            "qemu-system-x86_64",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-machine",
            "q35",
            "-accel",
            "tcg,thread=multi" if accelerator == "tcg" else "kvm",
            "-cpu",
            "max" if accelerator == "tcg" else "host",
            "-smp",
            str(cpus),
            "-m",
            str(memory_mb),
            "-kernel",
            str(self.prepared.vmlinuz),
            "-initrd",
            str(self.prepared.initramfs),
            "-append",
            " ".join(cmdline),
            "-serial",
            f"file:{run_dir / 'console.log'}",
            "-virtfs",
            f"{virtfs},path=/,mount_tag=root,readonly=on",
            "-virtfs",
            f"{virtfs},path={shared_dir},mount_tag=shared",
        ]

    def run(
        self,
        command: Sequence[str] | str,
        *,
        timeout: float = 600,
        env: Mapping[str, str] | None = None,
        cwd: str | Path = REPO,
        run_dir: Path | None = None,
        memory_mb: int = 2048,
        cpus: int = 2,
        systemd: bool = False,
        kernel_args: Sequence[str] = (),
    ) -> GuestResult:
        """Boot, run `command` (argv, or a shell command line) as root in the guest, power off.

        `run_dir` (a new directory under /tmp by default) receives `console.log`, `qemu.log`
        and `shared/`, the guest's /run/realkernel. The guest gets `cpus` and `memory_mb`.
        With `systemd`, PID 1 is the host's systemd, booting into a unit that runs the command
        once basic.target, udevd and the bus socket are up (`COMMAND_UNIT`, `SYSTEMD_ARGS`);
        else it is `guest/init`, a shell, and nothing else runs. `kernel_args` are added to
        the kernel command line. After `timeout` seconds qemu is killed and `timed_out` is set.
        """
        if run_dir is None:
            run_dir = Path(tempfile.mkdtemp(prefix="mdevd-realkernel-", dir="/tmp"))
        shared_dir = run_dir / "shared"
        shared_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("exit-status", "output.log"):
            (shared_dir / stale).unlink(missing_ok=True)
        (shared_dir / ".command").write_text(_command_script(command, env or {}, str(cwd)))
        units = shared_dir / ".units"
        shutil.rmtree(units, ignore_errors=True)
        if systemd:
            units.mkdir()
            (units / "realkernel-command.service").write_text(COMMAND_UNIT)
        _compile_checkout()
        argv = self.qemu_argv(
            run_dir,
            shared_dir,
            memory_mb=memory_mb,
            cpus=cpus,
            systemd=systemd,
            kernel_args=kernel_args,
        )
        started = time.monotonic()
        timed_out = False
        with (run_dir / "qemu.log").open("wb") as qemu_log:
            qemu = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT
            )
            try:
                qemu.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                qemu.kill()
                qemu.wait()
        duration = time.monotonic() - started
        status_text = _read(shared_dir / "exit-status").strip()
        console = _read(run_dir / "console.log")
        if qemu.returncode != 0 and not timed_out:
            console += f"\n[qemu exited with {qemu.returncode}]\n{_read(run_dir / 'qemu.log')}"
        return GuestResult(
            exit_status=int(status_text) if status_text.isdigit() else None,
            output=_read(shared_dir / "output.log"),
            console=console,
            shared_dir=shared_dir,
            timed_out=timed_out,
            duration=duration,
        )


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("prepare", "run"):
        print("usage: python -m tests.realkernel.harness prepare | run CMD [ARGS...]")
        return 2
    started = time.monotonic()
    kernel = RealKernel.prepare()
    print(
        f"prepared {kernel.prepared.release} ({kernel.prepared.package_version}) in "
        f"{time.monotonic() - started:.1f} s: {kernel.prepared.directory}",
        file=sys.stderr,
    )
    if argv[0] == "prepare":
        return 0
    result = kernel.run(argv[1:])
    print(result.output, end="")
    print(f"[{result.describe().splitlines()[0]}]", file=sys.stderr)
    if result.exit_status is None:
        print(result.console, file=sys.stderr)
        return 1
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
