# SPDX-License-Identifier: LGPL-2.1-or-later
"""The harness itself: what a guest run hands back, and the initramfs archive it packs."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

from tests.realkernel.cpio import Entry, write_initramfs
from tests.realkernel.harness import RealKernel

COMMAND = """
echo to-stdout
echo to-stderr >&2
uname -r >"$REALKERNEL_SHARED/release"
touch /usr/written-by-the-guest
exit 7
"""


def test_a_run_returns_status_output_and_files(real_kernel: RealKernel, tmp_path: Path) -> None:
    result = real_kernel.run(COMMAND, timeout=300, run_dir=tmp_path)
    assert result.exit_status == 7, result.describe()
    assert not result.timed_out
    assert "to-stdout" in result.output and "to-stderr" in result.output
    assert (result.shared_dir / "release").read_text().strip() == real_kernel.prepared.release
    assert "command exited with 7" in result.console
    # The guest's / is the host's under an overlay: what it writes stays in the guest.
    assert (result.shared_dir / "..").resolve() == tmp_path.resolve()
    assert not Path("/usr/written-by-the-guest").exists()


def test_initramfs_archive_unpacks_with_busybox(real_kernel: RealKernel, tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox is not None  # the harness installed busybox-static
    archive = tmp_path / "test.img"
    write_initramfs(
        archive,
        [
            Entry.directory("bin"),
            Entry.file("bin/tool", b"#!/bin/sh\necho hi\n", executable=True),
            Entry.file("data", b"x" * 4097),
            Entry.symlink("bin/link", "tool"),
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    unpacked = subprocess.run(
        [busybox, "cpio", "-i", "-d"],
        input=gzip.decompress(archive.read_bytes()),
        cwd=out,
        capture_output=True,
        check=False,
    )
    assert unpacked.returncode == 0, unpacked.stderr.decode()
    assert (out / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(out / "bin/tool", os.X_OK)
    assert (out / "data").read_bytes() == b"x" * 4097
    assert os.readlink(out / "bin/link") == "tool"
