"""A devmodels PciTestDevice served over vfio-user, driven from a client-side Machine.

The server runs in a thread on one end of a socketpair; the client side plugs a
``VfioPciDevice`` over ``VfioUserClient`` into ``Machine.pci`` and drives it exactly as a
guest would: firmware enumeration through config cycles, BAR programming, MMIO/port
registers, DMA within client RAM, INTx and MSI/MSI-X through eventfds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from devmodels import Machine
from devmodels.pci import FunctionInfo
from devmodels.pci import defs as pcidefs
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r
from passthrough import VfioPciDevice
from passthrough.user import DmaMemory, VfioUserClient, VfioUserServer
from passthrough.user.testing import ServerThread


@dataclass
class Pair:
    machine: Machine
    device: VfioPciDevice
    served: PciTestDevice
    server: VfioUserServer
    thread: ServerThread
    client: VfioUserClient
    info: FunctionInfo

    @property
    def bars(self) -> dict[int, int]:
        return {b.index: b.address for b in self.info.bars if b.address is not None}

    def reg_read(self, offset: int, size: int = 4) -> int:
        return self.machine.mmio.read(self.bars[0] + offset, size)

    def reg_write(self, offset: int, value: int, size: int = 4) -> None:
        self.machine.mmio.write(self.bars[0] + offset, size, value)

    def cfg_read(self, offset: int, size: int) -> int:
        return self.machine.config_read(0, self.info.devfn, offset, size)

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        self.machine.config_write(0, self.info.devfn, offset, size, value)


def _make_pair(ram_backing: str) -> Pair:
    memory = DmaMemory()
    served = PciTestDevice(memory)
    server = VfioUserServer(served, memory)
    thread = ServerThread(server)
    client = VfioUserClient(thread.start(), timeout=20)
    machine = Machine(ram_size=8 << 20, ram_backing=ram_backing)  # type: ignore[arg-type]
    device = VfioPciDevice(client)
    device.map_memory(machine.memory)
    machine.add_pci(device)
    infos = machine.enumerate()
    info = next(i for i in infos if i.vendor_id == r.TESTDEV_VENDOR_ID)
    return Pair(machine, device, served, server, thread, client, info)


@pytest.fixture
def pair():
    p = _make_pair("memfd")
    yield p
    p.device.close()
    assert p.thread.join()
    assert p.thread.error is None
    p.machine.close()


def test_firmware_enumeration_sees_the_served_function(pair: Pair) -> None:
    info = pair.info
    assert (info.vendor_id, info.device_id, info.class_code) == (r.TESTDEV_VENDOR_ID, r.TESTDEV_DEVICE_ID, r.TESTDEV_CLASS)
    kinds = {b.index: (b.kind, b.size) for b in info.bars}
    assert kinds == {0: ("mem32", r.BAR0_SIZE), 1: ("io", r.BAR1_SIZE), 2: ("mem32", r.BAR2_SIZE)}
    assert info.interrupt_pin == 1
    # The firmware enabled decode and bus mastering; the command reached the served device.
    assert pair.served.command & pcidefs.PCI_COMMAND_MEMORY
    assert pair.served.dma_allowed
    # The virtual BARs hold the firmware's addresses; the server's are not used.
    assert pair.cfg_read(pcidefs.PCI_BASE_ADDRESS_0, 4) & ~0xF == pair.bars[0]


def test_capability_chain_is_presented_with_msi_and_msix(pair: Pair) -> None:
    ids = []
    offset = pair.cfg_read(pcidefs.PCI_CAPABILITY_LIST, 1)
    while offset:
        ids.append(pair.cfg_read(offset, 1))
        offset = pair.cfg_read(offset + 1, 1)
    assert ids == [pcidefs.PCI_CAP_ID_MSIX, pcidefs.PCI_CAP_ID_MSI]
    assert pair.cfg_read(pcidefs.PCI_STATUS, 2) & pcidefs.PCI_STATUS_CAP_LIST


def test_mmio_and_port_registers(pair: Pair) -> None:
    assert pair.reg_read(r.ID) == r.TESTDEV_MAGIC
    pair.reg_write(r.SCRATCH, 0xA5A5_1234)
    assert pair.reg_read(r.SCRATCH) == 0xA5A5_1234
    assert pair.reg_read(r.SCRATCH + 1, 1) == 0x12
    assert pair.served.registers["SCRATCH"] == 0xA5A5_1234
    io = pair.bars[1]
    assert pair.machine.pio.read(io + r.ID, 4) == r.TESTDEV_MAGIC
    pair.machine.pio.write(io + r.SCRATCH, 4, 0x55)
    assert pair.reg_read(r.SCRATCH) == 0x55
    pair.reg_write(r.DMA_SRC, 0x1122_3344_5566_7788, size=8)
    assert pair.reg_read(r.DMA_SRC, 8) == 0x1122_3344_5566_7788


def test_dma_copy_reaches_client_memory_shared_by_memfd(pair: Pair) -> None:
    payload = os.urandom(3000)
    pair.machine.memory.write(0x10_0000, payload)
    pair.reg_write(r.DMA_SRC, 0x10_0000, 8)
    pair.reg_write(r.DMA_DST, 0x20_0123, 8)
    pair.reg_write(r.DMA_LEN, len(payload))
    pair.reg_write(r.DMA_CMD, r.DMA_CMD_START)
    assert pair.reg_read(r.DMA_STATUS) == r.DMA_STATUS_DONE
    assert pair.machine.memory.read(0x20_0123, len(payload)) == payload


def test_dma_outside_client_windows_is_a_device_error(pair: Pair) -> None:
    pair.reg_write(r.DMA_SRC, 0x7000_0000, 8)  # not client RAM
    pair.reg_write(r.DMA_DST, 0x1000, 8)
    pair.reg_write(r.DMA_LEN, 16)
    pair.reg_write(r.DMA_CMD, r.DMA_CMD_START)
    assert pair.reg_read(r.DMA_STATUS) == r.DMA_STATUS_ERROR


def test_bus_master_disable_is_forwarded(pair: Pair) -> None:
    command = pair.cfg_read(pcidefs.PCI_COMMAND, 2)
    pair.cfg_write(pcidefs.PCI_COMMAND, 2, command & ~pcidefs.PCI_COMMAND_MASTER)
    assert not pair.served.dma_allowed
    pair.reg_write(r.DMA_SRC, 0x1000, 8)
    pair.reg_write(r.DMA_DST, 0x2000, 8)
    pair.reg_write(r.DMA_LEN, 8)
    pair.reg_write(r.DMA_CMD, r.DMA_CMD_START)
    assert pair.reg_read(r.DMA_STATUS) == r.DMA_STATUS_ERROR


def _gsi(pair: Pair) -> int:
    return pair.info.interrupt_line


def test_intx_asserts_through_eventfd_and_clears_on_ack(pair: Pair) -> None:
    irq = pair.machine.irq
    assert pair.device.irq_mode == "intx"
    pair.reg_write(r.IRQ_RAISE, r.IRQ_DMA_DONE)
    assert pair.device.service_interrupts() == 1
    assert irq.levels[_gsi(pair)] is True
    # The handler reads the status (EOI + unmask: the device still asserts, so it refires).
    assert pair.reg_read(r.IRQ_STATUS) == r.IRQ_DMA_DONE
    assert pair.device.service_interrupts() == 1
    assert irq.levels[_gsi(pair)] is True
    pair.reg_write(r.IRQ_ACK, r.IRQ_DMA_DONE)
    assert pair.device.service_interrupts() == 0
    assert irq.levels[_gsi(pair)] is False


def test_intx_disable_bit_blocks_the_line(pair: Pair) -> None:
    command = pair.cfg_read(pcidefs.PCI_COMMAND, 2)
    pair.cfg_write(pcidefs.PCI_COMMAND, 2, command | pcidefs.PCI_COMMAND_INTX_DISABLE)
    pair.reg_write(r.IRQ_RAISE, 1)
    pair.device.service_interrupts()
    assert not pair.machine.irq.levels.get(_gsi(pair), False)
    # PCI 3.0 §6.2.3: Status.INTERRUPT still reports the device's pending interrupt.
    assert pair.cfg_read(pcidefs.PCI_STATUS, 2) & pcidefs.PCI_STATUS_INTERRUPT


def _enable_msix(pair: Pair, address: int, data: int, masked: bool = False) -> None:
    table = pair.bars[2]
    m = pair.machine.mmio
    m.write(table + 0, 4, address & 0xFFFF_FFFF)
    m.write(table + 4, 4, address >> 32)
    m.write(table + 8, 4, data)
    m.write(table + 12, 4, 1 if masked else 0)
    cap = pair.device.msix.offset  # type: ignore[union-attr]
    pair.cfg_write(cap + pcidefs.PCI_MSIX_FLAGS, 2, pcidefs.PCI_MSIX_FLAGS_ENABLE)


def test_msix_vector_delivers_the_guest_message(pair: Pair) -> None:
    _enable_msix(pair, 0xFEE0_2000, 0x4033)
    assert pair.device.irq_mode == "msix"
    assert pair.served.msix_enabled  # the server programmed its side from SET_IRQS
    pair.reg_write(r.IRQ_RAISE, r.IRQ_DMA_DONE)
    assert pair.device.service_interrupts() == 1
    assert pair.machine.irq.msi[-1] == (0xFEE0_2000, 0x4033)
    assert not pair.machine.irq.levels.get(_gsi(pair), False)


def test_msix_masked_vector_is_pending_until_unmasked(pair: Pair) -> None:
    _enable_msix(pair, 0xFEE0_3000, 0x51, masked=True)
    pair.reg_write(r.IRQ_RAISE, 1)
    assert pair.device.service_interrupts() == 1
    assert pair.machine.irq.msi == []
    pba = pair.device.msix.pba_offset  # type: ignore[union-attr]
    assert pair.machine.mmio.read(pair.bars[2] + pba, 8) & 1
    pair.machine.mmio.write(pair.bars[2] + 12, 4, 0)  # unmask vector 0
    assert pair.machine.irq.msi == [(0xFEE0_3000, 0x51)]


def test_msix_disable_returns_to_intx(pair: Pair) -> None:
    _enable_msix(pair, 0xFEE0_0000, 1)
    cap = pair.device.msix.offset  # type: ignore[union-attr]
    pair.cfg_write(cap + pcidefs.PCI_MSIX_FLAGS, 2, 0)
    assert pair.device.irq_mode == "intx"
    assert not pair.served.msix_enabled
    pair.reg_write(r.IRQ_RAISE, 1)
    assert pair.device.service_interrupts() == 1
    assert pair.machine.irq.levels[_gsi(pair)] is True


def test_msi_single_vector(pair: Pair) -> None:
    cap = pair.device.msi.offset  # type: ignore[union-attr]
    pair.cfg_write(cap + pcidefs.PCI_MSI_ADDRESS_LO, 4, 0xFEE0_4000)
    pair.cfg_write(cap + 8, 4, 0)
    pair.cfg_write(cap + 12, 2, 0x61)
    pair.cfg_write(cap + pcidefs.PCI_MSI_FLAGS, 2, pcidefs.PCI_MSI_FLAGS_ENABLE)
    assert pair.device.irq_mode == "msi"
    assert pair.served.msi_enabled
    pair.reg_write(r.IRQ_RAISE, 1)
    assert pair.device.service_interrupts() == 1
    assert pair.machine.irq.msi[-1] == (0xFEE0_4000, 0x61)


def test_device_reset_goes_to_the_server(pair: Pair) -> None:
    pair.reg_write(r.SCRATCH, 0x77)
    _enable_msix(pair, 0xFEE0_0000, 1)
    pair.device.reset()
    assert pair.served.registers["SCRATCH"] == 0
    assert pair.device.irq_mode == "intx"
    assert not pair.device.msix.enabled  # type: ignore[union-attr]
    assert pair.cfg_read(pcidefs.PCI_COMMAND, 2) == 0


def test_client_disconnect_unmaps_windows_and_keeps_device_state(pair: Pair) -> None:
    pair.reg_write(r.SCRATCH, 0xCAFE)
    assert pair.served.memory.regions  # the memfd window is mapped on the server
    pair.device.close()
    assert pair.thread.join()
    assert pair.served.memory.regions == ()
    assert pair.server.irqs.intx.fd is None
    assert pair.served.registers["SCRATCH"] == 0xCAFE
    # A new client reaches the same device state.
    again = ServerThread(pair.server)
    client = VfioUserClient(again.start(), timeout=20)
    assert client.region_read(0, r.SCRATCH, 4) == (0xCAFE).to_bytes(4, "little")
    client.close()
    assert again.join()


def test_dma_by_message_when_client_memory_has_no_fd() -> None:
    p = _make_pair("anonymous")
    try:
        assert p.client.windows[0].region.fd is None
        assert p.served.memory.regions == ()  # nothing mapped: DMA goes by DMA_READ/DMA_WRITE
        p.machine.memory.write(0x3000, b"by message")
        p.reg_write(r.DMA_SRC, 0x3000, 8)
        p.reg_write(r.DMA_DST, 0x5FFC, 8)  # crosses a page: still one window
        p.reg_write(r.DMA_LEN, 10)
        p.reg_write(r.DMA_CMD, r.DMA_CMD_START)
        assert p.reg_read(r.DMA_STATUS) == r.DMA_STATUS_DONE
        assert p.machine.memory.read(0x5FFC, 10) == b"by message"
    finally:
        p.device.close()
        assert p.thread.join()
        p.machine.close()
