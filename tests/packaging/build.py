# SPDX-License-Identifier: LGPL-2.1-or-later
"""Build the Debian packages from this checkout the way a distribution would: the sdist first
(Debian's own setuptools, no network), then `dpkg-buildpackage -us -uc -b` in the unpacked
sdist, which proves the sdist holds everything the packaging needs.

    build_debs(out_dir)        # {"mdevd": out_dir/mdevd_0.1.0_all.deb, "mdevd-mdevctl": ...}
    python -m tests.packaging.build OUT_DIR

The tree built is the working tree as git sees it (tracked and new, not ignored, files), copied
first, so nothing is written into the checkout. Everything runs in a clean environment with
Debian's /usr/bin/python3: no virtualenv, no pyenv shim, whatever the caller's PATH. A second
call with the same tree and out_dir returns the packages already built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.support.daemon import REPO

#: PATH for the builds: Debian's tools only (pybuild runs `python3.X` from PATH).
BUILD_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: The package's own check needs Debian's runtime libraries; the suite runs it elsewhere.
NOCHECK = "nocheck"
STAMP = "debs.sha256"


class BuildFailed(RuntimeError):
    """A build step failed; the message ends with the step's output."""


def build_debs(out_dir: Path) -> dict[str, Path]:
    """Every binary package built from this checkout, by name, as .deb files in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tree = copy_tree(out_dir / "tree")
    digest = tree_digest(tree)
    cached = _cached(out_dir, digest)
    if cached:
        return cached
    for old in out_dir.glob("*.deb"):
        old.unlink()
    sdist = build_sdist(tree, out_dir)
    work = out_dir / "dpkg-buildpackage"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(work, filter="data")
        else:  # Python 3.11 before 3.11.4 (Debian 12's 3.11.2): our own sdist, just built
            archive.extractall(work)  # noqa: S202
    (source,) = (p for p in work.iterdir() if p.is_dir())
    _run(
        ["dpkg-buildpackage", "-us", "-uc", "-b"],
        cwd=source,
        env={"DEB_BUILD_OPTIONS": NOCHECK, "DEB_BUILD_PROFILES": NOCHECK},
    )
    debs = {}
    for built in work.glob("*.deb"):
        deb = out_dir / built.name
        built.replace(deb)
        debs[package_field(deb, "Package")] = deb
    # lintian reads the .changes (both packages at once) and the .buildinfo it names.
    for record in [*work.glob("*.changes"), *work.glob("*.buildinfo")]:
        record.replace(out_dir / record.name)
    shutil.rmtree(work)
    (out_dir / STAMP).write_text(f"{digest}\n" + "".join(f"{p.name}\n" for p in debs.values()))
    return debs


def copy_tree(destination: Path) -> Path:
    """The working tree's tracked and new (not ignored) files, copied to `destination`."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    shutil.rmtree(destination, ignore_errors=True)
    for name in sorted(set(filter(None, listed.split("\0")))):
        source = REPO / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree, not yet in the index
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return destination


def tree_digest(tree: Path) -> str:
    """What the packages are built from: every file's name, mode and content."""
    digest = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if not p.is_dir() or p.is_symlink()):
        digest.update(str(path.relative_to(tree)).encode() + b"\0")
        digest.update(oct(path.lstat().st_mode).encode() + b"\0")
        content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def build_sdist(tree: Path, out_dir: Path) -> Path:
    """`python3 -m build --sdist` with Debian's build and setuptools (no isolation: offline)."""
    for old in out_dir.glob("mdevd-*.tar.gz"):
        old.unlink()
    _run(
        ["python3", "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out_dir), "."],
        cwd=tree,
    )
    (sdist,) = out_dir.glob("mdevd-*.tar.gz")
    return sdist


def package_field(deb: Path, field: str) -> str:
    """One field of a .deb's control file ('' when absent)."""
    return _run(["dpkg-deb", "--field", str(deb), field], cwd=deb.parent).strip()


def _cached(out_dir: Path, digest: str) -> dict[str, Path] | None:
    stamp = out_dir / STAMP
    if not stamp.exists():
        return None
    recorded, *names = stamp.read_text().split()
    debs = [out_dir / name for name in names]
    if recorded != digest or not debs or not all(deb.exists() for deb in debs):
        return None
    return {package_field(deb, "Package"): deb for deb in debs}


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    clean = {"PATH": BUILD_PATH, "HOME": str(cwd), "LANG": "C.UTF-8", **(env or {})}
    result = subprocess.run(
        command, cwd=cwd, env=clean, capture_output=True, text=True, timeout=600
    )
    if result.returncode:
        output = (result.stdout + result.stderr)[-6000:]
        raise BuildFailed(f"{' '.join(command)} exited with {result.returncode}:\n{output}")
    return result.stdout


if __name__ == "__main__":
    for name, path in sorted(build_debs(Path(sys.argv[1]).absolute()).items()):
        print(f"{name}\t{path}")
