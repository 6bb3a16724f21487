# SPDX-License-Identifier: LGPL-2.1-or-later
"""The daemon's config file: defaults, relocation, and problems with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdevd import config as config_module
from mdevd.config import Config, StoreConfig, load_config, parse_config, read_config
from mdevd.errors import ConfigInvalid
from tests.support.paths import REPO


def test_defaults_are_the_documented_directories() -> None:
    assert Config().store.search_path() == (
        Path("/etc/mdevd/devices.d"),
        Path("/run/mdevd/devices.d"),
        Path("/usr/lib/mdevd/devices.d"),
    )


def test_the_shipped_config_file_states_the_defaults() -> None:
    result = read_config(REPO / "config" / "mdevd.toml")
    assert result.problems == ()
    assert result.config == Config()


def test_no_config_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_FILE", tmp_path / "absent.toml")
    result = read_config(None)
    assert (result.config, result.problems, result.source) == (Config(), (), None)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mdevd.toml"
    path.write_text('[store]\ndevices_dir = "etc"\nvendor_devices_dir = "/abs/vendor"\n')
    loaded = load_config(path)
    assert loaded.store == StoreConfig(
        devices_dir=tmp_path / "etc", vendor_devices_dir=Path("/abs/vendor")
    )


def test_problems_name_the_line_and_good_settings_still_apply(tmp_path: Path) -> None:
    text = (
        '[store]\ndevices_dir = "/e"\ndevice_dir = "/typo"\nruntime_devices_dir = 5\n\n[kernal]\n'
        '[daemon]\nuevent_source = "netlink"\nio_timeout = "soon"\nsysfs_root = "/fake/sys"\n'
    )
    result = parse_config(text, "mdevd.toml", tmp_path)
    assert [str(p) for p in result.problems] == [
        "mdevd.toml:3: unknown key 'device_dir' in [store]; known: devices_dir, "
        "runtime_devices_dir, vendor_devices_dir",
        "mdevd.toml:4: [store] runtime_devices_dir must be a non-empty path string",
        "mdevd.toml:6: unknown section [kernal]; known: [store], [daemon], [mdevctl], [nvidia_vf]",
        "mdevd.toml:8: [daemon] uevent_source must be one of 'udev', 'kernel', 'none'",
        "mdevd.toml:9: [daemon] io_timeout must be a number",
    ]
    assert result.config.store.devices_dir == Path("/e")
    assert result.config.daemon.sysfs_root == Path("/fake/sys")
    assert result.config.daemon.io_timeout == 30.0


def test_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    (problem,) = parse_config("[store\n", "c.toml", tmp_path).problems
    assert (problem.line, problem.message.startswith("not valid TOML")) == (1, True)
    with pytest.raises(ConfigInvalid, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")
