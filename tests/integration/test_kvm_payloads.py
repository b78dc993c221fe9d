"""Our devices inside KVM, in this process: freestanding payloads drive them as minimal drivers.

Each test builds a payload (kvm/payloads, gcc), plugs devices into a ``KvmMachine``, runs
it and checks both what the payload reports (console, exit status, its ``results`` area)
and what the host can see (the disk image, the frames on the wire). They need /dev/kvm and
gcc; without them they skip with the reason (and fail under DEVMODELS_REQUIRE_GUEST=1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmodels import Machine, UsageError
from devmodels.backends import LoopbackBackend, RawFileBackend
from devmodels.e1000 import E1000
from harness.serve.registry import add_to_machine
from kvm import ElfError, ElfImage, KvmError, KvmMachine, RunResult, Vm, unavailable
from kvm.payloads import PAYLOADS, build, compiler_missing
from kvm.testing import ElfSegment, make_elf
from tests.prerequisites import prerequisite
from virtio.blk import VirtioBlkDevice
from virtio.transport import VirtioMmioDevice

KVM_MISSING = unavailable() or compiler_missing()
pytestmark = prerequisite(KVM_MISSING)

DISK = 4 << 20
SECTORS = DISK // 512
VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_MMIO_GSI = 20


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if KVM_MISSING is not None:
        pytest.skip(KVM_MISSING)
    out = tmp_path_factory.mktemp("payloads")
    built = {name: build(name, out) for name in PAYLOADS}
    built["virtio_blk_pci"] = build("virtio_blk", out, defines=("TRANSPORT_PCI",))
    built["exits_ring0"] = build("exits", out, defines=("RING0",))
    return built


@pytest.fixture
def vmm() -> Iterator[KvmMachine]:
    with KvmMachine(ram_size=32 << 20) as machine:
        yield machine


def run(vmm: KvmMachine, payload: Path, timeout: float = 30.0, **config: bytes) -> RunResult:
    vmm.machine.enumerate()
    vmm.load(payload)
    for symbol, data in config.items():
        vmm.write_symbol(symbol, data)
    result = vmm.run(timeout)
    assert result.passed, result.describe()
    results = vmm.results()
    assert results.valid and results.failures == 0 and results.checks > 0, result.describe()
    return result


def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    with path.open("wb") as f:
        f.truncate(DISK)
    return path


# -- testdev -------------------------------------------------------------------------------------


@pytest.mark.parametrize("msi", ["signal", "irqfd"])
def test_testdev_registers_dma_intx_msi_msix(payloads: dict[str, Path], msi: str) -> None:
    with KvmMachine(ram_size=32 << 20, msi=msi) as vmm:  # type: ignore[arg-type]
        built = add_to_machine(vmm.machine, "testdev")
        vmm.serve(built.served, built.function)
        run(vmm, payloads["testdev"])
        values = vmm.results().values
        assert values[0] >= 16  # the INTx GSI firmware wrote
        assert values[1:5] == (4, 3, 4, 4096)  # INTx, MSI, MSI-X handled; DMA bytes checked
        if msi == "irqfd":
            assert vmm.interrupts.msi_irqfd == 7 and vmm.interrupts.msi_signalled == 0
        else:
            assert vmm.interrupts.msi_signalled == 7 and vmm.interrupts.msi_irqfd == 0
        assert vmm.interrupts.msi_blocked == 0


# -- e1000 ---------------------------------------------------------------------------------------


def _echo(peer: LoopbackBackend, seen: list[bytes]) -> None:
    """The far end of the cable: every frame back, addresses swapped, EtherType 0x88B6."""
    for frame in peer.receive():
        seen.append(frame)
        echo = bytearray(frame)
        echo[0:6], echo[6:12] = frame[6:12], frame[0:6]
        echo[12:14] = b"\x88\xb6"
        peer.send(bytes(echo))


@pytest.mark.parametrize("itr", [0, 4000], ids=["immediate", "throttled"])
def test_e1000_transmits_and_receives_through_a_loopback_backend(payloads: dict[str, Path], vmm: KvmMachine,
                                                                  itr: int) -> None:
    wire, peer = LoopbackBackend.pair()
    mac = bytes.fromhex("525400abcdef")
    nic = E1000(vmm.machine.memory, wire, mac=mac)  # the registry's e1000 takes sockets and TAPs, not a loopback pair
    vmm.add_pci(nic)
    seen: list[bytes] = []
    vmm.loop.add_reader(peer.fileno(), lambda: _echo(peer, seen))  # type: ignore[arg-type]
    result = run(vmm, payloads["e1000"], e1000_config=struct.pack("<2Q", itr, 0))
    values = vmm.results().values
    assert values[0] == values[1] == 6 and values[4] == values[5] == 6
    assert len(seen) == 6
    assert all(len(f) == 128 and f[:6] == b"\xff" * 6 and f[6:12] == mac and f[12:14] == b"\x88\xb5" for f in seen)
    assert result.kicks > 0  # the echo arrives while the vCPU halts: the loop had to be run for it
    wire.close()
    peer.close()


# -- virtio-blk ------------------------------------------------------------------------------------


def _check_disk(path: Path) -> None:
    data = path.read_bytes()
    for r in range(4):  # the payload's four 8-sector writes at sector 16 + 8r
        start = (16 + 8 * r) * 512
        expected = bytes((r * 17 + i * 3 + (i >> 9)) & 0xFF for i in range(8 * 512))
        assert data[start : start + 8 * 512] == expected, f"write {r} is not on the disk"


@pytest.mark.parametrize("ioeventfd", [False, True], ids=["exits", "ioeventfd"])
def test_virtio_blk_over_virtio_mmio(payloads: dict[str, Path], vmm: KvmMachine, tmp_path: Path,
                                     ioeventfd: bool) -> None:
    image = disk(tmp_path)
    backend = RawFileBackend(str(image))  # writes complete on its worker threads: the waker path
    device = VirtioBlkDevice(vmm.machine.memory, backend, serial="devmodels")
    transport = VirtioMmioDevice(device, vmm.machine.irq.line(VIRTIO_MMIO_GSI).source())
    vmm.add_mmio(VIRTIO_MMIO_BASE, transport.size, transport, served=device, name="virtio-mmio")
    if ioeventfd:
        assert vmm.add_ioeventfd(VIRTIO_MMIO_BASE + 0x50, 4, 0)  # QueueNotify, queue 0 (§4.2.2)
    config = struct.pack("<4Q", VIRTIO_MMIO_BASE, VIRTIO_MMIO_GSI, SECTORS, 0)
    run(vmm, payloads["virtio_blk"], virtio_config=config)
    values = vmm.results().values
    assert values[0] == SECTORS and values[1] == 12
    assert values[4] == 1  # VIRTIO_F_VERSION_1
    backend.close()
    _check_disk(image)


def test_virtio_blk_over_virtio_pci_with_msix(payloads: dict[str, Path], vmm: KvmMachine, tmp_path: Path) -> None:
    image = disk(tmp_path)
    built = add_to_machine(vmm.machine, "virtio-blk", [f"file:{image}"])
    vmm.serve(built.served, built.function)
    run(vmm, payloads["virtio_blk_pci"], virtio_config=struct.pack("<4Q", 0, 0, SECTORS, 0))
    values = vmm.results().values
    assert values[0] == SECTORS and values[1] == 12 and values[2] >= 6
    assert vmm.interrupts.msi_irqfd >= 6  # MSI-X through irqfd routes, the default
    built.close()
    _check_disk(image)


# -- AHCI ------------------------------------------------------------------------------------------


def test_ahci_identify_write_read_and_a_task_file_error(payloads: dict[str, Path], vmm: KvmMachine,
                                                        tmp_path: Path) -> None:
    image = disk(tmp_path)
    built = add_to_machine(vmm.machine, "ahci", [f"file:{image}"])
    vmm.serve(built.served, built.function)
    run(vmm, payloads["ahci"], ahci_config=struct.pack("<2Q", SECTORS, 0))
    values = vmm.results().values
    assert values[0] == SECTORS and values[1] == 4
    assert values[3] & 0x01 and values[3] >> 8 == 0x10  # PxTFD: ERR, IDNF (a sector past the end)
    assert values[4] & 1 << 30  # TFES seen
    built.close()
    expected = bytes((i * 13 + (i >> 9) * 7 + 1) & 0xFF for i in range(16 * 512))
    assert image.read_bytes()[100 * 512 : 116 * 512] == expected


# -- how runs end ------------------------------------------------------------------------------------


def _exits(vmm: KvmMachine, payloads: dict[str, Path], address: int, count: int, port: int, kind: int,
           timeout: float = 10.0, payload: str = "exits") -> RunResult:
    vmm.load(payloads[payload])
    vmm.write_symbol("exits_config", struct.pack("<4Q", address, count, port, kind))
    return vmm.run(timeout)


def test_a_timeout_names_where_the_payload_was(payloads: dict[str, Path], vmm: KvmMachine) -> None:
    result = _exits(vmm, payloads, 0, 1 << 62, 0, 3, timeout=0.5)
    assert result.reason == "timeout" and result.status is None
    assert result.where.startswith("main+"), result.where


def test_a_fault_in_the_payload_is_reported_with_its_vector(payloads: dict[str, Path], vmm: KvmMachine) -> None:
    result = _exits(vmm, payloads, 0x8000_0000_0000_0000, 1, 0, 0)  # a non-canonical address: #GP
    assert result.reason == "exit" and result.status == 0xE0 | 13, result.describe()
    assert "EXCEPTION vector 13" in result.console


def test_rule_6_a_port_access_past_the_end_of_port_space_is_unmapped(payloads: dict[str, Path],
                                                                     vmm: KvmMachine) -> None:
    from devmodels import trace

    with trace.RecordingSink("kvm.bad_access") as sink:
        # A dword out to 0xFFFE, from ring 0: in ring 3 the I/O permission bitmap (which ends
        # at 0xFFFF) already faults it, as on hardware (SDM Vol. 1 §19.5.2).
        result = _exits(vmm, payloads, 0, 3, 0xFFFE, 2, payload="exits_ring0")
    assert result.passed, result.describe()
    assert [fields["address"] for _, fields in sink.events] == [0xFFFE] * 3


def test_mmio_exits_reach_our_bus_device(payloads: dict[str, Path], vmm: KvmMachine) -> None:
    class Register:
        def __init__(self) -> None:
            self.reads = self.writes = 0

        def read(self, offset: int, size: int) -> int:
            self.reads += 1
            return 0x11 * size

        def write(self, offset: int, size: int, value: int) -> None:
            self.writes += 1

    register = Register()
    vmm.machine.mmio.register(0xD000_0000, 0x1000, register, "register")
    result = _exits(vmm, payloads, 0xD000_0000, 1000, 0, 0)
    assert result.passed and register.reads == 1000
    assert vmm.results().values[:2] == (1000, 0x44 * 1000)
    result = _exits(vmm, payloads, 0xD000_0000, 500, 0, 1)
    assert result.passed and register.writes == 500


# -- errors ------------------------------------------------------------------------------------------


def test_loading_over_the_boot_structures_is_refused(vmm: KvmMachine) -> None:
    data = make_elf([ElfSegment(0x8000, b"\xf4" * 16)], 0x8000)
    with pytest.raises(ElfError, match="overlaps the boot page tables"):
        vmm.load(ElfImage.parse(data))


def test_device_windows_are_reserved(payloads: dict[str, Path], vmm: KvmMachine) -> None:
    built = add_to_machine(vmm.machine, "testdev")
    vmm.serve(built.served, built.function)
    vmm.machine.enumerate()
    names = {w.what for w in vmm.reserved_windows()}
    assert {"device window testdev.bar0", "device window testdev.bar2", "device window pci-ecam"} <= names


def test_a_refused_ioctl_names_itself_and_the_errno(vmm: KvmMachine) -> None:
    assert vmm.kvm is not None
    bare = Vm(vmm.kvm, irqchip=False)
    try:
        with pytest.raises(KvmError, match=r"KVM_IRQ_LINE failed: ENXIO"):
            bare.irq_line(5, True)
    finally:
        bare.close()


def test_a_missing_kvm_device_is_a_kvm_error(tmp_path: Path) -> None:
    with pytest.raises(KvmError, match=r"open .*kvm failed: ENOENT"):
        KvmMachine(kvm_path=str(tmp_path / "kvm"))


def test_bytearray_ram_cannot_back_a_vm() -> None:
    with Machine(ram_size=1 << 20, ram_backing="bytearray") as machine:
        with pytest.raises(UsageError, match="mmap-backed"):
            KvmMachine(machine)
        assert [m.name for m in machine.pio.mappings] == ["pci-config"]  # nothing left behind


def test_rule_5_request_stop_from_a_loop_timer_ends_a_spinning_guest(payloads: dict[str, Path],
                                                                     vmm: KvmMachine) -> None:
    vmm.load(payloads["exits"])
    vmm.write_symbol("exits_config", struct.pack("<4Q", 0, 1 << 62, 0, 3))  # spins in ring 3, never exits
    vmm.loop.call_later(0.05, vmm.request_stop)  # only the kicker's deadline gets the loop to run
    result = vmm.run(timeout=30)
    assert result.reason == "stopped" and result.kicks >= 1, result.describe()
    assert result.seconds < 10
    assert result.where.startswith("main+")


def test_rule_4_an_ioeventfd_kvm_refuses_leaves_the_write_on_the_exit_path(vmm: KvmMachine) -> None:
    assert vmm.add_ioeventfd(VIRTIO_MMIO_BASE + 0x50, 4, 0)
    assert not vmm.add_ioeventfd(VIRTIO_MMIO_BASE + 0x50, 4, 0)  # the same one again: EEXIST
