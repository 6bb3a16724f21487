# SPDX-License-Identifier: LGPL-2.1-or-later
"""The daemon keeps mdevctl's directory as a live store (part 1 of issue 10).

The real daemon runs on a private bus and the emulated kernel, with mdevctl's directory
relocated; what it writes there is compared with what Debian's real mdevctl writes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from mdevd.client import Client
from tests.compat.conftest import CompatDirs, CompatStack, StackFactory
from tests.compat.reference import REAL_MDEVCTL, run_reference
from tests.support.signals import SignalRecorder
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180, method="thread")

U1 = "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9"
U2 = "59e8b599-afdd-4766-a59e-415ef4f5a492"
U3 = "3a7c02f1-62b9-4d0e-9d41-7f1e0c9a5b33"


def _call(stack: CompatStack, method: str, *args: object, **kwargs: object) -> Any:
    """A `Client` method's result (whatever that method returns)."""

    async def run() -> Any:
        client = await Client.connect(stack.address)
        try:
            return await getattr(client, method)(*args, **kwargs)
        finally:
            client.close()

    return asyncio.run(run())


@pytest.mark.skipif(REAL_MDEVCTL is None, reason="mdevctl is not installed")
def test_a_definition_made_over_dbus_is_the_file_mdevctl_would_write(
    start_stack: StackFactory,
) -> None:
    stack = start_stack()
    attrs = (("assign_adapter", "5"), ("assign_domain", "0x4"))
    _call(
        stack,
        "define_device",
        "matrix",
        "vfio_ap-passthrough",
        uuid=U1,
        autostart=True,
        attributes=attrs,
    )
    ours = stack.file("matrix", U1).read_bytes()

    reference = Path(tempfile.mkdtemp(dir="/tmp"))
    done = run_reference(
        stack.sim.root,
        reference,
        [
            ["mdevctl", "define", "-u", U1, "-p", "matrix", "-t", "vfio_ap-passthrough", "-a"],
            ["mdevctl", "modify", "-u", U1, "--addattr=assign_adapter", "--value=5"],
            ["mdevctl", "modify", "-u", U1, "--addattr=assign_domain", "--value=0x4"],
        ],
    )
    assert [r.returncode for r in done] == [0, 0, 0], done
    assert ours == (reference / "matrix" / U1).read_bytes()
    device = _call(stack, "device", U1)
    assert device.config_file == str(stack.file("matrix", U1))


def test_mdevctl_definitions_are_the_daemons_at_startup(
    dirs: CompatDirs, start_stack: StackFactory
) -> None:
    (dirs.mdevctl / "mtty").mkdir()
    (dirs.mdevctl / "mtty" / U1).write_text(
        json.dumps({"mdev_type": "mtty-2", "start": "auto", "attrs": []})
    )
    stack = start_stack()
    device = _call(stack, "device", U1)
    assert device.defined and device.autostart and device.active
    assert device.config_file == str(dirs.mdevctl / "mtty" / U1)


def test_own_writes_do_not_come_back_as_changes_but_external_edits_do(
    start_stack: StackFactory,
) -> None:
    stack = start_stack()
    with SignalRecorder(stack.address) as recorder:
        _call(stack, "define_device", "mtty", "mtty-1", uuid=U1)
        recorder.wait_for_event(lambda e: e.uuid == U1 and e.event == "defined", timeout=20)
        _call(stack, "update", U1, autostart=True)
        recorder.wait_for_event(lambda e: e.uuid == U1 and e.event == "updated", timeout=20)
        path = stack.file("mtty", U1)
        assert json.loads(path.read_text())["start"] == "auto"

        # mdevd's own writes, re-read: nothing happened.
        before = recorder.mark()
        _call(stack, "reload")
        _call(stack, "reload")
        assert [(e.uuid, e.event) for e in recorder.events(since=before)] == []

        # Someone else's edit (the real mdevctl, an admin): picked up as a config change.
        path.write_text(json.dumps({"mdev_type": "mtty-2", "start": "auto"}))
        _call(stack, "reload")
        recorder.wait_for_event(
            lambda e: e.uuid == U1 and e.event == "updated" and e.details["reason"] == "config",
            timeout=20,
        )
        assert _call(stack, "device", U1).type_id == "mtty-2"

        # A new file dropped in by another tool is a new definition.
        (stack.dirs.mdevctl / "mtty" / U2).write_text(
            json.dumps({"mdev_type": "mtty-1", "start": "manual", "attrs": []})
        )
        _call(stack, "reload")
        recorder.wait_for_event(lambda e: e.uuid == U2 and e.event == "defined", timeout=20)

        _call(stack, "undefine", U1)
        recorder.wait_for_event(lambda e: e.uuid == U1 and e.event == "undefined", timeout=20)
        assert not path.exists()


OWN_WRITES_ONLY = "mdevctl's directory changed by mdevd only: no reload"
RELOAD_FOR_OTHERS = "mdevctl's directory changed: reloading"


def test_changes_other_tools_make_in_mdevctls_directory_apply_without_a_reload(
    start_stack: StackFactory,
) -> None:
    stack = start_stack()
    mdevctl = stack.dirs.mdevctl
    with SignalRecorder(stack.address) as recorder:
        # mdevd's own writes there (a new parent directory, the file, an update) are seen by
        # the watcher and recognised: no reload.
        _call(stack, "define_device", "mtty", "mtty-1", uuid=U1)
        wait_until(
            lambda: OWN_WRITES_ONLY in stack.daemon.log(), timeout=20, what="the define's check"
        )
        _call(stack, "update", U1, autostart=True)
        wait_until(
            lambda: stack.daemon.log().count(OWN_WRITES_ONLY) >= 2, timeout=20, what="the update's"
        )
        assert RELOAD_FOR_OTHERS not in stack.daemon.log()

        # Another tool's file is a definition, with no Reload, SIGHUP or restart.
        (mdevctl / "mtty" / U2).write_text(
            json.dumps({"mdev_type": "mtty-2", "start": "manual", "attrs": []})
        )
        defined = recorder.wait_for_event(
            lambda e: e.uuid == U2 and e.event == "defined", timeout=20
        )
        assert defined.details["reason"] == "config"
        (mdevctl / "mtty" / U1).write_text(json.dumps({"mdev_type": "mtty-2", "start": "auto"}))
        recorder.wait_for_event(
            lambda e: e.uuid == U1 and e.event == "updated" and e.details["reason"] == "config",
            timeout=20,
        )
        assert _call(stack, "device", U1).type_id == "mtty-2"

        # A parent directory arriving whole, and going.
        arriving = stack.dirs.root / "incoming"
        arriving.mkdir()
        (arriving / U3).write_text(json.dumps({"mdev_type": "mdpy-vga", "start": "manual"}))
        arriving.rename(mdevctl / "mdpy")
        recorder.wait_for_event(lambda e: e.uuid == U3 and e.event == "defined", timeout=20)
        shutil.rmtree(mdevctl / "mdpy")
        recorder.wait_for_event(lambda e: e.uuid == U3 and e.event == "undefined", timeout=20)
        (mdevctl / "mtty" / U2).unlink()
        recorder.wait_for_event(lambda e: e.uuid == U2 and e.event == "undefined", timeout=20)
    assert stack.daemon.log().count(RELOAD_FOR_OTHERS) >= 3


def test_toml_definitions_are_mirrored_for_mdevctls_readers(
    dirs: CompatDirs, start_stack: StackFactory
) -> None:
    (dirs.devices / "gpu.toml").write_text(
        f'[[device]]\nuuid = "{U1}"\nparent = "0000:65:00.0"\ntype = "nvidia-558"\n'
    )
    stack = start_stack()
    mirror = stack.file("0000:65:00.0", U1)
    assert json.loads(mirror.read_text()) == {
        "mdev_type": "nvidia-558",
        "start": "manual",
        "attrs": [],
    }
    _call(stack, "update", U1, autostart=True)
    assert "autostart = true" in (dirs.devices / "gpu.toml").read_text()
    assert json.loads(mirror.read_text())["start"] == "auto"
    _call(stack, "undefine", U1)
    assert not mirror.exists()
    assert not (dirs.devices / "gpu.toml").exists()


def test_compatibility_off_leaves_mdevctls_directory_alone(start_stack: StackFactory) -> None:
    stack = start_stack(daemon_args=("--mdevctl-compat", "off"))
    _call(stack, "define_device", "mtty", "mtty-1", uuid=U1)
    assert not stack.file("mtty", U1).exists()
    assert (stack.dirs.devices / f"{U1}.toml").exists()
