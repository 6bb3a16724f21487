# SPDX-License-Identifier: LGPL-2.1-or-later
"""The benchmark's check that it is not in the host's namespaces (it binds over /sys)."""

from __future__ import annotations

import os

import pytest

from bench.harness import in_private_namespaces
from mdevd.sim import uevent
from mdevd.sim.uevent import HOST_NAMESPACES_VARIABLE


def _mine() -> str:
    return " ".join(str(os.stat(f"/proc/self/ns/{kind}").st_ino) for kind in ("mnt", "net"))


def test_the_recorded_host_namespaces_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/bench records the host's namespaces before `unshare`: the check must not need
    the parent, which is gone (PID 1's namespaces unreadable) when it runs in the background."""
    monkeypatch.setenv(HOST_NAMESPACES_VARIABLE, _mine())
    assert not in_private_namespaces()
    monkeypatch.setenv(HOST_NAMESPACES_VARIABLE, "1 2")
    assert in_private_namespaces()


def test_the_emulated_kernel_reads_the_record_when_pid_1_is_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where /proc/1/ns is unreadable, the emulated kernel walked its ancestors to find one
    outside its network namespace; with the benchmark in the background that ancestor had
    exited, so it sent no uevents at all and mdevd never heard of removals (seen as a hang)."""
    real = uevent._netns
    monkeypatch.setattr(uevent, "_netns", lambda pid: None if pid == "1" else real(pid))
    monkeypatch.setattr(uevent, "_parent_pid", lambda pid: "1")  # every ancestor gone
    monkeypatch.delenv(HOST_NAMESPACES_VARIABLE, raising=False)
    assert not uevent.in_private_netns()
    monkeypatch.setenv(HOST_NAMESPACES_VARIABLE, "1 2")
    assert uevent.in_private_netns()
    monkeypatch.setenv(HOST_NAMESPACES_VARIABLE, _mine())
    assert not uevent.in_private_netns()
