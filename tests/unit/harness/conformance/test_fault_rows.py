"""The fault rows without booting: their plans fit their devices, the guest channel, the
matrix (``harness.conformance.faults``, ``cases/_faults``)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from devmodels import GuestMemory, MemoryRegion
from devmodels.faults import FaultControlServer, FaultEngine, FaultPlan, LinkDown
from harness.conformance import faults as fault_mode
from harness.conformance._case import Row
from harness.conformance.cases._faults import FaultCase, GuestFaultChannel, dmesg_section, observations
from harness.conformance.cases.faults_disk import BAD_LBA, block_error_sectors, res_lbas
from harness.serve.faults import FaultSession
from harness.serve.registry import build

CASES, BROKEN = fault_mode.fault_cases()


def test_the_fault_rows_are_registered() -> None:
    assert not BROKEN
    assert {c.name for c in CASES} >= {"fault-ahci-media-error-vfio-user", "fault-ahci-timeout-vfio-user",
                                        "fault-virtio-blk-media-error-vfio-user", "fault-e1000-tx-hang-vfio-user",
                                        "fault-e1000-link-flap-vfio-user", "fault-virtio-net-link-flap-vfio-user",
                                        "fault-e1000-no-response-vfio-user"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_plan_applies_to_its_device(case: FaultCase) -> None:
    """The server would refuse a plan its device cannot apply; check it here, fast."""
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 16 << 20)])
    if case.server_device in ("ahci", "virtio-blk"):
        backends = ["mem:64M"]
    else:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        backends = [f"socket-fd:{a.detach()}"]
    built = build(case.server_device, memory, backends)
    try:
        session = FaultSession.for_device(built, seed=case.plan.seed)
        assert built.function is not None
        session.attach_pci(built.function)
        assert session.load(case.plan) == [f.id for f in case.plan.faults]
        assert case.fault_id in {f.id for f in case.plan.faults}
        assert FaultPlan.loads(case.plan.dumps()) == case.plan
        session.close()
    finally:
        built.close()
    assert case.expected and case.observed_checks and case.fault


def test_the_guest_channel_arms_through_the_control_socket(tmp_path: Path) -> None:
    engine = FaultEngine()
    engine.add_scope("net", "nic0")
    engine.add_actuator("net.link-down", type("A", (), {"start": lambda s, a: None, "stop": lambda s, a: None})())
    engine.add(LinkDown(id="flap", armed=False))
    control = FaultControlServer(engine, tmp_path / "faults.sock")
    stop = threading.Event()

    def serve() -> None:  # the server's loop, reduced to the control socket
        import selectors

        with selectors.DefaultSelector() as sel:
            while not stop.is_set():
                fds = control.descriptors()
                for fd, callback in fds.items():
                    sel.register(fd, selectors.EVENT_READ, callback)
                for key, _ in sel.select(0.05):
                    key.data()
                for fd in fds:
                    sel.unregister(fd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    channel = GuestFaultChannel(tmp_path / "guest.sock", tmp_path / "faults.sock")
    try:
        guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        guest.connect(str(tmp_path / "guest.sock"))  # what QEMU's chardev does
        reader = guest.makefile("rb")
        guest.sendall(b"arm flap\r\nlist\nremove nothing\nexplode\n")
        answers = [reader.readline().decode().strip() for _ in range(4)]
        assert answers[:2] == ["ok", "ok"]
        assert answers[2].startswith("err") and "no fault named" in answers[2]
        assert answers[3].startswith("err unknown request")
        active = engine.get("flap")
        assert active is not None and active.on
        assert channel.listing is not None and channel.listing[0]["id"] == "flap"
        guest.close()
    finally:
        channel.close()
        stop.set()
        thread.join(5)
        control.close()


LOG = """\
[    8.565685] ata1.00: cmd 60/08:70:00:00:01/00:00:00:00:00/40 tag 14 ncq dma 4096 in
[    8.565685]          res 41/40:00:03:00:01/00:00:00:00:00/00 Emask 0x409 (media error) <F>
[    8.589181] I/O error, dev sda, sector 65539 op 0x0:(READ) flags 0x80700 phys_seg 1 prio class 2
FAULT-OBSERVE net.self_reset no no 'Reset adapter' 12 s after the hang was detected
FAULT-OBSERVE net.tx_timeout yes the TX queue timed out 1 time(s)
FAULT-DMESG-BEGIN
[    9.081578] critical medium error, dev sdb, sector 7 op 0x0:(READ) flags 0x800 phys_seg 1 prio class 2
FAULT-DMESG-END
"""


def test_log_parsing() -> None:
    lines = dmesg_section(LOG)
    assert res_lbas(lines) == [(0x41, 0x40, BAD_LBA)]
    assert block_error_sectors(lines, "sda") == [BAD_LBA] and block_error_sectors(lines, "sdb") == [7]
    assert observations(LOG) == {"net.self_reset": (False, "no 'Reset adapter' 12 s after the hang was detected"),
                                 "net.tx_timeout": (True, "the TX queue timed out 1 time(s)")}


def test_the_matrix_says_expected_observed_and_the_verdict() -> None:
    case = next(c for c in CASES if c.name == "fault-e1000-tx-hang-vfio-user")
    row = Row(case.driver, case.device, case.path, True, {"net.hang_detected": True, "net.ping_after": True,
                                                          "host.reset_ended_hang": True},
              {"net.hang_detected": "Detected Tx Unit Hang"}, seconds=12.5)
    case.observations = observations(LOG)
    text = " ".join(fault_mode.format_fault_matrix([(case, row)]).split())
    assert "e1000 x net.tx-hang" in text and "PASS, driver DEVIATES: self_reset" in text
    assert "expected: the watchdog's hang check" in text
    assert "observed: hang_detected: Detected Tx Unit Hang; tx_timeout: the TX queue timed out" in text
    assert "NOT self_reset" in text
    failed = Row(case.driver, case.device, case.path, False, {"net.hang_detected": False}, {}, error="boom")
    text = fault_mode.format_fault_matrix([(case, failed)])
    assert "FAIL" in text and "boom" in text
