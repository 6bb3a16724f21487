# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures for the mdevctl-compatibility tests: the real daemon on a private bus and the
emulated kernel, with mdevctl's directories relocated under /tmp (never /etc or /usr/lib)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mdevd.client import Client
from tests.support.bus import private_bus
from tests.support.daemon import running_daemon
from tests.support.paths import REPO
from tests.support.sim import RunningSim, running_sim
from tests.support.stack import Stack


@dataclass
class CompatDirs:
    """Stand-ins for /etc/mdevctl.d, /usr/lib/mdevctl/scripts.d and /etc/mdevd/devices.d."""

    root: Path
    mdevctl: Path = field(init=False)
    scripts: Path = field(init=False)
    devices: Path = field(init=False)
    bin: Path = field(init=False)

    def __post_init__(self) -> None:
        self.mdevctl = self.root / "mdevctl.d"
        self.scripts = self.root / "lib-scripts.d"
        self.devices = self.root / "devices.d"
        self.bin = self.root / "bin"
        for directory in (self.mdevctl, self.devices, self.bin):
            directory.mkdir()
        for sub in ("callouts", "notifiers"):
            (self.scripts / sub).mkdir(parents=True)
            (self.mdevctl / "scripts.d" / sub).mkdir(parents=True)
        # The front end installed as `mdevctl`, first in PATH, the way an admin would.
        launcher = self.bin / "mdevctl"
        launcher.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
            "from mdevd.cli.mdevctl import main\nsys.exit(main())\n"
        )
        launcher.chmod(0o755)

    def callout(self, name: str, text: str, where: str = "lib") -> Path:
        base = self.scripts if where == "lib" else self.mdevctl / "scripts.d"
        path = base / "callouts" / name
        _write_executable(path, text)
        return path

    def notifier(self, name: str, text: str, where: str = "lib") -> Path:
        base = self.scripts if where == "lib" else self.mdevctl / "scripts.d"
        path = base / "notifiers" / name
        _write_executable(path, text)
        return path


def _write_executable(path: Path, text: str) -> None:
    # Written by a child process: an executable file open for writing in this (threaded)
    # process could be inherited by a concurrent fork and make its exec fail with ETXTBSY.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
            str(path),
            text,
        ],
        check=True,
    )
    path.chmod(0o755)


@pytest.fixture
def dirs() -> Iterator[CompatDirs]:
    root = Path(tempfile.mkdtemp(prefix="mdevd-compat-", dir="/tmp"))
    root.chmod(0o755)
    yield CompatDirs(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bus_address() -> Iterator[str]:
    with private_bus() as address:
        yield address


@pytest.fixture
def sim() -> Iterator[RunningSim]:
    with running_sim("default") as running:
        yield running


@dataclass
class CompatStack(Stack):
    """A `tests.support.stack.Stack` whose daemon runs in compatibility mode: with mdevctl's
    directories (`dirs`) and mdevctl's front end to run against it."""

    dirs: CompatDirs

    def mdevctl(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the front end (`mdevctl` first in PATH) against this daemon."""
        env = dict(self.daemon.env)
        env["PATH"] = f"{self.dirs.bin}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(
            ["mdevctl", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def file(self, parent: str, uuid: str) -> Path:
        return self.dirs.mdevctl / parent / uuid


StackFactory = Callable[..., CompatStack]


@pytest.fixture
def start_stack(dirs: CompatDirs, bus_address: str) -> Iterator[StackFactory]:
    """Start the daemon in compatibility mode on an emulated kernel (scenario "default" or
    `scenario_text`); `daemon_args` are extra flags."""
    with ExitStack() as stack:

        def start(
            scenario: str = "default",
            scenario_text: str | None = None,
            daemon_args: tuple[str, ...] = (),
            sim: RunningSim | None = None,
        ) -> CompatStack:
            if sim is None:
                sim = stack.enter_context(running_sim(scenario, scenario_text=scenario_text))
            daemon = stack.enter_context(
                running_daemon(
                    bus_address,
                    sim.root,
                    [dirs.devices],
                    mdevctl_dir=dirs.mdevctl,
                    mdevctl_scripts_dir=dirs.scripts,
                    extra_args=daemon_args,
                )
            )
            return CompatStack(bus_address, sim, daemon, dirs)

        yield start


class ClientThread:
    """One client connection on a loop of its own, for synchronous tests to call through."""

    def __init__(self, address: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.client: Client = self._wait(Client.connect(address))

    def _wait(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(120)

    def call(self, method: str, *args: object, **kwargs: object) -> Any:
        return self._wait(getattr(self.client, method)(*args, **kwargs))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self.client.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
