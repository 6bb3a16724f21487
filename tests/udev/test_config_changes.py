# SPDX-License-Identifier: LGPL-2.1-or-later
"""Definition files added, changed and removed while the daemon runs: picked up without a
restart (inotify), and on `Reload` and SIGHUP; the daemon's own writes are not reported back
as outside changes."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from tests.support.waiting import wait_until
from tests.udev.conftest import Setup, StartDaemon
from tests.udev.support import (
    Wanted,
    agreement,
    attempts,
    call,
    definitions_text,
    objects,
    uuid_for,
    write_definitions,
)

pytestmark = pytest.mark.timeout(120, method="thread")


def test_a_new_file_defines_and_autostarts_and_a_removed_one_leaves_the_device_running(
    world: Setup, start_daemon: StartDaemon
) -> None:
    start_daemon(world)
    auto, waiting = uuid_for(1), uuid_for(2)
    path = write_definitions(
        world.devices_dir / "new.toml",
        [Wanted(auto, "mtty", "mtty-2"), Wanted(waiting, "0000:65:00.0", "nvidia-558")],
    )

    (defined,) = world.recorder.wait_for_events(1, auto, "defined")
    assert defined.details == {"reason": "config"}
    world.recorder.wait_for_events(1, auto, "started", "autostart")
    world.recorder.wait_for_events(1, waiting, "defined", "config")
    shown = objects(world.address).devices
    assert shown[auto].active and shown[auto].config_file == str(path)
    assert not shown[waiting].active  # its parent is not registered (yet)
    world.sim.control.register("0000:65:00.0")
    world.recorder.wait_for_events(1, waiting, "started", "autostart")

    path.unlink()

    world.recorder.wait_for_events(1, auto, "undefined", "config")
    world.recorder.wait_for_events(1, waiting, "undefined", "config")
    shown = objects(world.address).devices
    for uuid in (auto, waiting):
        assert (shown[uuid].active, shown[uuid].defined, shown[uuid].config_file) == (
            True,
            False,
            "",
        )
    assert world.recorder.events(auto, "stopped") == []
    assert attempts(world.sim, auto) == 1
    assert agreement(world.sim, world.address) is None


def test_a_changed_file_updates_the_definition(world: Setup, start_daemon: StartDaemon) -> None:
    device = uuid_for(1)
    path = world.devices_dir / "a.toml"
    write_definitions(path, [Wanted(device, "mtty", "mtty-1", autostart=False)])
    start_daemon(world)
    assert not objects(world.address).devices[device].active

    # An editor's save: a new file renamed over the old one.
    temporary = world.devices_dir / ".a.toml.swp"
    write_definitions(temporary, [Wanted(device, "mtty", "mtty-2", autostart=True)])
    os.replace(temporary, path)

    (updated,) = world.recorder.wait_for_events(1, device, "updated")
    assert updated.details == {"reason": "config"}
    world.recorder.wait_for_events(1, device, "started", "autostart")
    shown = objects(world.address).devices[device]
    assert (shown.type_id, shown.autostart, shown.active) == ("mtty-2", True, True)

    # An edit in place that changes nothing the device is made of: not an update.
    path.write_text("# a comment\n" + path.read_text())
    marker = uuid_for(9)
    write_definitions(world.devices_dir / "z.toml", [Wanted(marker, "mtty", "mtty-1", False)])
    world.recorder.wait_for_events(1, marker, "defined", "config")
    assert len(world.recorder.events(device, "updated")) == 1


def test_the_daemons_own_writes_are_not_reported_as_config_changes(
    world: Setup, start_daemon: StartDaemon
) -> None:
    start_daemon(world)
    defined, transient = uuid_for(1), uuid_for(2)

    call(world.address, "define_device", "mtty", "mtty-1", uuid=defined, autostart=True)
    call(world.address, "update", defined, attributes=[], autostart=False)
    call(world.address, "create_device", "mtty", "mtty-1", uuid=transient)
    call(world.address, "define", transient)
    call(world.address, "undefine", transient)

    # A change made by someone else afterwards: once it is seen, the daemon's own writes
    # have been seen by the watcher too.
    marker = uuid_for(9)
    write_definitions(
        world.devices_dir / "zz-marker.toml", [Wanted(marker, "mtty", "mtty-1", False)]
    )
    world.recorder.wait_for_events(1, marker, "defined", "config")
    config_events = [
        s for s in world.recorder.events(reason="config") if s.uuid in (defined, transient)
    ]
    assert config_events == []
    assert [s.event for s in world.recorder.events(defined)] == ["defined", "updated"]


def test_reload_and_sighup_pick_up_changes_when_watching_is_off(
    world: Setup, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(world, watch_definitions=False)
    first, second = uuid_for(1), uuid_for(2)

    write_definitions(world.devices_dir / "a.toml", [Wanted(first, "mtty", "mtty-1")])
    assert first not in objects(world.address).devices
    call(world.address, "reload")
    # Reload answers once the new definition is in effect and its autostart was tried.
    shown = objects(world.address).devices[first]
    assert shown.defined and shown.active
    assert [s.event for s in world.recorder.events(first)] == ["defined", "started"]

    write_definitions(world.devices_dir / "b.toml", [Wanted(second, "mtty", "mtty-2")])
    daemon.process.send_signal(signal.SIGHUP)
    world.recorder.wait_for_events(1, second, "defined", "config")
    world.recorder.wait_for_events(1, second, "started", "autostart")
    assert daemon.process.poll() is None


def test_a_definition_directory_created_later_is_watched(
    world: Setup, start_daemon: StartDaemon
) -> None:
    runtime = world.workdir / "run" / "mdevd" / "devices.d"
    start_daemon(world, devices_dirs=[world.devices_dir, runtime])
    device = uuid_for(1)

    # The directory arrives whole, file included (renamed into place), as a tool might do.
    staging = world.workdir / "staging"
    staging.mkdir()
    write_definitions(staging / "a.toml", [Wanted(device, "mtty", "mtty-1")])
    runtime.parent.mkdir(parents=True)
    os.rename(staging, runtime)

    world.recorder.wait_for_events(1, device, "defined", "config")
    world.recorder.wait_for_events(1, device, "started", "autostart")
    assert objects(world.address).devices[device].config_file == str(runtime / "a.toml")

    # Gone, and back again: each time it is seen.
    shutil.rmtree(runtime)
    world.recorder.wait_for_events(1, device, "undefined", "config")
    runtime.mkdir()
    (runtime / "a.toml").write_text(definitions_text([Wanted(device, "mtty", "mtty-1")]))
    world.recorder.wait_for_events(2, device, "defined", "config")
    wait_until(lambda: objects(world.address).devices[device].defined or None, what="redefinition")
