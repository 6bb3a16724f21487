# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a script can match: the front end's error texts and version strings, as
docs/mdevctl-compat.md lists them (issue 19).

- The document's table of `Error:` lines and the messages in the front end's code are the
  same set, so neither can gain a message the other lacks.
- The rows it calls "the same" that no other test compares are run through Debian's mdevctl
  and the front end on the same emulated kernel.
- `--version` and `help` answer as the document says.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mdevd import __version__
from mdevd.cli import mdevctl
from tests.compat.conftest import StackFactory
from tests.compat.reference import REAL_MDEVCTL, run_reference
from tests.support.paths import REPO
from tests.support.sim import running_sim

pytestmark = pytest.mark.timeout(240, method="thread")

DOC = REPO / "docs" / "mdevctl-compat.md"
TABLE_HEADING = "### Every `Error:` line the front end prints"

W = "a1111111-2222-4333-8444-555555555555"
X = "b1111111-2222-4333-8444-555555555555"

#: One code span: ``double`` (it may hold a backtick) or `single`.
_CODE_SPAN = r"(?:``\s?(?P<double>.+?)\s?``|`(?P<single>[^`]*)`)"
_ROW = re.compile(rf"^\| {_CODE_SPAN} \| (?:{_CODE_SPAN.replace('?P<', '?P<cause_')})? ?\|")


def _placeholders(text: str) -> str:
    """`<parent>`, `<uuid>`, ...: any placeholder, as the code's `{...}` are."""
    return re.sub(r"<[^<>]*>", "<>", text)


def _template(node: ast.expr | None) -> str:
    """A message argument as a template: literal text kept, anything computed `<>`."""
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) and isinstance(part.value, str) else "<>"
            for part in node.values
        )
    return "<>"


def _code_messages() -> set[tuple[str, str]]:
    """(message, cause) of every `CommandError(...)` the front end builds."""
    source = Path(mdevctl.__file__).read_text()
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "CommandError"
        ):
            continue
        cause = node.args[1] if len(node.args) > 1 else None
        for keyword in node.keywords:
            if keyword.arg == "cause":
                cause = keyword.value
        found.add((_template(node.args[0]), _template(cause)))
    return found


def _doc_messages() -> set[tuple[str, str]]:
    lines = DOC.read_text().splitlines()
    start = lines.index(TABLE_HEADING)
    found: set[tuple[str, str]] = set()
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("|---"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if not in_table:
            continue
        match = _ROW.match(line)
        assert match is not None, f"a row of the table that this test cannot read: {line}"
        message = match["double"] or match["single"] or ""
        cause = match["cause_double"] or match["cause_single"] or ""
        found.add((_placeholders(message), _placeholders(cause)))
    assert found, f"no table under {TABLE_HEADING!r} in {DOC}"
    return found


def _describes(code: tuple[str, str], documented: tuple[str, str]) -> bool:
    """Whether a documented (message, cause) is one the code builds. A cause the code
    computes (`<>`, e.g. an errno's text) may be documented in more detail."""
    cause = ".*".join(re.escape(part) for part in code[1].split("<>"))
    return code[0] == documented[0] and re.fullmatch(cause, documented[1]) is not None


def test_the_document_lists_every_error_the_front_end_prints() -> None:
    code, documented = _code_messages(), _doc_messages()
    assert len(code) > 20  # the extraction found the front end's messages
    missing = [c for c in sorted(code) if not any(_describes(c, d) for d in documented)]
    assert missing == [], "printed by the front end, missing in the document"
    stale = [d for d in sorted(documented) if not any(_describes(c, d) for c in code)]
    assert stale == [], "in the document, never printed by the front end"


def _front_end(*argv: str, program: str = "mdevctl") -> subprocess.CompletedProcess[str]:
    """The front end as installed (a program named `mdevctl`, or `lsmdev`); no daemon needed
    for what is run through it here."""
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    launcher = directory / program
    launcher.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from mdevd.cli.mdevctl import main\nsys.exit(main())\n"
    )
    launcher.chmod(0o755)
    env = dict(os.environ)
    env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent"  # never the host's daemon
    return subprocess.run(
        [str(launcher), *argv], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_version_strings_are_the_documented_ones() -> None:
    for argv, program, expected in (
        (["--version"], "mdevctl", f"mdevctl 1.3.0 (mdevd {__version__})\n"),
        (["-V"], "mdevctl", f"mdevctl 1.3.0 (mdevd {__version__})\n"),
        (["list", "--version"], "mdevctl", f"mdevctl-list 1.3.0 (mdevd {__version__})\n"),
        (["list", "-V"], "mdevctl", f"mdevctl-list 1.3.0 (mdevd {__version__})\n"),
        (["--version"], "lsmdev", f"lsmdev 1.3.0 (mdevd {__version__})\n"),
    ):
        done = _front_end(*argv, program=program)
        assert (done.returncode, done.stdout, done.stderr) == (0, expected, ""), (program, argv)
    doc = DOC.read_text()
    assert "`mdevctl 1.3.0 (mdevd <version>)`" in doc
    assert mdevctl.MDEVCTL_VERSION == "1.3.0"


def test_help_answers_on_stdout_like_clap() -> None:
    done = _front_end("help")
    assert (done.returncode, done.stderr) == (0, "")
    assert "start" in done.stdout and "list" in done.stdout
    done = _front_end("help", "start")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("usage: mdevctl start ")
    assert _front_end("help", "nosuch").returncode == 2
    assert _front_end("version").returncode == 2


@pytest.mark.skipif(REAL_MDEVCTL is None, reason="mdevctl is not installed")
def test_version_and_help_have_mdevctls_shape() -> None:
    """The first word of each version line, and help's exit status and stream."""
    assert REAL_MDEVCTL is not None
    for argv in (["--version"], ["-V"], ["list", "--version"], ["help"], ["help", "list"]):
        ours = _front_end(*argv)
        theirs = subprocess.run(
            [REAL_MDEVCTL, *argv], capture_output=True, text=True, timeout=60, check=False
        )
        assert (ours.returncode, bool(ours.stdout), ours.stderr) == (
            theirs.returncode,
            bool(theirs.stdout),
            theirs.stderr,
        ), argv
        if "help" not in argv:
            assert ours.stdout.split()[0] == theirs.stdout.split()[0], argv
    for argv in (["version"], ["help", "nosuch"]):
        theirs = subprocess.run(
            [REAL_MDEVCTL, *argv], capture_output=True, text=True, timeout=60, check=False
        )
        assert _front_end(*argv).returncode == theirs.returncode == 2, argv


@pytest.mark.skipif(REAL_MDEVCTL is None, reason="mdevctl is not installed")
def test_the_rows_called_the_same_are_the_same(start_stack: StackFactory) -> None:
    """Rows of the table no other test compares with mdevctl."""
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    good = directory / "good.json"
    good.write_text('{"mdev_type": "mtty-1", "start": "manual", "attrs": []}')
    not_utf8 = directory / "latin1.json"
    not_utf8.write_bytes(b'{"mdev_type": "\xff"}')
    commands = [
        ["mdevctl", "define", "-p", "mtty", "-t", "mtty-1", "-u", W],
        ["mdevctl", "start", "-u", W, "-p", "mtty", "-t", "mtty-2"],
        ["mdevctl", "start", "-p", "mtty", "--jsonfile", str(not_utf8)],
        ["mdevctl", "define", "-u", X, "-p", "mtty", "--jsonfile", str(not_utf8)],
        ["mdevctl", "start", "-p", "mtty", "--jsonfile", str(directory)],
        ["mdevctl", "start", "-u", X, "--jsonfile", str(good)],
        ["mdevctl", "modify", "-u", W, "-p", "mdpy", "--auto"],
    ]
    with running_sim("default") as sim:
        expected = run_reference(sim.root, Path(tempfile.mkdtemp(dir="/tmp")), commands)
    stack = start_stack()
    for argv, want in zip(commands, expected, strict=True):
        got = stack.mdevctl(*argv[1:])
        assert (got.returncode, got.stdout, got.stderr) == (
            want.returncode,
            want.stdout,
            want.stderr,
        ), argv
    assert [r.returncode for r in expected] == [0, 1, 1, 1, 1, 1, 1]
