"""An in-process Intel e1000 (82540EM) on a loopback network backend.

The device model is given guest RAM and one end of a ``LoopbackBackend`` pair; the test
program holds the other end, as a VMM would hold a TAP. The guest is ``E1000Driver``, a
miniature of Linux's ``e1000`` driver: it probes the function through config space and the
I/O BAR (EEPROM, MAC, PHY), opens the rings and handles interrupts, all through the bus.

The VMM's part is small: plug the function, give the device time (``tick`` when
``next_deadline`` says), and pull received frames when the backend has some and the guest
left room (``receive_pending``; a serving loop does this through ``watched_fds``).

Run: ``python3 examples/e1000_loopback.py``
"""

from __future__ import annotations

from devmodels import Machine
from devmodels.backends import LoopbackBackend
from devmodels.e1000 import E1000
from devmodels.e1000.testing import E1000Driver

GUEST_MAC = bytes.fromhex("525400123456")
HOST_MAC = bytes.fromhex("5254000000ff")
ETHERTYPE = b"\x88\xb5"  # IEEE 802 local experimental


def frame(dst: bytes, src: bytes, payload: bytes) -> bytes:
    """An Ethernet frame (no FCS: the device adds and strips it)."""
    return dst + src + ETHERTYPE + payload


def main() -> None:
    """Probe, open, send a frame out, get one back."""
    host, wire = LoopbackBackend.pair()
    with Machine(ram_size=16 << 20) as machine:
        nic = E1000(machine.memory, wire, mac=GUEST_MAC)
        slot = machine.add_pci(nic)
        guest = E1000Driver(machine, nic)
        guest.probe()  # finds 8086:100e on bus 0, reads the EEPROM, resets, detects the PHY
        guest.open()  # rings, receive buffers, interrupt mask; the link comes up
        guest.poll()  # the link-status-change interrupt
        print(f"e1000 in slot {slot}: MAC {guest.mac.hex(':')}, link {'up' if guest.link else 'down'}, "
              f"BAR0 {guest.bar0:#x}, I/O {guest.io:#x}, GSI {guest.gsi}")

        # guest -> wire: a transmit descriptor, TDT, the device DMAs the frame out.
        out = frame(HOST_MAC, GUEST_MAC, b"hello from the guest".ljust(46, b"."))
        assert guest.xmit(out)
        guest.poll()  # TXDW interrupt: the driver reclaims the descriptor
        (sent,) = host.receive()
        assert sent == out
        print(f"host received {len(sent)} bytes: {sent[14:34]!r}")

        # wire -> guest: the VMM pulls frames from the backend into free receive descriptors.
        reply = frame(GUEST_MAC, HOST_MAC, b"hello from the host".ljust(46, b"."))
        host.send(reply)
        taken = nic.receive_pending()
        received = guest.poll()  # RXT0 interrupt (after the receive timers, which poll runs)
        assert [f.data for f in received] == [reply], received
        print(f"guest received {taken} frame of {len(received[0].data)} bytes: {received[0].data[14:33]!r}")
        print(f"interrupts the guest handled: {guest.interrupts}")
    host.close()
    wire.close()


if __name__ == "__main__":
    main()
