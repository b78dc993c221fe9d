"""Snapshot kinds of the virtio devices (``devmodels.snapshot_file`` rule 3).

``virtio-blk`` and ``virtio-net`` are a device without a transport of ours (what
vhost-user serves); ``virtio-blk-pci`` and ``virtio-net-pci`` are the device behind our
virtio-pci transport (what vfio-user, mpqemu and an in-process machine plug in). Each is
rebuilt from its state's args (the transport's and the device's) around the one backend
the restorer opens; ``tuning`` (budget, queue factory, name, ``rx_hold``) is the
restorer's too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devmodels import GuestMemory
from devmodels.snapshot import check_type
from devmodels.snapshot_file import SnapshotKind, one_backend

from .blk import VirtioBlkDevice
from .blk.state import VirtioBlkState
from .device import VirtioDevice, VirtioDeviceState
from .net import VirtioNetDevice
from .net.state import VirtioNetState
from .transport.pci import VirtioPciFunction, VirtioPciState

__all__ = ["snapshot_kinds"]


def _device_section(state: Any, section: type) -> Any:
    check_type("device", state, VirtioDeviceState)
    check_type("device.device", state.device, section)
    return state.device


def _bare(cls: type[VirtioBlkDevice] | type[VirtioNetDevice]) -> Any:
    def rebuild(state: Any, memory: GuestMemory, backends: Sequence[Any]) -> VirtioDevice:
        backend = one_backend(cls.snapshot_kind, backends, required=True)
        return cls.from_state(state, memory, backend)

    return rebuild


def _pci(cls: type[VirtioBlkDevice] | type[VirtioNetDevice], section: type) -> Any:
    def rebuild(state: Any, memory: GuestMemory, backends: Sequence[Any]) -> VirtioPciFunction:
        check_type("state", state, VirtioPciState)
        args = _device_section(state.device, section).args
        backend = one_backend(f"{cls.snapshot_kind}-pci", backends, required=True)
        return VirtioPciFunction.from_state(state, cls.from_args(args, memory, backend))

    return rebuild


def snapshot_kinds() -> dict[str, SnapshotKind]:
    """The virtio kinds, by name."""
    blk, net = "one block backend", "one network backend"
    return {
        "virtio-blk": SnapshotKind("virtio-blk", VirtioDeviceState[VirtioBlkState], _bare(VirtioBlkDevice), blk),
        "virtio-net": SnapshotKind("virtio-net", VirtioDeviceState[VirtioNetState], _bare(VirtioNetDevice), net),
        "virtio-blk-pci": SnapshotKind("virtio-blk-pci", VirtioPciState[VirtioBlkState],
                                       _pci(VirtioBlkDevice, VirtioBlkState), blk),
        "virtio-net-pci": SnapshotKind("virtio-net-pci", VirtioPciState[VirtioNetState],
                                       _pci(VirtioNetDevice, VirtioNetState), net),
    }
