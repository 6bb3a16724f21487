# SPDX-License-Identifier: LGPL-2.1-or-later
"""Explaining a create the kernel refused without giving a reason.

A parent's driver that refuses a create often answers only `EINVAL` (or an errno of its own):
NVIDIA's vGPU driver for a second vGPU type on a GPU before Ada, or when its manager service
is not running (mdevctl issue #115). mdevd validated the UUID before writing it, so the UUID
is not the cause. What mdevd can see instead it checks in sysfs at the moment of the failure
(`mdevd.kernel`, in a worker thread), and the error message says what it checked and what it
found: whether the parent is still registered, its driver, the types active on it,
`available_instances` of the type, and what is known of the driver's own rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: What is known to make a driver refuse a create, by the driver's name (the parent device's
#: `driver` link, or the prefix of its mdev type ids: the mdev core names each type
#: `<driver>-<name>`).
VENDOR_HINTS: Mapping[str, str] = {
    "nvidia": (
        "NVIDIA vGPU: creating a vGPU needs the nvidia-vgpu-mgr service running (systemctl "
        "status nvidia-vgpu-mgr), and GPUs before Ada take one vGPU type at a time (every "
        "vGPU on the GPU of the same type)"
    ),
    "i915": (
        "Intel GVT-g (i915): the GPU needs i915.enable_gvt=1 and the kvmgt module loaded, and "
        "a type needs its share of the GPU's aperture, memory and fence registers free"
    ),
    "vfio_ap": (
        "s390 vfio_ap: the matrix device must be bound to vfio_ap, and the adapters and "
        "domains meant for guests must be given to vfio_ap (/sys/bus/ap/apmask and aqmask) "
        "before they can be assigned to a device"
    ),
}
#: Other names the same drivers go by (their mdev drivers, older module names).
_ALIASES: Mapping[str, str] = {
    "nvidia_vgpu_vfio": "nvidia",
    "nvidia-vgpu-vfio": "nvidia",
    "kvmgt": "i915",
    "vfio_ap_mdev": "vfio_ap",
}

#: When another type is active on the parent: the rule it may break.
ONE_TYPE_AT_A_TIME = (
    "some drivers, e.g. NVIDIA GPUs before Ada, accept one vGPU type per GPU at a time"
)


@dataclass(frozen=True, slots=True)
class CreateFacts:
    """What sysfs showed about a parent right after it refused a create."""

    parent: str
    type_id: str
    #: Whether `class/mdev_bus/<parent>` is still there.
    registered: bool
    #: The parent device's `driver` link ("" when it has none, or the parent is gone).
    bound_driver: str = ""
    #: Devices active on the parent now, by type (each type's `devices/` directory).
    active_types: Mapping[str, int] = field(default_factory=dict)
    #: `available_instances` of the refused type; None when it could not be read.
    available_instances: int | None = None
    #: The parent's type ids (their prefix names the driver when there is no `driver` link).
    type_ids: tuple[str, ...] = ()

    @property
    def driver(self) -> str:
        """The driver's name as mdevd can tell it; "" when it cannot."""
        if self.bound_driver:
            return self.bound_driver
        # Type ids are `<driver>-<name>`, and a driver's name may itself hold a "-" (par-a):
        # what the ids share, up to its last "-".
        if not self.type_ids:
            return ""
        first, last = min(self.type_ids), max(self.type_ids)
        length = next(
            (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b),
            min(len(first), len(last)),
        )
        shared = first[:length]
        return shared[: shared.rfind("-")] if "-" in shared else ""

    @property
    def other_types(self) -> list[str]:
        """The types other than the refused one that have active devices on the parent."""
        return sorted(t for t, count in self.active_types.items() if count and t != self.type_id)


def vendor_hint(driver: str) -> str:
    """What is known of `driver`'s rules for creating devices; "" for none."""
    return VENDOR_HINTS.get(_ALIASES.get(driver, driver), "")


def checked(facts: CreateFacts) -> str:
    """The facts mdevd checked, as a sentence, and the likeliest causes among them."""
    parent = facts.parent
    found = []
    if facts.registered:
        found.append(f"parent {parent} is still registered with the mdev core")
    else:
        found.append(
            f"parent {parent} is no longer registered with the mdev core (its driver was "
            "unbound or unloaded)"
        )
    if facts.bound_driver:
        found.append(f"its device is bound to driver {facts.bound_driver}")
    elif facts.driver:
        found.append(f"its driver is {facts.driver} (from its type names; no driver link)")
    else:
        found.append("its driver is not known (no driver link)")
    if facts.registered:
        active = ", ".join(
            f"{count} of type {type_id}"
            for type_id, count in sorted(facts.active_types.items())
            if count
        )
        found.append(f"devices active on it: {active or 'none'}")
        if facts.available_instances is not None:
            found.append(
                f"type {facts.type_id} shows available_instances {facts.available_instances}"
            )
        else:
            found.append(f"available_instances of type {facts.type_id} could not be read")
    text = "mdevd checked: " + "; ".join(found)
    causes = []
    others = facts.other_types
    if others:
        causes.append(
            f"parent {parent} already has active devices of type {', '.join(others)}; "
            + ONE_TYPE_AT_A_TIME
        )
    hint = vendor_hint(facts.driver)
    if hint:
        causes.append(hint)
    if causes:
        text += ". Possible causes: " + ". ".join(causes)
    return text


def create_refused(uuid: str, errno_name: str, facts: CreateFacts) -> str:
    """The message for a create the driver refused with `errno_name` and no reason."""
    return (
        f"device {uuid}: parent {facts.parent} refused to create it as type {facts.type_id}"
        f" ({errno_name}, no reason given); mdevd validated the UUID itself, so it is not the"
        f" cause. {checked(facts)}"
    )
