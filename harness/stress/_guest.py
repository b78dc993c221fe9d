"""The guest side of a stress run: the load scripts, their console lines, and the image.

Rules:

1. One image serves every path: two embedded tests, ``stress-disk`` and ``stress-nic``,
   fio (the host's, with its libraries) and the TCP stream's pattern (``PATTERN_PATH``).
   What changes per path or run (duration, device, addresses, interrupt line) travels on
   the kernel command line as ``stress.KEY=VALUE`` (``guest_append``), so the image stays
   the same and is built once.
2. The guest tells the host what it does in lines of its own (``STRESS-...``):
   ``STRESS-BEGIN`` when the load starts, ``STRESS-PROGRESS key=value ...`` every
   ``interval`` seconds while it runs, the load's results, then ``STRESS-END``. Progress
   keys are counters: ``io`` (disk: reads, sectors read, writes, sectors written from
   ``/sys/block/DEV/stat``; NIC: tx/rx bytes and packets), ``tcp`` (segments in and out),
   ``icmp`` (echo replies received), and for diagnosis ``inflight`` (requests the block
   layer has at the device) and ``irq`` (the device's interrupts from /proc/interrupts).
3. Disk load: fio ``randrw`` 4 KiB at queue depth 32 (libaio, O_DIRECT) over the whole disk
   for the duration, every write checked (``verify=crc32c``, ``verify_backlog`` so the
   verification runs all along, ``verify_fatal``); its JSON and messages are printed
   between ``STRESS-FIO-BEGIN`` and ``STRESS-FIO-END`` after ``STRESS-FIO-RC``.
4. NIC load, all at once for the duration against the peer in the host's namespace: a TCP
   stream out (the pattern file sent over and over to the sink port; ``STRESS-TX-SENT N``
   copies), TCP streams in (one connection after another from the source port, each
   ``PATTERN_SIZE`` bytes checked against their SHA-256; ``STRESS-RX conns=N bad=M``), and a
   ping flood (busybox ping has no ``-f``: ``ping -A``, the next echo as soon as the
   reply came, ``-s 1000``; ``STRESS-PING``). ``STRESS-NETSTAT`` has the TCP retransmissions
   and the checksum errors the guest's stack counted, and the frames the driver dropped.
5. Kernel messages during the load that mean a driver gave up on the device or recovered
   it (timeouts, resets, I/O errors, unhandled interrupts) are printed as ``STRESS-DMESG``.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from devmodels import HostError

if TYPE_CHECKING:
    from ..guest import GuestImage

__all__ = ["DISK_TEST", "NIC_TEST", "PATTERN_PATH", "PATTERN_SIZE", "PATTERN_SEED", "DISK_SCRIPT", "NIC_SCRIPT",
           "pattern", "pattern_sha256", "guest_append", "build_stress_image", "SINK_PORT", "SOURCE_PORT",
           "DMESG_PATTERN"]

DISK_TEST = "stress-disk"
NIC_TEST = "stress-nic"
PATTERN_PATH = "/stress/pattern"
PATTERN_SIZE = 1 << 20
PATTERN_SEED = 0x57E55
SINK_PORT = 5001
SOURCE_PORT = 5002
DMESG_PATTERN = ("Unit Hang|WATCHDOG|timed out|timeout|exception Emask|hard resetting|reset adapter|"
                 "I/O error|blk_update_request|nobody cared|Disabling IRQ|needs reset|DEVICE_NEEDS_RESET|"
                 "virtio.*(error|broken)|call trace|BUG|Oops|hung task")

_COMMON = r"""
s_dur=$(cmdline_value stress.duration)
s_step=$(cmdline_value stress.interval)
s_irq=$(cmdline_value stress.irq)
s_irqs() {
    _s_n=0
    for _s_w in $(grep -E "$s_irq" /proc/interrupts); do
        case $_s_w in *[!0-9]*) ;; *) _s_n=$((_s_n + _s_w)) ;; esac
    done
    echo $_s_n
}
s_snmp() {  # GROUP FIELD: one counter of /proc/net/snmp
    awk -v g="$1:" -v k="$2" '$1 == g { if (!c) { for (i = 2; i <= NF; i++) if ($i == k) c = i } else print $c }' \
        /proc/net/snmp
}
s_dmesg() {
    dmesg | grep -E '@DMESG@' | head -n 20 | while read -r _s_l; do echo "STRESS-DMESG $_s_l"; done
}
"""

DISK_SCRIPT = _COMMON + r"""
s_dev=$(cmdline_value stress.dev)
if ! wait_for /dev/$s_dev 60; then report stress.device FAIL "no /dev/$s_dev"; exit 0; fi
report stress.device PASS "$s_dev $(cat /sys/block/$s_dev/size) sectors"
s_progress() {
    set -- $(cat /sys/block/$s_dev/stat)
    echo "STRESS-PROGRESS io=$1,$3,$5,$7 inflight=$9 irq=$(s_irqs)"
}
dmesg -c >/dev/null
echo "STRESS-BEGIN disk $s_dev"
/usr/bin/fio --name=stress --filename=/dev/$s_dev --direct=1 --ioengine=libaio --rw=randrw --bs=4k --iodepth=32 \
    --time_based --runtime=$s_dur --randrepeat=0 --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
    --do_verify=1 --output-format=json --output=/tmp/fio.json >/tmp/fio.err 2>&1 &
s_fio=$!
while kill -0 $s_fio 2>/dev/null; do s_progress; sleep $s_step; done
wait $s_fio
s_rc=$?
s_progress
echo "STRESS-FIO-RC $s_rc"
echo STRESS-FIO-BEGIN
cat /tmp/fio.json /tmp/fio.err
echo STRESS-FIO-END
s_dmesg
echo STRESS-END
"""

NIC_SCRIPT = _COMMON + r"""
s_host=$(cmdline_value stress.host)
s_me=$(cmdline_value stress.guest)
s_rxsha=$(cmdline_value stress.rxsha)
if ! wait_for /sys/class/net/eth0 30; then report stress.device FAIL "no eth0"; exit 0; fi
report stress.device PASS "eth0 $(basename "$(readlink /sys/class/net/eth0/device/driver)")"
ip addr add $s_me/24 dev eth0
ip link set eth0 up
s_n=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $s_n -lt 100 ]; do sleep 0.1; s_n=$((s_n + 1)); done
check stress.reach ping -c 3 -W 5 $s_host || exit 0
s_st=/sys/class/net/eth0/statistics
s_progress() {
    echo "STRESS-PROGRESS io=$(cat $s_st/tx_bytes),$(cat $s_st/rx_bytes),$(cat $s_st/tx_packets),$(cat $s_st/rx_packets)" \
        "tcp=$(s_snmp Tcp InSegs),$(s_snmp Tcp OutSegs) icmp=$(s_snmp Icmp InEchoReps) irq=$(s_irqs)"
}
dmesg -c >/dev/null
s_end=$(( $(date +%s) + s_dur ))
echo "STRESS-BEGIN nic eth0"
( s_k=0
  while [ "$(date +%s)" -lt $s_end ]; do cat @PATTERN@ || break; s_k=$((s_k + 1)); done
  echo "STRESS-TX-SENT $s_k" >&2 ) | nc $s_host @SINK_PORT@ &
s_tx=$!
( s_k=0; s_bad=0
  while [ "$(date +%s)" -lt $s_end ]; do
      s_got=$(nc $s_host @SOURCE_PORT@ </dev/null | sha256sum)
      s_k=$((s_k + 1))
      [ "${s_got%% *}" = "$s_rxsha" ] || s_bad=$((s_bad + 1))
  done
  echo "STRESS-RX conns=$s_k bad=$s_bad" ) &
s_rx=$!
ping -q -A -s 1000 -w $s_dur $s_host >/tmp/ping.txt 2>&1 &
s_ping=$!
while kill -0 $s_tx 2>/dev/null || kill -0 $s_rx 2>/dev/null || kill -0 $s_ping 2>/dev/null; do
    s_progress
    sleep $s_step
done
wait $s_tx
s_txrc=$?
wait $s_ping
s_pingrc=$?
s_progress
echo "STRESS-TX rc=$s_txrc"
echo "STRESS-PING rc=$s_pingrc $(grep -E 'transmitted|round-trip' /tmp/ping.txt | tr '\n' ' ')"
echo "STRESS-NETSTAT retrans=$(s_snmp Tcp RetransSegs) tcp_in_errs=$(s_snmp Tcp InErrs)" \
    "tcp_csum_errs=$(s_snmp Tcp InCsumErrors) icmp_in_errs=$(s_snmp Icmp InErrors)" \
    "rx_dropped=$(cat $s_st/rx_dropped) rx_missed=$(cat $s_st/rx_missed_errors) tx_dropped=$(cat $s_st/tx_dropped)"
s_dmesg
echo STRESS-END
"""


def _render(text: str) -> str:
    return (text.replace("@DMESG@", DMESG_PATTERN).replace("@PATTERN@", PATTERN_PATH)
            .replace("@SINK_PORT@", str(SINK_PORT)).replace("@SOURCE_PORT@", str(SOURCE_PORT)))


def pattern() -> bytes:
    """The TCP streams' payload: ``PATTERN_SIZE`` pseudo-random bytes, the same on every host
    (the TCP source serves exactly these per connection)."""
    from ..conformance.cases.e1000_tap import source_bytes

    return source_bytes(PATTERN_SIZE, PATTERN_SEED)


def pattern_sha256() -> str:
    """SHA-256 of ``pattern()``."""
    return hashlib.sha256(pattern()).hexdigest()


def guest_append(**values: object) -> list[str]:
    """Kernel command-line words ``stress.KEY=VALUE`` (rule 1).

    Raises:
        HostError: a value with whitespace (it would split the word).
    """
    words = []
    for key, value in values.items():
        text = str(value)
        if not text or any(c.isspace() for c in text):
            raise HostError(f"stress.{key}={text!r} cannot go on the kernel command line")
        words.append(f"stress.{key}={text}")
    return words


def build_stress_image(progress: bool | None = None) -> GuestImage:
    """The stress image (rule 1), built or found in the cache.

    Raises:
        HostError: fio is not installed (``apt-get install fio``), or the build failed.
    """
    from ..guest import ImageBuilder

    fio = shutil.which("fio")
    if fio is None:
        raise HostError("fio not found: the disk load needs it (apt-get install fio)")
    builder = ImageBuilder()
    builder.add_test(DISK_TEST, _render(DISK_SCRIPT))
    builder.add_test(NIC_TEST, _render(NIC_SCRIPT))
    builder.add_binary_with_libs(Path(fio), "/usr/bin/fio")
    builder.add_file(PATTERN_PATH, pattern())
    return builder.build(progress)
