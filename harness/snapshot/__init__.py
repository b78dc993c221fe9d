"""Snapshot files of the registry's devices: every kind, rebuilt with the restorer's backends.

Rules:

1. ``all_kinds()`` is every kind a snapshot file can name: the core's (testdev, e1000,
   ahci; each package's ``SNAPSHOT_KIND``) and virtio's (virtio-blk, virtio-net and
   their ``-pci`` forms; ``virtio.snapshot.snapshot_kinds``).
2. A snapshot carries the device's constructor arguments, never its host resources. The
   restorer names the backends with the same ``--backend`` words the device registry
   takes (``harness.serve.registry`` rule 2), one per backend the kind takes
   (``SnapshotKind.backends``), in order, and ``none`` for an AHCI port whose CD tray is
   empty; ``--opt`` words tune how they open (``direct``, ``workers``, ``inline-reads``).
   ``open_backends`` opens them; ``rebuild`` builds the device from the snapshot's args
   around them (``devmodels.snapshot_file.rebuild``) and hands both back: the caller owns
   the backends and closes them.
3. Whatever fails while rebuilding closes the backends this module opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devmodels import GuestMemory, UsageError, snapshot_file
from devmodels.snapshot_file import SnapshotKind

__all__ = ["all_kinds", "open_backends", "rebuild", "NET_KINDS", "DISK_KINDS"]

NET_KINDS = frozenset({"e1000", "virtio-net", "virtio-net-pci"})
DISK_KINDS = frozenset({"ahci", "virtio-blk", "virtio-blk-pci"})


def all_kinds() -> dict[str, SnapshotKind]:
    """Every kind (rule 1)."""
    from devmodels import ahci, e1000, testdev
    from virtio.snapshot import snapshot_kinds

    return {**{kind.name: kind for kind in (testdev.SNAPSHOT_KIND, e1000.SNAPSHOT_KIND, ahci.SNAPSHOT_KIND)},
            **snapshot_kinds()}


def open_backends(kind: str, specs: Sequence[str], opts: Sequence[str] = ()) -> list[Any]:
    """Open the backends named by ``specs`` for a device of ``kind`` (rule 2).

    Raises:
        UsageError: a spec the kind cannot use, or an unknown option.
        HostError: a backend cannot be opened.
    """
    from harness.serve.registry import DeviceOptions, _open_disk, open_net_backend

    options = DeviceOptions.parse([], opts)
    opened: list[Any] = []
    try:
        for spec in specs:
            if kind in NET_KINDS:
                opened.append(open_net_backend(spec, vnet_hdr=kind != "e1000" and spec.startswith("tap:")))
            elif kind in DISK_KINDS:
                if spec == "none" and kind == "ahci":
                    opened.append(None)
                else:
                    opened.append(_open_disk(spec, options, cdrom_ok=kind == "ahci")[0])
            else:
                raise UsageError(f"a {kind} snapshot takes no --backend, got {spec!r}")
        options.check_all_used(kind)
    except BaseException:
        _close(opened)
        raise
    return opened


def rebuild(data: bytes, memory: GuestMemory, specs: Sequence[str] = (), opts: Sequence[str] = ()) -> tuple[Any, list[Any]]:
    """The device a snapshot file describes, rebuilt on ``memory`` around the backends
    ``specs`` name, and those backends (rule 2).

    Raises:
        SnapshotError: the file is refused, or the backends do not fit its device.
        UsageError, HostError: as for ``open_backends``.
    """
    header, _ = snapshot_file.read_document(data)
    backends = open_backends(header.kind, specs, opts)
    try:
        return snapshot_file.rebuild(data, all_kinds(), memory, backends), backends
    except BaseException:
        _close(backends)
        raise


def _close(backends: list[Any]) -> None:
    for backend in backends:
        if backend is not None:
            backend.close()
