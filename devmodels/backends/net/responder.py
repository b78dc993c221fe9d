"""A tiny host-side IPv4 stack that answers a guest through any network backend.

It sits on the far end of a ``LoopbackBackend``/``SocketBackend`` pair (or on a TAP) and
plays "the other machine on the wire" for conformance tests: it answers ARP requests for
its address (RFC 826), ICMP echo requests (RFC 792), echoes UDP on ``udp_echo_ports`` and
swallows UDP on ``udp_sink_ports``, recording per port how many datagrams and bytes came,
a SHA-256 over all payloads in arrival order and the CRC-32 of each of the last
``max_records`` payloads.

Rules:

1. Every frame is guest-generated: each header is validated (lengths against the frame,
   IPv4 header checksum, ICMP and UDP checksums, fragments refused) and a frame that fails
   is refused and counted under a reason in ``stats().ignored`` (``stats().refused`` is
   their total). ``handle`` never raises on frame content: a frame on which a parser
   raises anyway (a check the validation missed, a bug) is refused too, but counted apart
   (``stats().parser_errors``, reason ``parser-error``, the last exception in
   ``stats().last_parser_error``) and logged, so tests can insist that it never happens.
2. Replies are built fresh with correct checksums (``_packets``); they never copy guest
   header fields other than addresses, ports, ICMP identifier/sequence and payload.
3. All state is bounded: fixed ports, a ``max_records`` CRC ring per port, a neighbour table
   of at most ``max_neighbors`` entries (oldest evicted), at most ``max_pending`` replies
   waiting for the backend (newer ones dropped and counted), ``batch`` frames per poll.
4. ``handle(frame) -> replies`` is the sans-IO core; ``poll()`` moves frames between it and
   the backend; ``start()`` runs ``poll`` on a thread that sleeps in ``poll(2)`` on the
   backend's fd (or a notify-driven eventfd) until ``stop()``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import struct
import threading
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..._errors import UsageError
from .._net import NetBackend
from ._packets import (
    ARP_IPV4,
    ARP_OP_REPLY,
    ARP_OP_REQUEST,
    BROADCAST_MAC,
    ETH_HEADER,
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IPV4,
    IPPROTO_ICMP,
    IPPROTO_UDP,
    UDP_HEADER,
    Ipv4,
    arp_frame,
    ethernet_frame,
    format_mac,
    internet_checksum,
    ipv4_packet,
    parse_ipv4,
    parse_ipv4_frame,
    parse_mac,
    udp_frame,
)

__all__ = ["Responder", "ResponderStats", "UdpRecord"]

_log = logging.getLogger(__name__)
_PSEUDO = struct.Struct("!4s4sBBH")


@dataclass(frozen=True)
class UdpRecord:
    """What arrived on one UDP port."""

    port: int
    datagrams: int
    bytes: int
    sha256: str
    crc32s: tuple[int, ...]


@dataclass(frozen=True)
class ResponderStats:
    """Counters, copied at one instant."""

    received: int
    arp_replies: int
    icmp_replies: int
    udp_echoed: int
    udp_sunk: int
    udp_no_checksum: int
    sent: int
    replies_dropped: int
    ignored: dict[str, int] = field(default_factory=dict)
    parser_errors: int = 0
    """Frames on which a parser raised (rule 1): refused, but a validation is missing."""
    last_parser_error: str = ""
    """The last such exception (type and message)."""

    @property
    def refused(self) -> int:
        """Frames refused for any reason (the sum of ``ignored``)."""
        return sum(self.ignored.values())


class _Port:
    __slots__ = ("datagrams", "bytes", "hash", "crcs")

    def __init__(self, max_records: int) -> None:
        self.datagrams = 0
        self.bytes = 0
        self.hash = hashlib.sha256()
        self.crcs: deque[int] = deque(maxlen=max_records)

    def add(self, payload: bytes) -> None:
        self.datagrams += 1
        self.bytes += len(payload)
        self.hash.update(payload)
        self.crcs.append(zlib.crc32(payload))


def _unicast_ip(ip: bytes) -> bool:
    # Not 0.0.0.0, not limited broadcast, not multicast (224/4) or reserved (240/4).
    return ip != b"\0\0\0\0" and ip[0] < 224


class Responder:
    """Answers ARP, ICMP echo and UDP echo/sink for one IPv4 address on ``backend``.

    Args:
        backend: the far end of the guest's link (plain frames: no virtio-net header).
        ip: the responder's IPv4 address.
        mac: its MAC address (unicast).
        udp_echo_ports: UDP ports whose datagrams are sent back (and recorded).
        udp_sink_ports: UDP ports whose datagrams are only recorded.
        max_records: per-port CRC-32 ring length.
        max_neighbors: neighbour table size.
        max_pending: replies kept while the backend refuses to send.
        batch: most frames taken per ``poll``.

    Raises:
        UsageError: a bad address, port or bound.
    """

    def __init__(
        self,
        backend: NetBackend,
        ip: str | bytes,
        *,
        mac: str | bytes = "02:00:00:00:00:fe",
        udp_echo_ports: Iterable[int] = (7,),
        udp_sink_ports: Iterable[int] = (9,),
        max_records: int = 4096,
        max_neighbors: int = 256,
        max_pending: int = 256,
        batch: int = 64,
    ) -> None:
        self._backend = backend
        self._ip = parse_ipv4(ip)
        self._mac = parse_mac(mac)
        if self._mac[0] & 1:
            raise UsageError(f"responder MAC {format_mac(self._mac)} is not unicast")
        echo, sink = frozenset(udp_echo_ports), frozenset(udp_sink_ports)
        for port in echo | sink:
            if not isinstance(port, int) or not 0 < port < 65536:
                raise UsageError(f"UDP port must be in 1..65535, got {port!r}")
        if echo & sink:
            raise UsageError(f"ports {sorted(echo & sink)} are both echo and sink")
        for label, value in (("max_records", max_records), ("max_neighbors", max_neighbors),
                             ("max_pending", max_pending), ("batch", batch)):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{label} must be a positive integer, got {value!r}")
        self._echo, self._sink = echo, sink
        self._ports = {port: _Port(max_records) for port in echo | sink}
        self._max_neighbors = max_neighbors
        self._max_pending = max_pending
        self._batch = batch
        self._lock = threading.Lock()
        self._neighbors: OrderedDict[bytes, bytes] = OrderedDict()
        self._pending: deque[bytes] = deque()
        self._ignored: dict[str, int] = {}
        self._counts = dict.fromkeys(
            ("received", "arp_replies", "icmp_replies", "udp_echoed", "udp_sunk", "udp_no_checksum", "sent",
             "replies_dropped"), 0)
        self._parser_errors = 0
        self._last_parser_error = ""
        self._ident = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake: int | None = None
        self._wake_lock = threading.Lock()
        self.error: BaseException | None = None
        """The exception that stopped the thread (a backend failure), if any."""

    # -- the sans-IO core -----------------------------------------------------------------

    def handle(self, frame: bytes | bytearray | memoryview) -> list[bytes]:
        """Process one received frame; return the frames to send back (rule 1)."""
        data = bytes(frame)
        with self._lock:
            self._counts["received"] += 1
            try:
                result = self._dispatch(data)
            except Exception as exc:  # noqa: BLE001 - rule 1: refused, counted apart and logged
                self._parser_errors += 1
                self._last_parser_error = f"{type(exc).__name__}: {exc}"
                _log.warning("responder: a parser raised on a %d-byte frame (refused): %s", len(data),
                             self._last_parser_error)
                result = "parser-error"
            if isinstance(result, str):
                self._ignored[result] = self._ignored.get(result, 0) + 1
                return []
            return result

    def _dispatch(self, frame: bytes) -> list[bytes] | str:
        if len(frame) < ETH_HEADER.size:
            return "short-frame"
        dst, src, ethertype = ETH_HEADER.unpack_from(frame, 0)
        if src[0] & 1:
            return "bad-source-mac"
        if dst != self._mac and dst != BROADCAST_MAC:
            return "not-for-us"
        if ethertype == ETH_P_ARP:
            return self._arp(frame)
        if ethertype == ETH_P_IPV4:
            if dst != self._mac:
                return "not-for-us"  # IPv4 broadcast: nothing here answers it
            packet = parse_ipv4_frame(frame)
            if isinstance(packet, str):
                return packet
            if packet.dst != self._ip:
                return "ipv4-not-for-us"
            if not _unicast_ip(packet.src):
                return "ipv4-bad-source"
            if packet.proto == IPPROTO_ICMP:
                return self._icmp(packet, src)
            if packet.proto == IPPROTO_UDP:
                return self._udp(packet, src)
            return "ipv4-protocol"
        if ethertype == ETH_P_8021Q:
            return "vlan"
        return "ethertype"

    def _arp(self, frame: bytes) -> list[bytes] | str:
        # RFC 826 packet for IPv4 over Ethernet: 28 bytes after the Ethernet header.
        if len(frame) < ETH_HEADER.size + ARP_IPV4.size:
            return "arp-malformed"
        htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = ARP_IPV4.unpack_from(frame, ETH_HEADER.size)
        if (htype, ptype, hlen, plen) != (1, ETH_P_IPV4, 6, 4) or sha[0] & 1:
            return "arp-malformed"
        if op == ARP_OP_REQUEST:
            if tpa != self._ip:
                return "arp-not-for-us"
            self._learn(spa, sha)
            self._counts["arp_replies"] += 1
            return [arp_frame(ARP_OP_REPLY, self._mac, self._ip, sha, spa, dst=sha)]
        if op == ARP_OP_REPLY:
            if tpa == self._ip:
                self._learn(spa, sha)
            return []
        return "arp-op"

    def _learn(self, ip: bytes, mac: bytes) -> None:
        if not _unicast_ip(ip):
            return  # an ARP probe (sender 0.0.0.0) teaches nothing
        self._neighbors[ip] = mac
        self._neighbors.move_to_end(ip)
        while len(self._neighbors) > self._max_neighbors:
            self._neighbors.popitem(last=False)

    def _next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def _icmp(self, packet: Ipv4, src_mac: bytes) -> list[bytes] | str:
        message = packet.payload
        if len(message) < 8:
            return "icmp-malformed"
        if internet_checksum(message) != 0:
            return "icmp-checksum"
        if message[0] != 8:  # RFC 792: type 8 echo request
            return "icmp-type"
        if message[1] != 0:
            return "icmp-malformed"
        reply = bytearray(message)
        reply[0] = 0  # echo reply; code, identifier, sequence and data are kept
        reply[2:4] = b"\0\0"
        reply[2:4] = internet_checksum(reply).to_bytes(2, "big")
        self._counts["icmp_replies"] += 1
        ip = ipv4_packet(self._ip, packet.src, IPPROTO_ICMP, reply, ident=self._next_ident())
        return [ethernet_frame(src_mac, self._mac, ETH_P_IPV4, ip)]

    def _udp(self, packet: Ipv4, src_mac: bytes) -> list[bytes] | str:
        datagram = packet.payload
        if len(datagram) < UDP_HEADER.size:
            return "udp-malformed"
        src_port, dst_port, length, checksum = UDP_HEADER.unpack_from(datagram, 0)
        # RFC 768: length covers header and data and must fit inside the IP payload.
        if length < UDP_HEADER.size or length > len(datagram):
            return "udp-malformed"
        datagram = datagram[:length]
        if checksum == 0:
            self._counts["udp_no_checksum"] += 1  # RFC 768: zero means "not computed"
        else:
            pseudo = int.from_bytes(_PSEUDO.pack(packet.src, packet.dst, 0, IPPROTO_UDP, length), "big")
            if internet_checksum(datagram, pseudo) != 0:
                return "udp-checksum"
        port = self._ports.get(dst_port)
        if port is None:
            return "udp-port"
        if dst_port in self._echo and src_port == 0:
            return "udp-no-reply-port"  # RFC 768: source port 0 means no reply is wanted
        payload = datagram[UDP_HEADER.size :]
        port.add(payload)
        if dst_port in self._sink:
            self._counts["udp_sunk"] += 1
            return []
        self._counts["udp_echoed"] += 1
        return [udp_frame(src_mac, self._mac, self._ip, packet.src, dst_port, src_port, payload,
                          ip_ident=self._next_ident())]

    # -- results --------------------------------------------------------------------------

    def stats(self) -> ResponderStats:
        """The counters now."""
        with self._lock:
            return ResponderStats(**self._counts, ignored=dict(self._ignored), parser_errors=self._parser_errors,
                                  last_parser_error=self._last_parser_error)

    def udp(self, port: int) -> UdpRecord:
        """What arrived on UDP ``port`` so far.

        Raises:
            UsageError: ``port`` is neither an echo nor a sink port.
        """
        with self._lock:
            record = self._ports.get(port)
            if record is None:
                raise UsageError(f"UDP port {port} is not an echo or sink port of this responder")
            return UdpRecord(port, record.datagrams, record.bytes, record.hash.copy().hexdigest(), tuple(record.crcs))

    def neighbors(self) -> dict[str, str]:
        """IPv4 address -> MAC learned from ARP, both as text."""
        with self._lock:
            return {".".join(map(str, ip)): format_mac(mac) for ip, mac in self._neighbors.items()}

    def send_udp(
        self, dst_ip: str | bytes, dst_port: int, payload: bytes, *, src_port: int = 9, dst_mac: str | bytes | None = None
    ) -> None:
        """Queue a UDP datagram to the guest (sent by the thread, or now if none runs).

        Args:
            dst_ip: the guest's address.
            dst_port: its port.
            payload: the data.
            src_port: the responder's port.
            dst_mac: the guest's MAC; by default the one learned from its ARP requests.

        Raises:
            UsageError: no MAC is known for ``dst_ip``, or a bad argument.
        """
        ip = parse_ipv4(dst_ip)
        for port in (dst_port, src_port):
            if not isinstance(port, int) or not 0 < port < 65536:
                raise UsageError(f"UDP port must be in 1..65535, got {port!r}")
        with self._lock:
            mac = parse_mac(dst_mac) if dst_mac is not None else self._neighbors.get(ip)
            if mac is None:
                raise UsageError(f"no MAC known for {dst_ip!r} (the guest has not ARPed); pass dst_mac")
            frame = udp_frame(mac, self._mac, self._ip, ip, src_port, dst_port, payload, ip_ident=self._next_ident())
        self._queue([frame])
        if self._thread is None:
            self._flush()
        else:
            self._poke()

    # -- I/O ------------------------------------------------------------------------------

    def _queue(self, frames: list[bytes]) -> None:
        with self._lock:
            for frame in frames:
                if len(self._pending) >= self._max_pending:
                    self._counts["replies_dropped"] += 1
                else:
                    self._pending.append(frame)

    def _flush(self) -> bool:
        """Send queued replies until the backend refuses; whether all went out."""
        while True:
            with self._lock:
                if not self._pending:
                    return True
                frame = self._pending[0]
            if not self._backend.send(frame):
                return False
            with self._lock:
                self._pending.popleft()
                self._counts["sent"] += 1

    def poll(self) -> int:
        """Take up to ``batch`` frames from the backend, answer them; return how many."""
        frames = self._backend.receive(self._batch)
        for frame in frames:
            self._queue(self.handle(frame))
            self._flush()  # keep the backlog for when the backend really refuses
        if not frames:
            self._flush()
        return len(frames)

    def start(self) -> None:
        """Run ``poll`` on a daemon thread until ``stop()``.

        Raises:
            UsageError: already running.
        """
        if self._thread is not None:
            raise UsageError("responder already started")
        self._stopping.clear()
        self.error = None
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._backend.set_notify(self._poke)
        self._thread = threading.Thread(target=self._run, name="devmodels-responder", daemon=True)
        self._thread.start()

    def _poke(self) -> None:
        # Under the lock so stop() cannot close the eventfd (and the number be reused) between
        # the check and the write; a notify may come from another thread at any time.
        with self._wake_lock:
            if self._wake is not None:
                os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        wake = self._wake
        if wake is None:  # stop() already ran
            return
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        fd = self._backend.fileno()
        if fd is not None:
            poller.register(fd, select.POLLIN)
        try:
            while not self._stopping.is_set():
                if self.poll() >= self._batch:
                    continue  # more may be waiting: no need to sleep
                with self._lock:
                    backlog = bool(self._pending)
                # With replies held back, retry every 10 ms; there is no portable
                # "writable" signal across backends (an eventfd is always writable).
                poller.poll(10 if backlog else None)
                try:
                    os.eventfd_read(wake)
                except BlockingIOError:
                    pass
        except Exception as exc:  # a backend failure ends the thread; stop() reports it
            _log.exception("responder thread stopped")
            self.error = exc

    def stop(self) -> None:
        """Stop the thread and wait for it. Idempotent.

        Raises:
            The exception that ended the thread early, if one did (also in ``error``).
        """
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._poke()
        thread.join()
        self._backend.set_notify(None)
        with self._wake_lock:
            wake, self._wake = self._wake, None
        if wake is not None:
            os.close(wake)
        self._thread = None
        if self.error is not None:
            raise self.error

    @property
    def running(self) -> bool:
        """The thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Responder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
