"""The one registry of devices every server command and the in-process ``Machine`` build from.

Rules:

1. A device is named once, here (``DEVICES``): ``testdev``, ``e1000``, ``ahci``,
   ``virtio-blk``, ``virtio-net``. ``build`` makes it from the same ``--backend SPEC`` and
   ``--opt KEY=VALUE`` words on every server (``devmodels mpqemu``, ``devmodels vfio-user``,
   ``devmodels vhost-user``) and for ``add_to_machine``.
2. Backend specs: ``file:PATH`` / ``file-ro:PATH`` (disk image), ``iso:PATH`` (AHCI CD-ROM),
   ``mem:SIZE`` (a memory disk, SIZE in bytes or with K/M/G), ``socket:PATH`` (connect to a
   seqpacket peer), ``socket-fd:N`` (an inherited socket), ``tap:NAME`` (a TAP device).
   Each device takes the kinds its part can use; anything else is a ``UsageError`` naming
   the spec and what would be accepted.
3. A ``BuiltDevice`` is what the servers need: ``served`` (the ``ServedDevice`` a
   ``DeviceRunner`` serves), ``function`` (the PCI function for PCI attachments; for a
   virtio device, our virtio-pci transport around it, unless built with ``pci=False``) and
   ``virtio`` (the virtio device, which vhost-user serves without a transport of ours). It
   owns the backends it opened: ``close()`` closes them.
4. Interrupts: a device carries the interrupt capabilities of the real part whenever the
   attachment can deliver them (``msi=True``: vfio-user, in-process): ICH9 AHCI's MSI,
   virtio-pci's MSI-X, testdev's MSI and MSI-X. ``msi=False`` (QEMU 7.2's
   ``x-pci-proxy-dev``, which cannot deliver them) leaves them off and virtio-pci INTx-only.
   The 82540EM has no MSI; ``--opt msi=on`` adds the one-vector capability anyway.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from devmodels import GuestMemory, Machine, UsageError
from devmodels.backends import BlockBackend, MemoryDiskBackend, NetBackend, RawFileBackend
from devmodels.pci import PciFunction
from devmodels.runtime import ServedDevice

__all__ = ["DeviceKind", "DeviceOptions", "BuiltDevice", "DEVICES", "build", "add_to_machine", "open_net_backend",
           "parse_size"]


@dataclass
class DeviceOptions:
    """The ``--backend`` and ``--opt`` words for one device (rules 1–2)."""

    backends: list[str] = field(default_factory=list)
    opts: dict[str, str] = field(default_factory=dict)
    msi: bool = True  # rule 4: whether the attachment delivers MSI/MSI-X
    pci: bool = True  # rule 3: build the virtio-pci transport around a virtio device
    _used: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, backends: Sequence[str], opts: Sequence[str], *, msi: bool = True, pci: bool = True) -> DeviceOptions:
        """From command-line words.

        Raises:
            UsageError: an option that is not ``KEY=VALUE``.
        """
        parsed: dict[str, str] = {}
        for opt in opts:
            key, sep, value = opt.partition("=")
            if not sep or not key:
                raise UsageError(f"--opt {opt!r}: expected KEY=VALUE")
            parsed[key] = value
        return cls(list(backends), parsed, msi, pci)

    def text(self, key: str, default: str) -> str:
        """A string option."""
        self._used.add(key)
        return self.opts.get(key, default)

    def flag(self, key: str, default: bool) -> bool:
        """A boolean ``--opt KEY=on|off``."""
        self._used.add(key)
        value = self.opts.get(key)
        if value is None:
            return default
        if value.lower() in ("1", "on", "yes", "true"):
            return True
        if value.lower() in ("0", "off", "no", "false"):
            return False
        raise UsageError(f"--opt {key}={value}: expected on or off")

    def number(self, key: str, default: int, low: int, high: int) -> int:
        """An integer option in ``[low, high]``."""
        self._used.add(key)
        value = self.opts.get(key)
        if value is None:
            return default
        try:
            number = int(value, 0)
        except ValueError:
            raise UsageError(f"--opt {key}={value}: expected an integer") from None
        if not low <= number <= high:
            raise UsageError(f"--opt {key}={value}: expected {low}..{high}")
        return number

    def check_all_used(self, device: str) -> None:
        """Every ``--opt`` was one the device knows.

        Raises:
            UsageError: naming the unknown options and the known ones.
        """
        unknown = sorted(set(self.opts) - self._used)
        if unknown:
            known = ", ".join(sorted(self._used)) or "none"
            raise UsageError(f"device {device} has no option {', '.join(unknown)} (options: {known})")


@dataclass
class BuiltDevice:
    """A device ready to serve (rule 3)."""

    name: str
    served: ServedDevice
    function: PciFunction | None = None
    virtio: Any = None  # virtio.VirtioDevice (vhost-user serves it without a transport)
    backends: list[Any] = field(default_factory=list)

    def counters(self) -> dict[str, int]:
        """Counters of the backends (reads served inline or by workers), for stats lines."""
        return {
            "inline_reads": sum(getattr(b, "inline_reads", 0) for b in self.backends),
            "delegated_reads": sum(getattr(b, "delegated_reads", 0) for b in self.backends),
        }

    def close(self) -> None:
        """Close the backends this device was built with."""
        while self.backends:
            self.backends.pop().close()


@dataclass(frozen=True)
class DeviceKind:
    """One entry of ``DEVICES``."""

    name: str
    summary: str
    backends: str  # the specs it takes, for --help and errors
    factory: Callable[[GuestMemory, DeviceOptions], BuiltDevice]


def parse_size(text: str) -> int:
    """``4096``, ``64K``, ``16M``, ``1G`` → bytes.

    Raises:
        UsageError: not a size.
    """
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale != 1 else text
    if not digits.isdigit() or int(digits) == 0:
        raise UsageError(f"{text!r} is not a size (bytes, or a number with K, M or G)")
    return int(digits) * scale


def open_net_backend(spec: str, *, vnet_hdr: bool = False) -> NetBackend:
    """A network backend from ``socket:PATH``, ``socket-fd:N`` or ``tap:NAME`` (rule 2).

    Raises:
        UsageError: an unknown spec.
        HostError: the backend cannot be opened.
    """
    from devmodels.backends import SocketBackend, TapBackend

    kind, _, arg = spec.partition(":")
    if kind == "socket" and arg:
        return SocketBackend.connect(arg, "seqpacket")
    if kind == "socket-fd" and arg.isdigit():
        return SocketBackend(socket.socket(fileno=int(arg)))
    if kind == "tap" and arg:
        return TapBackend(arg, vnet_hdr=vnet_hdr)
    raise UsageError(f"network backend {spec!r}: use socket:PATH, socket-fd:N or tap:NAME")


def _open_disk(spec: str, options: DeviceOptions, *, cdrom_ok: bool = False) -> tuple[BlockBackend, bool]:
    """A block backend from ``file:``/``file-ro:``/``iso:``/``mem:`` (rule 2); and whether it
    is a CD-ROM medium."""
    kind, _, arg = spec.partition(":")
    if kind == "mem" and arg:
        return MemoryDiskBackend(parse_size(arg)), False
    kinds = ("file", "file-ro", "iso") if cdrom_ok else ("file", "file-ro")
    if kind not in kinds or not arg:
        raise UsageError(f"disk backend {spec!r}: use {', '.join(k + ':PATH' for k in kinds)} or mem:SIZE")
    if not os.path.exists(arg):
        raise UsageError(f"backend {spec!r}: {arg} does not exist")
    backend = RawFileBackend(
        arg,
        readonly=kind != "file",
        direct=options.flag("direct", False),  # O_DIRECT images (QEMU's cache=none)
        workers=options.number("workers", 4, 1, 64),
        # Page-cache hits read on the loop's thread (buffered images; RawFileBackend rule 5).
        inline_reads=options.flag("inline-reads", True),
    )
    return backend, kind == "iso"


def _parse_mac(text: str) -> bytes:
    from devmodels.backends.net import parse_mac

    return parse_mac(text)


def _testdev(memory: GuestMemory, options: DeviceOptions) -> BuiltDevice:
    from devmodels.testdev import PciTestDevice

    if options.backends:
        raise UsageError("testdev takes no --backend")
    device = PciTestDevice(memory)
    return BuiltDevice("testdev", device, device)


def _e1000(memory: GuestMemory, options: DeviceOptions) -> BuiltDevice:
    from devmodels.e1000 import E1000

    if len(options.backends) > 1:
        raise UsageError("e1000 takes one --backend (socket:PATH, socket-fd:N or tap:NAME)")
    mac = _parse_mac(options.text("mac", "52:54:00:12:34:56"))
    mitigation = options.flag("mitigation", True)
    posted = options.flag("posted", True)  # TDT/RDT writes answered before the ring work runs
    msi = options.flag("msi", False)
    backend = open_net_backend(options.backends[0]) if options.backends else None
    device = E1000(memory, backend, mac=mac, mitigation=mitigation, posted_writes=posted, msi=msi)
    return BuiltDevice("e1000", device, device, backends=[backend] if backend is not None else [])


def _ahci(memory: GuestMemory, options: DeviceOptions) -> BuiltDevice:
    from devmodels.ahci import AhciController, AtaDisk, AtapiCdrom

    ports = options.number("ports", max(1, len(options.backends)), 1, 6)
    if len(options.backends) > ports:
        raise UsageError(f"{len(options.backends)} backends for {ports} AHCI ports")
    controller = AhciController(memory, ports=ports, posted_writes=options.flag("posted", True),
                                msi=options.flag("msi", options.msi))
    built = BuiltDevice("ahci", controller, controller)
    try:
        for port, spec in enumerate(options.backends):
            backend, cdrom = _open_disk(spec, options, cdrom_ok=True)
            built.backends.append(backend)
            controller.attach(port, AtapiCdrom(backend) if cdrom else AtaDisk(backend))
    except BaseException:
        built.close()
        raise
    return built


def _virtio_pci(built: BuiltDevice, options: DeviceOptions) -> BuiltDevice:
    from virtio.transport import VirtioPciFunction

    # Rule 4: MSI-X (one vector per queue plus config) where the attachment delivers it.
    vectors = None if options.flag("msix", options.msi) else 0
    if not options.pci:
        return built  # vhost-user: the front-end has the transport (rule 3)
    built.function = VirtioPciFunction(built.virtio, msix_vectors=vectors)
    return built


def _virtio_blk(memory: GuestMemory, options: DeviceOptions) -> BuiltDevice:
    from virtio.blk import VirtioBlkDevice

    if len(options.backends) != 1:
        raise UsageError("virtio-blk takes one --backend (file:PATH, file-ro:PATH or mem:SIZE)")
    queues = options.number("queues", 1, 1, 64)
    queue_size = options.number("queue-size", 256, 2, 32768)
    serial = options.text("serial", "devmodels")
    packed = options.flag("packed", True)
    # A vhost-user front-end may run the queues smaller than our maximum (QEMU's
    # vhost-user-blk-pci: 128), and no chain may outgrow the queue the driver uses.
    seg_max = options.number("seg-max", queue_size - 2 if options.pci else min(queue_size, 128) - 2, 1,
                             queue_size - 2)
    backend, _ = _open_disk(options.backends[0], options)
    try:
        device = VirtioBlkDevice(memory, backend, num_queues=queues, queue_size=queue_size, serial=serial,
                                 packed=packed, seg_max=seg_max)
        built = BuiltDevice("virtio-blk", device, virtio=device, backends=[backend])
        return _virtio_pci(built, options)
    except BaseException:
        backend.close()
        raise


def _virtio_net(memory: GuestMemory, options: DeviceOptions) -> BuiltDevice:
    from virtio.net import VirtioNetDevice

    if len(options.backends) != 1:
        raise UsageError("virtio-net takes one --backend (socket:PATH, socket-fd:N or tap:NAME)")
    mac = _parse_mac(options.text("mac", "52:54:00:12:34:56"))
    pairs = options.number("queues", 1, 1, 64)
    queue_size = options.number("queue-size", 256, 2, 32768)
    packed = options.flag("packed", True)
    # Over vhost-user the front-end keeps the control queue (QEMU's virtio-net handles it).
    ctrl_vq = options.flag("ctrl-vq", options.pci)
    backend = open_net_backend(options.backends[0], vnet_hdr=options.backends[0].startswith("tap:"))
    try:
        device = VirtioNetDevice(memory, backend, mac=mac, queue_pairs=pairs, queue_size=queue_size,
                                 ctrl_vq=ctrl_vq, packed=packed)
        built = BuiltDevice("virtio-net", device, virtio=device, backends=[backend])
        return _virtio_pci(built, options)
    except BaseException:
        backend.close()
        raise


DEVICES: dict[str, DeviceKind] = {
    kind.name: kind
    for kind in (
        DeviceKind("testdev", "our PCI test device (registers, DMA engine, INTx/MSI/MSI-X)", "none", _testdev),
        DeviceKind("e1000", "Intel 82540EM NIC", "socket:PATH | socket-fd:N | tap:NAME", _e1000),
        DeviceKind("ahci", "ICH9 AHCI SATA controller, one disk or CD per port",
                   "file:PATH | file-ro:PATH | iso:PATH | mem:SIZE, one per port", _ahci),
        DeviceKind("virtio-blk", "virtio-blk (virtio-pci transport on PCI attachments)",
                   "file:PATH | file-ro:PATH | mem:SIZE", _virtio_blk),
        DeviceKind("virtio-net", "virtio-net (virtio-pci transport on PCI attachments)",
                   "socket:PATH | socket-fd:N | tap:NAME", _virtio_net),
    )
}


def build(name: str, memory: GuestMemory, backends: Sequence[str] = (), opts: Sequence[str] = (), *,
          msi: bool = True, pci: bool = True) -> BuiltDevice:
    """Build device ``name`` with its backends and options (rules 1–4); ``pci=False`` leaves
    a virtio device without a transport (vhost-user brings its own).

    Raises:
        UsageError: unknown device, backend spec or option, or a malformed value.
        HostError: a backend cannot be opened.
    """
    kind = DEVICES.get(name)
    if kind is None:
        raise UsageError(f"unknown device {name!r}; known: {', '.join(DEVICES)}")
    options = DeviceOptions.parse(backends, opts, msi=msi, pci=pci)
    built = kind.factory(memory, options)
    try:
        options.check_all_used(name)
    except UsageError:
        built.close()
        raise
    return built


def add_to_machine(machine: Machine, name: str, backends: Sequence[str] = (), opts: Sequence[str] = ()) -> BuiltDevice:
    """Build device ``name`` on ``machine``'s RAM and plug its PCI function (rule 1).

    Returns the ``BuiltDevice``; its ``function`` is on the machine's PCI bus.
    """
    built = build(name, machine.memory, backends, opts)
    assert built.function is not None  # every registered device has a PCI function
    machine.add_pci(built.function)
    return built
