# SPDX-License-Identifier: LGPL-2.1-or-later
"""`Device.Open` with `node=cdev` on a kernel without VFIO device nodes (Debian 12's 6.1 and
6.12: `vfio-dev/vfioN` exists, but no char device) is `NotSupported`, not `NotActive`: the
real-kernel handoff run found the difference, and the emulated kernel's default scenario now
is such a kernel (`[sim] vfio_cdev` off)."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from mdevd.bus import names
from tests.daemon.conftest import ClientStack
from tests.daemon.harness import DaemonError


def test_open_cdev_without_device_nodes_is_not_supported(stack: ClientStack) -> None:
    client = stack.client
    path = client.create_device("mtty", "mtty-1")
    try:
        with pytest.raises(DaemonError) as refused:
            client.call(
                path, names.DEVICE_INTERFACE, "Open", "a{sv}", [{"node": Variant("s", "cdev")}]
            )
        assert refused.value.name == names.error_name("NotSupported")
        assert "CONFIG_VFIO_DEVICE_CDEV" in str(refused.value)
    finally:
        client.call(path, names.DEVICE_INTERFACE, "Stop", "a{sv}", [{}])
