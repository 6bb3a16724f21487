# SPDX-License-Identifier: LGPL-2.1-or-later
"""The `mdevd` command: the daemon (without a subcommand) and its offline tools.

    mdevd [DAEMON OPTIONS]                 the daemon (`run_daemon`)
    mdevd check-config [PATH...]           validate the configuration and definitions
    mdevd import-mdevctl [--from DIR] [--to DIR] [--dry-run]
                                           convert mdevctl's definitions to mdevd's
    mdevd export-mdevctl                   print definitions as `mdevctl list -d --dumpjson`

check-config and export-mdevctl also take `--mdevctl-compat MODE` and `--mdevctl-dir DIR`, the
daemon's options: in compatibility mode they read mdevctl's directory as the daemon would.

Each command also takes `--config FILE` and `--devices-dir DIR` (repeatable: the definitions
directories, highest precedence first, replacing the configured ones).
Exit status: 0 success, 1 problems found (each printed as `FILE:LINE: problem`), 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from mdevd import __version__, daemon, defaults, mdevctl_format
from mdevd.compat import setup as compat_setup
from mdevd.compat.directory import MdevctlDirectory
from mdevd.compat.store import CompatStore
from mdevd.config import Config, ConfigResult, read_config
from mdevd.definitions import Problem, ProblemKind, render
from mdevd.errors import MdevdError
from mdevd.logs import setup_logging
from mdevd.store import DEFINITION_SUFFIX, DefinitionStore, LoadResult, check_files

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def _common_options() -> argparse.ArgumentParser:
    # On each command's parser, not on the top-level one: the top level belongs to the daemon,
    # whose own options (same names, same meaning) must not clash with these. SUPPRESS
    # defaults keep a command's parser from overwriting what the top level parsed.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration")
    group.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"configuration file (default: {defaults.CONFIG_FILE} if it exists)",
    )
    group.add_argument(
        "--devices-dir",
        type=Path,
        action="append",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="a definitions directory; repeat for several, highest precedence first; they "
        "replace the configured ones, and new definitions go to the first",
    )
    return common


def _mdevctl_options() -> argparse.ArgumentParser:
    """The daemon's compatibility options, for the commands that read what it would load."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("mdevctl compatibility")
    group.add_argument(
        "--mdevctl-compat",
        choices=("auto", "on", "off"),
        default=argparse.SUPPRESS,
        help="mdevctl compatibility mode, as the daemon's option (default: the config file's; "
        "auto: on when mdevctl's directory exists)",
    )
    group.add_argument(
        "--mdevctl-dir",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="mdevctl's definitions directory, read too in compatibility mode (default: the "
        f"config file's, else {defaults.MDEVCTL_DIR})",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    mdevctl = _mdevctl_options()
    parser = argparse.ArgumentParser(
        prog="mdevd",
        description="Persistent mediated devices (mdev) with a D-Bus API. Without a command, "
        "runs the daemon.",
        epilog="Exit status: 0 success, 1 problems found, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"mdevd {__version__}")
    daemon.add_arguments(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser(
        "check-config",
        parents=[common, mdevctl],
        help="validate the configuration and device definitions",
        description="Validate the configuration file and every definitions directory (or only "
        "the files and directories given), print each problem as FILE:LINE: problem, and exit "
        "1 if there was any.",
    )
    check.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="definitions files, or directories of them, to check instead of the configured "
        "directories",
    )

    importer = commands.add_parser(
        "import-mdevctl",
        parents=[common],
        help="convert mdevctl's definitions into mdevd's",
        description="Convert every definition under mdevctl's directory that mdevctl accepts "
        f"into {defaults.DEVICES_DIR}/<uuid>.toml, and report the ones it does not convert. "
        "Never overwrites an existing mdevd definition.",
    )
    importer.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=defaults.MDEVCTL_DIR,
        metavar="DIR",
        help="mdevctl's configuration directory (default: %(default)s)",
    )
    importer.add_argument(
        "--to",
        dest="target",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write the definitions (default: the devices directory)",
    )
    importer.add_argument(
        "--dry-run", action="store_true", help="print what would be written, write nothing"
    )

    commands.add_parser(
        "export-mdevctl",
        parents=[common, mdevctl],
        help="print the definitions in `mdevctl list --defined --dumpjson` form",
        description="Print the definitions in effect as `mdevctl list --defined --dumpjson` "
        "would: the TOML ones and, in mdevctl compatibility mode, those in mdevctl's "
        "directory, as the daemon would load them. Problems go to standard error (exit status "
        "1); the output holds every definition that loaded.",
    )
    return parser


def _config(args: argparse.Namespace) -> ConfigResult:
    return read_config(getattr(args, "config", None))


def _store(
    args: argparse.Namespace, config: Config, write_dir: Path | None = None
) -> DefinitionStore:
    """The store the options describe: `--devices-dir`s if given, else the configured stack.

    With `write_dir`, new definitions go there instead; it joins the search path first, so
    definitions everywhere are still seen (and never overwritten).
    """
    given: list[Path] | None = getattr(args, "devices_dir", None)
    if given:
        dirs, read_only = list(given), []
    else:
        dirs, read_only = list(config.store.search_path()), [config.store.vendor_devices_dir]
    if write_dir is None:
        return DefinitionStore(dirs, read_only=read_only)
    others = [d for d in dirs if d != write_dir]
    return DefinitionStore([write_dir, *others], write_dir=write_dir, read_only=read_only)


def _print_problems(problems: Sequence[Problem], stream: TextIO | None = None) -> None:
    for problem in problems:
        print(problem, file=stream or sys.stdout)


def _summary(result: LoadResult) -> str:
    devices = len(result.definitions)
    files = len(result.files)
    return f"{devices} definition{'s' * (devices != 1)} in {files} file{'s' * (files != 1)}"


def _files_under(paths: Sequence[Path]) -> tuple[list[Path], list[Problem]]:
    files: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.name.endswith(DEFINITION_SUFFIX) and not p.name.startswith(".")
                )
            )
        elif path.exists():
            files.append(path)
        else:
            problems.append(Problem(str(path), 0, "no such file", ProblemKind.UNREADABLE))
    return files, problems


def _in_effect(
    args: argparse.Namespace, config: Config
) -> tuple[LoadResult, MdevctlDirectory | None]:
    """What the daemon would load with these options, and mdevctl's directory if it would
    read that too (compatibility mode); writes nothing (no mirror is brought up to date).

    Raises MdevdError when mdevctl's directory cannot be read at all.
    """
    toml = _store(args, config)
    compat = compat_setup.effective_config(config.mdevctl, args)
    mdevctl_dir = compat_setup.directory_to_check(compat)
    if mdevctl_dir is None:
        return toml.load(), None
    return CompatStore(toml, mdevctl_dir).check(), mdevctl_dir


def check_config(args: argparse.Namespace) -> int:
    """`mdevd check-config`: like `nginx -t`, a verdict and every problem."""
    configured = _config(args)
    # Given files are checked on their own; the config file then only if named explicitly.
    check_config_file = not args.paths or getattr(args, "config", None) is not None
    problems = list(configured.problems) if check_config_file else []
    mdevctl_dir: MdevctlDirectory | None = None
    if args.paths:
        files, missing = _files_under(args.paths)
        problems.extend(missing)
        result = check_files(files)
    else:
        try:
            result, mdevctl_dir = _in_effect(args, configured.config)
        except MdevdError as e:  # mdevctl's directory cannot be read at all
            print(f"mdevd: {e.message}")
            return EXIT_PROBLEMS
    problems.extend(result.problems)
    _print_problems(problems)
    summary = _summary(result)
    if mdevctl_dir is not None:
        summary += f" and {mdevctl_dir.root}"
    if problems:
        count = len(problems)
        print(f"mdevd: {count} problem{'s' * (count != 1)} found; the rest loads: {summary}")
        return EXIT_PROBLEMS
    print(f"mdevd: configuration OK: {summary}")
    return EXIT_OK


def import_mdevctl(args: argparse.Namespace) -> int:
    """`mdevd import-mdevctl`: convert what mdevctl accepts, report the rest."""
    configured = _config(args)
    if configured.problems:
        _print_problems(configured.problems)
        return EXIT_PROBLEMS
    try:
        store = _store(args, configured.config, write_dir=args.target)
        tree = mdevctl_format.read_mdevctl_tree(args.source)
    except (MdevdError, ValueError) as e:
        print(f"mdevd: {e}", file=sys.stderr)
        return EXIT_PROBLEMS
    report = mdevctl_format.import_tree(tree, store, dry_run=args.dry_run)
    for definition, destination in report.imported:
        if args.dry_run:
            print(f"# would write {destination} from {definition.source_file}")
            print(render([definition]))
        else:
            print(f"imported {definition.source_file} -> {destination}")
    for definition in report.unchanged:
        print(f"unchanged {definition.source_file} (device {definition.uuid} already in mdevd)")
    _print_problems(report.problems)
    verb = "would import" if args.dry_run else "imported"
    print(
        f"mdevd: {verb} {len(report.imported)}, already present {len(report.unchanged)}, "
        f"not imported {len(report.problems)}"
    )
    return EXIT_PROBLEMS if report.problems else EXIT_OK


def export_mdevctl(args: argparse.Namespace) -> int:
    """`mdevd export-mdevctl`: the definitions in effect, as mdevctl would list them."""
    configured = _config(args)
    try:
        # The same definitions the daemon holds, /etc/mdevctl.d's included: the export is
        # what `mdevctl list --defined --dumpjson` through the front end would print.
        result, _ = _in_effect(args, configured.config)
    except MdevdError as e:  # mdevctl's directory cannot be read at all
        print(f"mdevd: {e.message}", file=sys.stderr)
        return EXIT_PROBLEMS
    problems = [*configured.problems, *result.problems]
    print(mdevctl_format.dumpjson(result.definitions.values()))
    _print_problems(problems, sys.stderr)
    return EXIT_PROBLEMS if problems else EXIT_OK


def run_daemon(args: argparse.Namespace) -> int:
    """The daemon: `mdevd` without a command."""
    setup_logging("info")
    _remove_stale_temp_files(args)
    return daemon.run_from_args(args)


def _remove_stale_temp_files(args: argparse.Namespace) -> None:
    """Before the daemon's first look: temporary files a killed mdevd left half-written.

    Here, and not in the stores' loads, because only a starting daemon knows that no write
    of its own is in flight (check-config or a second command must never remove one).
    Best effort: a configuration that cannot be read is the daemon's to report.
    """
    configured = _config(args)
    if configured.problems:
        return
    toml = _store(args, configured.config)
    removed = [str(path) for path in toml.remove_stale_temp_files()]
    compat = compat_setup.effective_config(configured.config.mdevctl, args)
    mdevctl_dir = compat_setup.directory_to_check(compat)
    if mdevctl_dir is not None:
        with contextlib.suppress(OSError):
            removed += [str(mdevctl_dir.root / n) for n in mdevctl_dir.remove_stale_temp_files()]
    for path in removed:
        log.info("removed %s, a temporary file left by an interrupted write", path)


COMMANDS = {
    "check-config": check_config,
    "import-mdevctl": import_mdevctl,
    "export-mdevctl": export_mdevctl,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        return run_daemon(args)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
