"""One PCI function served to QEMU 7.2's ``x-pci-proxy-dev``: mpqemu message in, reply out.

The endpoint is the remote half of ``hw/remote/message.c`` without the socket: the
server (``server.py``) frames messages and hands each one to ``handle``, which returns
the reply bytes (or ``None``). It owns the descriptors that arrive with a message.

Rules:

1. Commands are a table (``_COMMANDS``): the payload size and descriptor count each one
   must carry (``mpqemu_msg_valid``), whether the proxy waits for a reply, and the
   handler. A message that breaks its row is refused before the handler runs: its
   descriptors are closed, the error is logged, and a command the proxy waits on gets a
   RET carrying ``MPQEMU_RET_ERROR`` so the proxy's vCPU is not left blocked. Unknown
   commands get the same error reply; a RET sent to us is logged and dropped.
2. Replies are exactly 7.2's: config and BAR accesses answer RET with an 8-byte u64 (the
   value read, 0 after a write, ``UINT64_MAX`` on error); DEVICE_RESET answers RET with
   no data; SYNC_SYSMEM and SET_IRQFD get no reply.
3. BAR accesses carry an absolute address (``mr->addr + addr`` in proxy.c) and a
   ``memory`` flag. Like QEMU's remote, which replays them on its own address spaces, the
   endpoint keeps a memory and an I/O ``Bus`` on which a ``PciHost`` maps the function's
   BARs where config writes program them; an access must fall wholly inside one mapped
   BAR, else it gets an error reply (never an exception). Accesses inside a BAR that are
   unaligned are split by the ``Bus``.
4. Config accesses go through a config view (MSI and MSI-X hidden by default, see
   ``config.py``); offsets past the function's config space and lengths other than 1, 2
   and 4 get an error reply.
5. Nothing the peer sends raises out of ``handle``: ``GuestError``/``HostError`` that a
   device lets escape are logged and answered with an error reply too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import defs as d
from .config import DEFAULT_HIDDEN, ConfigView, HiddenCapabilities
from .irqfd import IntxPort, IrqfdLevelSink, is_eventfd
from .layouts import BAR_ACCESS_MSG, encode_ret, unpack_pci_conf_data, unpack_sync_sysmem
from .sysmem import SysmemError, SysmemTable
from devmodels import Bus, GuestError, GuestMemory, HostError, PIO_LIMIT
from devmodels.fds import close_fds
from devmodels.trace import tracepoint
from devmodels.pci import BarKind, PciFunction, PciHost

__all__ = ["RemotePciEndpoint", "IrqfdListener", "EndpointStats"]

_log = logging.getLogger("devmodels.mpqemu")
_tp_msg = tracepoint("mpqemu.msg")
_tp_refused = tracepoint("mpqemu.refused")

_OK = 0
_ERR = d.MPQEMU_RET_ERROR
_ACCESS_SIZES = (1, 2, 4, 8)
# A peer (or a guest, through BAR overlaps) can cause an error per access: bound the log.
_LOG_LIMIT = 100
_CONFIG_SIZES = (1, 2, 4)

# Told when SET_IRQFD replaces the INTx sink: (old sink or None, new sink or None).
IrqfdListener = Callable[[IrqfdLevelSink | None, IrqfdLevelSink | None], None]


@dataclass
class EndpointStats:
    """Counters of what the endpoint has handled (for tests, logs and benchmarks)."""

    messages: int = 0
    refused: int = 0
    config_reads: int = 0
    config_writes: int = 0
    bar_reads: int = 0
    bar_writes: int = 0
    bar_errors: int = 0
    msi_dropped: int = 0


@dataclass(frozen=True)
class _Command:
    name: str
    size: int | None  # exact payload size; None = any (unknown commands)
    min_fds: int
    max_fds: int
    replies: bool


class _DroppedMsi:
    """The function's MSI sink: 7.2's proxy has no MSI path (see config.py)."""

    def __init__(self, stats: EndpointStats) -> None:
        self._stats = stats

    def deliver_msi(self, address: int, data: int) -> None:
        if self._stats.msi_dropped == 0:
            _log.warning("MSI to %#x dropped: QEMU 7.2's proxy delivers only INTx", address)
        self._stats.msi_dropped += 1


class RemotePciEndpoint:
    """Serves ``function`` to one proxy (rules 1–5).

    Args:
        function: the device; it must not be plugged anywhere else (its ``intx`` and
            ``msi_sink`` are replaced).
        memory: the guest RAM the device DMAs into; SYNC_SYSMEM fills it. A new empty one
            if omitted.
        hide_capabilities: capability IDs to unlink from the config view; default MSI and
            MSI-X (the 7.2 proxy cannot deliver them). Pass ``()`` to show all.
        on_irqfd: told when SET_IRQFD installs or replaces the INTx sink (the server
            watches the resample fd).

    Attributes:
        sysmem: the RAM table from SYNC_SYSMEM.
        irq: the current irqfd sink, or ``None`` before SET_IRQFD.
        stats: counters.
    """

    def __init__(
        self,
        function: PciFunction,
        memory: GuestMemory | None = None,
        *,
        hide_capabilities: Sequence[int] = DEFAULT_HIDDEN,
        on_irqfd: IrqfdListener | None = None,
    ) -> None:
        self.function = function
        self.memory = memory if memory is not None else GuestMemory()
        self.sysmem = SysmemTable(self.memory)
        self.stats = EndpointStats()
        self.irq: IrqfdLevelSink | None = None
        self.on_irqfd = on_irqfd
        self.config: ConfigView = (
            HiddenCapabilities(function, hide_capabilities) if hide_capabilities else function
        )
        self.mmio = Bus("remote-mmio")
        self.pio = Bus("remote-pio", PIO_LIMIT)
        self.intx = IntxPort()
        self.host = PciHost(self.mmio, self.pio, lambda slot, pin: self.intx, _DroppedMsi(self.stats))
        self.host.plug(function)
        self.closed = False
        self._errors_logged = 0
        for bar in function.bars:
            if bar is None:
                continue
            if bar.kind is BarKind.MEM64:
                _log.warning(
                    "%s BAR%d is 64-bit: QEMU 7.2's proxy sizes every BAR as 32-bit and will "
                    "see its upper half as a separate I/O BAR",
                    function.name,
                    bar.index,
                )
            elif bar.is_io and bar.size < 16:
                _log.warning(
                    "%s BAR%d is a %d-byte I/O BAR: QEMU 7.2's proxy sizes it as 16 bytes and "
                    "accesses past its end will be refused",
                    function.name,
                    bar.index,
                    bar.size,
                )
        self._handlers: dict[int, Callable[[bytes, list[int]], bytes | None]] = {
            d.MPQEMU_CMD_SYNC_SYSMEM: self._sync_sysmem,
            d.MPQEMU_CMD_PCI_CFGWRITE: self._cfg_write,
            d.MPQEMU_CMD_PCI_CFGREAD: self._cfg_read,
            d.MPQEMU_CMD_BAR_WRITE: self._bar_write,
            d.MPQEMU_CMD_BAR_READ: self._bar_read,
            d.MPQEMU_CMD_SET_IRQFD: self._set_irqfd,
            d.MPQEMU_CMD_DEVICE_RESET: self._device_reset,
        }

    # -- dispatch -------------------------------------------------------------------------

    def handle(self, cmd: int, payload: bytes, fds: Sequence[int] = ()) -> bytes | None:
        """Handle one message; return the reply to send, or ``None``.

        Takes ownership of ``fds``: they are kept by the handler that expects them and
        closed otherwise.
        """
        fds = list(fds)
        self.stats.messages += 1
        if _tp_msg.on:
            _tp_msg.emit(cmd=d.CMD_NAMES.get(cmd, str(cmd)), size=len(payload), fds=len(fds))
        if self.closed:
            close_fds(fds)
            return None
        row = _COMMANDS.get(cmd)
        if row is None:
            return self._refuse(cmd, fds, True, f"unknown command {cmd}")
        if cmd == d.MPQEMU_CMD_RET:
            return self._refuse(cmd, fds, False, "unexpected RET from the proxy")
        if row.size is not None and len(payload) != row.size:
            return self._refuse(cmd, fds, row.replies, f"payload is {len(payload)} bytes, expected {row.size}")
        if not row.min_fds <= len(fds) <= row.max_fds:
            want = str(row.min_fds) if row.min_fds == row.max_fds else f"{row.min_fds}..{row.max_fds}"
            return self._refuse(cmd, fds, row.replies, f"{len(fds)} descriptors, expected {want}")
        try:
            return self._handlers[cmd](payload, fds)
        except (GuestError, HostError) as exc:
            self._error("mpqemu: %s: %s escaped from %s: %s", row.name, type(exc).__name__, self.function.name, exc)
            return encode_ret(_ERR) if row.replies else None

    @staticmethod
    def expects_reply(cmd: int) -> bool:
        """Whether the proxy waits for a RET after command ``cmd`` (unknown ones: yes)."""
        row = _COMMANDS.get(cmd)
        return True if row is None else row.replies

    def _refuse(self, cmd: int, fds: list[int], reply: bool, reason: str) -> bytes | None:
        close_fds(fds)
        self.stats.refused += 1
        name = d.CMD_NAMES.get(cmd, str(cmd))
        self._error("mpqemu: refused %s: %s", name, reason)
        return encode_ret(_ERR) if reply else None

    def _error(self, message: str, *args: object) -> None:
        """Log a refused message; after ``_LOG_LIMIT`` of them, only trace events follow."""
        self._errors_logged += 1
        if self._errors_logged <= _LOG_LIMIT:
            _log.error(message, *args)
            if self._errors_logged == _LOG_LIMIT:
                _log.error("mpqemu: %d errors logged; further ones only as mpqemu.refused trace events", _LOG_LIMIT)
        if _tp_refused.on:
            _tp_refused.emit(detail=message % args)

    # -- handlers -------------------------------------------------------------------------

    def _sync_sysmem(self, payload: bytes, fds: list[int]) -> bytes | None:
        try:
            self.sysmem.apply(unpack_sync_sysmem(payload), fds)
        except SysmemError as exc:
            self.stats.refused += 1
            self._error("mpqemu: SYNC_SYSMEM table refused, guest RAM unmapped: %s", exc)
        return None

    def _config_args(self, payload: bytes, write: bool) -> tuple[int, int, int] | None:
        conf = unpack_pci_conf_data(payload)
        if conf.length not in _CONFIG_SIZES or conf.addr + conf.length > self.function.config.size:
            op = "write" if write else "read"
            self.stats.refused += 1
            self._error("mpqemu: config %s of %d bytes at %#x refused", op, conf.length, conf.addr)
            return None
        return conf.addr, conf.length, conf.val & ((1 << (8 * conf.length)) - 1)

    def _cfg_read(self, payload: bytes, fds: list[int]) -> bytes:
        args = self._config_args(payload, False)
        if args is None:
            return encode_ret(_ERR)
        self.stats.config_reads += 1
        return encode_ret(self.config.config_read(args[0], args[1]))

    def _cfg_write(self, payload: bytes, fds: list[int]) -> bytes:
        args = self._config_args(payload, True)
        if args is None:
            return encode_ret(_ERR)
        self.stats.config_writes += 1
        self.config.config_write(*args)
        return encode_ret(_OK)

    def _bar_target(self, payload: bytes) -> tuple[Bus, int, int, int] | None:
        addr, val, size, memory = BAR_ACCESS_MSG.unpack(payload)
        bus = self.mmio if memory else self.pio
        if size not in _ACCESS_SIZES:
            self.stats.bar_errors += 1
            self._error("mpqemu: BAR access of %d bytes at %#x refused: size is not 1, 2, 4 or 8", size, addr)
            return None
        mapping = bus.find(addr)
        if mapping is None or addr + size > mapping.end:
            # QEMU forwards only accesses inside BARs it mapped from the same config writes,
            # so this is a confused peer, or a guest that stacked two BARs (the PciHost
            # leaves the later one unmapped, QEMU maps it over the first).
            self.stats.bar_errors += 1
            kind = "memory" if memory else "I/O"
            self._error("mpqemu: %s access of %d bytes at %#x hits no mapped BAR", kind, size, addr)
            return None
        return bus, addr, size, val & ((1 << (8 * size)) - 1)

    def _bar_read(self, payload: bytes, fds: list[int]) -> bytes:
        target = self._bar_target(payload)
        if target is None:
            return encode_ret(_ERR)
        self.stats.bar_reads += 1
        bus, addr, size, _ = target
        return encode_ret(bus.read(addr, size))

    def _bar_write(self, payload: bytes, fds: list[int]) -> bytes:
        target = self._bar_target(payload)
        if target is None:
            return encode_ret(_ERR)
        self.stats.bar_writes += 1
        bus, addr, size, value = target
        bus.write(addr, size, value)
        return encode_ret(_OK)

    def _set_irqfd(self, payload: bytes, fds: list[int]) -> None:
        if not all(is_eventfd(fd) for fd in fds):
            self._refuse(d.MPQEMU_CMD_SET_IRQFD, fds, False, "descriptors are not eventfds")
            return None
        old = self.irq
        new = IrqfdLevelSink(fds[0], fds[1])
        self.irq = new
        if self.on_irqfd is not None:
            self.on_irqfd(old, new)
        if old is not None:
            old.close()
        self.intx.attach(new)
        return None

    def _device_reset(self, payload: bytes, fds: list[int]) -> bytes:
        reset = getattr(self.function, "reset", None)
        if callable(reset):
            reset()
        else:
            self.function.reset_function()
        return encode_ret(None)

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap guest RAM, close the irqfds and unplug the function (idempotent)."""
        if self.closed:
            return
        self.closed = True
        old = self.irq
        self.irq = None
        self.intx.detach()
        if old is not None:
            if self.on_irqfd is not None:
                self.on_irqfd(old, None)
            old.close()
        self.sysmem.close()
        self.host.unplug(self.function)



_FDS_ANY = d.REMOTE_MAX_FDS
_COMMANDS: dict[int, _Command] = {
    # mpqemu_msg_valid requires 1..7 descriptors for SYNC_SYSMEM; an empty table (no RAM)
    # is accepted here, and all 8 slots of SyncSysmemMsg may be used.
    d.MPQEMU_CMD_SYNC_SYSMEM: _Command("SYNC_SYSMEM", 192, 0, d.REMOTE_MAX_FDS, False),
    d.MPQEMU_CMD_RET: _Command("RET", None, 0, _FDS_ANY, False),
    d.MPQEMU_CMD_PCI_CFGWRITE: _Command("PCI_CFGWRITE", 12, 0, 0, True),
    d.MPQEMU_CMD_PCI_CFGREAD: _Command("PCI_CFGREAD", 12, 0, 0, True),
    d.MPQEMU_CMD_BAR_WRITE: _Command("BAR_WRITE", 24, 0, 0, True),
    d.MPQEMU_CMD_BAR_READ: _Command("BAR_READ", 24, 0, 0, True),
    d.MPQEMU_CMD_SET_IRQFD: _Command("SET_IRQFD", 0, 2, 2, False),
    d.MPQEMU_CMD_DEVICE_RESET: _Command("DEVICE_RESET", 0, 0, 0, True),
}
