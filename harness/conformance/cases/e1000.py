"""Conformance: the Linux e1000 driver against devmodels' 82540EM behind ``x-pci-proxy-dev``.

The NIC's backend is one end of a seqpacket socketpair; the other end, in this process,
is the host-side ``Responder`` (ARP, ICMP echo, UDP sink). The guest binds e1000, brings
eth0 up, waits for carrier, resolves the responder and pings it with payloads large
enough to move a few MB through both rings, checksums verified at both ends.

The row runs on both PCI attachments (``_served``): behind QEMU 7.2's proxy with polled
INTx, and over vfio-user on QEMU 11.1 with real INTx (the 82540EM has no MSI).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from ._served import ATTACHMENTS, POLLED_INTX_APPEND, PROXY, ServedCase

if TYPE_CHECKING:
    from devmodels.backends.net.responder import Responder
    from ...qemu.launcher import BootResult

__all__ = ["cases", "GUEST_SCRIPT", "REQUIRED_CHECKS", "POLLED_INTX_APPEND", "GUEST_IP", "HOST_IP"]

GUEST_IP = "10.0.2.15"
HOST_IP = "10.0.2.2"
PING_COUNT = 1500
PING_SIZE = 1400

GUEST_SCRIPT = rf"""
check_pci_driver e1000.bound 8086:100e e1000
if ! wait_for /sys/class/net/eth0 5; then report e1000.eth0 FAIL "no eth0"; exit 0; fi
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
n=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
check e1000.carrier test "$(cat /sys/class/net/eth0/carrier)" = 1
check e1000.arp arping -c 2 -w 5 -I eth0 {HOST_IP}
check e1000.ping ping -c 5 -W 5 {HOST_IP}
out=$(ping -q -A -c {PING_COUNT} -s {PING_SIZE} -W 10 {HOST_IP} 2>&1)
case "$out" in
    *"{PING_COUNT} packets received"*) report e1000.bulk_echo PASS "$(echo "$out" | tail -n 1)" ;;
    *) report e1000.bulk_echo FAIL "$(echo "$out" | tail -n 2 | tr '\n' ' ')" ;;
esac
rx=$(cat /sys/class/net/eth0/statistics/rx_bytes)
check e1000.rx_bytes test "$rx" -gt {PING_COUNT * PING_SIZE}
"""


REQUIRED_CHECKS = frozenset({
    "e1000.bound", "e1000.carrier", "e1000.arp", "e1000.ping", "e1000.bulk_echo", "e1000.rx_bytes", "host.responder",
})


class E1000Case(ServedCase):
    """The e1000 row: device server with a socketpair backend, responder in this process."""

    def __init__(self, attachment: str = PROXY) -> None:
        super().__init__("e1000", "e1000 82540EM 8086:100e", "e1000", GUEST_SCRIPT, attachment=attachment,
                         required_checks=REQUIRED_CHECKS, irq=("eth0", "IO-APIC"))
        self.responder: Responder | None = None

    def server_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """A socketpair: the device's end goes to the server, ours feeds the responder."""
        from devmodels.backends.net import SocketBackend
        from devmodels.backends.net.responder import Responder

        host_end, device_end = SocketBackend.pair("seqpacket")
        stack.callback(host_end.close)
        stack.callback(device_end.close)
        responder = Responder(host_end, HOST_IP)
        stack.enter_context(responder)
        self.responder = responder
        fd = device_end.fileno()
        assert fd is not None
        return ["--backend", f"socket-fd:{fd}"], [fd]

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The responder saw the guest's echo requests with valid checksums."""
        checks = super().host_checks(result)
        if self.responder is None:
            return checks | {"host.responder": (False, "responder never started")}
        stats = self.responder.stats()
        ok = stats.icmp_replies >= PING_COUNT and stats.arp_replies >= 1
        detail = f"{stats.arp_replies} ARP, {stats.icmp_replies} echo replies; ignored {stats.ignored}"
        return checks | {"host.responder": (ok, detail)}


def cases() -> list[ServedCase]:
    """The e1000 rows, one per attachment."""
    return [E1000Case(attachment) for attachment in ATTACHMENTS]
