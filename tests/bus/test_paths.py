# SPDX-License-Identifier: LGPL-2.1-or-later
"""Object paths: the contract's examples, round trips, and validity for any input."""

from __future__ import annotations

import re
import uuid as uuid_module

import pytest
from dbus_fast.validators import is_object_path_valid
from hypothesis import given
from hypothesis import strategies as st

from mdevd.bus import paths
from mdevd.errors import InvalidArgument, InvalidName, InvalidUUID

# The D-Bus specification's grammar, independent of dbus-fast's validator.
_OBJECT_PATH = re.compile(r"/|(/[A-Za-z0-9_]+)+")

names = st.text(min_size=1, max_size=80)
uuids = st.uuids().map(str)


def test_contract_example() -> None:
    assert paths.parent_path("0000:00:02.0") == "/org/mdevd/Mdevd1/parents/0000_3a00_3a02_2e0"
    assert paths.parent_name_from_path("/org/mdevd/Mdevd1/parents/0000_3a00_3a02_2e0") == (
        "0000:00:02.0"
    )


def test_underscore_is_escaped_so_names_never_collide() -> None:
    # `a_2e` would decode to `a.` if `_` were kept as is.
    assert paths.parent_path("a_2e") == "/org/mdevd/Mdevd1/parents/a_5f2e"
    assert paths.parent_path("a.") == "/org/mdevd/Mdevd1/parents/a_2e"


def test_device_path_is_the_lower_case_uuid_with_underscores() -> None:
    uuid = "8A3C1F2E-0B5D-4E6F-9A7B-1C2D3E4F5A6B"
    path = paths.device_path(uuid)
    assert path == "/org/mdevd/Mdevd1/devices/8a3c1f2e_0b5d_4e6f_9a7b_1c2d3e4f5a6b"
    assert paths.uuid_from_device_path(path) == uuid.lower()


@given(names)
def test_parent_path_round_trips_and_is_a_valid_object_path(name: str) -> None:
    path = paths.parent_path(name)
    assert _OBJECT_PATH.fullmatch(path)
    assert is_object_path_valid(path)
    assert paths.parent_name_from_path(path) == name


@given(st.text(alphabet="abcXYZ019_", min_size=1, max_size=30))
def test_decoding_accepts_only_canonical_encodings(element: str) -> None:
    """Any element either decodes to a name that encodes back to it, or is refused."""
    path = "/org/mdevd/Mdevd1/parents/" + element
    try:
        name = paths.parent_name_from_path(path)
    except InvalidArgument:
        return
    assert paths.parent_path(name) == path


@given(uuids)
def test_device_path_round_trips_and_is_a_valid_object_path(uuid: str) -> None:
    path = paths.device_path(uuid)
    assert _OBJECT_PATH.fullmatch(path)
    assert is_object_path_valid(path)
    assert paths.uuid_from_device_path(path) == uuid


@pytest.mark.parametrize(
    "path",
    [
        "/org/mdevd/Mdevd1/parents/a_61",  # `a` spelled escaped: not canonical
        "/org/mdevd/Mdevd1/parents/0000_3A00",  # upper-case hex: not canonical
        "/org/mdevd/Mdevd1/parents/abc_",  # truncated escape
        "/org/mdevd/Mdevd1/parents/_ff",  # not UTF-8
        "/org/mdevd/Mdevd1/parents/",
        "/org/mdevd/Mdevd1/parents/a/b",
        "/org/mdevd/Mdevd1/devices/abc",
        "/org/mdevd/Mdevd1/parentsx/abc",
    ],
)
def test_parent_name_from_other_paths_is_refused(path: str) -> None:
    with pytest.raises(InvalidArgument):
        paths.parent_name_from_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "/org/mdevd/Mdevd1/devices/" + str(uuid_module.UUID(int=1)),  # dashes, not underscores
        "/org/mdevd/Mdevd1/devices/8A3C1F2E_0B5D_4E6F_9A7B_1C2D3E4F5A6B",  # upper case
        "/org/mdevd/Mdevd1/devices/8a3c1f2e_0b5d_4e6f_9a7b_1c2d3e4f5a6b/x",
        "/org/mdevd/Mdevd1/parents/8a3c1f2e_0b5d_4e6f_9a7b_1c2d3e4f5a6b",
        "/org/mdevd/Mdevd1/devices",
    ],
)
def test_uuid_from_other_paths_is_refused(path: str) -> None:
    with pytest.raises(InvalidArgument):
        paths.uuid_from_device_path(path)


def test_empty_name_and_bad_uuid_are_refused() -> None:
    with pytest.raises(InvalidName):
        paths.parent_path("")
    with pytest.raises(InvalidUUID):
        paths.device_path("not-a-uuid")
