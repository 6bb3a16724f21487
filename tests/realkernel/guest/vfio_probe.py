# SPDX-License-Identifier: LGPL-2.1-or-later
"""Use a VFIO fd handed over by `mdevdctl open` the way a VMM does: stdlib only, no mdevd code.

    mdevdctl open UUID -- python3 vfio_probe.py UUID [--hold]
    mdevdctl open --cdev UUID -- python3 vfio_probe.py UUID      # VFIO_PROBE_IOMMUFD=<fd>

Run by `handoff.py` in the real-kernel guest as an unprivileged user who cannot open the
device's node by its permissions. With the inherited fd (`$MDEVD_VFIO_FD`, kind in
`$MDEVD_VFIO_NODE`), for a group: open the container `/dev/vfio/vfio`, check the group is
viable, attach it to the container, set the type1 IOMMU (an mdev's group is an emulated IOMMU
group: no hardware IOMMU needed), get the device fd by the device's name (its UUID); for a
cdev (kernels 6.6+): bind it to an iommufd (inherited: `/dev/iommu` is root's) and attach it
to a new IOAS. Then `VFIO_DEVICE_GET_INFO`, `VFIO_DEVICE_GET_REGION_INFO` of BAR0 (mtty's
serial port: 8 bytes of 16550 UART registers, `samples/vfio-mdev/mtty.c`), and register
accesses through the region: the scratch register written and read back, and two bytes sent
to the transmit register read back from the receive register (mtty loops its FIFO back).

Prints one JSON object (the results, and `error` if a step failed) on one line; with `--hold`
then keeps every fd open until its standard input closes, so the caller can look at the group
while it is taken. Exits 0 when every step worked, 1 otherwise. The ioctl numbers and structs
are those of linux/vfio.h and linux/iommufd.h, which are stable kernel ABI.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import struct
import sys
from typing import Any

# linux/vfio.h: _IO(VFIO_TYPE, VFIO_BASE + n), VFIO_TYPE ';', VFIO_BASE 100 (size 0, no dir).
VFIO_TYPE = ord(";")
VFIO_BASE = 100


def _io(nr: int) -> int:
    return (VFIO_TYPE << 8) | nr


VFIO_GET_API_VERSION = _io(VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _io(VFIO_BASE + 1)
VFIO_SET_IOMMU = _io(VFIO_BASE + 2)
VFIO_GROUP_GET_STATUS = _io(VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _io(VFIO_BASE + 4)
VFIO_GROUP_GET_DEVICE_FD = _io(VFIO_BASE + 6)
VFIO_DEVICE_GET_INFO = _io(VFIO_BASE + 7)
VFIO_DEVICE_GET_REGION_INFO = _io(VFIO_BASE + 8)
VFIO_DEVICE_BIND_IOMMUFD = _io(VFIO_BASE + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _io(VFIO_BASE + 19)
# linux/iommufd.h: _IO(IOMMUFD_TYPE ';', IOMMUFD_CMD_IOAS_ALLOC 0x81)
IOMMU_IOAS_ALLOC = _io(0x81)

VFIO_API_VERSION = 0
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1
VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_PCI_BAR0_REGION_INDEX = 0

# struct vfio_group_status { __u32 argsz, flags; }
GROUP_STATUS = struct.Struct("=II")
# struct vfio_device_info { __u32 argsz, flags, num_regions, num_irqs, cap_offset, pad; }
# (cap_offset and pad since 4.x/6.x; the kernel needs argsz to cover num_irqs only)
DEVICE_INFO = struct.Struct("=IIIIII")
# struct vfio_region_info { __u32 argsz, flags, index, cap_offset; __u64 size, offset; }
REGION_INFO = struct.Struct("=IIIIQQ")
# struct vfio_device_bind_iommufd { __u32 argsz, flags; __s32 iommufd; __u32 out_devid; }
BIND_IOMMUFD = struct.Struct("=IIiI")
# struct vfio_device_attach_iommufd_pt { __u32 argsz, flags, pt_id; }
ATTACH_PT = struct.Struct("=III")
# struct iommu_ioas_alloc { __u32 size, flags, out_ioas_id; }
IOAS_ALLOC = struct.Struct("=III")

# 16550 registers (linux/serial_reg.h), offsets into mtty's BAR0
UART_RX = UART_TX = 0
UART_FCR = 2
UART_LSR = 5
UART_SCR = 7
UART_FCR_ENABLE_FIFO = 0x01
UART_FCR_CLEAR = 0x06  # CLEAR_RCVR | CLEAR_XMIT
UART_LSR_DR = 0x01


def ioctl_struct(fd: int, request: int, layout: struct.Struct, *values: int) -> tuple[int, ...]:
    """An ioctl taking a pointer to `layout` (read and written by the kernel): the struct after."""
    buffer = bytearray(layout.pack(*values))
    fcntl.ioctl(fd, request, buffer, True)
    return layout.unpack(buffer)


def node_of(fd: int) -> dict[str, Any]:
    """What the inherited fd is: its path, device number, and access mode."""
    st = os.fstat(fd)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    return {
        "path": os.readlink(f"/proc/self/fd/{fd}"),
        "is_char_device": stat.S_ISCHR(st.st_mode),
        "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
        "read_write": flags & os.O_ACCMODE == os.O_RDWR,
    }


def try_open_by_path(path: str) -> str:
    """What opening the node by its name says to this process: 'opened' or the errno's name."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    os.close(fd)
    return "opened"


def attach_group(group: int, uuid: str, result: dict[str, Any], keep: list[int]) -> int:
    """Container, type1 IOMMU, and the device fd by name, through the group fd."""
    result["container_mode"] = oct(stat.S_IMODE(os.stat("/dev/vfio/vfio").st_mode))
    container = os.open("/dev/vfio/vfio", os.O_RDWR | os.O_CLOEXEC)
    keep.append(container)
    result["api_version"] = fcntl.ioctl(container, VFIO_GET_API_VERSION)
    result["extensions"] = {
        "type1v2": fcntl.ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU),
        "type1": fcntl.ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU),
    }
    _, flags = ioctl_struct(group, VFIO_GROUP_GET_STATUS, GROUP_STATUS, GROUP_STATUS.size, 0)
    result["group_viable"] = bool(flags & VFIO_GROUP_FLAGS_VIABLE)
    result["group_container_set_before"] = bool(flags & VFIO_GROUP_FLAGS_CONTAINER_SET)
    fcntl.ioctl(group, VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("=i", container)), True)
    _, flags = ioctl_struct(group, VFIO_GROUP_GET_STATUS, GROUP_STATUS, GROUP_STATUS.size, 0)
    result["group_container_set_after"] = bool(flags & VFIO_GROUP_FLAGS_CONTAINER_SET)
    iommu = VFIO_TYPE1v2_IOMMU if result["extensions"]["type1v2"] else VFIO_TYPE1_IOMMU
    fcntl.ioctl(container, VFIO_SET_IOMMU, iommu)
    result["iommu_type"] = "type1v2" if iommu == VFIO_TYPE1v2_IOMMU else "type1"
    name = bytearray(uuid.encode() + b"\0")
    device: int = fcntl.ioctl(group, VFIO_GROUP_GET_DEVICE_FD, name, True)
    keep.append(device)
    result["device_fd"] = device
    return device


def bind_cdev(device: int, result: dict[str, Any]) -> None:
    """VFIO_DEVICE_BIND_IOMMUFD to the inherited iommufd, then attach to a new IOAS."""
    iommufd = int(os.environ["VFIO_PROBE_IOMMUFD"])
    _, _, ioas = ioctl_struct(iommufd, IOMMU_IOAS_ALLOC, IOAS_ALLOC, IOAS_ALLOC.size, 0, 0)
    result["ioas_id"] = ioas
    *_, devid = ioctl_struct(
        device, VFIO_DEVICE_BIND_IOMMUFD, BIND_IOMMUFD, BIND_IOMMUFD.size, 0, iommufd, 0
    )
    result["iommufd_devid"] = devid
    *_, pt_id = ioctl_struct(
        device, VFIO_DEVICE_ATTACH_IOMMUFD_PT, ATTACH_PT, ATTACH_PT.size, 0, ioas
    )
    result["attached_pt_id"] = pt_id


def use_device(device: int, result: dict[str, Any]) -> None:
    """GET_INFO, BAR0's region info, and the UART registers written and read through it."""
    _, flags, regions, irqs, _, _ = ioctl_struct(
        device, VFIO_DEVICE_GET_INFO, DEVICE_INFO, DEVICE_INFO.size, 0, 0, 0, 0, 0
    )
    result["device_info"] = {
        "flags": flags,
        "pci": bool(flags & VFIO_DEVICE_FLAGS_PCI),
        "reset": bool(flags & VFIO_DEVICE_FLAGS_RESET),
        "num_regions": regions,
        "num_irqs": irqs,
    }
    _, rflags, index, _, size, offset = ioctl_struct(
        device,
        VFIO_DEVICE_GET_REGION_INFO,
        REGION_INFO,
        REGION_INFO.size,
        0,
        VFIO_PCI_BAR0_REGION_INDEX,
        0,
        0,
        0,
    )
    result["bar0"] = {
        "index": index,
        "size": size,
        "offset": offset,
        "readable": bool(rflags & VFIO_REGION_INFO_FLAG_READ),
        "writable": bool(rflags & VFIO_REGION_INFO_FLAG_WRITE),
    }

    def write(register: int, value: int) -> int:
        return os.pwrite(device, bytes([value]), offset + register)

    def read(register: int) -> int:
        return os.pread(device, 1, offset + register)[0]

    scratch = []
    for value in (0x5A, 0xA5):
        written = write(UART_SCR, value)
        scratch.append({"wrote": value, "bytes_written": written, "read": read(UART_SCR)})
    result["scratch"] = scratch
    write(UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR)
    lsr_before = read(UART_LSR)
    sent = b"hi"
    for byte in sent:
        write(UART_TX, byte)
    lsr_after = read(UART_LSR)
    received = bytes(read(UART_RX) for _ in sent)
    result["loopback"] = {
        "sent": sent.decode(),
        "data_ready_before": bool(lsr_before & UART_LSR_DR),
        "data_ready_after": bool(lsr_after & UART_LSR_DR),
        "received": received.decode(errors="replace"),
        "data_ready_at_end": bool(read(UART_LSR) & UART_LSR_DR),
    }


def probe(uuid: str, keep: list[int]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": sorted(os.getgroups()),
        "node_kind": os.environ.get("MDEVD_VFIO_NODE"),
    }
    try:
        fd = int(os.environ["MDEVD_VFIO_FD"])
        result["fd"] = fd
        result["node"] = node_of(fd)
        result["node"]["open_by_path"] = try_open_by_path(result["node"]["path"])
        result["node"]["access_by_path"] = os.access(result["node"]["path"], os.R_OK | os.W_OK)
        if result["node_kind"] == "cdev":
            bind_cdev(fd, result)
            device = fd
        else:
            device = attach_group(fd, uuid, result, keep)
        use_device(device, result)
    except Exception as exc:  # every step's failure goes into the report
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


def main(argv: list[str]) -> int:
    uuid = argv[0]
    keep: list[int] = []
    result = probe(uuid, keep)
    print(json.dumps(result), flush=True)
    if "--hold" in argv:
        sys.stdin.read()  # until the caller closes our standard input
    for fd in keep:
        os.close(fd)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
