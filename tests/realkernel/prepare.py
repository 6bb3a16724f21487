# SPDX-License-Identifier: LGPL-2.1-or-later
"""Preparing a real Debian kernel with the mdev sample drivers, once, from the Debian archive.

`prepare()` returns a `PreparedKernel`: the kernel image, its module tree with `mtty`, `mdpy`
and `mbochs` built from `linux-source` added under `extra/` (depmod run), and a small initramfs
(static busybox, the virtio/9p/overlay modules and `initramfs-init`). Everything comes from the
Debian archive through apt: the kernel is the one `linux-image-amd64` depends on, never a
pinned version (the security archive keeps only the newest).

The result is cached under `cache_root/<release>_<package version>/` (default
`/var/cache/mdevd-realkernel`, or `$MDEVD_REALKERNEL_CACHE`), so a machine prepares once per
kernel update; a clean machine prepares from scratch (about half a minute). The initramfs is
named after a hash of what goes into it, so editing `initramfs-init` rebuilds only it.
Preparation runs under a lock (concurrent test runs wait for each other) in a scratch directory
renamed into place at the end, so an interrupted run leaves nothing half-made behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.realkernel.cpio import Entry, write_initramfs
from tests.support.namespaces import host_network_argv

HERE = Path(__file__).resolve().parent
INITRAMFS_INIT = HERE / "initramfs-init"
DEFAULT_CACHE_ROOT = Path(os.environ.get("MDEVD_REALKERNEL_CACHE", "/var/cache/mdevd-realkernel"))

#: The command each host tool comes from, for installing what is missing.
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",  # static: it runs in the initramfs, before any library
    "gcc-12": "gcc-12",  # the compiler Debian built the kernel with
    "make": "make",
    "depmod": "kmod",
    "modprobe": "kmod",
    "xz": "xz-utils",
}
SAMPLE_DRIVERS = ("mtty", "mdpy", "mbochs")
#: What the initramfs loads to reach the host's / (9p over virtio-pci, with an overlay on top).
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
#: Bump when the layout of a prepared kernel directory changes: older caches are rebuilt.
RECIPE_VERSION = 1


class PreparationError(RuntimeError):
    """A step of the preparation failed; the message says which, with the tool's output."""


@dataclass(frozen=True, slots=True)
class PreparedKernel:
    release: str  # `uname -r` in the guest, e.g. 6.1.0-57-amd64
    package_version: str  # e.g. 6.1.192-3
    directory: Path
    vmlinuz: Path
    modules_dir: Path  # root/lib/modules/<release>: the guest sees it at /lib/modules/<release>
    initramfs: Path
    #: Seconds each step took, for this preparation (empty when everything came from the cache).
    timings: dict[str, float]


def _run(argv: Sequence[str], *, cwd: Path | None = None, network: bool = False) -> str:
    prefix = host_network_argv() if network else []
    result = subprocess.run(
        [*prefix, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
        check=False,
    )
    if result.returncode != 0:
        raise PreparationError(
            f"`{' '.join(argv)}` failed with exit status {result.returncode}:\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def _apt_update() -> None:
    _run(["apt-get", "update", "-qq"], network=True)


def missing_host_packages() -> list[str]:
    """The Debian packages the harness needs on the host that are not installed."""
    missing = {package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None}
    busybox = shutil.which("busybox")
    if busybox is not None and not _is_static(Path(busybox)):
        missing.add("busybox-static")
    return sorted(missing)


def _is_static(executable: Path) -> bool:
    # A dynamically linked ELF names its interpreter (PT_INTERP); a static one does not.
    return b"ld-linux" not in executable.read_bytes()[:4096]


def install_host_packages() -> None:
    missing = missing_host_packages()
    if not missing:
        return
    _apt_update()
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], network=True)


def host_can_run_guests() -> str | None:
    """None when this host can boot the guest, else why not (the suite's skip reason)."""
    if platform.machine() != "x86_64":
        return f"the guest runs the host's x86-64 userland; this host is {platform.machine()}"
    if os.geteuid() != 0:
        return "the harness runs as root (it installs packages and serves / to the guest)"
    if shutil.which("qemu-system-x86_64") is None and shutil.which("apt-get") is None:
        return "qemu-system-x86_64 is not installed and there is no apt-get to install it"
    return None


def _depends(package: str) -> list[str]:
    output = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", package])
    return re.findall(r"^\s*Depends: (\S+)$", output, flags=re.MULTILINE)


def _candidate_version(package: str) -> str:
    output = _run(["apt-cache", "show", "--no-all-versions", package])
    match = re.search(r"^Version: (\S+)$", output, flags=re.MULTILINE)
    if match is None:
        raise PreparationError(f"apt-cache knows no version of {package}")
    return match.group(1)


def resolve_kernel() -> tuple[str, str]:
    """(release, package version) of the kernel `linux-image-amd64` depends on now."""
    for attempt in range(2):
        try:
            images = [d for d in _depends("linux-image-amd64") if d.startswith("linux-image-")]
            if images:
                image = images[0]
                return image.removeprefix("linux-image-"), _candidate_version(image)
        except PreparationError:
            if attempt:
                raise
        _apt_update()  # a clean machine has no package lists yet
    raise PreparationError("linux-image-amd64 depends on no linux-image-* package")


def download(packages: Sequence[str], destination: Path) -> list[Path]:
    """`apt-get download` into `destination`; once more after `apt-get update` if it fails
    (the lists may name a version the security archive no longer has)."""
    destination.chmod(0o777)  # apt downloads as its sandbox user `_apt`
    try:
        _run(["apt-get", "download", "-q", *packages], cwd=destination, network=True)
    except PreparationError:
        _apt_update()
        _run(["apt-get", "download", "-q", *packages], cwd=destination, network=True)
    return sorted(destination.glob("*.deb"))


def _deb(debs: Sequence[Path], package: str) -> Path:
    for deb in debs:
        if deb.name.startswith(package + "_"):
            return deb
    raise PreparationError(f"{package} was not downloaded")


def _extract_samples(source_deb: Path, series: str, destination: Path) -> None:
    """Only samples/vfio-mdev/ out of linux-source's tarball (it holds the whole tree)."""
    tarball = f"./usr/src/linux-source-{series}.tar.xz"
    pattern = f"linux-source-{series}/samples/vfio-mdev/*"
    deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(source_deb)], stdout=subprocess.PIPE)
    outer = subprocess.Popen(
        ["tar", "-xO", tarball], stdin=deb.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert deb.stdout is not None and outer.stdout is not None
    deb.stdout.close()
    inner = subprocess.run(
        ["tar", "-xJ", "--strip-components=3", "--wildcards", pattern],
        stdin=outer.stdout,
        cwd=destination,
        capture_output=True,
        text=True,
        check=False,
    )
    outer.stdout.close()
    codes = (deb.wait(), outer.wait(), inner.returncode)
    if any(codes) or not (destination / "mtty.c").exists():
        raise PreparationError(
            f"extracting samples/vfio-mdev from {source_deb.name} failed {codes}: {inner.stderr}"
        )


def _build_samples(headers: Path, sources: Path) -> list[Path]:
    # The arch headers' Makefile includes the -common tree by its installed path.
    makefile = headers / "Makefile"
    makefile.write_text(
        makefile.read_text().replace("/usr/src/", str(headers.parent) + "/"), encoding="utf-8"
    )
    (sources / "Kbuild").write_text(
        "obj-m := " + " ".join(f"{driver}.o" for driver in SAMPLE_DRIVERS) + "\n"
    )
    _run(["make", "-s", "-j2", "-C", str(headers), f"M={sources}", "CC=gcc-12", "modules"])
    return [sources / f"{driver}.ko" for driver in SAMPLE_DRIVERS]


def _build_kernel_directory(release: str, version: str, scratch: Path) -> dict[str, float]:
    """Download, extract and build into `scratch` (which becomes the cached directory)."""
    timings: dict[str, float] = {}
    started = time.monotonic()

    def step(name: str) -> None:
        nonlocal started
        now = time.monotonic()
        timings[name] = round(now - started, 2)
        started = now

    series = ".".join(version.split(".")[:2])
    headers_package = f"linux-headers-{release}"
    build_depends = [
        d for d in _depends(headers_package) if d.startswith(("linux-headers-", "linux-kbuild-"))
    ]
    packages = [f"linux-image-{release}", headers_package, *build_depends]
    packages = [f"{p}={version}" for p in packages] + [f"linux-source-{series}={version}"]
    downloads = scratch / "downloads"
    downloads.mkdir()
    debs = download(packages, downloads)
    step("download")

    _run(["dpkg-deb", "-x", str(_deb(debs, f"linux-image-{release}")), str(scratch / "image")])
    build = scratch / "build"
    for package in (headers_package, *build_depends):
        _run(["dpkg-deb", "-x", str(_deb(debs, package)), str(build)])
    step("extract")
    samples = build / "samples"
    samples.mkdir()
    _extract_samples(_deb(debs, f"linux-source-{series}"), series, samples)
    step("extract-samples")

    modules = _build_samples(build / "usr" / "src" / headers_package, samples)
    step("build-samples")

    image = scratch / "image"
    (image / "boot" / f"vmlinuz-{release}").rename(scratch / "vmlinuz")
    root = scratch / "root"
    (root / "lib" / "modules").mkdir(parents=True)
    tree = root / "lib" / "modules" / release
    (image / "lib" / "modules" / release).rename(tree)
    (tree / "extra").mkdir()
    for module in modules:
        shutil.copy2(module, tree / "extra" / module.name)
    _run(["depmod", "-b", str(root), release])
    for leftover in (downloads, build, image):
        shutil.rmtree(leftover)
    step("depmod")
    return timings


def _modules_dir(kernel_dir: Path, release: str) -> Path:
    return kernel_dir / "root" / "lib" / "modules" / release


def _initramfs_modules(kernel_dir: Path, release: str) -> list[Path]:
    """The initramfs modules with their dependencies, each once, in loading order."""
    root = kernel_dir / "root"
    ordered: list[Path] = []
    for module in INITRAMFS_MODULES:
        output = _run(["modprobe", "-d", str(root), "-S", release, "--show-depends", module])
        for line in output.splitlines():
            if line.startswith("insmod "):
                path = Path(line.split()[1])
                if path not in ordered:
                    ordered.append(path)
    return ordered


def _build_initramfs(kernel_dir: Path, release: str) -> Path:
    """The initramfs for this kernel and the current `initramfs-init`, built when missing."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    init = INITRAMFS_INIT.read_bytes()
    modules = _initramfs_modules(kernel_dir, release)
    digest = hashlib.sha256(busybox + init)
    for module in modules:
        digest.update(module.name.encode() + module.read_bytes())
    destination = kernel_dir / f"initramfs-{digest.hexdigest()[:16]}.img"
    if destination.exists():
        return destination
    entries = [Entry.directory(d) for d in ("bin", "modules", "dev", "proc", "sys")]
    entries.append(Entry.file("bin/busybox", busybox, executable=True))
    entries.append(Entry.file("init", init, executable=True))
    entries += [Entry.file(f"modules/{m.name}", m.read_bytes()) for m in modules]
    entries.append(Entry.file("modules.order", "".join(f"{m.name}\n" for m in modules).encode()))
    write_initramfs(destination, entries)
    for stale in kernel_dir.glob("initramfs-*.img"):
        if stale != destination:
            stale.unlink()
    return destination


def _prune(cache_root: Path, keep: Path) -> None:
    """Drop kernels `linux-image-amd64` no longer depends on, and scratch left by a killed run.

    Called under the lock, so no preparation is using them; a guest still running on an older
    kernel would lose its modules, which takes a kernel update in the middle of a test run.
    """
    for entry in cache_root.iterdir():
        if entry.is_dir() and entry != keep:
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _locked(cache_root: Path) -> Iterator[None]:
    cache_root.mkdir(parents=True, exist_ok=True)
    with (cache_root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prepare(cache_root: Path = DEFAULT_CACHE_ROOT) -> PreparedKernel:
    """The prepared kernel, from the cache or built now (see the module docstring)."""
    install_host_packages()
    release, version = resolve_kernel()
    directory = cache_root / f"{release}_{version}"
    stamp = directory / "prepared.json"
    timings: dict[str, float] = {}
    with _locked(cache_root):
        if not stamp.exists() or json.loads(stamp.read_text()).get("recipe") != RECIPE_VERSION:
            scratch = cache_root / f".{directory.name}.{os.getpid()}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            try:
                timings = _build_kernel_directory(release, version, scratch)
                record = {"recipe": RECIPE_VERSION, "release": release, "version": version}
                (scratch / "prepared.json").write_text(json.dumps({**record, "timings": timings}))
                shutil.rmtree(directory, ignore_errors=True)
                scratch.rename(directory)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            _prune(cache_root, keep=directory)
        started = time.monotonic()
        initramfs = _build_initramfs(directory, release)
        if timings:
            timings["initramfs"] = round(time.monotonic() - started, 2)
    return PreparedKernel(
        release=release,
        package_version=version,
        directory=directory,
        vmlinuz=directory / "vmlinuz",
        modules_dir=_modules_dir(directory, release),
        initramfs=initramfs,
        timings=timings,
    )
