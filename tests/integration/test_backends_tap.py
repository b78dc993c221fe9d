"""A real TAP, moved into a network namespace this test creates, answered by the responder.

The kernel in the namespace is the judge: its ping socket only delivers an echo reply whose
ICMP checksum verifies, and its UDP socket only delivers a datagram whose IP and UDP
checksums verify. Needs root, /dev/net/tun and iproute2; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from devmodels.backends.net import TapBackend
from devmodels.backends.net.responder import Responder
from tests.prerequisites import prerequisite

pytestmark = prerequisite(
    "needs root, /dev/net/tun and iproute2"
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or shutil.which("ip") is None else None
)

HOST_IP = "10.213.7.1"  # the namespace side of the TAP
RESPONDER_IP = "10.213.7.2"  # answered through our fd

PROBE = r"""
import json, socket, sys
target = sys.argv[1]
with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
    f.write("0 0")  # this namespace only: lets the ping socket below exist
result = {}
ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
ping.settimeout(20)
replies = []
for seq in range(3):
    # type 8 code 0; the kernel fills the identifier and the checksum of a ping socket
    ping.sendto(bytes([8, 0, 0, 0, 0, 0, 0, seq]) + b"devmodels-tap-probe", (target, 0))
    data, _ = ping.recvfrom(2048)
    replies.append([data[0], data[7], data[8:].decode()])
result["ping"] = replies
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(20)
udp.sendto(b"over the tap and back", (target, 7))
data, (_, port) = udp.recvfrom(2048)
result["udp"] = [data.decode(), port]
print(json.dumps(result))
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def namespace():
    name = f"dmtest{os.getpid()}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60)


@pytest.mark.parametrize("vnet_hdr", [False, True], ids=["plain", "vnet-hdr"])
def test_namespace_pings_the_responder_through_a_tap(namespace, vnet_hdr):
    tap = TapBackend(f"dmt{os.getpid() % 100000}{int(vnet_hdr)}", vnet_hdr=vnet_hdr)
    responder = Responder(tap, RESPONDER_IP, mac="02:00:00:00:07:02", udp_echo_ports=[7])
    try:
        ip("link", "set", tap.name, "netns", namespace)
        ip("-n", namespace, "addr", "add", f"{HOST_IP}/24", "dev", tap.name)
        ip("-n", namespace, "link", "set", tap.name, "up")
        responder.start()
        probe = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", PROBE, RESPONDER_IP],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert probe.returncode == 0, probe.stderr
        result = json.loads(probe.stdout)
    finally:
        responder.stop()
        tap.close()
    assert result["ping"] == [[0, seq, "devmodels-tap-probe"] for seq in range(3)]
    assert result["udp"] == ["over the tap and back", 7]
    stats = responder.stats()
    assert stats.arp_replies >= 1 and stats.icmp_replies == 3 and stats.udp_echoed == 1
    assert responder.neighbors().get(HOST_IP) is not None
