# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevdctl`: the command-line client of mdevd. It talks only D-Bus, through `mdevd.client`.

Exit status: 0 success; 1 the daemon refused or failed the operation; 2 usage error;
3 the daemon could not be reached; 4 not authorized; 5 no such device or parent; 6 no answer
within --timeout (the client gave up waiting; the operation may still complete); `status`
only: 7 a device's last start failed, 8 something else needs attention (mdevd.cli.mdevdctl_status);
`open` only: once it has the device, COMMAND's own status (mdevdctl becomes COMMAND), 126 if
COMMAND cannot be run, 127 if it is not found.

`--json` output is described in docs/json.md, its shapes are in mdevd.cli.mdevdctl_json.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from mdevd import __version__
from mdevd.cli.mdevdctl_status import (
    StatusReport,
    apply_command,
    list_marker,
    pending_text,
    waiting_text,
)
from mdevd.replies import (
    BACKEND_MDEV,
    LIFETIME_MANUAL,
    STATUS_FAILED,
    STATUS_WAITING,
    CallTimeout,
    ClientError,
    DaemonError,
    DaemonNotRunning,
)

# What only some commands need is imported where they need it: the start-up of a command-line
# program is most of its time (issue 20; tests/daemon/test_ctl_startup_imports.py). `--help`
# imports no connection, JSON, UUID or date module, and nothing of typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

    from mdevd.blocking import BlockingClient
    from mdevd.client import Client
    from mdevd.replies import DeviceInfo, Event, ParentInfo

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_AUTHORIZED = 4
EXIT_NOT_FOUND = 5
#: The client's own --timeout ran out; distinct from 1 because the outcome is unknown.
EXIT_TIMEOUT = 6
# `status` has two more, 7 and 8: mdevd.cli.mdevdctl_status, beside what they are about.
#: `open`: COMMAND could not be run, or was not found (the shell's and env(1)'s numbers).
EXIT_CANNOT_RUN = 126
EXIT_COMMAND_NOT_FOUND = 127

#: `open`: what COMMAND finds in its environment: the inherited fd's number, and which node.
ENV_VFIO_FD = "MDEVD_VFIO_FD"
ENV_VFIO_NODE = "MDEVD_VFIO_NODE"

#: What an admin should look at when the daemon cannot be reached.
_WHAT_TO_DO = "see `systemctl status mdevd` and `journalctl -u mdevd` (is mdevd running?)"

_NOT_FOUND = {"NotFound", "ParentNotFound", "NotDefined"}
_NOT_AUTHORIZED = {"NotAuthorized", "NotAuthorizedCanObtain", "NotAuthorizedDismissed"}


class UsageError(Exception):
    pass


class Unreachable(Exception):
    """The bus or the daemon is not there (exit 3)."""


class NoAnswer(Exception):
    """The client's --timeout ran out (exit 6); the message says what may have happened."""


class CannotRun(Exception):
    """`open`: COMMAND could not be executed (exit 126, or 127 when it was not found)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _attribute(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _owner_label(text: str) -> str:
    """`--owner LABEL`, checked here as the daemon checks it (a usage error, before any call)."""
    from mdevd import owners  # only when given: mdevdctl's start-up is most of its time
    from mdevd.errors import InvalidArgument

    try:
        return owners.label(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: Why `create --lifetime connection` is refused: mdevdctl's connection is gone when it exits.
CONNECTION_LIFETIME_REFUSED = (
    "'connection' would remove the device as soon as mdevdctl exits (a connection lifetime"
    " ends with the bus connection of the program that created the device, and mdevdctl's"
    " ends with its command); use 'unit:NAME' (the VM's .scope or .service), 'manual', or"
    " mdevd.client from a program that stays connected"
)


def _lifetime(text: str) -> str:
    """`create --lifetime`: `manual` or `unit:NAME.service|.scope`; `connection` is refused
    (CONNECTION_LIFETIME_REFUSED)."""
    from mdevd import owners
    from mdevd.errors import InvalidArgument

    try:
        value = owners.lifetime(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value == owners.LIFETIME_CONNECTION:
        raise argparse.ArgumentTypeError(CONNECTION_LIFETIME_REFUSED)
    return value


def _owner_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--owner", type=_owner_label, default=None, metavar="LABEL", help=text)


def _json_options(
    parser: argparse.ArgumentParser,
    schemas: Sequence[int],
    help_text: str = "machine-readable output",
) -> None:
    """`--json` and `--schema N` (docs/json.md). Without --schema, the command's oldest schema:
    what a script written against it expects."""
    parser.add_argument("--json", action="store_true", help=help_text)
    parser.add_argument(
        "--schema",
        type=int,
        choices=schemas,
        default=None,
        metavar="N",
        help=f"the JSON schema to print ({', '.join(map(str, schemas))}; default {schemas[0]}; "
        "implies --json; see docs/json.md)",
    )
    parser.set_defaults(default_schema=schemas[0])


_ACT_AS = (
    "act as LABEL: the device's owner must be LABEL, else it is refused (exit 4) whatever"
    " your rights"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdevdctl",
        description="Manage mediated devices through the mdevd daemon.",
        epilog="Exit status: 0 ok, 1 operation failed, 2 usage, 3 daemon unreachable, "
        "4 not authorized, 5 not found, 6 no answer within --timeout; status: 7 a device "
        "failed, 8 something else needs attention; open: COMMAND's status, 126 COMMAND "
        "cannot run, 127 COMMAND not found.",
    )
    parser.add_argument("--version", action="version", version=f"mdevdctl {__version__}")
    parser.add_argument(
        "--address", help="D-Bus address of the bus (default: the system bus)", default=None
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for an answer (default 60)"
    )
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="allow polkit to ask for a password (auth.interactive)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list devices (defined and active by default)")
    p.add_argument("-d", "--defined", action="store_true", help="only defined devices")
    p.add_argument("-a", "--active", action="store_true", help="only active devices")
    p.add_argument("-p", "--parent", help="only devices of this parent")
    p.add_argument("-u", "--uuid", help="only this device")
    p.add_argument(
        "--owner",
        metavar="OWNER",
        help="only devices of this owner (a label such as nova, or unit:NAME, uid:N)",
    )
    _json_options(p, (0, 1))

    p = sub.add_parser("types", help="list parents and the types they support")
    p.add_argument("-p", "--parent", help="only this parent")
    _json_options(p, (0, 1))

    p = sub.add_parser("show", help="show one device")
    p.add_argument("uuid")
    _json_options(p, (0, 1))

    p = sub.add_parser(
        "status",
        help="what is defined, active, failed, waiting or pending a change; exit 7 if a device"
        " failed, 8 if anything else needs attention",
    )
    _json_options(p, (1,))

    for name, text in (
        ("create", "create a transient device now (gone when stopped)"),
        ("define", "persist a device definition"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("parent")
        p.add_argument("type")
        p.add_argument(
            "-u",
            "--uuid",
            help="the device's UUID (generated here if absent; the same one again is a safe retry)",
        )
        p.add_argument(
            "--attr",
            type=_attribute,
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="an attribute, written in the order given (repeatable)",
        )
        p.add_argument(
            "--placement",
            default="",
            metavar="VF",
            help="where on the parent: an nvidia-vf GPU's virtual function, by PCI address"
            " (e.g. 0000:3d:00.5; default: mdevd chooses)",
        )
        _owner_option(
            p,
            "record LABEL (e.g. nova) as its owner (default: mdevd records your systemd unit,"
            " else your uid)",
        )
        if name == "create":
            p.add_argument(
                "--lifetime",
                type=_lifetime,
                default=None,
                metavar="LIFETIME",
                help="manual (until stopped, the default) or unit:NAME (removed when that"
                " systemd .service or .scope stops); not connection: mdevdctl's connection"
                " ends when it exits",
            )
        if name == "define":
            p.add_argument("--autostart", action="store_true", help="start when the parent appears")
            p.add_argument("--start", action="store_true", help="also start it now")

    for name, text in (
        ("start", "start a defined device"),
        ("stop", "stop (remove) an active device; a definition stays"),
        ("undefine", "drop a definition; a running device keeps running"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("uuid")
        _owner_option(p, _ACT_AS)

    p = sub.add_parser("persist", help="define an active transient device as it is")
    p.add_argument("uuid")
    p.add_argument("--autostart", action="store_true")
    _owner_option(p, _ACT_AS)

    p = sub.add_parser("modify", help="change a definition")
    p.add_argument("uuid")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--autostart", dest="autostart", action="store_const", const=True)
    group.add_argument("--no-autostart", dest="autostart", action="store_const", const=False)
    p.add_argument("--type", dest="type_id", help="a new type")
    p.add_argument("--add-attr", type=_attribute, metavar="NAME=VALUE", help="add an attribute")
    p.add_argument("--del-attr", metavar="NAME", help="remove an attribute (by name)")
    p.add_argument(
        "--index",
        type=int,
        help="where --add-attr inserts, or which --del-attr entry goes (0-based; default: end,"
        " or every entry of that name)",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="also apply to the running device; alone, write the defined attributes to the"
        " running device (applies a pending attribute change)",
    )
    _owner_option(p, _ACT_AS)

    p = sub.add_parser("monitor", help="print lifecycle events as they happen")
    _json_options(p, (0, 1), "one JSON object per line")
    p.add_argument(
        "--timestamp",
        action="store_true",
        help="prefix each event with its local time (ISO 8601, milliseconds)",
    )

    sub.add_parser("reload", help="re-read the definition directories")

    p = sub.add_parser(
        "open",
        help="run COMMAND with an open fd to an active device's VFIO group (or device node)",
        usage="mdevdctl open [-h] [--cdev] UUID -- COMMAND [ARG...]",
        description="Get an open file descriptor to the device's VFIO group node from mdevd"
        " (Device.Open; polkit action org.mdevd.mdevd1.use-device) and run COMMAND with it"
        f" inherited: its number is in ${ENV_VFIO_FD}, the node's kind (group or cdev) in"
        f" ${ENV_VFIO_NODE}. No file permission changes; the device is COMMAND's while it"
        " (or whoever it passes the fd to) keeps the fd open.",
    )
    p.add_argument("uuid")
    p.add_argument(
        "--cdev",
        action="store_true",
        help="the VFIO device node /dev/vfio/devices/vfioN (kernels 6.6+) instead of the group",
    )
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand in `argv` (the first word that is neither an option nor the value of
    --address or --timeout)."""
    words = iter(argv)
    for word in words:
        if word in ("--address", "--timeout"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """`open ... -- COMMAND ARGS`: the arguments for the parser, and COMMAND with its
    arguments (None when there is no `--`, or the subcommand is not `open`)."""
    words = list(argv)
    if "--" in words:
        at = words.index("--")
        if _command_word(words[:at]) == "open":
            return words[:at], words[at + 1 :]
    return words, None


# ---- output -----------------------------------------------------------------------------------


def _device_json(device: DeviceInfo) -> dict[str, Any]:
    """A device in `list --json` and `show --json` without --schema (schema 0)."""
    from mdevd.cli.mdevdctl_json import device_v0  # --json only

    return device_v0(device)


def _json_schema(args: argparse.Namespace) -> int | None:
    """The schema to print, or None for text."""
    if args.schema is not None:
        return int(args.schema)
    return int(args.default_schema) if args.json else None


def _print_json(data: object) -> None:
    import json  # --json only

    print(json.dumps(data, indent=2))


def _device_line(device: DeviceInfo) -> str:
    """`UUID PARENT TYPE auto|manual (active, defined)`, then `on VF` for a device with a
    placement (an nvidia-vf vGPU's virtual function), then `owner=LABEL` for a device whose
    creator named itself (an owner mdevd worked out, `unit:...` or `uid:...`, is left to
    `show`), then `lifetime=...` for a device that does not live until stopped, then a marker
    for a device that needs attention: `[failed]`, `[waiting]` or `[pending]` (at most one:
    only an active device can have a pending change, and an active device is neither failed
    nor waiting)."""
    state = []
    if device.active:
        state.append("active")
    if device.defined:
        state.append("defined")
    flags = "auto" if device.autostart else "manual"
    line = f"{device.uuid} {device.parent} {device.type_id} {flags} ({', '.join(state)})"
    if device.placement:
        line += f" on {device.placement}"
    if device.owner and ":" not in device.owner:
        line += f" owner={device.owner}"
    if device.lifetime and device.lifetime != LIFETIME_MANUAL:
        line += f" lifetime={device.lifetime}"
    marker = list_marker(device)
    return f"{line} {marker}" if marker else line


def _parent_header(parent: ParentInfo) -> str:
    """A parent's line in `types`: its name, as always for an mdev parent; another backend's
    is named after it, `0000:3d:00.0 (nvidia-vf)`."""
    if parent.backend == BACKEND_MDEV:
        return parent.name
    return f"{parent.name} ({parent.backend})"


def _print_device(device: DeviceInfo) -> None:
    print(f"UUID:        {device.uuid}")
    print(f"Parent:      {device.parent}")
    print(f"Type:        {device.type_id}")
    if device.backend:
        print(f"Backend:     {device.backend}")
    if device.placement:
        print(f"Placement:   {device.placement}")
    if device.owner:
        print(f"Owner:       {device.owner}")
    if device.lifetime:
        print(f"Lifetime:    {device.lifetime}")
    print(f"Active:      {'yes' if device.active else 'no'}")
    print(f"Defined:     {'yes' if device.defined else 'no'}")
    print(f"Autostart:   {'yes' if device.autostart else 'no'}")
    if device.status == STATUS_WAITING:
        print(f"Status:      {waiting_text(device)}")
    else:
        print(f"Status:      {device.status}")
    if device.active:
        print(f"Sysfs path:  {device.sysfs_path}")
        print(f"IOMMU group: {device.iommu_group}")
    if device.config_file:
        print(f"Config file: {device.config_file}")
    if device.attributes:
        print("Attributes:")
        for index, (name, value) in enumerate(device.attributes):
            print(f"  [{index}] {name} = {value}")
    if device.pending_changes:
        print(f"Pending:     {pending_text(device)}")
        command = apply_command(device)
        if command:
            print(f"Apply with:  {command}")
    if device.last_error:
        print(f"Last error:  {device.last_error}")
        if device.status == STATUS_FAILED:
            print(f"Retry with:  mdevdctl start {device.uuid}")


def _event_line(event: Event) -> str:
    if event.kind == "daemon-stopped":
        return "daemon-stopped"
    if event.kind == "daemon-started":
        return f"daemon-started owner={event.details.get('owner', '')}"
    if event.kind == "device-event":
        extra = " ".join(f"{k}={v}" for k, v in sorted(event.details.items()))
        return f"{event.event} {event.uuid} {extra}".rstrip()
    return f"object-{event.kind} {event.path}"


# ---- commands ---------------------------------------------------------------------------------


def _edited_attributes(
    current: Sequence[tuple[str, str]], args: argparse.Namespace
) -> list[tuple[str, str]] | None:
    if args.add_attr is None and args.del_attr is None:
        if args.index is not None:
            raise UsageError("--index goes with --add-attr or --del-attr")
        return None
    if args.add_attr is not None and args.del_attr is not None:
        raise UsageError("use --add-attr or --del-attr, not both")
    attributes = list(current)
    if args.add_attr is not None:
        index = len(attributes) if args.index is None else args.index
        if not 0 <= index <= len(attributes):
            raise UsageError(f"--index {index} is outside 0..{len(attributes)}")
        attributes.insert(index, args.add_attr)
        return attributes
    if args.index is not None:
        if not 0 <= args.index < len(attributes) or attributes[args.index][0] != args.del_attr:
            raise UsageError(f"attribute [{args.index}] is not {args.del_attr!r}")
        del attributes[args.index]
        return attributes
    kept = [pair for pair in attributes if pair[0] != args.del_attr]
    if len(kept) == len(attributes):
        raise UsageError(f"the device has no attribute {args.del_attr!r}")
    return kept


def _now() -> str:
    """Local time with its offset, to the millisecond: 2026-12-07T17:56:20.123+01:00."""
    import datetime  # monitor --timestamp only

    return datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")


#: Only these wait for signals, which takes the asyncio client (dbus-fast); every other command
#: is a few blocking calls (mdevd.blocking), so it imports neither asyncio nor dbus-fast: a
#: command-line program's start-up is most of its time.
ASYNC_COMMANDS = frozenset({"monitor"})


def run_blocking(args: argparse.Namespace) -> int:
    # The connection's modules (socket...): not for --help or a usage error.
    from mdevd.blocking import BlockingClient

    try:
        client = BlockingClient.connect(args.address, timeout=args.timeout)
    except ClientError as exc:
        raise Unreachable(str(exc)) from exc
    with client:
        return _dispatch(client, args)


def _dispatch(client: BlockingClient, args: argparse.Namespace) -> int:
    from mdevd import calls  # with the connection (run_blocking)

    command = args.command
    if command == "list":
        devices = client.run(calls.devices())
        if args.defined:
            devices = [d for d in devices if d.defined]
        if args.active:
            devices = [d for d in devices if d.active]
        if args.parent:
            devices = [d for d in devices if d.parent == args.parent]
        if args.uuid:
            devices = [d for d in devices if d.uuid == args.uuid.lower()]
        if args.owner is not None:
            devices = [d for d in devices if d.owner == args.owner]
        schema = _json_schema(args)
        if schema == 0:
            _print_json([_device_json(d) for d in devices])
        elif schema == 1:
            from mdevd.cli.mdevdctl_json import list_v1  # --json only

            _print_json(list_v1(devices))
        else:
            for device in devices:
                print(_device_line(device))
        return EXIT_OK
    if command == "types":
        parents = client.run(calls.parents())
        if args.parent:
            parents = [p for p in parents if p.name == args.parent]
        schema = _json_schema(args)
        if schema is not None:
            from mdevd.cli.mdevdctl_json import types_v0, types_v1  # --json only

            _print_json(types_v0(parents) if schema == 0 else types_v1(parents))
            return EXIT_OK
        for parent in parents:
            print(_parent_header(parent))
            for t in parent.types.values():
                print(f"  {t.type_id}")
                print(f"    Available instances: {t.available_instances}")
                print(f"    Device API: {t.device_api}")
                if t.name:
                    print(f"    Name: {t.name}")
                if t.description:
                    print(f"    Description: {t.description}")
        return EXIT_OK
    if command == "show":
        device = client.run(calls.device(args.uuid))
        schema = _json_schema(args)
        if schema is None:
            _print_device(device)
        else:
            from mdevd.cli.mdevdctl_json import show_v1  # --json only

            _print_json(_device_json(device) if schema == 0 else show_v1(device))
        return EXIT_OK
    if command == "status":
        # Version first: the call that tells "not running" (exit 3, with the hint) apart.
        version = str(client.run(calls.manager_properties()).get("Version", ""))
        report = StatusReport(version, client.run(calls.devices()), client.run(calls.parents()))
        if _json_schema(args) is None:
            print(report.text(), end="")
        else:
            from mdevd.cli.mdevdctl_json import status_v1  # --json only

            _print_json(status_v1(report))
        return report.exit_code()
    if command in ("create", "define"):
        # Chosen here, not by the daemon, so that after a timeout the user knows the UUID and
        # can retry with --uuid: the contract answers an identical retry with the same device.
        if args.uuid:
            uuid = args.uuid
        else:
            import uuid as uuid_module  # only to make one up (uuid imports platform)

            uuid = str(uuid_module.uuid4())
        try:
            if command == "create":
                device = client.run(
                    calls.create_device(
                        args.parent, args.type, uuid=uuid, attributes=args.attr,
                        interactive=args.interactive, placement=args.placement,
                        owner=args.owner, lifetime=args.lifetime,
                    )
                )  # fmt: skip
                uuid = device.uuid
            else:
                path = client.run(
                    calls.define_device(
                        args.parent,
                        args.type,
                        uuid=uuid,
                        attributes=args.attr,
                        autostart=args.autostart or None,
                        start=args.start or None,
                        interactive=args.interactive,
                        placement=args.placement,
                        owner=args.owner,
                    )
                )
                uuid = path.rsplit("/", 1)[-1].replace("_", "-")
        except CallTimeout as exc:
            done = "created" if command == "create" else "defined"
            raise NoAnswer(
                f"no answer within {exc.timeout:g} s; the device may have been {done}: "
                f"UUID {uuid} (check with `mdevdctl show {uuid}`; repeating the command with "
                f"--uuid {uuid} is safe)"
            ) from exc
        print(uuid)
        return EXIT_OK
    if command == "start":
        client.run(calls.start(args.uuid, interactive=args.interactive, owner=args.owner))
        return EXIT_OK
    if command == "stop":
        client.run(calls.stop(args.uuid, interactive=args.interactive, owner=args.owner))
        return EXIT_OK
    if command == "undefine":
        client.run(calls.undefine(args.uuid, interactive=args.interactive, owner=args.owner))
        return EXIT_OK
    if command == "persist":
        client.run(
            calls.define(
                args.uuid,
                autostart=args.autostart or None,
                interactive=args.interactive,
                owner=args.owner,
            )
        )
        return EXIT_OK
    if command == "modify":
        device = client.run(calls.device(args.uuid))
        attributes = _edited_attributes(device.attributes, args)
        if args.autostart is None and args.type_id is None and attributes is None:
            if not args.live:
                raise UsageError(
                    "modify needs --autostart/--no-autostart, --type, an attribute edit or --live"
                )
            # `modify UUID --live` alone: the definition's attributes (what Attributes shows
            # of a defined device) written to the running device, which ends a pending
            # attribute change (the command `status` and `show` suggest for it).
            attributes = list(device.attributes)
        client.run(
            calls.update(
                args.uuid,
                type_id=args.type_id,
                autostart=args.autostart,
                attributes=attributes,
                live=args.live or None,
                interactive=args.interactive,
                owner=args.owner,
            )
        )
        return EXIT_OK
    if command == "reload":
        client.run(calls.reload(interactive=args.interactive))
        return EXIT_OK
    if command == "open":
        run = getattr(args, "run", None)
        if not run:
            raise UsageError(
                "open needs the command to run: mdevdctl open UUID -- COMMAND [ARG...]"
            )
        fd = client.run(calls.open_device(args.uuid, cdev=args.cdev, interactive=args.interactive))
        client.close()
        _exec_with_fd(fd, "cdev" if args.cdev else "group", run)
    raise UsageError(f"unknown command {command!r}")


def _exec_with_fd(fd: int, node: str, command: Sequence[str]) -> NoReturn:
    """Become `command`, with `fd` inherited (not close-on-exec) and named in the environment;
    its exit status is then mdevdctl's. `CannotRun` if it cannot be executed."""
    os.set_inheritable(fd, True)
    env = dict(os.environ, **{ENV_VFIO_FD: str(fd), ENV_VFIO_NODE: node})
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # The user's own command line, run as they gave it: no shell involved.
        os.execvpe(command[0], list(command), env)  # noqa: S606
    except FileNotFoundError:
        os.close(fd)
        raise CannotRun(EXIT_COMMAND_NOT_FOUND, f"{command[0]}: command not found") from None
    except OSError as exc:
        os.close(fd)
        raise CannotRun(EXIT_CANNOT_RUN, f"{command[0]}: {exc.strerror or exc}") from None


async def run_monitor(args: argparse.Namespace) -> int:
    from mdevd.client import Client  # asyncio and dbus-fast: only for what needs them

    try:
        client = await Client.connect(args.address, timeout=args.timeout)
    except ClientError as exc:
        raise Unreachable(str(exc)) from exc
    client.interactive = args.interactive
    try:
        return await _monitor(client, args)
    finally:
        client.close()


async def _monitor(client: Client, args: argparse.Namespace) -> int:
    import json

    from mdevd.cli.mdevdctl_json import event_v0, event_v1

    def subscribed() -> None:
        # On stderr, like busctl's "Monitoring bus message stream.": stdout stays the events.
        print("Monitoring mdevd's device events (Ctrl-C to stop).", file=sys.stderr, flush=True)

    # Across a daemon restart: the bus keeps delivering the new daemon's signals to the
    # same subscription, so the monitor only says that the daemon went and came back.
    schema = _json_schema(args)
    async for event in client.events(subscribed, daemon_restarts=True):
        if schema is not None:
            stamp = _now() if args.timestamp else None
            data = event_v0(event, stamp) if schema == 0 else event_v1(event, stamp)
            print(json.dumps(data), flush=True)
        elif args.timestamp:
            print(f"{_now()} {_event_line(event)}", flush=True)
        else:
            print(_event_line(event), flush=True)
    return EXIT_OK


def _fail(code: int, message: str) -> NoReturn:
    print(f"mdevdctl: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    if argv is None:
        # `mdevdctl list | head -1`: end quietly when the reader goes away, as other tools do,
        # instead of with a BrokenPipeError traceback (Python ignores SIGPIPE by default).
        # Only as the program: called with arguments from a longer-lived process (a test, a
        # manager), the process's signal handling is not ours to change; with SIGPIPE at its
        # default, any write to a closed socket would kill that process.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    words, run = _split_command(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    args.run = run
    try:
        if args.command not in ASYNC_COMMANDS:
            code = run_blocking(args)
        else:
            import asyncio

            code = asyncio.run(run_monitor(args))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        _fail(EXIT_USAGE, str(exc))
    except NoAnswer as exc:
        _fail(EXIT_TIMEOUT, str(exc))
    except CannotRun as exc:
        _fail(exc.code, str(exc))
    except CallTimeout as exc:
        # The client gave up, not the daemon: never reported under the daemon's Error.Timeout.
        _fail(
            EXIT_TIMEOUT,
            f"no answer from mdevd within {exc.timeout:g} s (--timeout); the operation may "
            "still complete",
        )
    except Unreachable as exc:
        _fail(EXIT_UNREACHABLE, f"{exc}\nmdevdctl: {_WHAT_TO_DO}")
    except DaemonNotRunning as exc:
        _fail(
            EXIT_UNREACHABLE,
            f"mdevd is not running: nobody owns org.mdevd.Mdevd1 on the bus [{exc.short_name}]"
            f"\nmdevdctl: {_WHAT_TO_DO}",
        )
    except DaemonError as exc:
        short = exc.short_name
        code = (
            EXIT_NOT_FOUND
            if short in _NOT_FOUND
            else EXIT_NOT_AUTHORIZED
            if short in _NOT_AUTHORIZED
            else EXIT_FAILED
        )
        _fail(code, f"{exc.message} [{short}]")
    except ClientError as exc:
        _fail(EXIT_UNREACHABLE, str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
