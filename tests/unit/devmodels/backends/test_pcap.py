from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from devmodels import UsageError
from devmodels.backends import NetOffloads
from devmodels.backends.net import LINKTYPE_ETHERNET, LoopbackBackend, PcapWriter, read_pcap
from tests.prerequisites import prerequisite


def parse_by_hand(data: bytes) -> list[bytes]:
    """An independent reader: the classic pcap layout, little-endian, as documented."""
    magic, major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    assert snaplen > 0
    out, pos = [], 24
    while pos < len(data):
        _sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        assert usec < 1_000_000 and incl <= orig
        out.append(data[pos + 16 : pos + 16 + incl])
        pos += 16 + incl
    assert pos == len(data)
    return out


def test_both_directions_are_recorded(tmp_path):
    path = tmp_path / "cap.pcap"
    a, b = LoopbackBackend.pair()
    cap = PcapWriter(a, path)
    cap.send(b"\x01" * 60)
    b.send(b"\x02" * 70)
    b.send(b"\x03" * 80)
    assert cap.receive() == [b"\x02" * 70, b"\x03" * 80]
    cap.send(b"\x04" * 1514)
    assert cap.records == 4
    cap.flush()
    frames = parse_by_hand(path.read_bytes())
    assert frames == [b"\x01" * 60, b"\x02" * 70, b"\x03" * 80, b"\x04" * 1514]
    cap.close()
    linktype, records = read_pcap(path)
    assert linktype == LINKTYPE_ETHERNET
    assert [r.data for r in records] == frames
    assert all(r.orig_len == len(r.data) for r in records)
    assert records[0].timestamp_ns <= records[-1].timestamp_ns
    with pytest.raises(UsageError):
        a.send(b"x")  # closing the writer closed the wrapped backend


def test_refused_frames_are_not_recorded_and_snaplen_cuts(tmp_path):
    path = tmp_path / "cap.pcap"
    a, _b = LoopbackBackend.pair(capacity=1, overflow="backpressure")
    with PcapWriter(a, path, snaplen=100) as cap:
        assert cap.send(b"\x05" * 300)
        assert not cap.send(b"\x06" * 60)
    _, records = read_pcap(path)
    assert [(r.data, r.orig_len) for r in records] == [(b"\x05" * 100, 300)]


def test_vnet_header_is_left_out(tmp_path):
    path = tmp_path / "cap.pcap"
    a, b = LoopbackBackend.pair(offloads=NetOffloads(csum=True))
    with PcapWriter(a, path) as cap:
        assert cap.offloads.csum and cap.dropped == 0 and cap.fileno() == a.fileno()
        cap.set_vnet_hdr(True)
        cap.send(bytes(12) + b"\x07" * 60)
        b.send(b"\x08" * 60)
        assert cap.receive() == [bytes(12) + b"\x08" * 60]
    _, records = read_pcap(path)
    assert [r.data for r in records] == [b"\x07" * 60, b"\x08" * 60]


def test_read_pcap_rejects_garbage(tmp_path):
    path = tmp_path / "bad.pcap"
    for content in (b"", b"\0" * 24, struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"\0" * 10):
        path.write_bytes(content)
        with pytest.raises(UsageError):
            read_pcap(path)
    # big-endian nanosecond files are read too
    path.write_bytes(struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1) + struct.pack(">IIII", 1, 5, 2, 2) + b"hi")
    linktype, records = read_pcap(path)
    assert linktype == 1 and records[0].timestamp_ns == 1_000_000_005 and records[0].data == b"hi"


@prerequisite(None if shutil.which("tcpdump") else "tcpdump is not installed (apt-get install tcpdump)")
def test_tcpdump_reads_it(tmp_path):
    """A second implementation of the format (libpcap's reader) decodes what we wrote."""
    from devmodels.backends.net import parse_ipv4, parse_mac, udp_frame

    path = tmp_path / "cap.pcap"
    a, _b = LoopbackBackend.pair()
    with PcapWriter(a, path) as cap:
        src, dst = parse_mac("02:00:00:00:00:01"), parse_mac("02:00:00:00:00:02")
        cap.send(udp_frame(dst, src, parse_ipv4("10.0.0.1"), parse_ipv4("10.0.0.2"), 1234, 5678, b"x"))
    out = subprocess.run(["tcpdump", "-n", "-e", "-r", str(path)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert "02:00:00:00:00:01 > 02:00:00:00:00:02" in out
    assert "10.0.0.1.1234 > 10.0.0.2.5678: UDP, length 1" in out
