"""The autostart benchmark runs (tiny sizes, one registration each); its times are not
judged here, only that both contenders did the work and a ratio was printed."""

from __future__ import annotations

import shutil

import pytest

from bench import bench_autostart

pytestmark = pytest.mark.timeout(180, method="thread")


def test_the_autostart_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_autostart.main(["--devices", "1,2", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"1", "2"}
    for row in rows.values():
        assert row[2] == "ms" and float(row[1]) > 0
        if shutil.which("mdevctl") is not None:
            assert row[4] == "ms" and row[5].endswith("x")
