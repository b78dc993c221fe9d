"""A VFIO group (``/dev/vfio/<group>``): viability, its container, its device fds.

``Documentation/driver-api/vfio.rst``: a group is viable only when every device in it is
bound to a VFIO driver (or to no driver); it must be attached to a container before a
device fd can be had with ``VFIO_GROUP_GET_DEVICE_FD``.

Rules: each failing call becomes a ``VfioError`` subclass naming what to do (rule 1 of
``container``); the group closes its fd on ``close``.
"""

from __future__ import annotations

import errno
import os
import struct

from ..defs import (
    VFIO_GROUP_FLAGS_CONTAINER_SET,
    VFIO_GROUP_FLAGS_VIABLE,
    VFIO_GROUP_GET_DEVICE_FD,
    VFIO_GROUP_GET_STATUS,
    VFIO_GROUP_SET_CONTAINER,
)
from ..errors import (
    VfioDeviceBusyError,
    VfioError,
    VfioGroupNotFoundError,
    VfioGroupNotViableError,
    VfioPermissionError,
)
from ..layouts import vfio_group_status
from .container import Type1Container
from .ops import KernelOps, OsOps

__all__ = ["VfioGroup", "group_path"]


def group_path(group: int | str) -> str:
    """``/dev/vfio/<group>``."""
    return f"/dev/vfio/{group}"


class VfioGroup:
    """An open group.

    Args:
        group: the IOMMU group number.
        ops: the system-call layer.

    Raises:
        VfioGroupNotFoundError, VfioDeviceBusyError, VfioPermissionError: opening failed.
    """

    def __init__(self, group: int, ops: KernelOps | None = None) -> None:
        self.ops: KernelOps = ops or OsOps()
        self.group = group
        path = group_path(group)
        try:
            self.fd = self.ops.open(path, os.O_RDWR)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise VfioGroupNotFoundError(
                    f"{path} does not exist", errno=exc.errno,
                    hint="bind the group's devices to vfio-pci (echo vfio-pci > /sys/bus/pci/devices/<bdf>/driver_override, "
                    "then echo <bdf> > /sys/bus/pci/drivers_probe)",
                ) from exc
            if exc.errno == errno.EBUSY:
                raise VfioDeviceBusyError(
                    f"{path} is open elsewhere", errno=exc.errno, hint="stop the other VMM using this group"
                ) from exc
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise VfioPermissionError(
                    f"cannot open {path}", errno=exc.errno, hint="run as root or chown the group node to this user"
                ) from exc
            raise VfioError(f"cannot open {path}", errno=exc.errno) from exc

    def status(self) -> int:
        """``VFIO_GROUP_GET_STATUS`` flags."""
        buffer = bytearray(vfio_group_status.pack(vfio_group_status.size, 0))
        try:
            self.ops.ioctl(self.fd, VFIO_GROUP_GET_STATUS, buffer)
        except OSError as exc:
            raise VfioError(f"VFIO_GROUP_GET_STATUS on group {self.group} failed", errno=exc.errno) from exc
        return vfio_group_status.unpack(buffer).flags

    @property
    def viable(self) -> bool:
        """``VFIO_GROUP_FLAGS_VIABLE``."""
        return bool(self.status() & VFIO_GROUP_FLAGS_VIABLE)

    def require_viable(self, members: list[str] | None = None) -> None:
        """Raise ``VfioGroupNotViableError`` (listing the group's devices) unless viable."""
        if not self.viable:
            listed = f" ({', '.join(members)})" if members else ""
            raise VfioGroupNotViableError(
                f"IOMMU group {self.group} is not viable",
                hint=f"bind every device of the group{listed} to vfio-pci or unbind it from its driver",
            )

    def set_container(self, container: Type1Container) -> None:
        """``VFIO_GROUP_SET_CONTAINER``."""
        if self.status() & VFIO_GROUP_FLAGS_CONTAINER_SET:
            raise VfioDeviceBusyError(f"group {self.group} already belongs to a container")
        try:
            self.ops.ioctl(self.fd, VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("=i", container.fd)))
        except OSError as exc:
            raise VfioError(f"VFIO_GROUP_SET_CONTAINER for group {self.group} failed", errno=exc.errno) from exc

    def get_device_fd(self, name: str) -> int:
        """``VFIO_GROUP_GET_DEVICE_FD`` for a device named as in sysfs (``0000:00:03.0``)."""
        try:
            return self.ops.ioctl(self.fd, VFIO_GROUP_GET_DEVICE_FD, bytearray(name.encode() + b"\0"))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise VfioDeviceBusyError(
                    f"device {name} is already open", errno=exc.errno, hint="close the other user of the device"
                ) from exc
            if exc.errno in (errno.ENODEV, errno.EINVAL, errno.ENOENT):
                raise VfioGroupNotFoundError(
                    f"device {name} is not in group {self.group}", errno=exc.errno,
                    hint="check /sys/bus/pci/devices/<bdf>/iommu_group",
                ) from exc
            raise VfioError(f"VFIO_GROUP_GET_DEVICE_FD({name}) failed", errno=exc.errno) from exc

    def close(self) -> None:
        """Close the group fd."""
        if self.fd >= 0:
            try:
                self.ops.close(self.fd)
            finally:
                self.fd = -1
