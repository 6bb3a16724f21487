# SPDX-License-Identifier: LGPL-2.1-or-later
"""Writing `create`: the UUID rules, EEXIST, and the two ways a type runs out of instances."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sim.conftest import SimFactory
from tests.sim.helpers import (
    UUID_A,
    UUID_B,
    available,
    create,
    remove,
    type_dir,
    write,
    write_errno,
)
from tests.support.sim import RunningSim, running_sim

pytestmark = pytest.mark.timeout(90, method="thread")

UUIDS = [f"00000000-0000-4000-8000-{n:012x}" for n in range(40)]


def test_device_exists_when_the_write_returns(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    # Another process, which shares no cache with this one, sees it at once as well.
    link = sim.root / "bus/mdev/devices" / UUID_A
    assert subprocess.run(["test", "-e", str(link / "mdev_type")], check=False).returncode == 0


@pytest.mark.parametrize("suffix", ["", "\n", " "])
def test_36_or_37_bytes_are_accepted(sim: RunningSim, suffix: str) -> None:
    create_file = type_dir(sim.root, "mtty", "mtty-1") / "create"
    assert write(create_file, UUID_A + suffix) == 36 + len(suffix)
    assert (sim.root / "bus/mdev/devices" / UUID_A).is_dir()


@pytest.mark.parametrize(
    "payload",
    [
        UUID_A[:-1],  # 35 bytes
        UUID_A + "\n\n",  # 38 bytes
        UUID_A.replace("-", "") + "0000",  # 36 bytes, no dashes
        UUID_A[:8] + "x" + UUID_A[9:],  # a dash replaced by a non-dash
        "g" + UUID_A[1:],  # not hexadecimal
        " " + UUID_A,  # leading space: the first 36 bytes are not a UUID
    ],
)
def test_malformed_uuids_are_einval(sim: RunningSim, payload: str) -> None:
    create_file = type_dir(sim.root, "mtty", "mtty-1") / "create"
    assert write_errno(create_file, payload) == errno.EINVAL
    assert os.listdir(sim.root / "bus/mdev/devices") == []


def test_an_empty_write_does_nothing(sim: RunningSim) -> None:
    # sysfs returns 0 for a zero-length write without calling the store.
    assert write(type_dir(sim.root, "mtty", "mtty-1") / "create", b"") == 0
    assert os.listdir(sim.root / "bus/mdev/devices") == []


def test_a_uuid_split_over_two_writes_is_two_einvals(sim: RunningSim) -> None:
    fd = os.open(type_dir(sim.root, "mtty", "mtty-1") / "create", os.O_WRONLY)
    try:
        for half in (UUID_A[:18], UUID_A[18:]):
            with pytest.raises(OSError) as failure:
                os.write(fd, half.encode())
            assert failure.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert os.listdir(sim.root / "bus/mdev/devices") == []


def test_upper_case_is_named_in_lower_case(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A.upper())
    assert os.listdir(sim.root / "bus/mdev/devices") == [UUID_A]


def test_duplicates_are_eexist_on_any_parent_and_in_any_case(sim: RunningSim) -> None:
    create(sim.root, "mtty", "mtty-1", UUID_A)
    for parent, type_id in [("mtty", "mtty-1"), ("mtty", "mtty-2"), ("mdpy", "mdpy-vga")]:
        create_file = type_dir(sim.root, parent, type_id) / "create"
        assert write_errno(create_file, UUID_A.upper()) == errno.EEXIST
    assert os.listdir(sim.root / "bus/mdev/devices") == [UUID_A]


def test_driver_pool_shared_by_types_runs_out_with_enospc(sim: RunningSim) -> None:
    for uuid in UUIDS[:11]:
        create(sim.root, "mtty", "mtty-2", uuid)
    assert available(sim.root, "mtty", "mtty-1") == 2
    assert available(sim.root, "mtty", "mtty-2") == 1
    create(sim.root, "mtty", "mtty-1", UUIDS[11])
    assert available(sim.root, "mtty", "mtty-1") == 1
    assert available(sim.root, "mtty", "mtty-2") == 0
    mtty2_create = type_dir(sim.root, "mtty", "mtty-2") / "create"
    assert write_errno(mtty2_create, UUIDS[12]) == errno.ENOSPC
    assert not (sim.root / "bus/mdev/devices" / UUIDS[12]).exists()
    create(sim.root, "mtty", "mtty-1", UUIDS[12])
    assert available(sim.root, "mtty", "mtty-1") == 0
    remove(sim.root, UUIDS[0])
    assert available(sim.root, "mtty", "mtty-1") == 2
    assert available(sim.root, "mtty", "mtty-2") == 1


def test_core_counted_limit_shared_by_types_runs_out_with_eusers(sim: RunningSim) -> None:
    for uuid, type_id in zip(
        UUIDS[:4], ["mdpy-vga", "mdpy-xga", "mdpy-hd", "mdpy-vga"], strict=True
    ):
        create(sim.root, "mdpy", type_id, uuid)
    for type_id in ("mdpy-vga", "mdpy-xga", "mdpy-hd"):
        assert available(sim.root, "mdpy", type_id) == 0
        create_file = type_dir(sim.root, "mdpy", type_id) / "create"
        assert write_errno(create_file, UUIDS[10]) == errno.EUSERS
    remove(sim.root, UUIDS[0])
    assert available(sim.root, "mdpy", "mdpy-hd") == 1


def test_memory_pool_counts_each_types_size(sim: RunningSim) -> None:
    assert [available(sim.root, "mbochs", f"mbochs-{s}") for s in ("small", "medium", "large")] == [
        64,
        16,
        4,
    ]
    for uuid in UUIDS[:4]:
        create(sim.root, "mbochs", "mbochs-large", uuid)
    assert available(sim.root, "mbochs", "mbochs-small") == 0
    small_create = type_dir(sim.root, "mbochs", "mbochs-small") / "create"
    assert write_errno(small_create, UUIDS[5]) == errno.ENOSPC


def test_gpu_allows_one_type_at_a_time(sim: RunningSim) -> None:
    gpu = "0000:65:00.0"
    assert available(sim.root, gpu, "nvidia-558") == 4
    create(sim.root, gpu, "nvidia-558", UUID_A)
    assert available(sim.root, gpu, "nvidia-558") == 3
    assert available(sim.root, gpu, "nvidia-556") == 0
    other_create = type_dir(sim.root, gpu, "nvidia-556") / "create"
    assert write_errno(other_create, UUID_B) == errno.EUSERS
    for uuid in UUIDS[:3]:
        create(sim.root, gpu, "nvidia-558", uuid)
    assert write_errno(type_dir(sim.root, gpu, "nvidia-558") / "create", UUIDS[3]) == errno.EUSERS


def test_a_drivers_own_full_errno_passes_through(start_sim: SimFactory) -> None:
    scenario = textwrap.dedent(
        """
        [[parent]]
        name = "matrix"
        devpath = "devices/vfio_ap/matrix"
        subsystem = "matrix"
        subsystem_path = "bus/matrix"
        pools = { instances = 1 }
        pool_errno = "EPERM"

        [[parent.type]]
        id = "vfio_ap-passthrough"
        device_api = "vfio-ap"
        pool = "instances"
        """
    )
    small = start_sim(scenario_text=scenario)
    create(small.root, "matrix", "vfio_ap-passthrough", UUID_A)
    create_file = type_dir(small.root, "matrix", "vfio_ap-passthrough") / "create"
    assert write_errno(create_file, UUID_B) == errno.EPERM


def test_create_on_a_parent_that_went_away_is_enodev(sim: RunningSim) -> None:
    fd = os.open(type_dir(sim.root, "mtty", "mtty-1") / "create", os.O_WRONLY)
    try:
        sim.control.unregister("mtty")
        with pytest.raises(OSError) as gone:
            os.write(fd, UUID_A.encode())
        assert gone.value.errno == errno.ENODEV
        # Registering again makes new files; the old one stays dead, as in kernfs.
        sim.control.register("mtty")
        with pytest.raises(OSError) as still_gone:
            os.write(fd, UUID_A.encode())
        assert still_gone.value.errno == errno.ENODEV
    finally:
        os.close(fd)
    assert write_errno(type_dir(sim.root, "mtty", "mtty-1") / "create", UUID_A) is None


_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")

_payloads = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.tuples(st.uuids().map(str), st.sampled_from(["\n", " ", "x", "\0", "\n\n", "ab"])).map(
        "".join
    ),
    st.text(alphabet="0123456789abcdefABCDEFgx- \n", min_size=34, max_size=39),
)


@pytest.mark.timeout(120, method="thread")
def test_create_accepts_exactly_what_the_kernel_accepts() -> None:
    """Any payload: success exactly when it is 36 or 37 bytes and the first 36 are a UUID."""
    with running_sim("mtty") as mounted:
        create_file = type_dir(mounted.root, "mtty", "mtty-1") / "create"

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(_payloads)
        def check(payload: str) -> None:
            raw = payload.encode()
            valid = len(raw) in (36, 37) and _UUID_RE.fullmatch(payload[:36]) is not None
            error = write_errno(create_file, raw)
            if valid:
                assert error is None, payload
                remove(mounted.root, payload[:36].lower())
            else:
                assert error == errno.EINVAL, payload

        check()
