# SPDX-License-Identifier: LGPL-2.1-or-later
"""Authorization by construction (mdevd.bus.exported): every exported method has an entry in
the one table, and is authorized by the layer that exports it, whatever its handler does.

Also the shape of the D-Bus layer: each of its modules imports alone, and no import circle
runs through it (the object tree once imported the interfaces, which imported the tree back).
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface

import mdevd.bus
from mdevd.bus import auth, names
from mdevd.bus import options as opts
from mdevd.bus.caller import CallerTracker
from mdevd.bus.device import DeviceInterface
from mdevd.bus.errors import dbus_errors
from mdevd.bus.exported import ExportedInterface, Work, exported_method, exported_read
from mdevd.bus.manager import ManagerInterface
from mdevd.bus.parent import ParentInterface
from mdevd.bus.signatures import DBusDict, DBusStr, dbus_method, dbus_property
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(60)

INTERFACE = "org.mdevd.Test.Exported"
PATH = "/exported"


def _bus_modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"mdevd.bus.{info.name}")
        for info in pkgutil.iter_modules(mdevd.bus.__path__)
    ]


def _interface_classes() -> list[type[ServiceInterface]]:
    """Every D-Bus interface class the D-Bus layer defines."""
    return [
        cls
        for module in _bus_modules()
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ServiceInterface) and cls.__module__ == module.__name__
    ]


def _method_names(cls: type[ServiceInterface]) -> set[str]:
    """The D-Bus methods of `cls`, found as dbus-fast finds them when it exports an object."""
    return {
        member.__dict__["__DBUS_METHOD"].name
        for _, member in inspect.getmembers(cls)
        if "__DBUS_METHOD" in getattr(member, "__dict__", {})
    }


def _unlisted(classes: Iterable[type[ServiceInterface]]) -> dict[str, set[str]]:
    """class name -> its D-Bus methods that have no entry in the authorization table."""
    missing = {cls.__name__: _method_names(cls) - set(auth.METHOD_ACTIONS) for cls in classes}
    return {name: methods for name, methods in missing.items() if methods}


def test_every_exported_method_has_an_entry_in_the_authorization_table() -> None:
    classes = _interface_classes()
    assert {ManagerInterface, DeviceInterface, ParentInterface} <= set(classes)
    assert _unlisted(classes) == {}
    # Every entry is a method some interface exports: no stale rule waits for a new method.
    assert set[str]().union(*map(_method_names, classes)) == set(auth.METHOD_ACTIONS)
    # And each goes through the layer that authorizes (a plain ServiceInterface would not).
    assert [cls for cls in classes if not issubclass(cls, ExportedInterface)] == []


def test_the_walk_finds_a_method_the_table_lacks() -> None:
    class Extended(ExportedInterface):
        @exported_method()
        def Frobnicate(self, options: DBusDict) -> Work[None]:
            async def frobnicate() -> None:
                return None

            return frobnicate

    assert _unlisted([Extended, ManagerInterface]) == {"Extended": {"Frobnicate"}}


def test_a_method_exported_around_the_base_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="Start is not declared with exported_method"):

        class Forgetful(ExportedInterface):
            @dbus_method()
            @dbus_errors
            async def Start(self, options: DBusDict) -> DBusStr:
                return "started without anyone asking"

    with pytest.raises(TypeError, match=r"properties \['Name'\] are writable"):

        class Writable(ExportedInterface):
            @dbus_property(access=PropertyAccess.READWRITE)
            def Name(self) -> DBusStr:
                return ""


def test_only_the_table_makes_a_method_a_read() -> None:
    with pytest.raises(TypeError, match=r"Start is not a read in mdevd\.bus\.auth\.METHOD_ACTIONS"):

        @exported_read(name="Start")
        async def start(self: ExportedInterface, options: DBusDict) -> None:
            return None


def test_an_exported_method_declares_its_reply_and_takes_options_last() -> None:
    def Start(self: ExportedInterface, options: DBusDict) -> DBusStr:
        return ""

    with pytest.raises(TypeError, match=r"returns Work\["):
        exported_method()(cast(Any, Start))

    with pytest.raises(TypeError, match="options"):

        @exported_method()
        def Stop(self: ExportedInterface, name: DBusStr) -> Work[None]:
            raise AssertionError


class Guarded(ExportedInterface):
    """Handlers that do not authorize anything themselves."""

    def __init__(self, authorize: auth.Authorize) -> None:
        super().__init__(INTERFACE, authorize)
        #: What the methods' work did, in order.
        self.done: list[str] = []

    @exported_method()
    def Start(self, options: DBusDict) -> Work[DBusStr]:
        opts.check_options(options, {opts.AUTH_INTERACTIVE: "b"}, "Start")

        async def start() -> str:
            self.done.append("Start")
            return "started"

        return start

    @exported_method()
    def Frobnicate(self, options: DBusDict) -> Work[None]:
        async def frobnicate() -> None:
            self.done.append("Frobnicate")

        return frobnicate

    @exported_read(name="GetDevice")
    def get_device(self, uuid: DBusStr) -> DBusStr:
        self.done.append("GetDevice")
        return uuid


# Calls the methods as nobody; prints one JSON line per call: [error name or "", body].
_AS_NOBODY = textwrap.dedent(
    """
    import asyncio, json, sys
    from dbus_fast import Message, Variant
    from dbus_fast.aio import MessageBus

    async def main(address, service, calls):
        bus = await MessageBus(bus_address=address).connect()
        for member, signature, body in json.loads(calls):
            if signature == "a{sv}":
                body = [{key: Variant("b", value) for key, value in body[0].items()}]
            reply = await bus.call(Message(destination=service, path="/exported",
                                   interface="org.mdevd.Test.Exported", member=member,
                                   signature=signature, body=body))
            print(json.dumps([reply.error_name or "", reply.body]), flush=True)

    asyncio.run(main(*sys.argv[1:]))
    """
)

NOBODY_CALLS = [
    ["Start", "a{sv}", [{}]],
    ["Start", "a{sv}", [{"auth.interactive": True}]],
    # A malformed call fails its checks before anyone is asked about the caller.
    ["Start", "a{sv}", [{"bogus": True}]],
    ["GetDevice", "s", ["8a3c"]],
]


async def _served(address: str, nobody_python: list[str]) -> tuple[list[Any], ...]:
    service = await MessageBus(bus_address=address).connect()
    callers = CallerTracker(service)
    callers.install()
    authorizer = auth.Authorizer(service, callers)
    asked: list[tuple[str, bool]] = []

    async def authorize(method: str, interactive: bool) -> None:
        asked.append((method, interactive))
        await authorizer.authorize_caller(method, interactive)

    guarded = Guarded(authorize)
    service.export(PATH, guarded)
    client = await MessageBus(bus_address=address).connect()
    try:
        root: list[Any] = []
        for member, options in (
            ("Start", {}),
            ("Start", {"auth.interactive": Variant("b", True)}),
            ("Frobnicate", {}),
        ):
            reply = await client.call(
                Message(
                    destination=service.unique_name,
                    path=PATH,
                    interface=INTERFACE,
                    member=member,
                    signature="a{sv}",
                    body=[options],
                )
            )
            assert reply is not None
            error = reply.error_name if reply.message_type is MessageType.ERROR else ""
            root.append([error, reply.body])
        root_done, root_asked = list(guarded.done), list(asked)
        guarded.done.clear()
        asked.clear()
        nobody = await asyncio.create_subprocess_exec(
            *nobody_python,
            "-c",
            _AS_NOBODY,
            address,
            service.unique_name or "",
            json.dumps(NOBODY_CALLS),
            stdout=asyncio.subprocess.PIPE,
            cwd="/",
        )
        output, _ = await nobody.communicate()
        as_nobody = [json.loads(line) for line in output.decode().splitlines()]
        return root, root_done, root_asked, as_nobody, guarded.done, asked
    finally:
        client.disconnect()
        service.disconnect()


def test_a_handler_that_authorizes_nothing_is_authorized_all_the_same(
    bus_address: str, nobody_python: list[str]
) -> None:
    root, root_done, root_asked, nobody, nobody_done, nobody_asked = asyncio.run(
        _served(bus_address, nobody_python)
    )
    denied = names.error_name("NotAuthorized")
    # Root may; a method the table lacks is denied even to root, and its work never runs.
    assert root[:2] == [["", ["started"]], ["", ["started"]]]
    assert root[2][0] == denied and "no authorization rule" in root[2][1][0]
    assert root_done == ["Start", "Start"]
    # The caller's own auth.interactive, from the method's trailing a{sv}.
    assert root_asked == [("Start", False), ("Start", True)]
    # Nobody may not: the work never ran. The malformed call was refused by its checks
    # without asking; the read needed no one's leave.
    invalid = names.error_name("InvalidArgument")
    assert [error for error, _ in nobody] == [denied, denied, invalid, ""]
    assert "is not allowed to org.mdevd.mdevd1.manage-devices" in nobody[0][1][0]
    assert nobody[3][1] == ["8a3c"]
    assert nobody_done == ["GetDevice"]
    assert nobody_asked == [("Start", False), ("Start", True)]


# ---- the layer's shape -----------------------------------------------------------------------

BUS_DIR = REPO / "mdevd" / "bus"


def _imports_within_the_bus(path: Path) -> set[str]:
    """The mdevd.bus modules `path` imports, those under `if TYPE_CHECKING:` included."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "mdevd.bus":
                imported.update(alias.name for alias in node.names)
            elif node.module.startswith("mdevd.bus."):
                imported.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mdevd.bus."):
                    imported.add(alias.name.split(".")[2])
    return imported


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """Some import circle of `graph` (module -> modules it imports), or None."""
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> list[str] | None:
        if module in trail:
            return [*trail[trail.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            found = visit(imported, [*trail, module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return None


def test_no_import_circle_runs_through_the_bus_layer() -> None:
    graph = {path.stem: _imports_within_the_bus(path) for path in BUS_DIR.glob("*.py")}
    assert graph["tree"] >= {"manager", "device", "parent", "connection", "context"}
    assert _circle(graph) is None
    # The check sees a circle where there is one, type-checking imports included.
    circle = _circle({**graph, "manager": graph["manager"] | {"tree"}})
    assert circle is not None and set(circle) == {"manager", "tree"}


@pytest.mark.parametrize("module", sorted(path.stem for path in BUS_DIR.glob("*.py")))
def test_each_bus_module_imports_alone(module: str) -> None:
    subprocess.run(
        [sys.executable, "-c", f"import mdevd.bus.{module}"], check=True, cwd=REPO, timeout=30
    )
