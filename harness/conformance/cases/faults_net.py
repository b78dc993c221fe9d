"""Fault rows for NICs: e1000 and virtio_net against a hung transmitter, link flaps and a
device that stops answering, on devmodels' devices over vfio-user (``_faults``).

- ``e1000`` x ``net.tx-hang``: the transmitter stops writing descriptors back. The
  driver's watchdog must see it ("Detected Tx Unit Hang"), the stack's TX watchdog must time
  the queue out, the driver must reset the NIC (CTRL.RST, which restarts the transmitter:
  ``host.fault`` shows the fault ended by the reset) and traffic must flow again.
- ``e1000`` and ``virtio_net`` x ``net.link-down`` (a 3 s flap in the middle of a TCP
  transfer, over a TAP in a network namespace): the carrier must go down and come back
  (carrier_down_count and carrier_up_count each grow), and the TCP connection must survive:
  the peer receives every byte, the same SHA-256.
- ``e1000`` x ``pci.no-response`` (8 s): reads return all ones, writes vanish, no
  interrupts. The kernel must not panic, the driver must notice (TX timeout, its reset
  attempts), and once the device answers again traffic must flow after the driver's next reset.

Each guest starts its fault with ``fault arm ID`` once the driver is up and traffic flows.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devmodels import HostError
from devmodels.faults import FaultPlan, LinkDown, NoResponse, TxHang

from .._case import Attachment
from ._faults import FaultCase
from .e1000_tap import NetNamespace, TcpSink

if TYPE_CHECKING:
    from ...qemu.launcher import BootResult

__all__ = ["cases", "E1000TxHangCase", "LinkFlapCase", "E1000NoResponseCase", "FLAP_MS", "SILENT_MS"]

GUEST_IP, HOST_IP = "10.0.2.15", "10.0.2.2"
TAP_GUEST_IP, TAP_HOST_IP = "10.0.4.2", "10.0.4.1"
SINK_PORT = 5001
FLAP_MS = 3000
SILENT_MS = 10000
TCP_BLOCKS = 32  # 64 KiB each: 2 MiB through the flap
_PCI_IDS = {"e1000": ("8086:100e", "e1000"), "virtio_net": ("1af4:1041", "virtio_net")}


def bring_up(driver: str, ip: str, peer: str) -> str:
    """Guest lines: the driver binds, eth0 gets ``ip`` and carrier, ``peer`` answers a ping."""
    pci_id, _ = _PCI_IDS[driver]
    bound = "virtio-pci" if driver == "virtio_net" else driver
    return rf"""
check_pci_driver net.bound {pci_id} {bound} || exit 0
if ! wait_for /sys/class/net/eth0 10; then report net.eth0 FAIL "no eth0"; exit 0; fi
ip link set eth0 up
ip addr add {ip}/24 dev eth0
carrier_wait() {{  # VALUE SECONDS
    _n=0
    while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != "$1" ] && [ $_n -lt $(($2 * 10)) ]; do
        sleep 0.1; _n=$((_n + 1))
    done
    [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = "$1" ]
}}
carrier_wait 1 10
check net.ping_before ping -c 3 -W 5 {peer} || exit 0
fault list || {{ report net.fault_channel FAIL "no answer on ttyS1"; exit 0; }}
"""


# -- e1000 x net.tx-hang ----------------------------------------------------------------------

TX_HANG_SCRIPT = bring_up("e1000", GUEST_IP, HOST_IP) + rf"""
wait_log() {{  # PATTERN SECONDS: wait until the kernel log has PATTERN
    _n=0
    while ! dmesg | grep -q "$1" && [ $_n -lt $2 ]; do sleep 1; _n=$((_n + 1)); done
    dmesg | grep -q "$1"
}}
fault arm tx-hang || {{ report net.armed FAIL "the host did not arm tx-hang"; exit 0; }}
ping -c 200 -i 0.5 -W 1 {HOST_IP} > /tmp/ping.during 2>&1 &
pinger=$!
if wait_log "Detected Tx Unit Hang" 30; then
    report net.hang_detected PASS "$(dmesg | grep -m 1 'Detected Tx Unit Hang' | sed 's/^\[[ 0-9.]*\] //' | cut -c 1-100)"
else
    report net.hang_detected FAIL "no 'Detected Tx Unit Hang' 30 s after the transmitter stopped"
fi
if wait_log "Reset adapter" 12; then
    observe net.self_reset yes "$(dmesg | grep -m 1 'Reset adapter' | sed 's/^\[[ 0-9.]*\] //' | cut -c 1-100)"
else
    observe net.self_reset no "no 'Reset adapter' 12 s after the hang was detected ($(dmesg | grep -c 'Detected Tx Unit Hang') hang reports)"
fi
timeouts=$(cat /sys/class/net/eth0/queues/tx-0/tx_timeout)
if [ "$timeouts" -gt 0 ]; then observe net.tx_timeout yes "the TX queue timed out $timeouts time(s)"
else observe net.tx_timeout no "the TX watchdog never timed the stopped queue out (tx_timeout 0)"; fi
kill $pinger 2>/dev/null
wait $pinger 2>/dev/null
if ! dmesg | grep -q "Reset adapter"; then
    # What an administrator does when the driver does not: down and up, which resets the NIC.
    ip link set eth0 down
    ip link set eth0 up
    echo "e1000 reset by ip link down/up"
fi
carrier_wait 1 15
n=0
until ping -c 1 -W 2 {HOST_IP} >/dev/null 2>&1 || [ $n -ge 10 ]; do n=$((n + 1)); done
check net.ping_after ping -c 5 -W 5 {HOST_IP}
dmesg_dump 'e1000|eth0|NETDEV'
"""


class E1000TxHangCase(FaultCase):
    """e1000 x net.tx-hang (module docstring).

    The stack's TX watchdog and the driver's own reset are observations, not checks
    (``_faults`` rule 5): on Debian's 6.1.192 e1000 reports the hang every 2 s and stops
    the queue again each time, and the TX watchdog never fires (tx_timeout stays 0), so
    the driver never resets the NIC by itself. The row then does what an administrator
    would (``ip link set eth0 down/up``, which resets the NIC) and checks that the reset
    restarts the transmitter and traffic flows.
    """

    def __init__(self) -> None:
        plan = FaultPlan(1, (TxHang(id="tx-hang", armed=False),))
        super().__init__(
            "e1000", "e1000 82540EM 8086:100e", "e1000", TX_HANG_SCRIPT, name="fault-e1000-tx-hang",
            fault="net.tx-hang (no descriptor written back until CTRL.RST)", fault_id="tx-hang", plan=plan,
            expected=("the watchdog's hang check reports 'Detected Tx Unit Hang', the stack's TX watchdog times the "
                      "stopped queue out, the driver resets the adapter (CTRL.RST restarts the transmitter) and "
                      "traffic flows again"),
            required_checks={"net.bound", "net.ping_before", "net.hang_detected", "net.ping_after",
                             "host.reset_ended_hang"},
            observed_checks=("net.hang_detected", "net.tx_timeout", "net.self_reset", "host.reset_ended_hang",
                             "net.ping_after"),
            irq=("eth0", "IO-APIC"),
        )
        self.responder: Any = None

    def backend_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """A socketpair whose far end is a ``Responder`` (ARP, ICMP)."""
        from devmodels.backends.net import Responder, SocketBackend

        host_end, device_end = SocketBackend.pair("seqpacket")
        stack.callback(host_end.close)
        stack.callback(device_end.close)
        self.responder = Responder(host_end, HOST_IP)
        stack.enter_context(self.responder)
        fd = device_end.fileno()
        assert fd is not None
        return ["--backend", f"socket-fd:{fd}"], [fd]

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The hang was ended by the driver's reset, not by anything else."""
        checks = super().host_checks(result)
        fault = {str(f["id"]): f for f in self.fault_listing()}.get("tx-hang")
        ended = fault is not None and bool(fault["ended"])
        checks["host.reset_ended_hang"] = (ended, "the reset restarted the transmitter" if ended else f"{fault}")
        return checks


# -- link flaps over TCP (e1000, virtio_net) ------------------------------------------------------


def flap_script(driver: str) -> str:
    """The guest of a link-flap row: TCP through a flap, carrier counters around it."""
    return bring_up(driver, TAP_GUEST_IP, TAP_HOST_IP) + rf"""
retrans() {{ awk '/^Tcp: [0-9]/ {{ print $13 }}' /proc/net/snmp; }}  # RetransSegs
down0=$(cat /sys/class/net/eth0/carrier_down_count)
up0=$(cat /sys/class/net/eth0/carrier_up_count)
r0=$(retrans)
dd if=/dev/urandom of=/tmp/data bs=64k count={TCP_BLOCKS} 2>/dev/null
sum=$(sha256sum /tmp/data | cut -d' ' -f1)
echo "FLAP-SENT $sum"
t0=$(cut -d. -f1 /proc/uptime)
{{ dd if=/tmp/data bs=64k count=4 2>/dev/null; fault arm flap >/tmp/fault.out 2>&1
   dd if=/tmp/data bs=64k skip=4 2>/dev/null; }} | nc {TAP_HOST_IP} {SINK_PORT}
rc=$?
took=$(( $(cut -d. -f1 /proc/uptime) - t0 ))
if [ -s /tmp/fault.out ]; then report net.armed FAIL "$(cat /tmp/fault.out)"; fi
if [ $rc -eq 0 ]; then report net.tcp_survived PASS "nc sent {TCP_BLOCKS * 64} KiB in ${{took}} s through the flap"
else report net.tcp_survived FAIL "nc exited with $rc after ${{took}} s"; fi
carrier_wait 1 15
down=$(( $(cat /sys/class/net/eth0/carrier_down_count) - down0 ))
up=$(( $(cat /sys/class/net/eth0/carrier_up_count) - up0 ))
if [ $down -ge 1 ] && [ $up -ge 1 ]; then report net.carrier_events PASS "carrier down $down time(s), up $up time(s)"
else report net.carrier_events FAIL "carrier down $down, up $up"; fi
r=$(( $(retrans) - r0 ))
if [ $r -gt 0 ]; then report net.retransmitted PASS "TCP retransmitted $r segment(s) across the outage"
else report net.retransmitted FAIL "no TCP retransmission: the outage did not hit the connection"; fi
check net.ping_after ping -c 3 -W 5 {TAP_HOST_IP}
dmesg_dump 'e1000|eth0|virtio_net|Link'
"""


class LinkFlapCase(FaultCase):
    """``driver`` x net.link-down over TCP (module docstring)."""

    def __init__(self, driver: str) -> None:
        plan = FaultPlan(1, (LinkDown(id="flap", armed=False, for_ms=FLAP_MS),))
        server_device = "e1000" if driver == "e1000" else "virtio-net"
        device = "e1000 82540EM 8086:100e (TAP)" if driver == "e1000" else "virtio-net on our virtio-pci (TAP)"
        how = ("STATUS.LU clear and an LSC interrupt" if driver == "e1000"
               else "VIRTIO_NET_S_LINK_UP clear and a configuration interrupt")
        super().__init__(
            driver, device, server_device, flap_script(driver), name=f"fault-{driver.replace('_', '-')}-link-flap",
            fault=f"net.link-down ({FLAP_MS // 1000} s flap during a TCP transfer)", fault_id="flap", plan=plan,
            expected=(f"the device reports the loss ({how}); the driver turns the carrier off and, when the link "
                      "returns, on again; TCP retransmits across the outage and the peer receives every byte"),
            required_checks={"net.bound", "net.ping_before", "net.tcp_survived", "net.carrier_events",
                             "net.retransmitted", "net.ping_after", "host.tcp_data"},
            observed_checks=("net.carrier_events", "net.retransmitted", "net.tcp_survived", "host.tcp_data",
                             "net.ping_after"),
            irq=("eth0", "IO-APIC") if driver == "e1000" else ("virtio[0-9]+-(input|output)", "PCI-MSI"),
        )
        self.namespace: NetNamespace | None = None
        self.sink: TcpSink | None = None
        self.tap = ""

    def backend_setup(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[list[str], list[int]]:
        """The server creates the TAP by name."""
        return ["--backend", f"tap:{self.tap}"], []

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """A namespace with the TAP's host side and a TCP sink (``e1000_tap`` rule 1)."""
        self.namespace = NetNamespace.unique("flap")
        stack.callback(self.namespace.close)
        self.tap = f"dmflap{os.getpid() % 100000}x{id(self) % 1000}"[:15]
        attachment = super().start(stack, workdir)

        def server_alive() -> bool:
            return self._server is not None and self._server.poll() is None

        try:
            self.namespace.adopt(self.tap, f"{TAP_HOST_IP}/24", alive=server_alive)
        except HostError as exc:
            log = self.server_log.read_text(errors="replace")[-500:] if self.server_log else ""
            raise HostError(f"{exc}; server log: {log}") from exc
        self.sink = TcpSink(self.namespace, TAP_HOST_IP, sink_port=SINK_PORT, lifetime=600)
        stack.enter_context(self.sink)
        return attachment

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The sink received exactly what the guest sent."""
        checks = super().host_checks(result)
        sent = re.search(r"FLAP-SENT ([0-9a-f]{64})", result.log)
        if self.sink is None or sent is None:
            return checks | {"host.tcp_data": (False, "no transfer")}
        received = self.sink.wait_received(1, 10.0)
        if not received:
            return checks | {"host.tcp_data": (False, "the sink saw no finished connection")}
        got = received[-1]
        ok = got["bytes"] == TCP_BLOCKS * 65536 and got["sha256"] == sent.group(1)
        return checks | {"host.tcp_data": (ok, f"the peer received {got['bytes']} bytes, sha256 "
                                               f"{'matches' if ok else 'differs'}")}


# -- e1000 x pci.no-response ----------------------------------------------------------------------

NO_RESPONSE_SCRIPT = bring_up("e1000", GUEST_IP, HOST_IP) + rf"""
before=$(dmesg | wc -l)
fault arm dead || {{ report net.armed FAIL "the host did not arm dead"; exit 0; }}
t0=$(cut -d. -f1 /proc/uptime)
ping -c {SILENT_MS // 1000 + 4} -i 1 -W 1 {HOST_IP} > /tmp/ping.during 2>&1
during=$(grep -o '[0-9]* packets received' /tmp/ping.during)
said=$(dmesg | tail -n +$((before + 1)) | grep -E "e1000|eth0|NETDEV" | head -n 3 | sed 's/^\[[ 0-9.]*\] //' | cut -c 1-110 | tr '\n' '|')
if [ -n "$said" ]; then observe net.noticed yes "$said"
else observe net.noticed no "the driver logged nothing while the device did not answer"; fi
n=0
until ping -c 1 -W 2 {HOST_IP} >/dev/null 2>&1 || [ $n -ge 6 ]; do n=$((n + 1)); done
took=$(( $(cut -d. -f1 /proc/uptime) - t0 ))
if ping -c 2 -W 5 {HOST_IP} >/dev/null 2>&1; then
    observe net.self_recovered yes "traffic again ${{took}} s after the device stopped answering ({SILENT_MS // 1000} s silent)"
else
    observe net.self_recovered no "no traffic ${{took}} s after the device stopped answering ({SILENT_MS // 1000} s silent), carrier $(cat /sys/class/net/eth0/carrier)"
    ip link set eth0 down
    ip link set eth0 up
    carrier_wait 1 15
fi
report guest.alive PASS "the kernel ran on; during the silence: $during"
n=0
until ping -c 1 -W 2 {HOST_IP} >/dev/null 2>&1 || [ $n -ge 10 ]; do n=$((n + 1)); done
check net.ping_after ping -c 3 -W 5 {HOST_IP}
dmesg_dump 'e1000|eth0|NETDEV|Hardware'
"""


class E1000NoResponseCase(E1000TxHangCase):
    """e1000 x pci.no-response (module docstring); the backend is the tx-hang row's.

    Whether traffic comes back by itself is an observation (``_faults`` rule 5): the
    driver's reset during the silence restarts its link watchdog through an LSC interrupt
    it asks the device for (an ICS write), which the silent device dropped, so the driver
    never looks at the link again and the carrier stays off. The row then takes the
    interface down and up, as an administrator would, and checks that traffic flows.
    """

    def __init__(self) -> None:
        plan = FaultPlan(1, (NoResponse(id="dead", armed=False, for_ms=SILENT_MS),))
        FaultCase.__init__(
            self, "e1000", "e1000 82540EM 8086:100e", "e1000", NO_RESPONSE_SCRIPT, name="fault-e1000-no-response",
            fault=f"pci.no-response ({SILENT_MS // 1000} s: reads all ones, writes and interrupts lost)",
            fault_id="dead", plan=plan,
            expected=("no panic and no hang of the kernel; the driver notices (a TX timeout, a reset that reads all "
                      "ones) and traffic flows again once the device answers"),
            required_checks={"net.bound", "net.ping_before", "guest.alive", "net.ping_after"},
            observed_checks=("host.no_panic", "guest.alive", "net.noticed", "net.self_recovered", "net.ping_after"),
            irq=("eth0", "IO-APIC"),
        )
        self.responder = None

    def host_checks(self, result: BootResult) -> dict[str, tuple[bool, str]]:
        """The server and panic checks only (no reset is expected to end this fault)."""
        return FaultCase.host_checks(self, result)


def cases() -> list[FaultCase]:
    """The NIC fault rows."""
    return [E1000TxHangCase(), LinkFlapCase("e1000"), LinkFlapCase("virtio_net"), E1000NoResponseCase()]
