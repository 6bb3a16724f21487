# SPDX-License-Identifier: LGPL-2.1-or-later
"""A writer killed at any moment leaves each file whole: its old content or its new one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdevd import atomic, definitions
from mdevd.store import DefinitionStore
from tests.store import crash_writer
from tests.support.paths import REPO

ROUNDS = 20


def _kill_writer_at_a_random_moment(directory: Path, rng: random.Random) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_writer", str(directory)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        # Not a timing assertion: only spreads the kill over the writer's loop.
        time.sleep(rng.uniform(0, 0.15))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_mid_write_never_leaves_a_torn_file(tmp_path: Path) -> None:
    rng = random.Random(1234)  # noqa: S311 - reproducible kill moments, not cryptography
    farm_texts = {
        version: definitions.replace_in_text(
            crash_writer.FARM_TEXT, str(tmp_path / "farm.toml"), crash_writer.farm(version)
        )
        for version in (0, 1)
    }
    assert farm_texts[0] == crash_writer.FARM_TEXT  # switching back restores the very bytes
    big_versions = [crash_writer.big(v) for v in (0, 1)]
    raw_versions = {crash_writer.raw(v) for v in (0, 1)}
    leftovers = 0

    for round_number in range(ROUNDS):
        directory = tmp_path / f"round-{round_number}"
        directory.mkdir()
        _kill_writer_at_a_random_moment(directory, rng)

        assert (directory / "farm.toml").read_text() in farm_texts.values()
        assert (directory / crash_writer.RAW_NAME).read_bytes() in raw_versions
        result = DefinitionStore([directory]).load()
        assert result.problems == []
        assert len(result.definitions) == 3
        loaded_big = result.definitions[crash_writer.BIG_UUID]
        assert any(definitions.same_device(loaded_big, v) for v in big_versions)
        # An interrupted write may leave its temporary file, never one the loader reads.
        temps = [n for n in os.listdir(directory) if atomic.is_temp_name(n)]
        assert all(not n.endswith(".toml") for n in temps)
        assert {Path(f).name for f in result.files} == {
            "farm.toml",
            f"{crash_writer.BIG_UUID}.toml",
        }
        leftovers += len(temps)
    print(f"{ROUNDS} kills, {leftovers} interrupted writes left a temporary file")
