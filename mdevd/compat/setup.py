# SPDX-License-Identifier: LGPL-2.1-or-later
"""Turning `[mdevctl]` of the configuration (and the daemon's flags) into the compat parts.

Compatibility mode is decided once, at startup: `auto` (the default) turns it on when
mdevctl's directory exists, `on` creates the directory if it is missing, `off` leaves mdevctl's
directory alone entirely (neither read nor written). Callouts run whenever `callouts` is true
and scripts are installed, independently of the mode: they are the s390 tools' validation.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from mdevd import atomic, defaults
from mdevd.compat.callouts import CalloutRunner
from mdevd.compat.directory import MdevctlDirectory
from mdevd.compat.hooks import CalloutHooks
from mdevd.compat.store import CompatStore
from mdevd.config import MdevctlConfig
from mdevd.errors import ConfigInvalid
from mdevd.store import DefinitionStore

log = logging.getLogger(__name__)

CALLOUTS = "callouts"
NOTIFIERS = "notifiers"
#: Admin scripts live under mdevctl's directory: `<config_dir>/scripts.d/{callouts,notifiers}`.
ADMIN_SCRIPTS = "scripts.d"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The daemon's flags that override `[mdevctl]`."""
    parser.add_argument(
        "--mdevctl-compat",
        choices=("auto", "on", "off"),
        help="mdevctl compatibility mode (default auto: on when mdevctl's directory exists)",
    )
    parser.add_argument(
        "--mdevctl-dir",
        type=Path,
        help=f"mdevctl's definitions directory ({defaults.MDEVCTL_DIR})",
    )
    parser.add_argument(
        "--mdevctl-scripts-dir",
        type=Path,
        help=f"mdevctl's packaged scripts ({defaults.MDEVCTL_SCRIPTS_DIR})",
    )


def effective_config(config: MdevctlConfig, args: argparse.Namespace) -> MdevctlConfig:
    # Options the command line did not give (absent or None) leave the config file's value.
    return replace(
        config,
        compatibility=getattr(args, "mdevctl_compat", None) or config.compatibility,
        config_dir=getattr(args, "mdevctl_dir", None) or config.config_dir,
        scripts_dir=getattr(args, "mdevctl_scripts_dir", None) or config.scripts_dir,
    )


@dataclass(frozen=True, slots=True)
class CompatParts:
    config: MdevctlConfig
    #: mdevctl's directory when compatibility mode is on, else None.
    directory: MdevctlDirectory | None

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def callout_dirs(self) -> tuple[Path, Path]:
        return (
            self.config.scripts_dir / CALLOUTS,
            self.config.config_dir / ADMIN_SCRIPTS / CALLOUTS,
        )

    def notifier_dirs(self) -> tuple[Path, Path]:
        return (
            self.config.scripts_dir / NOTIFIERS,
            self.config.config_dir / ADMIN_SCRIPTS / NOTIFIERS,
        )

    def store(self, toml: DefinitionStore) -> CompatStore:
        return CompatStore(toml, self.directory)

    def hooks(self) -> CalloutHooks | None:
        """mdevctl's callouts around every operation, unless `callouts` is off."""
        if not self.config.callouts:
            return None
        runner = CalloutRunner(
            self.callout_dirs(), self.notifier_dirs(), timeout=self.config.callout_timeout
        )
        return CalloutHooks(runner)


def directory_to_check(config: MdevctlConfig) -> MdevctlDirectory | None:
    """mdevctl's directory if the daemon would run in compatibility mode with `config`, for
    tools that only read it (`check-config`): nothing is created."""
    root = config.config_dir
    if config.compatibility == "on" or (config.compatibility == "auto" and root.is_dir()):
        return MdevctlDirectory(root)
    return None


def build(config: MdevctlConfig) -> CompatParts:
    """Decide the mode (creating the directory for `on`)."""
    root = config.config_dir
    directory: MdevctlDirectory | None = None
    if config.compatibility == "on":
        try:
            atomic.ensure_directory(root)
        except OSError as e:
            raise ConfigInvalid(f"{root}: cannot create mdevctl's directory: {e.strerror}") from e
        directory = MdevctlDirectory(root)
    elif config.compatibility == "auto" and root.is_dir():
        directory = MdevctlDirectory(root)
    if directory is None:
        log.info("mdevctl compatibility is off (%s)", config.compatibility)
    else:
        log.info("mdevctl compatibility is on: definitions are kept in %s too", root)
    return CompatParts(config, directory)
