# SPDX-License-Identifier: LGPL-2.1-or-later
"""Rows of measurements, and the table, JSON and plot they become.

A row is one thing measured in one run: mdevd's samples, the samples of its mdevctl counterpart
(taken alternately with mdevd's, so that drift in the machine's load hits both), and a floor
where one exists (the least any tool must spend: the raw sysfs writes, a durable file write, an
interpreter that does nothing). Two ratios: mdevctl's median over mdevd's (above 1, mdevd is
faster), and mdevd's median over the floor's (how many times the floor mdevd takes; 1 is the
best possible).
"""

from __future__ import annotations

import json
import platform
import statistics
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Stats:
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def cell(self, unit: str) -> str:
        if not self.samples:
            return ""
        if len(self.samples) == 1:
            return _number(self.median, unit)
        return (
            f"{_number(self.median, unit)} [{_number(self.low, unit)}-{_number(self.high, unit)}]"
        )


def _number(value: float, unit: str) -> str:
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if value < 1:
            return f"{value * 1e3:.1f} ms"
        return f"{value:.2f} s"
    return f"{value:.1f} {unit}"


@dataclass(frozen=True, slots=True)
class Row:
    group: str
    name: str
    unit: str  # "s" or "MiB"
    mdevd: Stats
    mdevctl: Stats | None = None
    floor: Stats | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.mdevctl is None or not self.mdevd.samples or self.mdevd.median == 0:
            return None
        return self.mdevctl.median / self.mdevd.median

    @property
    def floor_ratio(self) -> float | None:
        """mdevd's median over the floor's: how many times the floor mdevd takes."""
        if self.floor is None or not self.floor.samples or self.floor.median == 0:
            return None
        if not self.mdevd.samples:
            return None
        return self.mdevd.median / self.floor.median

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Row:
        """A row as `Report.to_json` wrote it (the real-kernel guest's rows reach the host so)."""

        def stats(value: object) -> Stats | None:
            if not isinstance(value, dict):
                return None
            return Stats(tuple(float(s) for s in value["samples"]))

        mdevd = stats(data["mdevd"])
        assert mdevd is not None, data
        return cls(
            group=str(data["group"]),
            name=str(data["name"]),
            unit=str(data["unit"]),
            mdevd=mdevd,
            mdevctl=stats(data.get("mdevctl")),
            floor=stats(data.get("floor")),
            note=str(data.get("note", "")),
        )


#: What the emulated-kernel run is (the first line of its table and the plot's title).
EMULATED_TITLE = "mdevd beside mdevctl on the same emulated kernel (mdevd-sim, FUSE)"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    title: str = EMULATED_TITLE
    #: The results' file names: `<stem>.md`, `<stem>.json`, `<stem>.png`.
    stem: str = "latest"

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(self.format_row(row), flush=True)

    @staticmethod
    def format_row(row: Row) -> str:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        floor_ratio = f"{row.floor_ratio:.1f}x" if row.floor_ratio is not None else ""
        mdevctl = row.mdevctl.cell(row.unit) if row.mdevctl else ""
        floor = row.floor.cell(row.unit) if row.floor else ""
        return (
            f"| {row.group} | {row.name} | {row.mdevd.cell(row.unit)} | {mdevctl} | {ratio} "
            f"| {floor} | {floor_ratio} | {row.note} |"
        )

    def table(self) -> str:
        lines = [
            "| group | measurement | mdevd median [min-max] | mdevctl median [min-max] "
            "| ratio (mdevctl/mdevd) | floor median [min-max] | mdevd/floor | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines.extend(self.format_row(row) for row in self.rows)
        return "\n".join(lines)

    def to_json(self) -> str:
        data = {
            "title": self.title,
            "machine": self.machine,
            "rows": [
                {
                    **asdict(row),
                    "ratio": row.ratio,
                    "floor_ratio": row.floor_ratio,
                    "mdevd_median": row.mdevd.median,
                }
                for row in self.rows
            ],
        }
        return json.dumps(data, indent=2)

    def write(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / f"{self.stem}.md", directory / f"{self.stem}.json"]
        written[0].write_text(f"{self.title}\n\n{self.machine_line()}\n\n{self.table()}\n")
        written[1].write_text(self.to_json() + "\n")
        plot = directory / f"{self.stem}.png"
        if self.plot(plot):
            written.append(plot)
        return written

    def machine_line(self) -> str:
        return ", ".join(f"{key}: {value}" for key, value in self.machine.items())

    def plot(self, path: Path) -> bool:
        """A bar chart of the ratios (log scale); False when matplotlib is not installed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        rows = [row for row in self.rows if row.ratio is not None]
        if not rows:
            return False
        labels = [f"{row.group}: {row.name}" for row in rows]
        ratios = [row.ratio or 0.0 for row in rows]
        figure, axes = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
        colours = ["tab:green" if r >= 1 else "tab:red" for r in ratios]
        axes.barh(labels, ratios, color=colours)
        axes.axvline(1.0, color="black", linewidth=0.8)
        axes.set_xscale("log")
        axes.invert_yaxis()
        axes.set_xlabel("mdevctl time / mdevd time (log scale; right of 1: mdevd is faster)")
        axes.set_title("\n".join(textwrap.wrap(self.title, 60)), fontsize=9)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return True


def machine_description() -> dict[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = str(
        len(
            [
                ln
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("processor")
            ]
        )
    )
    return {
        "cpu": cpu,
        "cores": cores,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
