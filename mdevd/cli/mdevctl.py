# SPDX-License-Identifier: LGPL-2.1-or-later
"""`mdevctl` for mdevd: mdevctl's command line, carried out by the daemon over D-Bus.

Installed where an admin puts it first in PATH (for libvirt: first in libvirtd's PATH), it
stands in for mdevctl 1.2/1.3 without touching sysfs or /etc/mdevctl.d itself: every read is
the daemon's object tree, every change a method call, so the daemon's locks, transactions,
authorization, callouts and signals apply to libvirt's calls as to everyone else's.

The contract kept is mdevctl's, as the real binary shows it (Debian's 1.2.0 is the
reference, 1.3's options are accepted too): the subcommands and options, `--opt=value` and
`--opt value`, the text and `--dumpjson` listings byte for byte, a generated UUID printed on
stdout, the exit status (0 success, 1 failure as `Error: ...` on stderr, 2 usage error) and the
error texts callers show or parse ("Error: Device already exists"). Where mdevd deliberately
differs (one definition per UUID, a corrupt file does not fail everything), mdevd's own
message is printed after `Error: `. docs/mdevctl-compat.md lists the differences.

The listings (`list`, `types`) show mdevs only, as mdevctl's do (`is_mdev`): an `nvidia-vf`
vGPU on an SR-IOV virtual function is not one, and libvirt would take anything listed for an
mdev. Commands that name a device's UUID or a parent act on it whatever its backend.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from mdevd import __version__, calls, mdevctl_shapes
from mdevd.blocking import BlockingClient
from mdevd.cli import mdevctl_output
from mdevd.cli.mdevctl_output import Listed
from mdevd.replies import BACKEND_MDEV, ClientError, DaemonError

# libvirt runs this program once per node-device operation, so what it imports is most of its
# time (issue 20): what only some commands need is imported where they need it, typing only
# for annotations.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

    from mdevd.model import Attributes
    from mdevd.replies import DeviceInfo, ParentInfo

#: The mdevctl version whose command line this reproduces.
MDEVCTL_VERSION = "1.3.0"
#: Callouts may take minutes (ap-check waits for its lock); the daemon bounds them itself.
CALL_TIMEOUT = 600.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: Patterns, not compiled here: `re` compiles one at its first use (an error's), not at start.
_VETO = (
    r"vetoed by callout script (?P<path>/.*?) \(exit status (?P<code>-?\d+)\)(?:: (?P<err>.*))?\Z"
)


class UsageError(Exception):
    """A command line clap would refuse: exit 2, like mdevctl."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class CommandError(Exception):
    """What mdevctl prints as `Error: MESSAGE` (and `Caused by:` CAUSE): exit 1."""

    def __init__(self, message: str, cause: str = "", before: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
        #: Printed on stderr before the error (a callout script's own stderr).
        self.before = before


def _os_error(e: OSError) -> str:
    """An OSError as Rust's io::Error prints it."""
    return f"{e.strerror} (os error {e.errno})"


# ---- the command line ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage().strip().removeprefix("usage: "))


def _uuid(text: str) -> str:
    canonical = mdevctl_shapes.mdevctl_uuid(text)
    if canonical is None:
        raise argparse.ArgumentTypeError(f"Invalid value {text!r} for '--uuid <UUID>'")
    return canonical


def _json_path(text: str) -> str:
    """`--jsonfile`'s path as `str(pathlib.Path(text))` reads and prints it (slashes
    collapsed, except two leading ones; `.` parts and a trailing slash dropped; "" is "."),
    without importing pathlib: 4 ms, as much as the rest of a `--jsonfile` call's imports."""
    relative = text.lstrip("/")
    leading = len(text) - len(relative)
    root = "//" if leading == 2 else "/" if leading else ""
    return root + "/".join(part for part in relative.split("/") if part not in ("", ".")) or "."


def _index(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"Invalid value {text!r} for '--index <INDEX>'")
    return int(text)


def version_line(program: str = "mdevctl") -> str:
    """What `--version` prints: mdevctl's `NAME VERSION`, then mdevd's own version."""
    return f"{program} {MDEVCTL_VERSION} (mdevd {__version__})"


def build_parser(prog: str = "mdevctl", *, lsmdev: bool = False) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="A mediated device management utility for Linux (mdevctl "
        f"{MDEVCTL_VERSION}'s command line, carried out by mdevd {__version__})",
        allow_abbrev=False,
    )
    parser.add_argument(
        "-V",
        "--version",
        action="version",
        version=version_line(),
    )
    sub = parser.add_subparsers(dest="command", metavar="<SUBCOMMAND>", parser_class=_Parser)
    force_help = "Force command execution even if a device-specific callout script fails"

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, allow_abbrev=False)

    p = command("define", "Define a persistent mediated device")
    p.add_argument("-u", "--uuid", type=_uuid, help="Assign UUID to the device")
    p.add_argument("-a", "--auto", action="store_true", help="Automatically start device")
    p.add_argument("-p", "--parent", help="Specify the parent of the device")
    p.add_argument("-t", "--type", dest="mdev_type", help="Specify the mdev type of the device")
    p.add_argument("--jsonfile", type=_json_path, help="Specify device details in JSON format")
    p.add_argument("-f", "--force", action="store_true", help=force_help)

    p = command("undefine", "Undefine a persistent mediated device")
    p.add_argument("-u", "--uuid", type=_uuid, required=True, help="UUID of the device")
    p.add_argument("-p", "--parent", help="Parent of the device to be undefined")
    p.add_argument("-f", "--force", action="store_true", help=force_help)

    p = command("modify", "Modify the definition of a mediated device")
    p.add_argument("-u", "--uuid", type=_uuid, required=True, help="UUID of the mdev to modify")
    p.add_argument("-p", "--parent", help="Parent of the mdev to modify")
    p.add_argument("-t", "--type", dest="mdev_type", help="Modify the mdev type for this device")
    p.add_argument("--addattr", metavar="attr_name", help="Add a new attribute")
    p.add_argument("--delattr", action="store_true", help="Delete an attribute")
    p.add_argument("-i", "--index", type=_index, help="Index of the attribute to modify")
    p.add_argument("--value", metavar="attr_value", help="Value for the attribute")
    group = p.add_mutually_exclusive_group()
    group.add_argument("-a", "--auto", action="store_true", help="Start automatically")
    group.add_argument("-m", "--manual", action="store_true", help="Start manually")
    p.add_argument(
        "-l",
        "--live",
        action="store_true",
        help="Modify the running device (only, unless used together with --defined)",
    )
    p.add_argument("-d", "--defined", action="store_true", help="Modify the stored definition")
    p.add_argument("--jsonfile", type=_json_path, help="Specify device details in JSON format")
    p.add_argument("-f", "--force", action="store_true", help=force_help)

    p = command("start", "Start a mediated device")
    p.add_argument("-u", "--uuid", type=_uuid, help="UUID of the device to start")
    p.add_argument("-p", "--parent", help="Parent of the device to start")
    p.add_argument("-t", "--type", dest="mdev_type", help="Mdev type of the device to start")
    p.add_argument("--jsonfile", type=_json_path, help="Details of the device, in JSON format")
    p.add_argument("-f", "--force", action="store_true", help=force_help)

    p = command("stop", "Stop a mediated device")
    p.add_argument("-u", "--uuid", type=_uuid, required=True, help="UUID of the device to stop")
    p.add_argument("-f", "--force", action="store_true", help=force_help)

    p = command("list", "List mediated devices")
    _list_options(p)
    # clap gives `list` a version of its own (the `lsmdev` link's): `mdevctl-list 1.2.0`.
    p.add_argument(
        "-V",
        "--version",
        action="version",
        version=version_line("lsmdev" if lsmdev else "mdevctl-list"),
        help="Print version information",
    )

    p = command("types", "List available mediated device types")
    p.add_argument("-p", "--parent", help="Show supported types for the specified parent")
    p.add_argument("--dumpjson", action="store_true", help="Output in JSON format")

    p = sub.add_parser("start-parent-mdevs", allow_abbrev=False)  # hidden, as in mdevctl
    p.add_argument("parent")

    p = command("help", "Print this message or the help of the given subcommand(s)")
    p.add_argument("subcommand", nargs="?", metavar="SUBCOMMAND")
    return parser


def _list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--defined", action="store_true", help="Show defined devices")
    p.add_argument("--dumpjson", action="store_true", help="Output device list in json format")
    p.add_argument("-v", "--verbose", action="store_true", help="Print the attributes too")
    p.add_argument("-u", "--uuid", type=_uuid, help="List devices matching the specified UUID")
    p.add_argument("-p", "--parent", help="List devices of the specified parent device")


def _split_short_equals(argv: Sequence[str]) -> list[str]:
    """clap takes `-u=VALUE`; argparse would keep the `=`."""
    return [part for arg in argv for part in ((arg[:2], arg[3:]) if _short_equals(arg) else (arg,))]


def _short_equals(arg: str) -> bool:
    """`-u=VALUE` (also -p, -t, -a, -i): what `re.fullmatch(r"-[uptai]=.*", arg)` matches
    (`.` stops at a newline), without a regular expression compiled at every start."""
    return arg[:1] == "-" and arg[1:2] in tuple("uptai") and arg[2:3] == "=" and "\n" not in arg


def _check_combinations(args: argparse.Namespace) -> None:
    """The conflicts and requirements clap enforces (usage errors, exit 2)."""
    command = args.command

    def refuse(message: str) -> NoReturn:
        raise UsageError(message, f"mdevctl {command} [OPTIONS]")

    if command in ("define", "start") and args.uuid is None and args.parent is None:
        refuse(
            "The following required arguments were not provided:\n    --uuid <UUID>\n"
            "    --parent <PARENT>"
        )
    if command in ("define", "start") and args.jsonfile is not None:
        if args.mdev_type is not None:
            refuse("The argument '--type <type>' cannot be used with '--jsonfile <JSONFILE>'")
        if command == "define" and args.auto:
            refuse("The argument '--auto' cannot be used with '--jsonfile <JSONFILE>'")
    if command == "modify":
        if args.addattr is not None and args.value is None:
            refuse("The following required arguments were not provided:\n    --value <attr_value>")
        if args.value is not None and args.delattr:
            refuse("The argument '--value <attr_value>' cannot be used with '--delattr'")
        if args.live and args.jsonfile is None:
            refuse("The following required arguments were not provided:\n    --jsonfile <JSONFILE>")
        if args.live and (args.mdev_type or args.index is not None or args.value is not None):
            refuse("The argument '--live' cannot be used with '--type', '--index' or '--value'")
        if args.jsonfile is not None and (args.mdev_type or args.index is not None or args.value):
            refuse("The argument '--jsonfile' cannot be used with '--type', '--index' or '--value'")


# ---- running it ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) if argv is None else "mdevctl"
    lsmdev = prog.endswith("lsmdev")
    if lsmdev:  # mdevctl's `lsmdev` link: `list` with its options
        arguments = ["list", *arguments]
    parser = build_parser(lsmdev=lsmdev)
    try:
        args = parser.parse_args(_split_short_equals(arguments))
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command == "help":  # clap's: the help on stdout, exit 0; needs no daemon
            if args.subcommand is None:
                parser.print_help(sys.stdout)
                return EXIT_OK
            parser.parse_args([args.subcommand, "--help"])  # exits, or a usage error
        _check_combinations(args)
    except UsageError as e:
        sys.stderr.write(
            f"error: {e.message}\n\nUSAGE:\n    {e.usage}\n\nFor more information try --help\n"
        )
        return EXIT_USAGE
    try:
        return _run(args)
    except CommandError as e:
        sys.stderr.write(e.before)
        text = f"Error: {e.message}\n"
        if e.cause:
            text += f"\nCaused by:\n    {e.cause}\n"
        sys.stderr.write(text)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    try:
        client = BlockingClient.connect(timeout=CALL_TIMEOUT)
    except ClientError as e:
        raise CommandError(f"cannot reach mdevd: {e}") from None
    try:
        handler = _COMMANDS[args.command]
        handler(Session(client), args)
    except DaemonError as e:
        raise _daemon_error(e) from None
    except ClientError as e:
        raise CommandError(f"mdevd did not answer: {e}") from None
    finally:
        client.close()
    return EXIT_OK


def _daemon_error(e: DaemonError) -> CommandError:
    """A daemon error as mdevctl would print its cause."""
    if e.short_name == "Vetoed":
        match = re.search(_VETO, e.message, re.S)
        if match is not None:
            path = match["path"]
            script_stderr = (match["err"] or "").rstrip("\n")
            before = f"{os.path.basename(path)}: {script_stderr}\n" if script_stderr else ""
            return CommandError(
                f'callout script "{path}" failed with return code {match["code"]}', before=before
            )
    return CommandError(e.message)


class Session:
    """The daemon's view, fetched once per command, and the calls commands make."""

    def __init__(self, client: BlockingClient) -> None:
        self.client = client

    def device(self, uuid: str) -> DeviceInfo | None:
        try:
            return self.client.run(calls.device(uuid))
        except DaemonError as e:
            if e.short_name == "NotFound":
                return None
            raise

    def running_attributes(self, device: DeviceInfo) -> Attributes:
        """What the device's callout script says (mdevctl's `get attributes`), through the
        daemon; the attributes mdevd knows when the caller may not run scripts."""
        try:
            return self.client.run(calls.query_attributes(device.uuid))
        except DaemonError as e:
            if e.short_name.startswith("NotAuthorized") or e.short_name == "NotActive":
                return device.attributes
            raise

    def parent(self, name: str) -> ParentInfo:
        """The registered parent `name`, or mdevctl's error (with its case hint). Any
        backend's: the caller named a parent, which the daemon may create on."""
        parents = self.client.run(calls.parents())
        for parent in parents:
            if parent.name == name:
                return parent
        for parent in parents:
            if parent.name.lower() == name.lower():
                raise CommandError(
                    f"Unable to find parent device '{name}'. Did you mean '{parent.name}'?"
                )
        raise CommandError(f"Unable to find parent device '{name}'")

    def start_failure(
        self,
        e: DaemonError,
        uuid: str,
        parent: str,
        type_id: str,
        running: DeviceInfo | None = None,
    ) -> CommandError:
        """The daemon's refusal of a start, in mdevctl's words; a missing parent with the
        case hint mdevctl gives (`-p MTTY`: "Did you mean 'mtty'?"). `running`: the device
        as it ran before the call (None if it did not), which the daemon refused to start
        again (`AlreadyActive`, or `Exists` for another parent or type)."""
        if e.short_name == "ParentNotFound":
            try:
                self.parent(parent)
            except CommandError as worded:
                return worded
        if running is not None and e.short_name in ("AlreadyActive", "Exists"):
            return _running_twin(running, parent, type_id)
        return _create_error(e, uuid, parent, type_id)


def _running_twin(running: DeviceInfo, parent: str, type_id: str) -> CommandError:
    """mdevctl's words for a start of a device that runs (its first check before `create`,
    made after `pre`: the daemon makes it inside the callout transaction too)."""
    if running.parent != parent:
        return CommandError("Device exists under different parent")
    if running.type_id != type_id:
        return CommandError("Device exists with different type")
    return CommandError("Device already exists")


def _is_retry(running: DeviceInfo, wanted: mdevctl_shapes.MdevctlConfig) -> bool:
    """Whether the daemon takes a create of `wanted` for a retry of the one that made
    `running` (dbus-api.md rule 2): it then answers with the device, not an error."""
    return not running.defined and (running.parent, running.type_id, running.attributes) == (
        wanted.parent,
        wanted.type_id,
        wanted.attributes,
    )


_NO_ATTRIBUTE = r"has no attribute '(?P<name>.*)'\Z"
_REJECTED = r"attribute '(?P<name>.*)' rejected value '(?P<value>.*)' \((?P<reason>[^()]*)\)\Z"


def _errno_by_text() -> dict[str, int]:
    """strerror text -> errno, to print a kernel refusal as Rust's io::Error does."""
    import errno  # an attribute error's only

    return {os.strerror(code): code for code in sorted(errno.errorcode, reverse=True)}


def _attribute_error(e: DaemonError) -> CommandError | None:
    """An attribute the kernel refused, as mdevctl words it (`write_attr`)."""
    missing = re.search(_NO_ATTRIBUTE, e.message)
    if missing is not None:
        return CommandError(f"Invalid attribute '{missing['name']}'")
    rejected = re.search(_REJECTED, e.message, re.S)
    if rejected is not None:
        reason = rejected["reason"]
        code = _errno_by_text().get(reason)
        cause = f"{reason} (os error {code})" if code is not None else reason
        return CommandError(
            f"Failed to write {rejected['value']} to attribute {rejected['name']}", cause
        )
    return None


def _create_error(e: DaemonError, uuid: str, parent: str, type_id: str) -> CommandError:
    """The daemon's answer to a create, in mdevctl's words where mdevctl has them."""
    short = e.short_name
    if short == "AttributeRejected":
        return _attribute_error(e) or _daemon_error(e)
    if short == "ParentNotFound":
        return CommandError(f"Unable to find parent device '{parent}'")
    if short == "TypeNotSupported":
        return CommandError(f"Parent {parent} does not support mdev type {type_id}")
    if short == "NoInstancesAvailable":
        return CommandError(f"No available instances of {type_id} on {parent}")
    if short == "AlreadyActive":
        return CommandError("Device already exists")
    # Exists here is not a running twin (`start_failure` words that as mdevctl does) but
    # mdevd's one device per UUID: a definition elsewhere. Its message says so.
    return _daemon_error(e)


def _read_jsonfile(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise CommandError(f'Unable to read jsonfile "{path}"', _os_error(e)) from None
    except UnicodeDecodeError:
        raise CommandError(
            f'Unable to read jsonfile "{path}"', "stream did not contain valid UTF-8"
        ) from None


def _from_json(text: str, uuid: str, parent: str) -> mdevctl_shapes.MdevctlConfig:
    # mdevd's own reading of mdevctl's JSON, which the daemon's reading of mdevctl's files
    # shares, without the definitions' store and types: --jsonfile only.
    from mdevd import mdevctl_config
    from mdevd.errors import MdevdError

    try:
        return mdevctl_config.read_config(text, uuid, parent)
    except MdevdError as e:
        raise CommandError(e.message.removeprefix("mdevctl rejects it: ")) from None


def _listed(device: DeviceInfo, attributes: Attributes | None = None) -> Listed:
    return Listed(
        uuid=device.uuid,
        parent=device.parent,
        type_id=device.type_id,
        autostart=device.autostart,
        attributes=device.attributes if attributes is None else attributes,
        active=device.active,
        defined=device.defined,
    )


def is_mdev(backend: str) -> bool:
    """Whether mdevctl would see a device or parent of this `backend`.

    mdevctl knows mdevs only: `types` reads /sys/class/mdev_bus, `list` the mdevs and its
    own definitions. An `nvidia-vf` GPU or vGPU (docs/nvidia-vf.md) is none of these, and
    libvirt would make an mdev node device of anything `list --dumpjson` shows. A device
    whose backend is unknown ("": defined, not running, its parent absent) is shown, as
    mdevctl shows every definition in its directory whatever its parent.
    """
    return backend in (BACKEND_MDEV, "")


# ---- the commands --------------------------------------------------------------------------


def _list(session: Session, args: argparse.Namespace) -> None:
    # Only what mdevctl would list (`is_mdev`): with `-u` too, as a listing.
    devices = [
        d
        for d in session.client.run(calls.devices())
        if is_mdev(d.backend)
        and (d.defined if args.defined else d.active)
        and (args.uuid is None or d.uuid == args.uuid)
        and (args.parent is None or d.parent == args.parent)
    ]
    if args.defined:
        listed = [_listed(d) for d in devices]
    else:
        listed = [_listed(d, session.running_attributes(d)) for d in devices]
    if args.dumpjson:
        sys.stdout.write(mdevctl_output.list_json(listed, uuid_given=args.uuid is not None))
    else:
        sys.stdout.write(
            mdevctl_output.list_text(listed, defined=args.defined, verbose=args.verbose)
        )


def _types(session: Session, args: argparse.Namespace) -> None:
    # Only mdevctl's parents (/sys/class/mdev_bus): an nvidia-vf GPU is not one, also by name.
    parents = [
        p
        for p in session.client.run(calls.parents())
        if is_mdev(p.backend) and (args.parent is None or p.name == args.parent)
    ]
    sys.stdout.write(
        mdevctl_output.types_json(parents) if args.dumpjson else mdevctl_output.types_text(parents)
    )


def _start(session: Session, args: argparse.Namespace) -> None:
    client = session.client
    if args.jsonfile is not None:
        text = _read_jsonfile(args.jsonfile)
        if args.parent is None:
            raise CommandError("Parent device required to start device via json file")
        uuid = args.uuid or _new_uuid()
        wanted = _from_json(text, uuid, args.parent)
        existing = session.device(uuid) if args.uuid else None
        if existing is not None and existing.defined and not existing.active:
            # mdevctl would start a transient twin of the definition; mdevd has one device
            # per UUID, so it starts the definition when the file describes just that.
            if (existing.parent, existing.type_id, existing.attributes) != (
                wanted.parent,
                wanted.type_id,
                wanted.attributes,
            ):
                raise CommandError(
                    f"device {uuid} is defined differently (type {existing.type_id} on "
                    f"{existing.parent}); mdevd keeps one device per UUID: start it with "
                    f"`mdevctl start -u {uuid}` or change its definition first"
                )
            try:
                client.run(calls.start(uuid, force=args.force or None))
            except DaemonError as e:
                raise session.start_failure(e, uuid, existing.parent, existing.type_id) from None
        else:
            _create_transient(session, wanted, args.force)
    else:
        defined = None
        if args.uuid is not None:
            device = session.device(args.uuid)
            if device is not None and device.defined and args.parent in (None, device.parent):
                defined = device
        if defined is not None:
            if args.mdev_type is not None and args.mdev_type != defined.type_id:
                raise CommandError(
                    f"Device {defined.uuid} already exists on parent {defined.parent} "
                    f"with type {defined.type_id}"
                )
            # A running device is refused by the daemon inside the callout transaction
            # (AlreadyActive), so the scripts hear of the failure as mdevctl's do.
            try:
                client.run(calls.start(defined.uuid, force=args.force or None))
            except DaemonError as e:
                raise session.start_failure(
                    e, defined.uuid, defined.parent, defined.type_id
                ) from None
            return
        if args.mdev_type is not None and args.parent is None:
            raise CommandError("can't provide type without parent")
        if args.mdev_type is None or args.parent is None:
            raise CommandError("Device is insufficiently specified")
        uuid = args.uuid or _new_uuid()
        wanted = mdevctl_shapes.MdevctlConfig(uuid, args.parent, args.mdev_type, False, ())
        _create_transient(session, wanted, args.force)
    if args.uuid is None:
        print(uuid)


def _create_transient(session: Session, wanted: mdevctl_shapes.MdevctlConfig, force: bool) -> None:
    """mdevctl's start of a device it creates from the command line or a file.

    mdevctl runs `pre` first, then refuses a device that already runs, then `post` with
    `failure` and the notifiers; the parent, the type and the kernel's answer likewise. The
    daemon checks all of these inside its callout transaction, so the refusal is its
    (worded here as mdevctl words it), except for one case: a create identical to a running
    transient device is, to the daemon, a retry of a create that succeeded, answered with
    the device. That one is asked of the device's Start, which refuses a running device
    inside the transaction.
    """
    client = session.client
    running = session.device(wanted.uuid)
    if running is not None and not running.active:
        running = None
    retry = running is not None and _is_retry(running, wanted)
    try:
        if retry:
            try:
                client.run(calls.start(wanted.uuid, force=force or None))
            except DaemonError as e:
                if e.short_name not in ("NotDefined", "NotFound"):
                    raise
                running, retry = None, False  # stopped meanwhile: create it, as asked
        if not retry:
            client.run(
                calls.create_device(
                    wanted.parent,
                    wanted.type_id,
                    uuid=wanted.uuid,
                    attributes=wanted.attributes,
                    force=force or None,
                )
            )
    except DaemonError as e:
        raise session.start_failure(
            e, wanted.uuid, wanted.parent, wanted.type_id, running
        ) from None


def _new_uuid() -> str:
    import uuid  # only to make one up (uuid imports platform)

    return str(uuid.uuid4())


def _caller_holds_group(group: int) -> bool:
    """Whether the program that ran this one has vfio group `group` open.

    libvirt opens a device's group before it runs `mdevctl stop` (vfio allows one opener, so
    no VM can take the device while it goes) and keeps it open meanwhile; mdevctl never looks
    at the group, but the daemon takes an open group for a VM's, so it must be told.
    """
    if group < 0:
        return False
    try:
        fd_dir = f"/proc/{os.getppid()}/fd"
        entries = [os.path.join(fd_dir, name) for name in os.listdir(fd_dir)]
    except OSError:  # not ours to read: then it is not the caller's either
        return False
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:  # closed meanwhile
            continue
        if target.split("/")[-2:] == ["vfio", str(group)]:
            return True
    return False


def _stop(session: Session, args: argparse.Namespace) -> None:
    try:
        device = session.device(args.uuid)
        holds = device is not None and device.active and _caller_holds_group(device.iommu_group)
        session.client.run(
            calls.stop(args.uuid, force=args.force or None, caller_holds_group=holds or None)
        )
    except DaemonError as e:
        if e.short_name in ("NotActive", "NotFound"):
            raise CommandError(
                f"Error removing device {args.uuid}", "No such file or directory (os error 2)"
            ) from None
        if e.short_name == "Vetoed":
            raise _daemon_error(e) from None
        raise CommandError(f"Error removing device {args.uuid}", e.message) from None


def _define(session: Session, args: argparse.Namespace) -> None:
    client = session.client
    uuid = args.uuid or _new_uuid()
    if args.jsonfile is not None:
        text = _read_jsonfile(args.jsonfile)
        if args.parent is None:
            raise CommandError(f'Parent device required to define device via "{args.jsonfile}"')
        existing = session.device(uuid)
        if existing is not None and existing.defined and existing.parent == args.parent:
            raise CommandError(
                f"Cowardly refusing to overwrite existing config for {args.parent}/{uuid}"
            )
        wanted = _from_json(text, uuid, args.parent)
        client.run(
            calls.define_device(
                wanted.parent,
                wanted.type_id,
                uuid=uuid,
                attributes=wanted.attributes,
                autostart=wanted.autostart,
                force=args.force or None,
            )
        )
    else:
        existing = session.device(uuid) if args.uuid else None
        running = existing if existing is not None and existing.active else None
        if args.uuid and args.parent is None and (running is None or args.mdev_type):
            raise CommandError("No parent specified")
        parent = args.parent or (running.parent if running else None)
        type_id = args.mdev_type or (running.type_id if running else None)
        if parent is None:
            raise CommandError("No parent specified")
        if type_id is None:
            raise CommandError("No type specified")
        if existing is not None and existing.defined and existing.parent == parent:
            raise CommandError(f"Device {uuid} on {parent} already defined")
        if running is not None and (running.parent, running.type_id) == (parent, type_id):
            # Define the running device as it is: the daemon asks the callouts for its
            # attributes (mdevctl's `get attributes`).
            client.run(calls.define(uuid, autostart=args.auto, force=args.force or None))
        else:
            client.run(
                calls.define_device(
                    parent, type_id, uuid=uuid, autostart=args.auto, force=args.force or None
                )
            )
    if args.uuid is None:
        print(uuid)


def _undefine(session: Session, args: argparse.Namespace) -> None:
    device = session.device(args.uuid)
    if device is None or not device.defined or args.parent not in (None, device.parent):
        raise CommandError("No devices match the specified uuid")
    session.client.run(calls.undefine(args.uuid, force=args.force or None))


def _not_defined(uuid: str, parent: str | None) -> CommandError:
    where = f"{parent}/{uuid}" if parent else uuid
    return CommandError(f"Mediated device {where} is not defined")


def _modify(session: Session, args: argparse.Namespace) -> None:
    client = session.client
    device = session.device(args.uuid)
    if args.live:
        if device is None or not device.active or args.parent not in (None, device.parent):
            where = f"{args.parent}/{args.uuid}" if args.parent else args.uuid
            raise CommandError(f"Mediated device {where} is not active")
        wanted = _from_json(_read_jsonfile(args.jsonfile), args.uuid, device.parent)
        if wanted.type_id != device.type_id:
            raise CommandError("'type' cannot be changed on active mdev")
        if args.defined:
            if not device.defined:
                raise _not_defined(args.uuid, device.parent)
            client.run(
                calls.update(
                    args.uuid,
                    autostart=wanted.autostart,
                    attributes=wanted.attributes,
                    live=True,
                    force=args.force or None,
                )
            )
        else:
            client.run(
                calls.update(args.uuid, attributes=wanted.attributes, live=True, persist=False)
            )
        return
    if device is None or not device.defined or args.parent not in (None, device.parent):
        raise _not_defined(args.uuid, args.parent)
    if args.jsonfile is not None:
        if args.parent is None:
            raise CommandError("Parent device required to modify device via json file")
        wanted = _from_json(_read_jsonfile(args.jsonfile), args.uuid, args.parent)
        client.run(
            calls.update(
                args.uuid,
                type_id=wanted.type_id,
                autostart=wanted.autostart,
                attributes=wanted.attributes,
                force=args.force or None,
            )
        )
        return
    attributes = list(device.attributes)
    if args.addattr is not None:
        index = len(attributes) if args.index is None else args.index
        if index > len(attributes):
            raise CommandError(f"Attribute index {index} is invalid")
        attributes.insert(index, (args.addattr, args.value))
    elif args.delattr:
        if args.index is not None:
            if args.index >= len(attributes):
                raise CommandError(f"Attribute index {args.index} is invalid")
            del attributes[args.index]
        elif attributes:
            attributes.pop()
    autostart = True if args.auto else False if args.manual else None
    client.run(
        calls.update(
            args.uuid,
            type_id=args.mdev_type,
            autostart=autostart,
            attributes=attributes if tuple(attributes) != device.attributes else None,
            force=args.force or None,
        )
    )


def _start_parent_mdevs(session: Session, args: argparse.Namespace) -> None:
    """Start the parent's autostart devices (the daemon does this by itself when a parent
    registers; the udev rule that calls this is harmless beside it). The parent is named,
    so an nvidia-vf GPU's devices are started too."""
    for device in session.client.run(calls.devices()):
        if device.parent != args.parent or not device.defined or not device.autostart:
            continue
        if device.active:
            continue
        try:
            session.client.run(calls.start(device.uuid))
        except DaemonError as e:
            if e.short_name != "AlreadyActive":
                sys.stderr.write(f"{e.message}\n")


_COMMANDS = {
    "list": _list,
    "types": _types,
    "start": _start,
    "stop": _stop,
    "define": _define,
    "undefine": _undefine,
    "modify": _modify,
    "start-parent-mdevs": _start_parent_mdevs,
}
