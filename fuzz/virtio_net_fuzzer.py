#!/usr/bin/env python3
"""Fuzz target: virtio-net behind the modern virtio PCI transport, on an in-memory wire.

The device has two queue pairs and a control queue, offers mergeable receive buffers,
packed rings and (the loopback backend carrying virtio-net headers) every checksum and
segmentation offload, so transmit headers, receive scattering, filtering and the control
commands are all reachable. Ops are ``fuzz._virtio``'s, plus:

- ``BACKEND event, arg``: ``event % 4 == 0``: the peer sends a frame of ``14 + (arg >> 20)``
  bytes of guest RAM from ``arg & 0xFFFFF`` (a zero virtio-net header is prepended) and the
  VMM polls; ``1``: the cable is plugged (``event & 4``) or pulled; ``2``: the peer drains
  what was transmitted; ``3``: the VMM polls only;
- ``PUMP``: pending notifications, then receive polling while the device wants frames.

Healthy after reset means: a driver negotiates VERSION_1, one frame it transmits reaches
the peer, and one frame the peer sends lands in its receive buffer.

OSS-Fuzz layout: ``TestOneInput`` plus the atheris main under ``__main__``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main, instrumented  # noqa: E402

with instrumented(__name__):
    import struct
    from typing import Any

    from devmodels import GuestMemory
    from devmodels.backends import LoopbackBackend, NetOffloads
    from devmodels.pci import defs as pcidefs
    from fuzz._execute import run_input
    from fuzz._ops import OpKind
    from fuzz._record import Recorder, record
    from fuzz._rig import Finding
    from fuzz._virtio import VirtioPciRig, ack_interrupts, bring_up
    from virtio.defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1
    from virtio.net import VirtioNetDevice
    from virtio.net import defs as n
    from virtio.testing import make_driver
    from virtio.transport.testing import PciDriver

MAC = bytes.fromhex("525400123456")
PEER = bytes.fromhex("020000000001")
_HDR = bytes(n.VIRTIO_NET_HDR_SIZE)
_OFFLOADS = NetOffloads(csum=True, tso4=True, tso6=True, ecn=True, ufo=True)
_FRAME = PEER + MAC + b"\x88\xb5" + b"to the peer" * 5
_REPLY = MAC + PEER + b"\x88\xb5" + b"to the guest" * 5


class NetRig(VirtioPciRig):
    """virtio-net on bus 0 whose wire ends in an in-memory peer (module docstring)."""

    def __init__(self) -> None:
        self.wire, self.peer = LoopbackBackend.pair(capacity=16, offloads=_OFFLOADS)
        self.peer.set_vnet_hdr(True)

        def make(memory: GuestMemory) -> VirtioNetDevice:
            return VirtioNetDevice(memory, self.wire, mac=MAC, queue_pairs=2, queue_size=64, rx_hold=16)

        super().__init__(make, (lambda ring: b"", b""))
        self.net: Any = self.device

    def _frame(self, arg: int) -> bytes:
        length = 14 + (arg >> 20)
        gpa = min(arg & 0xF_FFFF, self.machine.memory.size - length)
        return self.machine.memory.read(gpa, length)

    def backend_event(self, event: int, arg: int) -> None:
        """Wire events (module docstring)."""
        kind = event % 4
        if kind == 0:
            self.peer.send(_HDR + self._frame(arg))
            self.net.poll_rx()
        elif kind == 1:
            self.net.set_link(bool(event & 4))
        elif kind == 2:
            self.peer.receive(64)
        else:
            self.net.poll_rx()

    def pump(self) -> None:
        """The VMM loop: pending notifications, then receive while the device wants frames."""
        self.net.run_pending()
        if self.net.wants_rx:
            self.net.poll_rx()

    def health_check(self) -> None:
        """VERSION_1 only; one frame out to the peer and one in (module docstring)."""
        self.peer.receive(1 << 10)
        self.wire.receive(1 << 10)
        self.net.set_link(True)
        infos = [i for i in self.machine.enumerate() if i.devfn == self.devfn]
        self.config_write(pcidefs.PCI_COMMAND, 2, pcidefs.PCI_COMMAND_MEMORY | pcidefs.PCI_COMMAND_MASTER)
        self.regions = [(self.machine.mmio, b.address, b.size) for b in infos[0].bars if b.address is not None]
        driver = PciDriver(self.machine, self.devfn)
        if driver.try_negotiate(1 << VIRTIO_F_VERSION_1) is None:
            raise Finding("reset", "virtio-net refused VERSION_1 after reset")
        rings = []
        for index in range(2):
            ring = make_driver(self.machine.memory, 8, base=0x10000 + 0x10000 * index, data_size=0x8000)
            layout = ring.layout
            driver.setup_queue(index, 8, layout.desc_addr, layout.driver_addr, layout.device_addr)
            rings.append(ring)
        driver.driver_ok()
        rx, tx = rings
        rx.add((), [1526])
        rx.kick()
        driver.notify(0)
        tx.add([_HDR + _FRAME])
        tx.kick()
        driver.notify(1)
        sent = self.peer.receive(8)
        if [f[n.VIRTIO_NET_HDR_SIZE :] for f in sent] != [_FRAME]:
            raise Finding("reset", f"transmit after reset delivered {sent!r}")
        self.peer.send(_HDR + _REPLY)
        self.net.poll_rx()
        used = rx.reap()
        got = used[0].read(self.machine.memory)[n.VIRTIO_NET_HDR_SIZE :] if used else None
        if got != _REPLY:
            raise Finding("reset", f"receive after reset gave {got!r}")

    def close(self) -> None:
        """Release RAM and both cable ends."""
        super().close()
        self.wire.close()
        self.peer.close()


def build() -> NetRig:
    """A fresh rig (one per input: runs are deterministic)."""
    return NetRig()


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    run_input(build, data)


# -- seeds (recorded with fuzz._record) -----------------------------------------------------


def _up(rec: Recorder, features: int, queues: int = 2) -> tuple[Any, list[Any]]:
    driver, rings = bring_up(rec, features, queues=queues)
    rx = rings[0]
    for _ in range(3):
        rx.add((), [2048])
    rx.kick()
    driver.notify(0)
    return driver, rings


def _send(rec: Recorder, driver: Any, ring: Any, packet: bytes, queue: int = 1, **options: Any) -> None:
    ring.add([packet], (), **options)
    ring.kick()
    driver.notify(queue)
    ack_interrupts(driver)
    ring.reap()


def _peer_frame(rec: Recorder, frame: bytes, gpa: int = 0xC0000) -> None:
    rec.machine.memory.write(gpa, frame)
    rec.op(OpKind.BACKEND, 0, gpa | (len(frame) - 14) << 20)


def _tcp(payload: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + payload, 1, 0x4000, 64, 6, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 0x50, 0x18, 8192, 0, 0)
    return PEER + MAC + b"\x08\x00" + ip + tcp + bytes(payload)


def _seed_tx_rx(rec: Recorder) -> None:
    driver, (rx, tx) = _up(rec, 0)
    _send(rec, driver, tx, _HDR + _FRAME)
    _peer_frame(rec, _REPLY)
    rec.op(OpKind.BACKEND, 2, 0)
    ack_interrupts(driver)
    rx.reap()


def _seed_offloads(rec: Recorder) -> None:
    features = (1 << n.VIRTIO_NET_F_CSUM | 1 << n.VIRTIO_NET_F_HOST_TSO4 | 1 << n.VIRTIO_NET_F_GUEST_CSUM
                | 1 << n.VIRTIO_NET_F_MRG_RXBUF)
    driver, (rx, tx) = _up(rec, features)
    csum = struct.pack("<BBHHHHH", n.VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16, 0)
    _send(rec, driver, tx, csum + _tcp(40))
    tso = struct.pack("<BBHHHHH", n.VIRTIO_NET_HDR_F_NEEDS_CSUM, n.VIRTIO_NET_HDR_GSO_TCPV4, 54, 536, 34, 16, 0)
    _send(rec, driver, tx, tso + _tcp(1500), indirect=False)
    _peer_frame(rec, _REPLY + bytes(1500))


def _seed_ctrl(rec: Recorder) -> None:
    features = (1 << n.VIRTIO_NET_F_CTRL_VQ | 1 << n.VIRTIO_NET_F_CTRL_RX | 1 << n.VIRTIO_NET_F_CTRL_VLAN
                | 1 << n.VIRTIO_NET_F_CTRL_MAC_ADDR | 1 << n.VIRTIO_NET_F_MQ)
    driver, rings = _up(rec, features, queues=5)
    ctrl = rings[4]

    def command(klass: int, cmd: int, data: bytes) -> None:
        ctrl.add([bytes([klass, cmd]) + data], [1])
        ctrl.kick()
        driver.notify(4)
        ctrl.reap()

    command(n.VIRTIO_NET_CTRL_RX, n.VIRTIO_NET_CTRL_RX_PROMISC, b"\x01")
    command(n.VIRTIO_NET_CTRL_MAC, n.VIRTIO_NET_CTRL_MAC_TABLE_SET, struct.pack("<I", 1) + PEER + struct.pack("<I", 0))
    command(n.VIRTIO_NET_CTRL_VLAN, n.VIRTIO_NET_CTRL_VLAN_ADD, struct.pack("<H", 5))
    command(n.VIRTIO_NET_CTRL_MQ, n.VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 2))
    command(n.VIRTIO_NET_CTRL_MAC, n.VIRTIO_NET_CTRL_MAC_ADDR_SET, PEER)
    _peer_frame(rec, PEER + MAC + b"\x81\x00\x00\x05\x88\xb5" + bytes(60))


def _seed_packed_link(rec: Recorder) -> None:
    features = 1 << VIRTIO_F_RING_PACKED | 1 << VIRTIO_F_EVENT_IDX | 1 << VIRTIO_F_INDIRECT_DESC | 1 << n.VIRTIO_NET_F_STATUS
    driver, (rx, tx) = _up(rec, features)
    _send(rec, driver, tx, _HDR + _FRAME, indirect=True)
    rec.op(OpKind.BACKEND, 1, 0)  # cable pulled
    driver.read_config(6, 2)  # status
    _peer_frame(rec, _REPLY)
    rec.op(OpKind.BACKEND, 1 | 4, 0)  # plugged back
    _peer_frame(rec, _REPLY)
    rec.op(OpKind.PUMP)
    rec.op(OpKind.SNAPSHOT)


def _seed_rx_hold(rec: Recorder) -> None:
    driver, (rx, tx) = bring_up(rec, 1 << n.VIRTIO_NET_F_MRG_RXBUF, queues=2)
    for k in range(4):
        _peer_frame(rec, _REPLY + bytes([k]) * 200, 0xC0000 + 0x1000 * k)  # no buffers posted: held
    rx.add((), [64, 64, 64])
    rx.add((), [512])
    rx.kick()
    driver.notify(0)
    rec.op(OpKind.PUMP)
    rx.reap()


SEEDS = {
    "tx-rx": _seed_tx_rx,
    "offloads-tso": _seed_offloads,
    "ctrl-queue": _seed_ctrl,
    "packed-link": _seed_packed_link,
    "rx-hold-mergeable": _seed_rx_hold,
}


def seeds() -> dict[str, bytes]:
    """The committed seed corpus, regenerated (``python -m fuzz seeds virtio_net``)."""
    return {name: record(build, script) for name, script in SEEDS.items()}


if __name__ == "__main__":
    fuzz_main(TestOneInput)
