# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd's reading of mdevctl files, compared with the real mdevctl on the same files.

Each case builds an mdevctl config tree, bind-mounts it over /etc/mdevctl.d in a private mount
namespace of a child process (the host's /etc is never touched), and runs the installed
`mdevctl list --defined --dumpjson`. mdevctl accepts a file if it lists it (one bad file fails
its whole listing, so each case has one file). mdevd must accept exactly those, with the same
result, unless it refuses one as unsafe and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdevd import mdevctl_format
from tests.store.conftest import MDEVCTL_TESTDATA, UUID_A

PARENT = "0000:00:02.0"

pytestmark = pytest.mark.skipif(
    shutil.which("mdevctl") is None or shutil.which("unshare") is None,
    reason="needs the mdevctl package (Debian: mdevctl) and unshare (util-linux)",
)


def _real_mdevctl(root: Path) -> tuple[bool, str]:
    """(accepted, stdout) of the installed `mdevctl list -d --dumpjson` on the tree `root`."""
    for scripts in ("callouts", "notifiers"):
        (root / "scripts.d" / scripts).mkdir(parents=True, exist_ok=True)
    script = 'mount --bind "$1" /etc/mdevctl.d && exec mdevctl list --defined --dumpjson'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    done = subprocess.run(
        [*command, "sh", str(root)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0 and done.stderr.startswith(("unshare:", "mount:")):
        pytest.skip(f"cannot give mdevctl a private /etc/mdevctl.d here: {done.stderr.strip()}")
    return done.returncode == 0, done.stdout


def _compare(name: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / PARENT).mkdir()
        (root / PARENT / name).write_bytes(content)
        accepted, listing = _real_mdevctl(root)
        tree = mdevctl_format.read_mdevctl_tree(root)
    if not accepted:
        assert tree.definitions == []
        assert [p.message.split(": ")[1] for p in tree.problems] == ["mdevctl rejects it"], (
            content,
            tree.problems,
        )
        return
    if tree.problems:  # mdevctl accepts it; mdevd may refuse only as unsafe, and says why
        assert tree.problems[0].message.startswith(
            "not imported: mdevctl accepts it, but mdevd refuses it: "
        ), (content, tree.problems)
        return
    assert json.loads(mdevctl_format.dumpjson(tree.definitions)) == json.loads(listing), content


GOLDEN_INPUTS = sorted(
    [*(MDEVCTL_TESTDATA / "load-json").glob("*.in"), *(MDEVCTL_TESTDATA / "define").glob("*")]
)


@pytest.mark.parametrize("source", GOLDEN_INPUTS, ids=lambda p: p.name)
def test_golden_inputs_read_as_mdevctl_reads_them(source: Path) -> None:
    _compare(UUID_A, source.read_bytes())


@pytest.mark.parametrize(
    "content",
    [
        '{"mdev_type": "t", "start": "auto", "attrs": [{"a": "1", "b": "2"}]}',
        '{"mdev_type": "t", "start": "auto", "attrs": ["a", "b"]}',
        '{"mdev_type": "t", "start": "auto", "attrs": {"a": "1"}}',
        '{"mdev_type": "t", "start": "auto", "attrs": [{"a": 1}]}',
        '{"mdev_type": "t", "start": "auto", "attrs": null}',
        '{"mdev_type": "t", "start": "auto", "attrs": []}',
        '{"mdev_type": "t", "start": "bogus", "extra": [1, 2]}',
        '{"mdev_type": "t", "start": 1}',
        '{"mdev_type": "t", "start": false}',
        '{"mdev_type": "t"}',
        '{"start": "auto"}',
        '{"mdev_type": 5, "start": "auto"}',
        '{"mdev_type": null, "start": "auto"}',
        '["mdev_type", "start"]',
        '"just a string"',
        "{",
        "",
        '{"mdev_type": "t", "start": NaN}',
        '{"mdev_type": "t", "start": "auto", "attrs": [{"../remove": "1"}]}',
        '{"mdev_type": "t", "start": "auto", "attrs": [{"": "1"}]}',
        '{"mdev_type": "../t", "start": "auto"}',
        '{"mdev_type": "t", "start": "auto", "mdev_type": "u"}',
        '{"mdev_type": "t", "start": "auto", "attrs": [{"a": "\\u00e9\\n"}]}',
    ],
)
def test_edge_cases_read_as_mdevctl_reads_them(content: str) -> None:
    _compare(UUID_A, content.encode())


@pytest.mark.parametrize(
    "name",
    [UUID_A.upper(), UUID_A.replace("-", ""), f"{{{UUID_A}}}", f"urn:uuid:{UUID_A}", "README"],
)
def test_file_names_read_as_mdevctl_reads_them(name: str) -> None:
    content = b'{"mdev_type": "t", "start": "auto"}'
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / PARENT).mkdir()
        (root / PARENT / name).write_bytes(content)
        accepted, listing = _real_mdevctl(root)
        tree = mdevctl_format.read_mdevctl_tree(root)
    assert accepted  # mdevctl skips names it cannot read as UUIDs, without failing
    assert json.loads(mdevctl_format.dumpjson(tree.definitions)) == json.loads(listing)


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["auto", "manual", "", "x/y"])
)
near_schema = st.fixed_dictionaries(
    {},
    optional={
        "mdev_type": json_leaves,
        "start": json_leaves,
        "attrs": st.one_of(
            json_leaves,
            st.lists(
                st.one_of(
                    json_leaves,
                    st.dictionaries(st.sampled_from(["a", "b", "../c"]), json_leaves, max_size=2),
                ),
                max_size=3,
            ),
        ),
        "other": json_leaves,
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_schema)
def test_random_near_schema_files_read_as_mdevctl_reads_them(document: dict[str, object]) -> None:
    _compare(UUID_A, json.dumps(document).encode())
