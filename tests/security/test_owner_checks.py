# SPDX-License-Identifier: LGPL-2.1-or-later
"""Who may change whose device (docs/security.md, "Owners: who may change whose device";
docs/dbus-api.md, "Owners and lifetimes"), with the real daemon and a real polkitd.

Every mutating Device method (Start, Stop, Define, Undefine, Update) on a device owned by
someone, called by:
- its owner: with the method's own action it may (`mdevd-owner`, granted only the manage
  action by an extra rules file, may Start and Stop its devices, and is refused Define,
  Undefine and Update, which need the configure action whoever owns the device; `mdevd-tester`,
  granted the configure action by the example rule, may do everything to its own);
- another user granted the manage action alone (`mdevd-other`): refused, NotAuthorized*, for
  lack of the configure action that changing another's device needs;
- a user granted the configure action (`mdevd-tester`) and root: allowed.
A caller that names itself with the `owner` option is held to that name: another label is
refused whatever its rights, root included, and so is its own label on a device another uid
recorded with it; the label it made the device with is allowed. Every refusal leaves the device
as it was: its properties, its sysfs directory, its definition file, and no signal about it.

The owner of a device is whoever made it: each target is created by the owning user (a defined
one is then defined and stopped by root, which keeps its owner).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dbus_fast import Variant

from mdevd.bus import names
from tests.security.callers import Caller, Reply, device_path
from tests.security.conftest import GRANTED_USER, OTHER_USER, OWNER_USER, PARENT, TYPE, World
from tests.support.polkit import EXAMPLE_RULES, RunningPolkit, running_polkitd

pytestmark = pytest.mark.timeout(180)

MANAGE = "org.mdevd.mdevd1.manage-devices"
CONFIGURE = "org.mdevd.mdevd1.configure-devices"

#: An admin's rule for two accounts that may create, start and stop devices, no more.
MANAGE_ONLY_RULES = f"""\
polkit.addRule(function(action, subject) {{
    if (action.id == "{MANAGE}" &&
        (subject.user == "{OWNER_USER}" || subject.user == "{OTHER_USER}")) {{
        return polkit.Result.YES;
    }}
}});
"""

#: What each method needs to succeed: a transient (active, not defined) device, or a defined
#: inactive one.
TRANSIENT, DEFINED = "transient", "defined"
METHODS: dict[str, str] = {
    "Start": DEFINED,
    "Stop": TRANSIENT,
    "Define": TRANSIENT,
    "Undefine": DEFINED,
    "Update": DEFINED,
}
#: The methods whose own action is the configure action (the rest need manage).
NEED_CONFIGURE = {"Define", "Undefine", "Update"}
REFUSED = "NotAuthorizedCanObtain"  # auth_admin by default; the calls are not interactive


@pytest.fixture(scope="module")
def polkitd(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPolkit]:
    """polkitd with the project's actions, the example rules and the manage-only rule."""
    rules = tmp_path_factory.mktemp("rules") / "60-mdevd-test-manage-only.rules"
    rules.write_text(MANAGE_ONLY_RULES)
    with running_polkitd(world.address, rules=(EXAMPLE_RULES, rules)) as polkit:
        yield polkit


# ---- targets and their state ---------------------------------------------------------------


def _s(value: str) -> Variant:
    return Variant("s", value)


def _make_target(world: World, creator: Caller, kind: str, label: str | None = None) -> str:
    """A device `creator` owns (with `label` as its `owner` option), in the state `kind`."""
    options = {"owner": _s(label)} if label else {}
    reply = creator.manager("CreateDevice", "ssa{sv}", [PARENT, TYPE, options])
    assert reply.ok, f"{creator.label} CreateDevice: {reply}"
    path = str(reply.body[0])
    uuid = path.rsplit("/", 1)[1].replace("_", "-")
    if kind == DEFINED:
        # Root changes it as an administrator (no label): the owner stays its creator.
        for method in ("Define", "Stop"):
            done = world.root.device(uuid, method, "a{sv}", [{}])
            assert done.ok, f"root {method} (setting up): {done}"
    return uuid


def _properties(world: World, uuid: str) -> dict[str, Any] | None:
    reply = world.root.call(
        device_path(uuid), names.PROPERTIES_INTERFACE, "GetAll", "s", [names.DEVICE_INTERFACE]
    )
    if not reply.ok:
        return None  # no such object
    properties: dict[str, Any] = reply.body[0]
    return {name: value.value for name, value in properties.items()}


def _state(world: World, uuid: str) -> dict[str, object]:
    """Everything a change to `uuid` could touch, as a user could see it."""
    directory = world.daemon.devices_dir
    return {
        "properties": _properties(world, uuid),
        "in sysfs": (world.sim.root / "bus/mdev/devices" / uuid).exists(),
        "definition": {
            str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*"))
            if uuid in p.name and p.is_file()
        },
    }


def _owner(world: World, uuid: str) -> str:
    properties = _properties(world, uuid)
    assert properties is not None, uuid
    owner: str = properties["Owner"]
    return owner


def _call(caller: Caller, uuid: str, method: str, label: str | None = None) -> Reply:
    options = {"owner": _s(label)} if label else {}
    if method == "Update":
        return caller.device(
            uuid, "Update", "a{sv}a{sv}", [{"autostart": Variant("b", True)}, options]
        )
    return caller.device(uuid, method, "a{sv}", [options])


def _done(world: World, uuid: str, method: str) -> bool:
    """Whether `method` took effect on `uuid` (set up as METHODS says)."""
    properties = _properties(world, uuid)
    in_sysfs = (world.sim.root / "bus/mdev/devices" / uuid).exists()
    if method in ("Stop", "Undefine"):  # a transient device stopped, a definition dropped
        return properties is None and not in_sysfs
    assert properties is not None
    if method == "Start":
        return bool(properties["Active"]) and in_sysfs
    if method == "Define":
        return bool(properties["Defined"]) and bool(properties["Active"])
    return bool(properties["Autostart"])  # Update


def _device_signals(caller: Caller, uuid: str) -> list[tuple[str, str, str]]:
    """The signals about `uuid` the watching `caller` collected since last asked."""
    path = device_path(uuid)
    return [
        (p, interface, member)
        for p, interface, member, body in caller.signals()
        if p == path or uuid in repr(body) or path in repr(body)
    ]


def _clean_up(world: World, uuid: str) -> None:
    for method in ("Stop", "Undefine"):
        world.root.device(uuid, method, "a{sv}", [{}])


def _expect_refused(
    world: World, caller: Caller, uuid: str, method: str, outcome: str, label: str | None = None
) -> Reply:
    before = _state(world, uuid)
    _device_signals(world.root, uuid)
    reply = _call(caller, uuid, method, label)
    assert reply.outcome == outcome, f"{caller.label} {method} {label or ''}: {reply}"
    # polkit's refusals name the method; the owner option's names the device.
    prefix = f"device {uuid} belongs to " if outcome == "NotAuthorized" else f"{method}: "
    assert reply.message.startswith(prefix), reply.message
    assert _state(world, uuid) == before, f"{caller.label} {method} changed the device"
    assert _device_signals(world.root, uuid) == [], f"{caller.label} {method} emitted signals"
    return reply


def _expect_allowed(
    world: World, caller: Caller, uuid: str, method: str, label: str | None = None
) -> None:
    reply = _call(caller, uuid, method, label)
    assert reply.ok, f"{caller.label} {method} {label or ''}: {reply}"
    assert _done(world, uuid, method), f"{caller.label} {method}: no effect"


@pytest.fixture(autouse=True)
def _watching(world: World, polkitd: RunningPolkit) -> None:
    world.root.watch()
    world.root.signals()


# ---- the owner, another user granted manage, a user granted configure ---------------------

#: (who owns the device, who calls) -> "ok", or the refusal, per method.
MATRIX: dict[tuple[str, str], Callable[[str], str]] = {
    # The owner needs its method's own action: manage for Start and Stop, configure otherwise.
    ("owner", "owner"): lambda method: REFUSED if method in NEED_CONFIGURE else "ok",
    # Another's device needs the configure action, which `other` lacks.
    ("owner", "other"): lambda method: REFUSED,
    ("owner", "granted"): lambda method: "ok",
    ("owner", "root"): lambda method: "ok",
    # An owner granted configure does everything to its own device ...
    ("granted", "granted"): lambda method: "ok",
    # ... which still is another's device for a user granted manage.
    ("granted", "other"): lambda method: REFUSED,
    # Without the manage action, not even a device's own method is allowed.
    ("owner", "unprivileged"): lambda method: REFUSED,
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize(("owner", "caller"), list(MATRIX))
def test_changing_a_device_needs_its_owner_or_the_configure_action(
    world: World, method: str, owner: str, caller: str
) -> None:
    uuid = _make_target(world, world.callers[owner], METHODS[method])
    try:
        assert _owner(world, uuid) == _owner_label(world, owner)
        expected = MATRIX[owner, caller](method)
        if expected == "ok":
            _expect_allowed(world, world.callers[caller], uuid, method)
            return
        reply = _expect_refused(world, world.callers[caller], uuid, method, expected)
        # The action the caller lacked: configure to change another's device (or for a
        # method that needs it anyway); manage for an unprivileged caller's Start and Stop.
        needed = MANAGE if caller == "unprivileged" and method not in NEED_CONFIGURE else CONFIGURE
        assert needed in reply.message, reply.message
        # Its owner still may, where its own action suffices: the refusal blocked nothing else.
        if owner == "owner" and method not in NEED_CONFIGURE:
            _expect_allowed(world, world.callers[owner], uuid, method)
    finally:
        _clean_up(world, uuid)


def _owner_label(world: World, who: str) -> str:
    """The owner a device made by `who` without a label records: its uid, as the callers run
    in no systemd unit here (in one, all would share it, and the uid would tell them apart)."""
    user = {"owner": OWNER_USER, "other": OTHER_USER, "granted": GRANTED_USER}[who]
    return f"uid:{world.accounts.uid(user)}"


# ---- the owner option: a caller that names itself --------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("caller", ["root", "granted"])
def test_a_caller_naming_itself_changes_only_what_it_made_under_that_name(
    world: World, method: str, caller: str
) -> None:
    """Even root, and a user granted configure, are refused a device of another label."""
    who = world.callers[caller]
    uuid = _make_target(world, who, METHODS[method], label="nova")
    try:
        assert _owner(world, uuid) == "nova"
        reply = _expect_refused(world, who, uuid, method, "NotAuthorized", label="kubevirt")
        assert "belongs to nova, not to kubevirt" in reply.message, reply.message
        _expect_allowed(world, who, uuid, method, label="nova")
    finally:
        _clean_up(world, uuid)


@pytest.mark.parametrize("method", list(METHODS))
def test_root_naming_itself_is_refused_a_users_device(world: World, method: str) -> None:
    uuid = _make_target(world, world.callers["owner"], METHODS[method])
    try:
        label = _owner(world, uuid)
        reply = _expect_refused(world, world.root, uuid, method, "NotAuthorized", label="nova")
        assert f"belongs to {label}, not to nova" in reply.message, reply.message
        _expect_allowed(world, world.root, uuid, method)  # as an administrator: no label
    finally:
        _clean_up(world, uuid)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("caller", ["other", "granted", "root"])
def test_a_label_is_no_one_elses_to_borrow(world: World, method: str, caller: str) -> None:
    """`nova` of another uid is another owner: naming it gains nothing, whatever the rights."""
    uuid = _make_target(world, world.callers["owner"], METHODS[method], label="nova")
    try:
        assert _owner(world, uuid) == "nova"
        # `other` lacks the configure action that Define, Undefine and Update need anyway.
        refusal = REFUSED if caller == "other" and method in NEED_CONFIGURE else "NotAuthorized"
        _expect_refused(world, world.callers[caller], uuid, method, refusal, label="nova")
        if method not in NEED_CONFIGURE:  # the one who made it under that name may
            _expect_allowed(world, world.callers["owner"], uuid, method, label="nova")
    finally:
        _clean_up(world, uuid)
