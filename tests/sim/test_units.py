# SPDX-License-Identifier: LGPL-2.1-or-later
"""The emulation's parsers on their own: scenarios, kernel number and UUID parsing, commands."""

from __future__ import annotations

import errno
import gc
import textwrap
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdevd.sim import control, scenario, tree
from mdevd.sim.state import Kernel, kstrtoul, parse_create_uuid
from mdevd.sim.uevent import UeventSender, encode_udev_message, murmur2
from tests.support.sim import SCENARIO_DIR

pytestmark = pytest.mark.timeout(60)

MINIMAL = """
[[parent]]
name = "mtty"
devpath = "devices/virtual/mtty/mtty"
subsystem = "mtty"
pools = { ports = 24 }

[[parent.type]]
id = "mtty-1"
pool = "ports"
"""


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path: object) -> None:
    loaded = scenario.load(str(path))
    assert loaded.parents


def test_default_scenario_has_every_kind_of_parent() -> None:
    loaded = scenario.load(SCENARIO_DIR / "default.toml")
    kinds = {p.name: p for p in loaded.parents}
    assert kinds["mtty"].pools == {"ports": 24}
    assert kinds["mtty"].pool_errno == errno.ENOSPC
    assert kinds["mdpy"].max_instances == 4
    assert kinds["0000:65:00.0"].subsystem_path == "bus/pci"
    assert not kinds["0000:65:00.0"].owned_by_driver
    matrix_type = kinds["matrix"].type("vfio_ap-passthrough")
    assert matrix_type is not None and matrix_type.vfio_ap is not None


def test_defaults() -> None:
    parent = scenario.parse(MINIMAL).parents[0]
    assert parent.subsystem_path == "class/mtty"
    assert parent.driver == "mtty"
    assert parent.registered and parent.owned_by_driver
    mtty1 = parent.types[0]
    assert (mtty1.name, mtty1.device_api, mtty1.description, mtty1.cost) == (
        "mtty-1",
        "vfio-pci",
        None,
        1,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('pool = "ports"', 'pool = "memory"'), "pool 'memory' is not one of"),
        (('pool = "ports"', "cost = 1"), "no limit"),
        (('subsystem = "mtty"', 'subsystem = "mtty"\ncolour = 1'), "unknown key(s) 'colour'"),
        (('devpath = "devices/virtual/mtty/mtty"', 'devpath = "../etc"'), "devpath"),
        (('devpath = "devices/virtual/mtty/mtty"', 'devpath = "devices/x/other"'), "end with"),
        (('subsystem = "mtty"', 'subsystem = "mtty"\nsubsystem_path = "bus/pci"'), "bus/mtty"),
        (("pools = { ports = 24 }", "pools = { ports = -1 }"), "size"),
        (("pools = { ports = 24 }", 'pools = { ports = 24 }\npool_errno = "EWHAT"'), "errno"),
        (('id = "mtty-1"', 'id = "mtty/1"'), "'/'"),
        (('name = "mtty"', "name = 5"), "wrong type"),
        (("[[parent.type]]", 'registered = "yes"\n[[parent.type]]'), "wrong type"),
        (('pool = "ports"', 'pool = "ports"\nreadonly = { "a/b/c" = "x" }'), "GROUP/NAME"),
        (('pool = "ports"', 'pool = "ports"\nreadonly = { "remove" = "x" }'), "core makes"),
        (('pool = "ports"', 'pool = "ports"\nreadonly = { "power/x" = "x" }'), "core makes"),
        (('pool = "ports"', 'pool = "ports"\nreadonly = { "a/.." = "x" }'), "readonly"),
        (('pool = "ports"', 'pool = "ports"\nreadonly = { "x" = 1 }'), "must be"),
    ],
)
def test_scenario_errors_name_the_problem(change: tuple[str, str], message: str) -> None:
    text = MINIMAL.replace(*change, 1)
    with pytest.raises(scenario.ScenarioError) as failure:
        scenario.parse(text, "test.toml")
    assert message in str(failure.value)
    assert str(failure.value).startswith("test.toml")


def test_duplicate_parents_and_types_are_refused() -> None:
    with pytest.raises(scenario.ScenarioError, match="share a name"):
        scenario.parse(MINIMAL + MINIMAL)
    doubled_type = MINIMAL + textwrap.dedent(
        """
        [[parent.type]]
        id = "mtty-1"
        pool = "ports"
        """
    )
    with pytest.raises(scenario.ScenarioError, match="declared twice"):
        scenario.parse(doubled_type)


def test_broken_toml_is_a_scenario_error() -> None:
    with pytest.raises(scenario.ScenarioError, match=r"x\.toml"):
        scenario.parse("[[parent]\n", "x.toml")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0),
        (b"1", 1),
        (b"1\n", 1),
        (b"+7", 7),
        (b"0x1f", 31),
        (b"0X1F", 31),
        (b"017", 15),
        (b"18446744073709551615", 2**64 - 1),
        (b"5\0junk", 5),
    ],
)
def test_kstrtoul_accepts(text: bytes, value: int) -> None:
    assert kstrtoul(text) == value


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b"", errno.EINVAL),
        (b"abc", errno.EINVAL),
        (b"-1", errno.EINVAL),
        (b" 1", errno.EINVAL),
        (b"1 ", errno.EINVAL),
        (b"1\n\n", errno.EINVAL),
        (b"0x", errno.EINVAL),
        (b"08", errno.EINVAL),
        (b"++1", errno.EINVAL),
        (b"18446744073709551616", errno.ERANGE),
    ],
)
def test_kstrtoul_refuses(text: bytes, error: int) -> None:
    with pytest.raises(OSError) as failure:
        kstrtoul(text)
    assert failure.value.errno == error


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_kstrtoul_round_trips_every_base(value: int) -> None:
    assert kstrtoul(str(value).encode()) == value
    assert kstrtoul(hex(value).encode()) == value
    assert kstrtoul(b"0" + oct(value)[2:].encode()) == value


def test_create_uuid_parsing() -> None:
    uuid = "8D9F7A3C-1B2E-4C5D-9E8F-0A1B2C3D4E5F"
    assert parse_create_uuid(uuid.encode()) == uuid.lower()
    assert parse_create_uuid(uuid.encode() + b"?") == uuid.lower()
    for bad in (uuid[:35], uuid + "\n\n", uuid.replace("-", "_")):
        with pytest.raises(OSError) as failure:
            parse_create_uuid(bad.encode())
        assert failure.value.errno == errno.EINVAL


def test_udev_message_layout() -> None:
    # That libudev's socket filter accepts exactly these hashes is shown in test_uevents.
    message = encode_udev_message(
        [("ACTION", "add"), ("DEVPATH", "/devices/x"), ("SUBSYSTEM", "mdev"), ("SEQNUM", "1")]
    )
    assert message.startswith(b"libudev\0\xfe\xed\xca\xfe")
    assert message[40:] == b"ACTION=add\0DEVPATH=/devices/x\0SUBSYSTEM=mdev\0SEQNUM=1\0"
    assert int.from_bytes(message[24:28], "big") == murmur2(b"mdev")


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("register mtty", control.Register("mtty")),
        ("unregister 0000:65:00.0", control.Unregister("0000:65:00.0")),
        ("fault create mtty mtty-1 EIO", control.FaultCreate("mtty", "mtty-1", errno.EIO, 1)),
        ("fault create mtty mtty-1 28 3", control.FaultCreate("mtty", "mtty-1", 28, 3)),
        (
            "fault attribute 8D9F7A3C-1B2E-4C5D-9E8F-0A1B2C3D4E5F assign_adapter ebusy",
            control.FaultAttribute(
                "8d9f7a3c-1b2e-4c5d-9e8f-0a1b2c3d4e5f", "assign_adapter", errno.EBUSY, 1
            ),
        ),
        ("fault remove * EBUSY 2", control.FaultRemove("*", errno.EBUSY, 2)),
        ("delay remove 0.5", control.Delay("remove", 0.5)),
        (
            "hold 8d9f7a3c-1b2e-4c5d-9e8f-0a1b2c3d4e5f",
            control.Hold("8d9f7a3c-1b2e-4c5d-9e8f-0a1b2c3d4e5f"),
        ),
        ("clear", control.Clear()),
    ],
)
def test_command_grammar(line: str, command: control.Command) -> None:
    assert control.parse_line(line) == command


def test_uevent_log_parsing() -> None:
    records = control.parse_uevent_log(
        "3 change /devices/virtual/mtty/mtty SUBSYSTEM=mtty MDEV_STATE=registered\n"
    )
    assert records == [
        control.UeventRecord(
            3,
            "change",
            "/devices/virtual/mtty/mtty",
            {"SUBSYSTEM": "mtty", "MDEV_STATE": "registered"},
        )
    ]
    assert records[0].subsystem == "mtty"


def test_removed_devices_do_not_stay_in_memory() -> None:
    """The tree keeps each device's part between rebuilds; a removed device must not be kept
    with it (a weak-keyed cache whose values referred to their key kept every device ever
    created: the emulated kernel grew by ~40 KB per create/remove cycle, 3 GB in a benchmark)."""
    loaded = scenario.parse(MINIMAL)
    kernel = Kernel(loaded, UeventSender(netlink=False))
    control_file = tree.Attribute(0o600)
    if kernel.parents["mtty"].registration is None:
        kernel.register("mtty")
    parent = kernel.parents["mtty"]
    [spec] = parent.spec.types
    gone: list[weakref.ref[object]] = []
    for index in range(20):
        assert parent.registration is not None
        kernel.create_device(
            parent, spec, parent.registration, f"{index:08x}-0000-4000-8000-{index:012x}".encode()
        )
        tree.build(kernel, control_file)  # the cache now holds the device's part
        [device] = parent.devices
        gone.append(weakref.ref(device))
        kernel.remove_device(device, b"1")
        del device
        tree.build(kernel, control_file)
    gc.collect()
    assert [ref for ref in gone if ref() is not None] == []
