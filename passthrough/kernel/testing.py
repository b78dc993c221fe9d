"""A fake kernel for kernel-VFIO tests (CONVENTIONS: simulators): ``FakeKernel`` is a ``KernelOps``.

It models what ``linux/vfio.h`` and vfio-pci expose, with devices scripted as
``passthrough.testing.FakeVfioDevice``:

- sysfs: ``/sys/bus/pci/devices/<bdf>/{iommu_group,driver}`` links and
  ``/sys/kernel/iommu_groups/<n>/devices``;
- ``/dev/vfio/vfio``: API version 0, Type1/Type1v2 extensions, ``SET_IOMMU`` only with a
  group attached, ``IOMMU_GET_INFO`` with page sizes and an IOVA-range + DMA-avail chain
  (honouring ``argsz``), ``MAP_DMA``/``UNMAP_DMA`` bookkeeping (``EEXIST`` on overlap);
- ``/dev/vfio/<n>``: status (viable unless told otherwise), ``SET_CONTAINER``,
  ``GET_DEVICE_FD`` (``EBUSY`` when already open);
- device fds: vfio-pci's ``index << 40`` region offsets for ``pread``/``pwrite``/``mmap``,
  INFO ioctls with capability chains (sparse mmap), ``SET_IRQS`` decoding the ``__s32``
  eventfd array, ``RESET``.

``errors`` maps a path to an errno that ``open`` raises; ``ioctl_errors`` maps a request
to an errno. Every ioctl is logged in ``log``; ``open_fds`` shows leaks.
"""

from __future__ import annotations

import errno
import mmap
import struct
from dataclasses import dataclass, field

from ..caps import build_chain, sparse_mmap_body
from ..defs import (
    VFIO_API_VERSION,
    VFIO_CHECK_EXTENSION,
    VFIO_DEVICE_GET_INFO,
    VFIO_DEVICE_GET_IRQ_INFO,
    VFIO_DEVICE_GET_REGION_INFO,
    VFIO_DEVICE_RESET,
    VFIO_DEVICE_SET_IRQS,
    VFIO_GET_API_VERSION,
    VFIO_GROUP_FLAGS_CONTAINER_SET,
    VFIO_GROUP_FLAGS_VIABLE,
    VFIO_GROUP_GET_DEVICE_FD,
    VFIO_GROUP_GET_STATUS,
    VFIO_GROUP_SET_CONTAINER,
    VFIO_IOMMU_GET_INFO,
    VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES,
    VFIO_IOMMU_MAP_DMA,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
    VFIO_IOMMU_UNMAP_DMA,
    VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_SET_IOMMU,
    VFIO_TYPE1_IOMMU,
    VFIO_TYPE1v2_IOMMU,
)
from ..layouts import (
    vfio_device_info,
    vfio_group_status,
    vfio_iommu_type1_dma_map,
    vfio_iommu_type1_dma_unmap,
    vfio_iommu_type1_info,
    vfio_irq_info,
    vfio_irq_set,
    vfio_region_info,
)
from ..testing import FakeVfioDevice

__all__ = ["FakeKernel", "FakePciDevice", "REGION_SHIFT"]

REGION_SHIFT = 40  # vfio-pci: VFIO_PCI_INDEX_TO_OFFSET(index) = index << 40
PGSIZES = 0x1000 | 0x20_0000 | 0x4000_0000
IOVA_RANGES = ((0, 0xFEDF_FFFF), (0xFEF0_0000, (1 << 48) - 1))


@dataclass
class FakePciDevice:
    """A PCI function in the fake sysfs."""

    bdf: str
    group: int | None
    driver: str = "vfio-pci"
    model: FakeVfioDevice | None = None


@dataclass
class _Open:
    kind: str  # "container", "group", "device"
    name: str
    container: int | None = None  # group: the container fd it joined


@dataclass
class FakeKernel:
    """The fake kernel (see the module docstring)."""

    devices: dict[str, FakePciDevice] = field(default_factory=dict)
    vfio_present: bool = True
    extensions: set[int] = field(default_factory=lambda: {VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU})
    non_viable: set[int] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)
    ioctl_errors: dict[int, int] = field(default_factory=dict)
    open_fds: dict[int, _Open] = field(default_factory=dict)
    log: list[tuple[str, int]] = field(default_factory=list)
    mappings: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # iova -> (vaddr, size, flags)
    iommu_set: dict[int, int] = field(default_factory=dict)
    _next_fd: int = 1000

    # -- KernelOps: files ---------------------------------------------------------------------

    def _new_fd(self, entry: _Open) -> int:
        self._next_fd += 1
        self.open_fds[self._next_fd] = entry
        return self._next_fd

    def open(self, path: str, flags: int) -> int:
        """Open ``/dev/vfio/vfio`` or ``/dev/vfio/<group>``."""
        if path in self.errors:
            raise OSError(self.errors[path], f"fake: {path}")
        if path == "/dev/vfio/vfio":
            if not self.vfio_present:
                raise OSError(errno.ENOENT, path)
            return self._new_fd(_Open("container", path))
        if path.startswith("/dev/vfio/"):
            group = path.rsplit("/", 1)[1]
            if not any(str(d.group) == group and d.driver == "vfio-pci" for d in self.devices.values()):
                raise OSError(errno.ENOENT, path)
            if any(o.kind == "group" and o.name == group for o in self.open_fds.values()):
                raise OSError(errno.EBUSY, path)
            return self._new_fd(_Open("group", group))
        raise OSError(errno.ENOENT, path)

    def close(self, fd: int) -> None:
        """Close a fake fd."""
        if self.open_fds.pop(fd, None) is None:
            raise OSError(errno.EBADF, "fake close")

    def exists(self, path: str) -> bool:
        """sysfs device directories."""
        return any(path == f"/sys/bus/pci/devices/{bdf}" for bdf in self.devices)

    def readlink(self, path: str) -> str:
        """``iommu_group`` and ``driver`` links."""
        for bdf, device in self.devices.items():
            base = f"/sys/bus/pci/devices/{bdf}/"
            if path == base + "iommu_group" and device.group is not None:
                return f"../../../kernel/iommu_groups/{device.group}"
            if path == base + "driver" and device.driver:
                return f"../../../bus/pci/drivers/{device.driver}"
        raise OSError(errno.ENOENT, path)

    def listdir(self, path: str) -> list[str]:
        """``/sys/kernel/iommu_groups/<n>/devices``."""
        return [bdf for bdf, d in self.devices.items() if path == f"/sys/kernel/iommu_groups/{d.group}/devices"]

    # -- KernelOps: device fd I/O -------------------------------------------------------------

    def _model(self, fd: int) -> FakeVfioDevice:
        entry = self.open_fds.get(fd)
        if entry is None or entry.kind != "device":
            raise OSError(errno.EBADF, "fake: not a device fd")
        model = self.devices[entry.name].model
        assert model is not None
        return model

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Region read at ``index << 40 | offset``."""
        return self._model(fd).region_read(offset >> REGION_SHIFT, offset & ((1 << REGION_SHIFT) - 1), size)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """Region write at ``index << 40 | offset``."""
        self._model(fd).region_write(offset >> REGION_SHIFT, offset & ((1 << REGION_SHIFT) - 1), bytes(data))
        return len(data)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        """Map a BAR's memfd."""
        mapped = self._model(fd).region_mmap(offset >> REGION_SHIFT, offset & ((1 << REGION_SHIFT) - 1), length)
        if mapped is None:
            raise OSError(errno.EINVAL, "fake: region not mappable")
        return mapped

    # -- KernelOps: ioctl ---------------------------------------------------------------------

    def ioctl(self, fd: int, request: int, arg: int | bytearray = 0) -> int:
        """Dispatch by fd kind and request number."""
        self.log.append((self.open_fds[fd].kind if fd in self.open_fds else "?", request))
        if request in self.ioctl_errors:
            raise OSError(self.ioctl_errors[request], "fake ioctl error")
        entry = self.open_fds.get(fd)
        if entry is None:
            raise OSError(errno.EBADF, "fake: bad fd")
        handler = getattr(self, f"_{entry.kind}_ioctl")
        return int(handler(fd, entry, request, arg))

    def _container_ioctl(self, fd: int, entry: _Open, request: int, arg: int | bytearray) -> int:
        if request == VFIO_GET_API_VERSION:
            return VFIO_API_VERSION
        if request == VFIO_CHECK_EXTENSION:
            return 1 if arg in self.extensions else 0
        if request == VFIO_SET_IOMMU:
            if not any(o.kind == "group" and o.container == fd for o in self.open_fds.values()):
                raise OSError(errno.EINVAL, "no group attached")
            if arg not in self.extensions:
                raise OSError(errno.EINVAL, "unsupported IOMMU")
            self.iommu_set[fd] = int(arg)
            return 0
        assert isinstance(arg, bytearray)
        if fd not in self.iommu_set:
            raise OSError(errno.EINVAL, "IOMMU not set")
        if request == VFIO_IOMMU_GET_INFO:
            return self._iommu_info(arg)
        if request == VFIO_IOMMU_MAP_DMA:
            request_ = vfio_iommu_type1_dma_map.unpack(arg)
            for iova, (_, size, _) in self.mappings.items():
                if iova < request_.iova + request_.size and request_.iova < iova + size:
                    raise OSError(errno.EEXIST, "overlap")
            self.mappings[request_.iova] = (request_.vaddr, request_.size, request_.flags)
            return 0
        if request == VFIO_IOMMU_UNMAP_DMA:
            unmap = vfio_iommu_type1_dma_unmap.unpack(arg)
            _, size, _ = self.mappings.pop(unmap.iova, (0, 0, 0))
            arg[:24] = vfio_iommu_type1_dma_unmap.pack(unmap.argsz, unmap.flags, unmap.iova, size)
            return 0
        raise OSError(errno.ENOTTY, "fake: unknown container ioctl")

    def _iommu_info(self, arg: bytearray) -> int:
        ranges = b"".join(struct.pack("=QQ", s, e) for s, e in IOVA_RANGES)
        chain, first = build_chain(
            bytes(vfio_iommu_type1_info.size),
            [
                (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, struct.pack("=I4x", len(IOVA_RANGES)) + ranges),
                (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, struct.pack("=I", 65535)),
            ],
        )
        argsz = vfio_iommu_type1_info.unpack(arg).argsz
        flags = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS
        fits = argsz >= len(chain)
        fixed = vfio_iommu_type1_info.pack(len(chain), flags, PGSIZES, first if fits else 0)
        arg[: len(fixed)] = fixed
        if fits:
            arg[len(fixed) : len(chain)] = chain[len(fixed) :]
        return 0

    def _group_ioctl(self, fd: int, entry: _Open, request: int, arg: int | bytearray) -> int:
        group = int(entry.name)
        assert isinstance(arg, bytearray)
        if request == VFIO_GROUP_GET_STATUS:
            flags = (0 if group in self.non_viable else VFIO_GROUP_FLAGS_VIABLE) | (
                VFIO_GROUP_FLAGS_CONTAINER_SET if entry.container is not None else 0
            )
            arg[:8] = vfio_group_status.pack(8, flags)
            return 0
        if request == VFIO_GROUP_SET_CONTAINER:
            if group in self.non_viable:
                raise OSError(errno.EPERM, "group not viable")
            (container,) = struct.unpack("=i", bytes(arg[:4]))
            if self.open_fds.get(container, _Open("", "")).kind != "container":
                raise OSError(errno.EBADF, "not a container")
            entry.container = container
            return 0
        if request == VFIO_GROUP_GET_DEVICE_FD:
            name = bytes(arg).split(b"\0", 1)[0].decode()
            device = self.devices.get(name)
            if device is None or device.group != group:
                raise OSError(errno.ENODEV, name)
            if entry.container is None or entry.container not in self.iommu_set:
                raise OSError(errno.EINVAL, "container not ready")
            if any(o.kind == "device" and o.name == name for o in self.open_fds.values()):
                raise OSError(errno.EBUSY, name)
            return self._new_fd(_Open("device", name))
        raise OSError(errno.ENOTTY, "fake: unknown group ioctl")

    def _device_ioctl(self, fd: int, entry: _Open, request: int, arg: int | bytearray) -> int:
        model = self._model(fd)
        if request == VFIO_DEVICE_RESET:
            model.reset()
            return 0
        assert isinstance(arg, bytearray)
        if request == VFIO_DEVICE_GET_INFO:
            device_info = model.device_info()
            arg[:24] = vfio_device_info.pack(24, device_info.flags, device_info.num_regions, device_info.num_irqs, 0)
            return 0
        if request == VFIO_DEVICE_GET_REGION_INFO:
            request_ = vfio_region_info.unpack(arg)
            info = model.region_info(request_.index)
            caps = [(VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, sparse_mmap_body(info.sparse_areas))] if info.sparse_areas else []
            chain, first = build_chain(bytes(vfio_region_info.size), caps)
            flags = info.flags | (VFIO_REGION_INFO_FLAG_CAPS if caps else 0)
            fits = request_.argsz >= len(chain)
            fixed = vfio_region_info.pack(len(chain), flags, request_.index, first if fits else 0, info.size, request_.index << REGION_SHIFT)
            arg[: len(fixed)] = fixed
            if fits:
                arg[len(fixed) : len(chain)] = chain[len(fixed) :]
            return 0
        if request == VFIO_DEVICE_GET_IRQ_INFO:
            request_irq = vfio_irq_info.unpack(arg)
            irq = model.irq_info(request_irq.index)
            arg[:16] = vfio_irq_info.pack(16, irq.flags, irq.index, irq.count)
            return 0
        if request == VFIO_DEVICE_SET_IRQS:
            header = vfio_irq_set.unpack(arg)
            data = bytes(arg[vfio_irq_set.size : header.argsz])
            fds: tuple[int, ...] = ()
            if header.flags & VFIO_IRQ_SET_DATA_EVENTFD:
                if len(data) != 4 * header.count:
                    raise OSError(errno.EINVAL, "eventfd array size")
                fds = struct.unpack(f"={header.count}i", data)
                data = b""
            elif header.flags & VFIO_IRQ_SET_DATA_BOOL and len(data) != header.count:
                raise OSError(errno.EINVAL, "bool array size")
            try:
                model.set_irqs(header.index, header.flags, header.start, header.count, data, fds)
            except Exception as exc:
                raise OSError(errno.EINVAL, str(exc)) from exc
            return 0
        raise OSError(errno.ENOTTY, "fake: unknown device ioctl")
