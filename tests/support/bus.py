# SPDX-License-Identifier: LGPL-2.1-or-later
"""A private system-type dbus-daemon for tests and benchmarks (no pytest needed).

    with private_bus() as address:                      # everything allowed
        ...
    with private_bus([PROJECT_POLICY]) as address:      # the real system bus's default-deny
        ...                                             # policy plus the project's policy file

The socket lives in a world-traversable directory under /tmp (pytest's own temp dirs are 0700,
which would lock out polkitd and the unprivileged clients tests run with `setpriv`).
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from xml.sax.saxutils import escape

from tests.support.paths import REPO

#: The project's bus policy, as installed to /usr/share/dbus-1/system.d/.
PROJECT_POLICY = REPO / "dbus" / "org.mdevd.Mdevd1.conf"
#: polkitd's bus policy (Debian package `polkitd`), for tests that run a real polkitd.
POLKIT_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")

_HEADER = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
"""

_ALLOW_ALL = """  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
"""

# The default context of Debian's /usr/share/dbus-1/system.conf (dbus 1.14): services get
# nothing unless a policy file punches a hole, exactly as on a real system bus.
_SYSTEM_DEFAULT = """  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
"""


def _config(
    socket_path: Path, policy_files: Sequence[Path] | None, limits: Mapping[str, int]
) -> str:
    lines = [
        _HEADER,
        "<busconfig>\n",
        "  <type>system</type>\n",
        f"  <listen>unix:path={escape(str(socket_path))}</listen>\n",
        "  <auth>EXTERNAL</auth>\n",
    ]
    lines.extend(
        f'  <limit name="{escape(name)}">{value}</limit>\n' for name, value in limits.items()
    )
    if policy_files is None:
        lines.append(_ALLOW_ALL)
    else:
        lines.append(_SYSTEM_DEFAULT)
        for policy in policy_files:
            lines.append(f"  <include>{escape(str(Path(policy).resolve()))}</include>\n")
    lines.append("</busconfig>\n")
    return "".join(lines)


@contextmanager
def private_bus(
    policy_files: Sequence[Path] | None = None,
    *,
    limits: Mapping[str, int] | None = None,
    start_timeout: float = 10.0,
) -> Iterator[str]:
    """Run a private system-type dbus-daemon; yield its address; stop it on exit.

    `policy_files=None` allows everything. A sequence of files (e.g. `[PROJECT_POLICY]`) gets
    the system bus's default-deny policy with those files included, as on a real system.
    `limits` overrides dbus-daemon's compiled-in limits (`max_incoming_bytes`, ...), which are
    the system bus's: Debian's system.conf keeps them all at their defaults.
    """
    directory = Path(tempfile.mkdtemp(prefix="mdevd-bus-", dir="/tmp"))
    try:
        directory.chmod(0o755)
        socket_path = directory / "system_bus_socket"
        config = directory / "bus.conf"
        config.write_text(_config(socket_path, policy_files, limits or {}))
        log_path = directory / "dbus-daemon.log"
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(
                [
                    "dbus-daemon",
                    f"--config-file={config}",
                    "--nofork",
                    "--nopidfile",
                    "--print-address=1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        try:
            address = _read_address(daemon, start_timeout)
            if address is None:
                daemon.kill()
                daemon.wait()
                raise RuntimeError(
                    f"dbus-daemon did not start (exit {daemon.returncode}): "
                    + log_path.read_text(errors="replace").strip()
                )
            yield address
        finally:
            if daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
            if daemon.stdout is not None:
                daemon.stdout.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _read_address(daemon: subprocess.Popen[bytes], timeout: float) -> str | None:
    """The first line dbus-daemon prints (its address) once it listens, or None if it died."""
    assert daemon.stdout is not None
    fd = daemon.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buffer += chunk
    return buffer.split(b"\n", 1)[0].decode().strip()


@contextmanager
def unprivileged_python(
    packages: Sequence[str] = ("dbus_fast",), user: str = "nobody", group: str = "nogroup"
) -> Iterator[list[str]]:
    """Yield the argv prefix of a Python interpreter running as `user` that can import `packages`.

    The test interpreter's site-packages may sit in a directory only root can read (pyenv under
    /root), so the packages are copied to a world-readable temporary directory, and the
    system's interpreter of the same minor version runs them (its C extensions' ABI matches).
    Run the subprocess with `cwd` somewhere `user` may enter, e.g. "/".
    """
    directory = Path(tempfile.mkdtemp(prefix="mdevd-py-", dir="/tmp"))
    try:
        for package in packages:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise RuntimeError(f"{package} is not an importable package")
            source = Path(next(iter(spec.submodule_search_locations)))
            shutil.copytree(
                source, directory / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        for path in [directory, *directory.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        system_python = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
        interpreter = str(system_python) if system_python.exists() else sys.executable
        yield [
            "setpriv",
            f"--reuid={user}",
            f"--regid={group}",
            "--clear-groups",
            "env",
            f"PYTHONPATH={directory}",
            "PYTHONDONTWRITEBYTECODE=1",
            interpreter,
        ]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
