# SPDX-License-Identifier: LGPL-2.1-or-later
"""Random and hostile arguments to every method and property, from root (so every check the
daemon makes is reached, none skipped by a denial), for a bounded time.

Path traversal, names that are sysfs's own files, oversized strings, control characters, wrong
variant types, unknown options, wrong signatures, nested variants. The daemon keeps running;
every call is answered, with success or a named error (never an internal error, never an echo
of megabytes); and the daemon, traced with strace meanwhile, tries to change nothing outside
its definitions directory and the emulated sysfs.

Strings with a NUL byte or invalid UTF-8 cannot travel in a D-Bus message: the bus drops the
sender's connection instead of delivering them, which `test_the_bus_never_delivers_...` shows
with raw messages.
"""

from __future__ import annotations

import os
import socket
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, Variant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdevd.bus import names
from mdevd.errors import CONTRACT_ERROR_NAMES
from mdevd.validate import is_uuid
from tests.security.callers import ROOT_PYTHON, Caller, Reply, device_path, running_caller
from tests.security.conftest import PARENT, TYPE
from tests.security.file_writes import Write, traced_writes
from tests.support.bus import PROJECT_POLICY, private_bus
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.sim import RunningSim, running_sim

pytestmark = [
    pytest.mark.timeout(240),
    # The big strings make big reprs of the examples; only a failure's repr is ever shown.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

#: How long the property test may generate calls; the examples cap is a second bound.
TIME_BUDGET = 20.0
MAX_EXAMPLES = 400

#: Standard errors dbus-fast answers with before a method runs (no such member, signature,
#: object, interface or property; properties are read-only).
STANDARD_ERRORS = {
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.UnknownProperty",
    "org.freedesktop.DBus.Error.InvalidArgs",
    "org.freedesktop.DBus.Error.InvalidSignature",
    "org.freedesktop.DBus.Error.PropertyReadOnly",
    "org.freedesktop.DBus.Error.NotSupported",
}
NAMED_ERRORS = {names.error_name(name) for name in CONTRACT_ERROR_NAMES} | STANDARD_ERRORS
#: The daemon's own error messages quote the caller, but only a bounded piece. (dbus-fast's
#: standard errors quote a bad interface or property name whole: the caller's own bytes back,
#: once, which costs the daemon no more than receiving them did.)
MAX_MESSAGE_LENGTH = 2000


@dataclass
class Target:
    address: str
    sim: RunningSim
    daemon: DaemonProcess
    root: Caller
    #: Devices that exist: a defined one and a running one.
    devices: tuple[str, ...]


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with (
        private_bus([PROJECT_POLICY]) as address,
        running_sim("default") as sim,
        running_daemon(address, sim.root) as daemon,
        running_caller("root", ROOT_PYTHON, address) as root,
    ):
        devices = (str(uuidlib.uuid4()), str(uuidlib.uuid4()))
        for uuid, start in zip(devices, (False, True), strict=True):
            reply = root.manager(
                "DefineDevice",
                "ssa{sv}",
                [PARENT, TYPE, {"uuid": Variant("s", uuid), "start": Variant("b", start)}],
            )
            assert reply.ok, reply
        yield Target(address, sim, daemon, root, devices)


# ---- strategies ----------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "",
    ".",
    "..",
    "../..",
    "../../../../../../../../etc/passwd",
    "/etc/passwd",
    "mtty/../mdpy",
    "mtty/",
    "./mtty",
    "mtty\n",
    " mtty",
    "mtty ",
    "\tx",
    "-",
    "--help",
    "*",
    "?",
    "~root",
    "$(touch /tmp/mdevd-pwned)",
    "`id`",
    "%s%s%s%n",
    "\x01",
    "\x7f",
    "\u202e",
    "é",
    "💥",
    "a" * 255,
    "a" * 256,
    "x" * 4097,
    # Real names, so some calls get past validation into the engine and the kernel.
    PARENT,
    TYPE,
    "mtty-2",
    "mdpy",
    "mdpy-vga",
    "matrix",
    "0000:65:00.0",
    # sysfs's own files and links in a device directory, and dot-files.
    "remove",
    "create",
    "uevent",
    "mdev_type",
    "iommu_group",
    "driver",
    "subsystem",
    "power",
    "available_instances",
    ".hidden",
    ".",
]

# Everything a D-Bus string can hold: no NUL, no lone surrogates.
_characters = st.characters(codec="utf-8", exclude_characters="\x00")
strings = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(_characters, max_size=40),
    st.builds(lambda part, n: part * n, st.sampled_from(["a", "../", "é"]), st.integers(0, 20000)),
    st.builds(lambda n: "b" * n, st.sampled_from([1 << 16, 1 << 20])),
)
uuids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: str(u).replace("-", "")),
    strings,
)
object_paths = st.sampled_from(["/", "/org/mdevd/Mdevd1", "/x/y", "/org/mdevd/Mdevd1/Manager"])


def _variant(signature: str) -> Any:
    return lambda value: Variant(signature, value)


_plain_variants = st.one_of(
    strings.map(_variant("s")),
    st.booleans().map(_variant("b")),
    st.integers(0, 2**32 - 1).map(_variant("u")),
    st.integers(-(2**31), 2**31 - 1).map(_variant("i")),
    st.integers(-(2**63), 2**63 - 1).map(_variant("x")),
    st.floats(allow_nan=True).map(_variant("d")),
    st.binary(max_size=64).map(_variant("ay")),
    object_paths.map(_variant("o")),
    st.sampled_from(["s", "a{sv}", "a(ss)", ""]).map(_variant("g")),
    st.lists(strings, max_size=4).map(_variant("as")),
    st.lists(st.tuples(strings, strings).map(list), max_size=8).map(_variant("a(ss)")),
    st.lists(st.tuples(strings).map(list), max_size=3).map(_variant("a(s)")),
    st.lists(st.tuples(strings, strings, strings).map(list), max_size=3).map(_variant("a(sss)")),
    st.dictionaries(strings, strings, max_size=3).map(_variant("a{ss}")),
)
variants = st.recursive(
    _plain_variants,
    lambda inner: st.one_of(
        inner.map(_variant("v")),
        st.dictionaries(strings, inner, max_size=3).map(_variant("a{sv}")),
    ),
    max_leaves=8,
)

# Real names half the time, so that many calls pass validation and reach the engine.
parents = st.one_of(st.sampled_from([PARENT, "mdpy", "mbochs", "matrix", "nvidia"]), strings)
type_ids = st.one_of(st.sampled_from([TYPE, "mtty-2", "mdpy-vga", "mtty-9"]), strings)
attribute_names = st.one_of(
    st.sampled_from(["remove", "uevent", "mdev_type", "assign_adapter", "x", ".x"]), strings
)
attribute_lists = st.lists(st.tuples(attribute_names, strings).map(list), max_size=6).map(
    _variant("a(ss)")
)

#: Each known option with a value of its own type, or of any type.
_RIGHT_TYPES: dict[str, st.SearchStrategy[Variant]] = {
    "uuid": uuids.map(_variant("s")),
    "attributes": attribute_lists,
    "type": type_ids.map(_variant("s")),
    **{
        key: st.booleans().map(_variant("b"))
        for key in ("autostart", "start", "live", "auth.interactive")
    },
}
_option = st.one_of(
    st.sampled_from(sorted(_RIGHT_TYPES)).flatmap(
        lambda key: st.tuples(
            st.just(key), st.one_of(_RIGHT_TYPES[key], _RIGHT_TYPES[key], variants)
        )
    ),
    st.tuples(strings, variants),
)
options = st.lists(_option, max_size=5).map(dict)


@dataclass(frozen=True)
class Call:
    path: str
    interface: str
    member: str
    signature: str
    body: list[Any]


def _device_target(devices: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(devices).map(device_path),
        st.uuids().map(lambda u: device_path(str(u))),
        st.just(names.MANAGER_PATH),
        st.just(names.ROOT_PATH),
    )


def calls(devices: tuple[str, ...]) -> st.SearchStrategy[Call]:
    manager = names.MANAGER_PATH
    m = names.MANAGER_INTERFACE
    d = names.DEVICE_INTERFACE
    p = names.PROPERTIES_INTERFACE
    device = _device_target(devices)
    paths = st.one_of(
        device,
        st.just(f"{names.PARENTS_PATH}/{PARENT}"),
        st.just(manager),
        st.just(names.ROOT_PATH),
    )
    interfaces = st.one_of(
        st.sampled_from([m, d, names.PARENT_INTERFACE, p, "org.mdevd.Mdevd1"]), strings
    )
    property_names = st.one_of(st.sampled_from(["Features", "Active", "Types", "UUID"]), strings)
    wrong_signatures = st.sampled_from(
        [("", []), ("s", ["x"]), ("i", [1]), ("ss", ["a", "b"]), ("a{sv}s", [{}, "x"])]
    )
    device_members = st.sampled_from(["Start", "Stop", "Define", "Undefine"])
    return st.one_of(
        st.builds(
            lambda member, parent, type_id, opts: Call(
                manager, m, member, "ssa{sv}", [parent, type_id, opts]
            ),
            st.sampled_from(["CreateDevice", "DefineDevice"]),
            parents,
            type_ids,
            options,
        ),
        st.builds(lambda uuid: Call(manager, m, "GetDevice", "s", [uuid]), uuids),
        st.builds(lambda opts: Call(manager, m, "Reload", "a{sv}", [opts]), options),
        st.builds(
            lambda path, member, opts: Call(path, d, member, "a{sv}", [opts]),
            device,
            device_members,
            options,
        ),
        st.builds(
            lambda path, changes, opts: Call(path, d, "Update", "a{sv}a{sv}", [changes, opts]),
            device,
            options,
            options,
        ),
        st.builds(
            lambda path, interface, prop: Call(path, p, "Get", "ss", [interface, prop]),
            paths,
            interfaces,
            property_names,
        ),
        st.builds(
            lambda path, interface: Call(path, p, "GetAll", "s", [interface]), paths, interfaces
        ),
        st.builds(
            lambda path, interface, prop, value: Call(
                path, p, "Set", "ssv", [interface, prop, value]
            ),
            paths,
            interfaces,
            property_names,
            variants,
        ),
        st.builds(
            lambda path, member, wrong: Call(path, m if path == manager else d, member, *wrong),
            device,
            st.sampled_from(["CreateDevice", "DefineDevice", "GetDevice", "Reload", "Update"]),
            wrong_signatures,
        ),
    )


# ---- the test ------------------------------------------------------------------------------


def _check(call: Call, reply: Reply) -> None:
    where = f"{call.interface}.{call.member} on {call.path}"
    if reply.error is not None:
        assert reply.error in NAMED_ERRORS, f"{where}: {reply.error}: {reply.message[:200]}"
        assert "internal error" not in reply.message, f"{where}: {reply.message}"
        if reply.error.startswith(names.ERROR_PREFIX):
            assert len(reply.message) <= MAX_MESSAGE_LENGTH, f"{where}: {len(reply.message)} chars"


def _outside(writes: list[Write], allowed: list[Path]) -> list[Write]:
    roots = [os.path.realpath(root) for root in allowed]

    def inside(path: str) -> bool:
        # Python writes bytecode caches for a module imported late; nothing else is allowed.
        if "/__pycache__/" in path:
            return True
        real = os.path.realpath(path) if os.path.exists(path) else path
        return any(real == root or real.startswith(root + "/") for root in roots)

    return [write for write in writes if not inside(write.path)]


def test_hostile_arguments_to_every_method(target: Target) -> None:
    seen: dict[str, int] = {}
    deadline = float("inf")  # set once the trace is attached

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(calls(target.devices), min_size=1, max_size=4))
    def examples(batch: list[Call]) -> None:
        if time.monotonic() > deadline:
            return
        for call in batch:
            reply = target.root.call(
                call.path, call.interface, call.member, call.signature, call.body
            )
            _check(call, reply)
            seen[reply.outcome] = seen.get(reply.outcome, 0) + 1

    canary = str(uuidlib.uuid4())
    with traced_writes(target.daemon.process.pid) as writes:
        # A definition written and removed while traced: proof that the trace sees the daemon.
        for member, body in (
            ("DefineDevice", [PARENT, TYPE, {"uuid": Variant("s", canary)}]),
            ("Undefine", [{}]),
        ):
            if member == "Undefine":
                reply = target.root.device(canary, member, "a{sv}", body)
            else:
                reply = target.root.manager(member, "ssa{sv}", body)
            assert reply.ok, reply
        deadline = time.monotonic() + TIME_BUDGET
        examples()
        # Still serving, and still the same daemon.
        alive = target.root.call(
            names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects"
        )
    assert alive.ok, alive
    assert target.daemon.process.poll() is None, target.daemon.log()[-4000:]
    print(f"outcomes of {sum(seen.values())} calls: {dict(sorted(seen.items()))}")
    assert seen.get("InvalidArgument", 0) > 0, seen

    canary_file = str(target.daemon.devices_dir / f"{canary}.toml")
    assert any(w.syscall.startswith("rename") and w.path == canary_file for w in writes()), (
        "strace did not see the canary definition written: the trace is not working"
    )
    assert target.daemon.state_dir is not None
    allowed = [target.daemon.devices_dir, target.daemon.state_dir, target.sim.root]
    assert _outside(writes(), allowed) == []
    for entry in target.daemon.devices_dir.iterdir():
        assert entry.suffix == ".toml" and is_uuid(entry.stem), entry
    # The state directory holds the daemon's own records, by fixed names, and nothing else.
    for entry in target.daemon.state_dir.iterdir():
        assert entry.name in ("owners.json", "nvidia-vf.json"), entry


# ---- what the bus itself refuses to carry --------------------------------------------------


def _raw_connection(address: str) -> socket.socket:
    """A D-Bus connection made by hand (EXTERNAL auth, Hello), to send what no library sends."""
    path = address.removeprefix("unix:path=").split(",", 1)[0]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
    assert sock.recv(4096).startswith(b"OK ")
    sock.sendall(b"BEGIN\r\n")
    hello = Message(
        destination=names.DBUS_BUS_NAME,
        path=names.DBUS_PATH,
        interface=names.DBUS_INTERFACE,
        member="Hello",
        serial=1,
    )
    sock.sendall(hello._marshall(False))
    return sock


def _call_bytes(uuid_text: str, serial: int) -> bytes:
    message = Message(
        destination=names.BUS_NAME,
        path=names.MANAGER_PATH,
        interface=names.MANAGER_INTERFACE,
        member="GetDevice",
        signature="s",
        body=[uuid_text],
        serial=serial,
    )
    return bytes(message._marshall(False))


def _receive_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """What arrived, and whether the peer closed the connection (False: it went quiet)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received, True
        except TimeoutError:
            return received, False
        if not chunk:
            return received, True
        received += chunk


@pytest.mark.parametrize(
    "bad", [b"\x00", b"\xff\xfe", b"\xed\xa0\x80"], ids=["NUL", "not UTF-8", "surrogate"]
)
def test_the_bus_never_delivers_strings_no_valid_message_holds(target: Target, bad: bytes) -> None:
    marker = "Z" * len(bad)
    raw = _call_bytes(f"../{marker}/x", serial=2)
    # Same length, so every length field in the marshalled message stays right.
    crafted = raw.replace(marker.encode(), bad)
    assert len(crafted) == len(raw) and crafted != raw
    sock = _raw_connection(target.address)
    try:
        sock.sendall(crafted)
        received, closed = _receive_until_closed(sock)
    finally:
        sock.close()
    # The bus closed the connection, and no answer of the daemon's came: it never saw the call.
    assert closed
    assert b"org.mdevd" not in received
    alive = target.root.call(names.ROOT_PATH, names.OBJECT_MANAGER_INTERFACE, "GetManagedObjects")
    assert alive.ok, alive
    assert target.daemon.process.poll() is None
