"""Stateful model test of the PCI test device, driven only as a guest drives it.

A ``RuleBasedStateMachine`` interleaves scratch writes of every width, interrupt raises
and acknowledgements, DMA copies (inside RAM, across its end, too long, with bus mastering
off), writes to unimplemented offsets, resets and snapshot round trips. A model tracks
what each register must read and what RAM must hold; the invariants compare after every
step, and INTx must follow "IRQ_STATUS is non-zero".
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from devmodels import Machine, from_dict, to_dict
from devmodels.pci import defs as pci
from devmodels.testdev import PciTestDevice, PciTestDeviceState
from devmodels.testdev import regs as r

RAM = 16 << 10
BAR0 = 0xC000_0000

addresses = st.sampled_from([0, 0x10, 0x1000, 0x2345, RAM - 4096, RAM - 8, RAM - 1, RAM, RAM + 0x1000, (1 << 64) - 16])
lengths = st.sampled_from([0, 1, 7, 64, 4096, RAM, r.DMA_MAX_LEN + 1, 0xFFFF_FFFF])


class DeviceModel(RuleBasedStateMachine):
    """The device against a model of its registers and of guest RAM."""

    @initialize()
    def plug(self) -> None:
        self.machine = Machine(ram_size=RAM, ram_backing="bytearray")
        self.device = PciTestDevice(self.machine.memory)
        self.devfn = self.machine.add_pci(self.device) << 3
        self.gsi = next(i.interrupt_line for i in self.machine.enumerate() if i.devfn == self.devfn)
        self.ram = bytearray(RAM)
        self.machine.memory.write(0, bytes(i * 7 & 0xFF for i in range(RAM)))
        self.ram[:] = self.machine.memory.read(0, RAM)
        self._program_bars()
        self.model_reset()

    def _program_bars(self) -> None:
        self.machine.config_write(0, self.devfn, pci.PCI_BASE_ADDRESS_0, 4, BAR0)
        self.machine.config_write(0, self.devfn, pci.PCI_COMMAND, 2, pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER)
        self.master = True

    def model_reset(self) -> None:
        self.scratch = 0
        self.irq = 0
        self.dma_status = r.DMA_STATUS_IDLE

    def teardown(self) -> None:
        if hasattr(self, "machine"):
            self.machine.close()

    def rd(self, offset: int, size: int = 4) -> int:
        return self.machine.mmio.read(BAR0 + offset, size)

    def wr(self, offset: int, value: int, size: int = 4) -> None:
        self.machine.mmio.write(BAR0 + offset, size, value)

    # -- rules -------------------------------------------------------------------------------

    @rule(size=st.sampled_from([1, 2, 4]), lane=st.integers(0, 3), value=st.integers(0, 0xFFFF_FFFF))
    def write_scratch(self, size: int, lane: int, value: int) -> None:
        offset = lane - lane % size
        self.wr(r.SCRATCH + offset, value, size)
        mask = ((1 << (8 * size)) - 1) << (8 * offset)
        self.scratch = (self.scratch & ~mask) | ((value << (8 * offset)) & mask)

    @rule(bits=st.integers(0, 0xFFFF_FFFF))
    def raise_irq(self, bits: int) -> None:
        self.wr(r.IRQ_RAISE, bits)
        self.irq |= bits

    @rule(bits=st.integers(0, 0xFFFF_FFFF))
    def ack_irq(self, bits: int) -> None:
        self.wr(r.IRQ_ACK, bits)
        self.irq &= ~bits

    @rule(src=addresses, dst=addresses, length=lengths)
    def dma(self, src: int, dst: int, length: int) -> None:
        self.wr(r.DMA_SRC, src & 0xFFFF_FFFF)
        self.wr(r.DMA_SRC + 4, src >> 32)
        self.wr(r.DMA_DST, dst, 8)
        self.wr(r.DMA_LEN, length)
        self.wr(r.DMA_CMD, r.DMA_CMD_START)
        # GuestMemory rule 1: every byte of both ranges is RAM, and even an empty range must
        # start inside RAM (the address is checked before the length).
        ok = self.master and length <= r.DMA_MAX_LEN and src < RAM and dst < RAM
        ok = ok and src + length <= RAM and dst + length <= RAM
        if ok:
            self.ram[dst : dst + length] = self.ram[src : src + length]
            self.dma_status = r.DMA_STATUS_DONE
            self.irq |= r.IRQ_DMA_DONE
        else:
            self.dma_status = r.DMA_STATUS_ERROR
            self.irq |= r.IRQ_DMA_ERROR
        assert self.machine.memory.read(0, RAM) == self.ram

    @rule(master=st.booleans())
    def bus_master(self, master: bool) -> None:
        command = pci.PCI_COMMAND_MEMORY | (pci.PCI_COMMAND_MASTER if master else 0)
        self.machine.config_write(0, self.devfn, pci.PCI_COMMAND, 2, command)
        self.master = master

    @rule(offset=st.integers(0x40, r.BAR0_SIZE - 8), size=st.sampled_from([1, 2, 4, 8]), value=st.integers(0, (1 << 64) - 1))
    def scribble_unimplemented(self, offset: int, size: int, value: int) -> None:
        offset -= offset % size
        self.wr(offset, value, size)
        assert self.rd(offset, size) == 0  # unimplemented offsets read 0

    @rule()
    def reset(self) -> None:
        self.device.reset()
        self._program_bars()
        self.model_reset()

    @rule()
    def snapshot(self) -> None:
        before = self.device.state()
        rebuilt = from_dict(PciTestDeviceState, to_dict(before))
        assert rebuilt == before
        self.device.restore(rebuilt)
        assert self.device.state() == before

    @precondition(lambda self: self.irq == 0)
    @rule()
    def quiet_line(self) -> None:
        assert not self.machine.irq.levels.get(self.gsi, False)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def registers_match_the_model(self) -> None:
        if not hasattr(self, "machine"):
            return
        assert self.rd(r.ID) == r.TESTDEV_MAGIC
        assert self.rd(r.SCRATCH) == self.scratch
        assert self.rd(r.IRQ_STATUS) == self.irq
        assert self.rd(r.DMA_STATUS) == self.dma_status

    @invariant()
    def intx_follows_status(self) -> None:
        if not hasattr(self, "machine"):
            return
        assert self.machine.irq.levels.get(self.gsi, False) == bool(self.irq)


DeviceModel.TestCase.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
TestTestdev = DeviceModel.TestCase
