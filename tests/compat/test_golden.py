# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevctl's own golden test data, through the front end against the daemon.

tests/data/mdevctl-testdata/ is mdevctl's testdata/ (define, list, modify, start, types,
undefine). mdevctl's Rust tests (src/tests/*.rs) call its command functions on a fake file
tree; here each of their cases is the same command line given to the `mdevctl` front end, with
the same setup made real: definitions copied into mdevctl's directory, running devices created
in the emulated kernel, and mdevctl's test callouts (rc0, rc1, good-json, bad-json, ver-rc0,
ver-rc1, live-rc0, live-rc1, modify-active; their shell sources are not vendored) replaced by
scripts doing what those tests show they do. mdevctl's helpers return the output without the
final newline `println!` adds; the program prints it, so the expected output gets one.

A case where mdevd deliberately differs says why in `deviation` and states what mdevd does
instead; every such case is listed in docs/mdevctl-compat.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.compat import scripts
from tests.compat.conftest import ClientThread, CompatStack, StackFactory
from tests.support.paths import REPO
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(600, method="thread")

DATA = REPO / "tests" / "data" / "mdevctl-testdata"
DOCS = REPO / "docs" / "mdevctl-compat.md"

UUID = "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9"
P2 = "0000:00:02.0"
P3 = "0000:00:03.0"
PARENT3 = "0000:2b:00.0"
UUID_VER = scripts.UUID_VERSIONED
UUID_LIVE = scripts.UUID_LIVE
ONE_DEVICE = ("Deviation: mdevd holds one definition per UUID (the kernel allows one device "
              "per UUID): of the copies under two parents it keeps the first by parent name "
              f"({P2}) and reports the other.")  # fmt: skip

# Parents and types the cases use. arbitrary_type on 0000:00:03.0 takes one device at a time,
# so a second one finds no instances left ("no-instances").
DEVICES_SCENARIO = "".join(
    f"""
[[parent]]
name = "{name}"
devpath = "devices/pci0000:00/{name}"
subsystem = "pci"
subsystem_path = "bus/pci"
driver = "test"
owned_by_driver = false
max_instances = 16
"""
    + "".join(
        f"""
[[parent.type]]
id = "{type_id}"
name = "{type_id}"
device_api = "vfio-pci"
{"max_instances = 1" if (name, type_id) == (P3, "arbitrary_type") else ""}
"""
        for type_id in (
            "arbitrary_type",
            "arbitrary_type1",
            "arbitrary_type2",
            "i915-GVTg_V5_4",
            "different_type",
        )
    )
    + """
[[parent.type]]
id = "vfio_ap-passthrough"
name = "vfio_ap-passthrough"
device_api = "vfio-ap"
vfio_ap = { max_adapter = 255, max_domain = 255 }
"""
    for name in (P2, P3, PARENT3)
)

TYPES_SCENARIO = """
[[parent]]
name = "0000:00:02.0"
devpath = "devices/pci0000:00/0000:00:02.0"
subsystem = "pci"
subsystem_path = "bus/pci"
driver = "test"
owned_by_driver = false

[[parent.type]]
id = "mdev_type1"
name = "name1"
device_api = "vfio-pci"
description = "description 1"
max_instances = 5

[[parent.type]]
id = "mdev_type2"
name = "name2"
device_api = "vfio-pci"
max_instances = 16

[[parent.type]]
id = "mdev_type3"
name = "name3"
device_api = "vfio-pci"
description = "description 3"
max_instances = 1

[[parent]]
name = "0000:00:03.0"
devpath = "devices/pci0000:00/0000:00:03.0"
subsystem = "pci"
subsystem_path = "bus/pci"
driver = "nvidia"
owned_by_driver = false

[[parent.type]]
id = "nvidia-155"
name = "GRID M10-2B"
device_api = "vfio-pci"
max_instances = 4

[[parent.type]]
id = "nvidia-36"
name = "GRID M10-0Q"
device_api = "vfio-pci"
max_instances = 16

[[parent]]
name = "0.0.26ab"
devpath = "devices/css0/0.0.26ab"
subsystem = "css"
subsystem_path = "bus/css"
driver = "vfio_ccw"
owned_by_driver = false

[[parent.type]]
id = "vfio_ccw-io"
name = "name"
device_api = "vfio_mdev"
description = "description"
max_instances = 4
"""


@dataclass
class Case:
    name: str
    argv: Sequence[str]
    passes: bool
    #: (uuid, parent, file in the group's data dir) to copy into mdevctl's directory.
    defined: Sequence[tuple[str, str, str]] = ()
    #: (uuid, parent, type) running in the kernel beforehand.
    active: Sequence[tuple[str, str, str]] = ()
    callouts: Sequence[str] = ()
    jsonfile: str = ""
    #: Expected content of a definition file: (parent, uuid or "" for the printed one, file).
    expect_file: tuple[str, str, str] | None = None
    #: Expected `list --dumpjson -u UUID` of the running device (a file of the group).
    expect_active: str = ""
    #: Further checks, given the stack and the front end's result.
    check: Callable[[Golden, Any], None] | None = None
    unregistered: Sequence[str] = ()
    deviation: str = ""
    #: The golden output a deviation does not produce (so that every golden file is accounted).
    instead_of: str = ""
    #: Changes nothing (list, types): a following case with the same setup reuses it.
    read_only: bool = False

    def setup_key(self) -> tuple[object, ...]:
        return (tuple(self.defined), tuple(self.active), tuple(self.callouts),
                tuple(self.unregistered))  # fmt: skip


@dataclass
class Golden:
    stack: CompatStack
    group: str
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state = self.stack.dirs.root / "callout-state"
        self.state.mkdir(exist_ok=True)
        self.client = ClientThread(self.stack.address)

    @property
    def data(self) -> Path:
        return DATA / self.group

    def call(self, method: str, *args: object, **kwargs: object) -> Any:
        return self.client.call(method, *args, **kwargs)

    def reset(self) -> None:
        dirs = self.stack.dirs
        for directory in (dirs.scripts / "callouts", dirs.mdevctl / "scripts.d" / "callouts"):
            for script in directory.iterdir():
                script.unlink()
        for child in self.state.iterdir():
            child.unlink()
        registered = []
        for parent in ("0000:00:02.0", "0000:00:03.0", "0000:2b:00.0", "0.0.26ab"):
            if not (self.stack.sim.root / "class/mdev_bus" / parent).exists():
                with contextlib.suppress(OSError):  # not a parent of this group's scenario
                    self.stack.sim.control.register(parent)
                    registered.append(parent)
        if registered:
            wait_until(
                lambda: set(registered) <= {p.name for p in self.call("parents")},
                timeout=20,
                what=f"mdevd seeing {registered} again",
            )
        for device in self.call("devices"):
            if device.active:
                self.call("stop", device.uuid)
            if device.defined:
                self.call("undefine", device.uuid)
        for entry in dirs.mdevctl.iterdir():
            if entry.name != "scripts.d":
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self.call("reload")
        assert self.call("devices") == []

    def setup(self, case: Case) -> None:
        for uuid, parent, source in case.defined:
            target = self.stack.dirs.mdevctl / parent / uuid
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(self.data / source, target)
        if case.defined:
            self.call("reload")
        for uuid, parent, type_id in case.active:
            create = self.stack.sim.root / "class/mdev_bus" / parent / "mdev_supported_types"
            fd = os.open(create / type_id / "create", os.O_WRONLY)
            try:
                os.write(fd, uuid.encode())
            finally:
                os.close(fd)
            wait_until(self._active_check(uuid), timeout=20, what=f"device {uuid} seen by mdevd")
        for name in case.callouts:
            self.stack.dirs.callout(f"{name}.sh", scripts.golden(name, self.state))
        for parent in case.unregistered:
            self.stack.sim.control.unregister(parent)
        if case.unregistered:
            gone = set(case.unregistered)
            wait_until(
                lambda: not gone & {p.name for p in self.call("parents")},
                timeout=20,
                what=f"mdevd seeing {sorted(gone)} go",
            )

    def _active_check(self, uuid: str) -> Callable[[], bool]:
        return lambda: any(d.uuid == uuid and d.active for d in self.call("devices"))

    def run(self, case: Case, previous: Case | None) -> list[str]:
        """The case's problems (empty when mdevd did what the case expects)."""
        if not (
            previous is not None
            and previous.read_only
            and case.read_only
            and previous.setup_key() == case.setup_key()
        ):
            self.reset()
            self.setup(case)
        argv = [a.replace("@JSON", str(self.data / case.jsonfile)) for a in case.argv]
        done = self.stack.mdevctl(*argv)
        problems = []
        if (done.returncode == 0) != case.passes:
            problems.append(f"exit {done.returncode}: {done.stdout!r} {done.stderr!r}")
            return problems
        if case.expect_file is not None:
            parent, uuid, source = case.expect_file
            uuid = uuid or done.stdout.strip()
            path = self.stack.dirs.mdevctl / parent / uuid
            want = (self.data / source).read_text()
            got = path.read_text() if path.exists() else "<no file>"
            if got != want:
                problems.append(f"{path.name}: {got!r} != {source}: {want!r}")
        if case.expect_active:
            uuid = argv[argv.index("-u") + 1]
            listed = self.stack.mdevctl("list", "--dumpjson", "-u", uuid)
            want = (self.data / case.expect_active).read_text() + "\n"
            if listed.stdout != want:
                problems.append(f"list: {listed.stdout!r} != {case.expect_active}: {want!r}")
        if case.check is not None:
            try:
                case.check(self, done)
            except AssertionError as e:
                problems.append(f"check: {e}")
        return problems


def _run_group(start_stack: StackFactory, group: str, cases: Sequence[Case],
               scenario: str = DEVICES_SCENARIO) -> None:  # fmt: skip
    golden = Golden(start_stack(scenario_text=scenario), group)
    failures = []
    try:
        previous = None
        for case in cases:
            problems = golden.run(case, previous)
            previous = case
            if problems:
                failures.append(f"{group}/{case.name}: " + "; ".join(problems))
    finally:
        golden.client.close()
    assert not failures, "\n".join(failures)
    documented = DOCS.read_text()
    for case in cases:
        if case.deviation:
            assert f"{group}/{case.name}" in documented, f"{group}/{case.name} is not documented"


# ---- checks ---------------------------------------------------------------------------------


def _not_defined(uuid: str, parent: str | None = None) -> Callable[[Golden, Any], None]:
    def check(golden: Golden, done: Any) -> None:
        devices = [d for d in golden.call("devices") if d.uuid == uuid and d.defined]
        assert all(parent is not None and d.parent != parent for d in devices), devices
        if parent is None:
            assert not list(golden.stack.dirs.mdevctl.glob(f"*/{uuid}"))
        else:
            assert not (golden.stack.dirs.mdevctl / parent / uuid).exists()

    return check


def _running(parent: str, type_id: str, uuid: str = "") -> Callable[[Golden, Any], None]:
    def check(golden: Golden, done: Any) -> None:
        wanted = uuid or done.stdout.strip()
        link = golden.stack.sim.root / "bus/mdev/devices" / wanted
        assert link.exists(), f"{wanted} is not running"
        assert link.resolve().parent.name == parent
        assert (link / "mdev_type").resolve().name == type_id

    return check


def _stdout(text: str) -> Callable[[Golden, Any], None]:
    def check(golden: Golden, done: Any) -> None:
        assert done.stdout == text, done.stdout

    return check


def _stderr(text: str) -> Callable[[Golden, Any], None]:
    def check(golden: Golden, done: Any) -> None:
        assert done.stderr == text, done.stderr

    return check


def _definition_attributes(
    uuid: str, expected: list[dict[str, str]]
) -> Callable[[Golden, Any], None]:
    def check(golden: Golden, done: Any) -> None:
        [path] = golden.stack.dirs.mdevctl.glob(f"*/{uuid}")
        assert json.loads(path.read_text())["attrs"] == expected

    return check


def _same_json(parent: str, uuid: str, source: str) -> Callable[[Golden, Any], None]:
    def check(golden: Golden, done: Any) -> None:
        got = json.loads((golden.stack.dirs.mdevctl / parent / uuid).read_text())
        assert got == json.loads((golden.data / source).read_text()), got

    return check


def _one_device_refusal() -> Callable[[Golden, Any], None]:
    def check(golden: Golden, done: Any) -> None:
        assert done.stderr == (
            f"Error: device {UUID} already exists (defined) as type {M} on parent {P2}\n"
        ), done.stderr
        assert not (golden.stack.sim.root / "bus/mdev/devices" / UUID).exists()

    return check


# ---- define ---------------------------------------------------------------------------------

T = "i915-GVTg_V5_4"
DEFINE = ["define", "-u", UUID, "-p", P3]
DEFINE_CASES = [
    Case("no-uuid-no-type", ["define", "-a", "-p", P3], False),
    Case("no-uuid", ["define", "-a", "-p", P3, "-t", T], True,
         expect_file=(P3, "", "no-uuid.expected")),
    Case("uuid-auto", [*DEFINE, "-a", "-t", T], True, expect_file=(P3, UUID, "uuid-auto.expected")),
    Case("uuid-manual", [*DEFINE, "-t", T], True, expect_file=(P3, UUID, "uuid-manual.expected")),
    Case("jsonfile-type", [*DEFINE, "-t", T, "--jsonfile", "@JSON"], False,
         jsonfile="defined.json"),
    Case("jsonfile", [*DEFINE, "--jsonfile", "@JSON"], True, jsonfile="defined.json",
         expect_file=(P3, UUID, "jsonfile.expected")),
    Case("uuid-running-no-parent", ["define", "-u", UUID, "-t", T], False,
         active=[(UUID, P3, T)]),
    Case("uuid-running-no-type", DEFINE, True, active=[(UUID, P3, T)],
         expect_file=(P3, UUID, "uuid-running-no-type.expected")),
    Case("uuid-running-diff-parent", [*DEFINE, "-t", T], False, active=[(UUID, P2, T)],
         check=_not_defined(UUID), instead_of="uuid-running-diff-parent.expected",
         deviation="Deviation: mdevd refuses to define a UUID that runs on another parent "
         "(one device per UUID); mdevctl writes a definition that can never start."),
    Case("uuid-running-diff-type", [*DEFINE, "-t", T], False, active=[(UUID, P3, "different_type")],
         check=_not_defined(UUID), instead_of="uuid-running-diff-type.expected",
         deviation="Deviation: mdevd refuses to define a running UUID with another type; "
         "mdevctl writes a definition that cannot start while the device runs."),
    Case("uuid-already-defined", [*DEFINE, "-t", T], False, defined=[(UUID, P3, "defined.json")]),
    # define-callouts (mdevctl compares no files for these)
    Case("define-with-callout-all-pass", [*DEFINE, "-t", T], True, callouts=["rc0"]),
    Case("define-with-callout-all-fail", [*DEFINE, "-t", T], False, callouts=["rc1"],
         check=_not_defined(UUID)),
    Case("define-with-callout-all-good-json", [*DEFINE, "-t", T], True,
         active=[(UUID, P3, T)], callouts=["good-json"],
         check=_definition_attributes(UUID, [{"attribute0": "VALUE"}])),
    Case("define-with-callout-all-bad-json", [*DEFINE, "-t", T], False,
         active=[(UUID, P3, T)], callouts=["bad-json"], check=_not_defined(UUID)),
    Case("define-with-callout-all-fail-force", [*DEFINE, "-t", T, "--force"], True,
         callouts=["rc1"]),
    Case("define-with-version-callout-all-pass",
         ["define", "-u", UUID_VER, "-p", P3, "-t", T], True, callouts=["ver-rc0"]),
    Case("define-with-version-callout-all-fail",
         ["define", "-u", UUID_VER, "-p", P3, "-t", T], False, callouts=["ver-rc1"]),
    Case("define-with-version-callout-multiple-with-version-pass",
         ["define", "-u", UUID_VER, "-p", P3, "-t", T], True, callouts=["rc0", "ver-rc0"]),
    Case("define-with-version-callout-multiple-with-version-pass2",
         ["define", "-u", UUID_VER, "-p", P3, "-t", T], True, callouts=["rc1", "ver-rc0"]),
    Case("define-with-version-callout-multiple-with-version-fail",
         ["define", "-u", UUID_VER, "-p", P3, "-t", T], False, callouts=["rc0", "ver-rc1"]),
]  # fmt: skip


def test_define(start_stack: StackFactory) -> None:
    _run_group(start_stack, "define", DEFINE_CASES)


# ---- undefine -------------------------------------------------------------------------------

UNDEFINE = ["undefine", "-u", UUID]
TWO_PARENTS = [(UUID, P3, "defined.json"), (UUID, P2, "defined.json")]
UNDEFINE_CASES = [
    Case("single", [*UNDEFINE, "-p", P3], True, defined=[(UUID, P3, "defined.json")],
         check=_not_defined(UUID, P3)),
    Case("multiple-parent", [*UNDEFINE, "-p", P3], False, defined=TWO_PARENTS,
         check=_stderr("Error: No devices match the specified uuid\n"),
         deviation=f"{ONE_DEVICE} The copy under {P3} is not a definition mdevd holds, so "
         "`undefine -p` finds nothing there; `undefine -u` (no parent) removes both files."),
    Case("multiple-noparent", UNDEFINE, True, defined=TWO_PARENTS, check=_not_defined(UUID)),
    Case("nonexistent", [*UNDEFINE, "-p", P3], False),
    Case("single-callout-all-pass", [*UNDEFINE, "-p", P3], True,
         defined=[(UUID, P3, "defined.json")], callouts=["rc0"], check=_not_defined(UUID, P3)),
    Case("single-callout-pre-fail", [*UNDEFINE, "-p", P3], False,
         defined=[(UUID, P3, "defined.json")], callouts=["rc1"]),
    Case("single-callout-pre-fail-force", [*UNDEFINE, "-p", P3, "--force"], True,
         defined=[(UUID, P3, "defined.json")], callouts=["rc1"], check=_not_defined(UUID, P3)),
    Case("undefine-single-with-version-callout-all-pass", ["undefine", "-u", UUID_VER, "-p", P3],
         True, defined=[(UUID_VER, P3, "defined.json")], callouts=["ver-rc0"]),
    Case("undefine-single-with-version-callout-all-fail", ["undefine", "-u", UUID_VER, "-p", P3],
         False, defined=[(UUID_VER, P3, "defined.json")], callouts=["ver-rc1"]),
    Case("define-with-version-callout-multiple-with-version-pass",
         ["undefine", "-u", UUID_VER, "-p", P3], True,
         defined=[(UUID_VER, P3, "defined.json")], callouts=["rc0", "ver-rc0"]),
    Case("define-with-version-callout-multiple-with-version-pass2",
         ["undefine", "-u", UUID_VER, "-p", P3], True,
         defined=[(UUID_VER, P3, "defined.json")], callouts=["rc1", "ver-rc0"]),
    Case("define-with-version-callout-multiple-with-version-fail",
         ["undefine", "-u", UUID_VER, "-p", P3], False,
         defined=[(UUID_VER, P3, "defined.json")], callouts=["rc0", "ver-rc1"]),
]  # fmt: skip


def test_undefine(start_stack: StackFactory) -> None:
    _run_group(start_stack, "undefine", UNDEFINE_CASES)


# ---- list -----------------------------------------------------------------------------------

LIST_UUIDS = [
    "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9",
    "59e8b599-afdd-4766-a59e-415ef4f5a492",
    "4a0a190f-dcf3-4def-9342-c48768f0c940",
    "9f579710-6ffc-4201-987a-4ffa0fb1f3a5",
]
LIST_ACTIVE = [(LIST_UUIDS[0], P2, "arbitrary_type1"), (LIST_UUIDS[1], P3, "arbitrary_type2")]
LIST_DEFINED = [
    (LIST_UUIDS[2], P2, "device2.json"),
    (LIST_UUIDS[3], P3, "device1.json"),
    (LIST_UUIDS[3], P2, "device1.json"),
]
#: (subtest, defined, verbose, uuid, parent, callout)
LIST_SUBTESTS = [
    ("active-none", False, False, None, None, None),
    ("defined-none", True, False, None, None, None),
    ("active", False, False, None, None, None),
    ("active-verbose", False, True, None, None, None),
    ("active-parent", False, False, None, P2, None),
    ("active-parent-verbose", False, True, None, P2, None),
    ("active-uuid", False, False, LIST_UUIDS[0], None, None),
    ("active-uuid-verbose", False, True, LIST_UUIDS[0], None, None),
    ("active-uuid-parent", False, False, LIST_UUIDS[0], P2, None),
    ("active-uuid-parent-verbose", False, True, LIST_UUIDS[0], P2, None),
    ("defined", True, False, None, None, None),
    ("defined-verbose", True, True, None, None, None),
    ("defined-parent", True, False, None, P2, None),
    ("defined-parent-verbose", True, True, None, P2, None),
    ("defined-uuid", True, False, LIST_UUIDS[3], None, None),
    ("defined-uuid-verbose", True, True, LIST_UUIDS[3], None, None),
    ("defined-uuid-parent", True, False, LIST_UUIDS[3], P2, None),
    ("defined-uuid-parent-verbose", True, True, LIST_UUIDS[3], P2, None),
    ("no-match-uuid", True, True, "466983a3-1240-4543-8d02-01c29a08fb0c", None, None),
    ("no-match-parent", True, True, None, "nonexistent", None),
    ("active-callout", False, False, None, None, "good-json"),
    ("active-callout-bad-json", False, False, None, None, "bad-json"),
]
#: The subtests whose golden output shows the copy mdevd ignores (LIST_UUIDS[3] under P3).
LIST_DEVIATIONS = {"defined", "defined-verbose", "defined-uuid", "defined-uuid-verbose"}


def _without_ignored_copy_text(text: str) -> str:
    """mdevctl's text listing minus the copy of LIST_UUIDS[3] under 0000:00:03.0."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if not line.startswith(" "):
            skipping = line.startswith(f"{LIST_UUIDS[3]} {P3} ")
        if not skipping:
            out.append(line)
    return "".join(out)


def _without_ignored_copy_json(text: str, uuid_given: bool) -> str:
    document = json.loads(text)
    parents = document[0]
    parents[P3] = [d for d in parents[P3] if LIST_UUIDS[3] not in d]
    if not parents[P3]:
        del parents[P3]
    remaining = [d for children in parents.values() for d in children]
    if uuid_given and len(remaining) == 1:
        return json.dumps(next(iter(remaining[0].values())), indent=2)
    return json.dumps(document, indent=2)


def _list_case(subtest: str, defined: bool, verbose: bool, uuid: str | None, parent: str | None,
               callout: str | None) -> Case:  # fmt: skip
    argv = ["list", *(["-d"] if defined else []), *(["-v"] if verbose else [])]
    argv += [*(["-u", uuid] if uuid else []), *(["-p", parent] if parent else [])]
    text = (DATA / "list" / f"{subtest}.text").read_text()
    dump = (DATA / "list" / f"{subtest}.json").read_text()
    deviation = ""
    if subtest in LIST_DEVIATIONS:
        text = _without_ignored_copy_text(text)
        dump = _without_ignored_copy_json(dump, uuid is not None)
        deviation = f"{ONE_DEVICE} The listing is mdevctl's without that copy."
    empty = subtest in ("active-none", "defined-none")

    def check(golden: Golden, done: Any) -> None:
        assert done.stdout == text + "\n", done.stdout
        dumped = golden.stack.mdevctl(*argv, "--dumpjson")
        assert dumped.stdout == dump + "\n", dumped.stdout

    return Case(
        subtest, argv, True,
        defined=[] if empty else LIST_DEFINED, active=[] if empty else LIST_ACTIVE,
        callouts=[callout] if callout else [], check=check, deviation=deviation, read_only=True,
    )  # fmt: skip


def test_list(start_stack: StackFactory) -> None:
    _run_group(start_stack, "list", [_list_case(*subtest) for subtest in LIST_SUBTESTS])


# ---- modify ---------------------------------------------------------------------------------

MODIFY = ["modify", "-u", UUID, "-p", P3]
ONE = [(UUID, P3, "defined.json")]
VER = [(UUID_VER, P3, "defined.json")]
MODIFY_VER = ["modify", "-u", UUID_VER, "-p", P3, "--jsonfile", "@JSON"]
AP = "vfio_ap-passthrough"
LIVE = [(UUID_LIVE, P3, "defined.json")]
LIVE_ACTIVE = [(UUID_LIVE, P3, AP)]
MODIFY_LIVE = ["modify", "-u", UUID_LIVE, "-p", P3, "--live", "--jsonfile", "@JSON"]
MODIFY_CASES = [
    Case("device-not-defined", ["modify", "-u", UUID], False),
    Case("auto", [*MODIFY, "--auto"], True, defined=ONE, expect_file=(P3, UUID, "auto.expected")),
    Case("manual", [*MODIFY, "--manual"], True, defined=ONE,
         check=_same_json(P3, UUID, "manual.expected"), instead_of="manual.expected",
         deviation="Deviation: a modify that changes nothing (the device is already manual) "
         "leaves the file as it is; mdevctl rewrites it in its own formatting. The content is "
         "the same."),
    Case("delattr", [*MODIFY, "--delattr", "--index", "2"], True, defined=ONE,
         expect_file=(P3, UUID, "delattr.expected")),
    Case("delattr-noindex", [*MODIFY, "--delattr"], True, defined=ONE,
         expect_file=(P3, UUID, "delattr-noindex.expected")),
    Case("addattr", [*MODIFY, "--addattr", "added-attr", "--index", "3", "--value",
                     "added-attr-value"], True, defined=ONE,
         expect_file=(P3, UUID, "addattr.expected")),
    Case("addattr-noindex", [*MODIFY, "--addattr", "added-attr", "--value", "added-attr-value"],
         True, defined=ONE, expect_file=(P3, UUID, "addattr-noindex.expected")),
    Case("mdev_type", [*MODIFY, "-t", "changed-mdev-type"], True, defined=ONE,
         expect_file=(P3, UUID, "mdev_type.expected")),
    Case("multiple-noparent", ["modify", "-u", UUID, "--auto"], True,
         defined=[(UUID, P3, "defined.json"), (UUID, P2, "defined.json")],
         deviation=f"{ONE_DEVICE} With one definition there is nothing to choose between: "
         f"the modify applies to it (under {P2})."),
    Case("multiple-parent", [*MODIFY, "--auto"], False,
         defined=[(UUID, P3, "defined.json"), (UUID, P2, "defined.json")],
         check=_stderr(f"Error: Mediated device {P3}/{UUID} is not defined\n"),
         instead_of="multiple-parent.expected",
         deviation=f"{ONE_DEVICE} The copy under {P3} is not a definition mdevd holds."),
    Case("auto-manual", [*MODIFY, "--auto", "--manual"], False, defined=ONE),
    Case("jsonfile", [*MODIFY, "--jsonfile", "@JSON"], True, defined=ONE, jsonfile="modified.json",
         expect_file=(P3, UUID, "jsonfile.expected")),
    Case("callout-pass", [*MODIFY, "--auto"], True, defined=ONE, callouts=["rc0"],
         expect_file=(P3, UUID, "callout-pass.expected")),
    Case("callout-fail", [*MODIFY, "--auto"], False, defined=ONE, callouts=["rc1"]),
    Case("callout-fail-force", [*MODIFY, "--auto", "--force"], True, defined=ONE,
         callouts=["rc1"], expect_file=(P3, UUID, "callout-fail-force.expected")),
    Case("modify-jsonfile-with-version-callout-all-pass", MODIFY_VER, True, defined=VER,
         jsonfile="modified.json", callouts=["ver-rc0"],
         expect_file=(P3, UUID_VER, "modify-jsonfile-with-version-callout-all-pass.expected")),
    Case("modify-jsonfile-with-version-callout-all-fail", MODIFY_VER, False, defined=VER,
         jsonfile="modified.json", callouts=["ver-rc1"]),
    Case("modify-jsonfile-with-version-callout-multiple-with-version-pass", MODIFY_VER, True,
         defined=VER, jsonfile="modified.json", callouts=["rc0", "ver-rc0"],
         expect_file=(P3, UUID_VER, "modify-jsonfile-with-version-callout-multiple-with-version"
                                    "-pass.expected")),
    Case("modify-jsonfile-with-version-callout-multiple-with-version-pass2", MODIFY_VER, True,
         defined=VER, jsonfile="modified.json", callouts=["rc1", "ver-rc0"],
         expect_file=(P3, UUID_VER, "modify-jsonfile-with-version-callout-multiple-with-version"
                                    "-pass2.expected")),
    Case("modify-jsonfile-with-version-callout-multiple-with-version-fail", MODIFY_VER, False,
         defined=VER, jsonfile="modified.json", callouts=["rc0", "ver-rc1"]),
    Case("live-event-supported", MODIFY_LIVE, True, defined=LIVE, active=LIVE_ACTIVE,
         jsonfile="modified.json", callouts=["live-rc0"],
         expect_file=(P3, UUID_LIVE, "live-event-supported.expected")),
    Case("live-event-unsupported-by-callout",
         ["modify", "-u", UUID_VER, "-p", P3, "--live", "--jsonfile", "@JSON"], False,
         defined=VER, active=[(UUID_VER, P3, AP)], jsonfile="modified.json",
         callouts=["live-rc0"]),
    Case("live-unsupported-script-without-version-support", [*MODIFY, "--live"], False,
         defined=ONE, active=[(UUID, P3, AP)], callouts=["live-rc0"]),
    Case("live-supported-but-fails", MODIFY_LIVE, False, defined=LIVE, active=LIVE_ACTIVE,
         jsonfile="modified.json", callouts=["live-rc1"]),
    Case("live-fail-without-jsonfile", ["modify", "-u", UUID_LIVE, "-p", P3, "--live"], False,
         defined=LIVE, active=LIVE_ACTIVE, callouts=["live-rc0"]),
    Case("live-defined-supported", [*MODIFY_LIVE, "--defined"], True, defined=LIVE,
         active=LIVE_ACTIVE, jsonfile="modified.json", callouts=["modify-active"],
         expect_file=(P3, UUID_LIVE, "live-defined-supported.defined.expected"),
         expect_active="live-defined-supported.active.expected"),
    Case("live-defined-live-event-unsupported",
         ["modify", "-u", UUID_VER, "-p", P3, "--live", "--defined", "--jsonfile", "@JSON"],
         False, defined=VER, active=[(UUID_VER, P3, AP)], jsonfile="modified.json",
         callouts=["modify-active"]),
    Case("defined-only", [*MODIFY, "--addattr", "added-attr", "--value", "added-attr-value",
                          "--defined"], True, defined=ONE, active=[(UUID, P3, AP)],
         callouts=["modify-active"],
         expect_file=(P3, UUID, "defined-only.defined.expected"),
         expect_active="defined-only.active.expected"),
]  # fmt: skip


def test_modify(start_stack: StackFactory) -> None:
    _run_group(start_stack, "modify", MODIFY_CASES)


# ---- start ----------------------------------------------------------------------------------

M = "arbitrary_type"
START = ["start", "-u", UUID, "-p", P3]
START_TWO = [(UUID, P3, "defined.json"), (UUID, P2, "defined.json")]
START_CASES = [
    Case("uuid-type-parent", [*START, "-t", M], True, check=_running(P3, M, UUID)),
    Case("no-uuid", ["start", "-p", P3, "-t", M], True, check=_running(P3, M)),
    Case("no-uuid-no-parent", ["start", "-t", M], False),
    Case("no-uuid-no-type", ["start", "-p", P3], False),
    Case("no-parent", ["start", "-u", UUID, "-t", M], False),
    Case("no-type", START, False),
    Case("no-type-defined", START, True, defined=[(UUID, P3, "defined.json")],
         check=_running(P3, M, UUID)),
    Case("no-type-parent-defined", ["start", "-u", UUID], True,
         defined=[(UUID, P3, "no-type-parent-defined/defined.json")], check=_running(P3, M, UUID)),
    Case("defined-with-type", [*START, "-t", M], False, defined=START_TWO,
         check=_one_device_refusal(),
         deviation=f"{ONE_DEVICE} The copy under {P3} is not a definition mdevd holds, and the "
         f"UUID cannot also run on {P3} while it is defined under {P2}."),
    Case("defined-multiple-underspecified", ["start", "-u", UUID], True, defined=START_TWO,
         check=_running(P2, M, UUID),
         deviation=f"{ONE_DEVICE} With one definition the UUID is not ambiguous: it starts."),
    Case("defined-multiple", START, False, defined=START_TWO,
         check=_stderr("Error: Device is insufficiently specified\n"),
         deviation=f"{ONE_DEVICE} The copy under {P3} is not a definition mdevd holds, so "
         f"`start -u -p {P3}` has no type to start it with."),
    Case("defined-diff-type", [*START, "-t", "wrong-type"], False,
         defined=[(UUID, P3, "defined-diff-type/defined.json")]),
    Case("already-running", [*START, "-t", M], False, active=[(UUID, P3, M)],
         check=_stderr("Error: Device already exists\n")),
    Case("no-instances", [*START, "-t", M], False,
         active=[("00000000-0000-4000-8000-000000000001", P3, M)],
         check=_stderr(f"Error: No available instances of {M} on {P3}\n")),
    Case("defined-multiple-callout-success", [*START, "-t", M], False, defined=START_TWO,
         callouts=["rc0"], check=_one_device_refusal(),
         deviation="As start/defined-with-type (the callouts are not reached)."),
    Case("defined-multiple-callout-fail", [*START, "-t", M], False, defined=START_TWO,
         callouts=["rc1"], check=_one_device_refusal(),
         deviation="As start/defined-with-type: it fails, but before the callout is asked."),
    Case("defined-multiple-callout-fail-force", [*START, "-t", M, "--force"], False,
         defined=START_TWO, callouts=["rc1"], check=_one_device_refusal(),
         deviation="As start/defined-with-type (the callouts are not reached)."),
    Case("missing-parent", [*START, "-t", M], False, unregistered=[P3],
         check=_stderr(f"Error: Unable to find parent device '{P3}'\n")),
    Case("parent-case", ["start", "-u", UUID, "-p", PARENT3.upper(), "-t", M], False,
         check=_stderr(f"Error: Unable to find parent device '{PARENT3.upper()}'. "
                       f"Did you mean '{PARENT3}'?\n")),
    Case("start-single-with-version-callout-pass", ["start", "-u", UUID_VER, "-p", P3, "-t", M],
         True, defined=[(UUID_VER, P3, "defined.json")], callouts=["ver-rc0"]),
    Case("start-single-with-version-callout-fail", ["start", "-u", UUID_VER, "-p", P3, "-t", M],
         False, defined=[(UUID_VER, P3, "defined.json")], callouts=["ver-rc1"]),
    Case("start-with-version-callout-multiple-with-version-pass",
         ["start", "-u", UUID_VER, "-p", P3, "-t", M], True,
         defined=[(UUID_VER, P3, "defined.json")], callouts=["rc0", "ver-rc0"]),
    Case("start-with-version-callout-multiple-with-version-pass2",
         ["start", "-u", UUID_VER, "-p", P3, "-t", M], True,
         defined=[(UUID_VER, P3, "defined.json")], callouts=["rc1", "ver-rc0"]),
    Case("start-with-version-callout-multiple-with-version-fail",
         ["start", "-u", UUID_VER, "-p", P3, "-t", M], False,
         defined=[(UUID_VER, P3, "defined.json")], callouts=["rc0", "ver-rc1"]),
    # stop (startstop.rs)
    Case("stop-default", ["stop", "-u", UUID], True, active=[(UUID, P3, M)]),
    Case("stop-callout-success", ["stop", "-u", UUID], True, active=[(UUID, P3, M)],
         callouts=["rc0"]),
    Case("stop-callout-fail", ["stop", "-u", UUID], False, active=[(UUID, P3, M)],
         callouts=["rc1"]),
    Case("stop-callout-fail-force", ["stop", "-u", UUID, "--force"], True,
         active=[(UUID, P3, M)], callouts=["rc1"]),
]  # fmt: skip


def test_start_and_stop(start_stack: StackFactory) -> None:
    _run_group(start_stack, "start", START_CASES)


# ---- types ----------------------------------------------------------------------------------


def _types_case(subtest: str, parent: str | None, unregistered: Sequence[str] = ()) -> Case:
    argv = ["types", *(["-p", parent] if parent else [])]
    text = (DATA / "types" / f"{subtest}.text").read_text()
    dump = (DATA / "types" / f"{subtest}.json").read_text()

    def check(golden: Golden, done: Any) -> None:
        assert done.stdout == text + "\n", done.stdout
        dumped = golden.stack.mdevctl(*argv, "--dumpjson")
        assert dumped.stdout == dump + "\n", dumped.stdout

    return Case(subtest, argv, True, check=check, unregistered=unregistered, read_only=True)


TYPES_SUBTESTS = ("empty", "full", "parent-match-1", "parent-match-2", "parent-match-3",
                  "parent-no-match")  # fmt: skip


def test_types(start_stack: StackFactory) -> None:
    cases = [
        _types_case("empty", None, unregistered=["0000:00:02.0", "0000:00:03.0", "0.0.26ab"]),
        _types_case("full", None),
        _types_case("parent-match-1", "0000:00:02.0"),
        _types_case("parent-match-2", "0000:00:03.0"),
        _types_case("parent-match-3", "0.0.26ab"),
        _types_case("parent-no-match", "missing"),
    ]
    _run_group(start_stack, "types", cases, scenario=TYPES_SCENARIO)


def test_every_golden_file_is_used() -> None:
    """Each expected output in the vendored data is compared by some case above."""
    used = {
        f"{group}/{name}"
        for group, cases in (("define", DEFINE_CASES), ("modify", MODIFY_CASES))
        for case in cases
        for name in (
            case.expect_file[2] if case.expect_file else "",
            case.expect_active,
            case.instead_of,
        )
        if name
    }
    used |= {f"list/{subtest[0]}.{kind}" for subtest in LIST_SUBTESTS for kind in ("text", "json")}
    used |= {f"types/{name}.{kind}" for name in TYPES_SUBTESTS for kind in ("text", "json")}
    outputs = {
        str(path.relative_to(DATA))
        for group in ("define", "list", "modify", "types")
        for path in (DATA / group).iterdir()
        if path.suffix in (".expected", ".text")
        or (group in ("list", "types") and path.suffix == ".json"
            and not path.name.startswith("device"))
    }  # fmt: skip
    assert outputs - used == set()
