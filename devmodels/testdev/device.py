"""The devmodels PCI test device: a small, complete PCI function to prove every path.

BAR0 (memory, 4 KiB) holds the registers of ``regs.py``; BAR1 (I/O, 16 bytes) mirrors
ID and SCRATCH for port I/O; BAR2 (memory, 4 KiB) holds the MSI-X table and PBA. It has an
MSI capability and INTA#.

Behaviour:

- ``IRQ_RAISE`` ORs bits into ``IRQ_STATUS``; ``IRQ_ACK`` clears them. While status is
  non-zero the device interrupts: with MSI-X, vector 0 for ``IRQ_RAISE`` and vector 1 for
  the DMA engine's completions; else MSI (once per new cause) or INTx held asserted until
  acknowledged.
- Writing ``DMA_CMD_START`` copies ``DMA_LEN`` bytes (at most ``DMA_MAX_LEN``) from
  ``DMA_SRC`` to ``DMA_DST`` in guest RAM, then sets ``DMA_STATUS`` and raises
  ``IRQ_DMA_DONE``. A bad address, an oversized length or Bus Master disabled ends in
  ``DMA_STATUS_ERROR`` and ``IRQ_DMA_ERROR``, never an exception (a guest error).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import regs as r
from ..args import check_memory
from .._errors import GuestError, SnapshotError
from .._memory import GuestMemory
from .._regs import Access, Reg, RegisterFile
from .._state import check_args, check_int, check_type, check_version
from .._trace import tracepoint
from ..pci import BarKind, PciFunction, PciFunctionState

__all__ = ["PciTestDevice", "PciTestDeviceArgs", "PciTestDeviceState"]

_DMA_VECTOR = 1  # the DMA engine's MSI-X vector

_tp_dma = tracepoint("testdev.dma")

_STATE_VERSION = 2  # 2: args


@dataclass(frozen=True)
class PciTestDeviceArgs:
    """The test device's constructor arguments: it has none but its memory (``devmodels._state``
    rule 3); the empty section still names what a snapshot was taken of."""


@dataclass(frozen=True)
class PciTestDeviceState:
    """Snapshot of the test device."""

    version: int
    args: PciTestDeviceArgs
    pci: PciFunctionState
    registers: tuple[tuple[int, int], ...]


class _PortWindow:
    """BAR1: ID at 0, SCRATCH at 4, through port I/O."""

    def __init__(self, device: PciTestDevice) -> None:
        self._device = device

    def read(self, offset: int, size: int) -> int:
        if offset in (r.ID, r.SCRATCH) and size == 4:
            return self._device.registers.read(offset, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == r.SCRATCH and size == 4:
            self._device.registers.write(offset, size, value)


class PciTestDevice(PciFunction):
    """The test device.

    Args:
        memory: guest RAM the DMA engine copies within.
    """

    def __init__(self, memory: GuestMemory) -> None:
        check_memory("PciTestDevice", memory)
        super().__init__(r.TESTDEV_VENDOR_ID, r.TESTDEV_DEVICE_ID, r.TESTDEV_CLASS, revision=1, name="testdev")
        self.memory = memory
        self.registers = RegisterFile(
            [
                Reg("ID", r.ID, access=Access.RO, reset=r.TESTDEV_MAGIC),
                Reg("SCRATCH", r.SCRATCH, partial=True),
                Reg("IRQ_STATUS", r.IRQ_STATUS, access=Access.RO),
                Reg("IRQ_RAISE", r.IRQ_RAISE, access=Access.WO, on_write=self._raise),
                Reg("IRQ_ACK", r.IRQ_ACK, access=Access.WO, on_write=self._ack),
                # 64-bit addresses also take two 32-bit writes, as QEMU's edu does.
                Reg("DMA_SRC", r.DMA_SRC, size=8, mask=(1 << 64) - 1, partial=True),
                Reg("DMA_DST", r.DMA_DST, size=8, mask=(1 << 64) - 1, partial=True),
                Reg("DMA_LEN", r.DMA_LEN),
                Reg("DMA_CMD", r.DMA_CMD, access=Access.WO, mask=r.DMA_CMD_START, on_write=self._dma_cmd),
                Reg("DMA_STATUS", r.DMA_STATUS, access=Access.RO),
            ],
            device="testdev",
        )
        self.add_bar(0, r.BAR0_SIZE, self.registers)
        self.add_bar(1, r.BAR1_SIZE, _PortWindow(self), BarKind.IO)
        self.add_bar(2, r.BAR2_SIZE, None)
        self.add_msix(r.MSIX_VECTORS, bar=2)
        self.add_msi(1)

    # -- register side effects ------------------------------------------------------------

    def _raise(self, old: int, written: int) -> int:
        self._set_status(self.registers["IRQ_STATUS"] | written)
        return 0

    def _ack(self, old: int, written: int) -> int:
        self._set_status(self.registers["IRQ_STATUS"] & ~written)
        return 0

    def _set_status(self, status: int, vector: int = 0) -> None:
        """New causes in ``status`` signal MSI-X ``vector`` (MSI and INTx have one)."""
        before = self.registers["IRQ_STATUS"]
        self.registers["IRQ_STATUS"] = status
        if status & ~before:
            if self.signal(vector if self.msix_enabled else 0):
                return
        self.set_intx(bool(status) and not (self.msix_enabled or self.msi_enabled))

    def _dma_cmd(self, old: int, written: int) -> int:
        if written & r.DMA_CMD_START:
            self._run_dma()
        return 0

    def _run_dma(self) -> None:
        src, dst, length = self.registers["DMA_SRC"], self.registers["DMA_DST"], self.registers["DMA_LEN"]
        try:
            if not self.dma_allowed:
                raise GuestError("DMA started with Bus Master Enable clear")
            if length > r.DMA_MAX_LEN:
                raise GuestError(f"DMA length {length:#x} exceeds {r.DMA_MAX_LEN:#x}")
            self.memory.write(dst, self.memory.read(src, length))
        except GuestError as exc:
            if _tp_dma.on:
                _tp_dma.emit(src=src, dst=dst, length=length, error=str(exc))
            self.registers["DMA_STATUS"] = r.DMA_STATUS_ERROR
            self._set_status(self.registers["IRQ_STATUS"] | r.IRQ_DMA_ERROR, _DMA_VECTOR)
            return
        if _tp_dma.on:
            _tp_dma.emit(src=src, dst=dst, length=length)
        self.registers["DMA_STATUS"] = r.DMA_STATUS_DONE
        self._set_status(self.registers["IRQ_STATUS"] | r.IRQ_DMA_DONE, _DMA_VECTOR)

    # -- reset and snapshot ---------------------------------------------------------------

    def reset(self) -> None:
        """Power-on state."""
        self.reset_function()
        self.registers.reset()

    # The snapshot contract (devmodels._state): the device finishes every access inside the
    # call, so it is always at its quiesce point (quiesce() is the default's, a no-op).

    snapshot_kind = "testdev"
    state_type = PciTestDeviceState

    def constructor_args(self) -> PciTestDeviceArgs:
        """The constructor arguments a snapshot carries (none)."""
        return PciTestDeviceArgs()

    @classmethod
    def from_state(cls, state: PciTestDeviceState, memory: GuestMemory) -> PciTestDevice:
        """A test device with ``state`` restored (``devmodels._state`` rule 5).

        Raises:
            SnapshotError: the state is refused.
        """
        device = cls(memory)
        device.restore(state)
        return device

    def state(self) -> PciTestDeviceState:
        """Snapshot."""
        return PciTestDeviceState(
            version=_STATE_VERSION,
            args=PciTestDeviceArgs(),
            pci=self.pci_state(),
            registers=tuple(sorted(self.registers.values.items())),
        )

    def restore(self, state: PciTestDeviceState) -> None:
        """Validate ``state`` completely, then apply it.

        Raises:
            SnapshotError: any field is inconsistent; nothing was applied.
        """
        check_type("state", state, PciTestDeviceState)
        check_version("version", state.version, _STATE_VERSION)
        check_args("args", state.args, PciTestDeviceArgs())
        self.check_pci_state(state.pci)
        known = {reg.offset: reg for reg in self.registers.registers}
        check_type("registers", state.registers, tuple)
        for item in state.registers:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise SnapshotError("registers", f"expected (offset, value) pairs, got {item!r}")
            check_int("registers.offset", item[0])
        values = dict(state.registers)
        if set(values) != set(known) or len(values) != len(state.registers):
            raise SnapshotError("registers", "register set does not match this device")
        for offset, value in values.items():
            check_int(f"registers[{known[offset].name}]", value, 0, (1 << (8 * known[offset].size)) - 1)
        check_int("registers[ID]", values[r.ID], r.TESTDEV_MAGIC, r.TESTDEV_MAGIC)
        self.load_pci_state(state.pci)
        self.registers.values = values
