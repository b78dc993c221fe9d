"""The devmodels test device served to a real QEMU 7.2 through ``x-pci-proxy-dev``.

QEMU (TCG) gets one end of a socketpair as ``-device x-pci-proxy-dev,fd=N``; our mpqemu
server serves ``PciTestDevice`` on the other end from a thread of this test. A busybox
guest finds the function in sysfs, enables it, reads and writes its registers through
BAR0 (``devmem``) and BAR1 (port I/O through ``resource1``), runs a DMA copy inside a
reserved piece of guest RAM (``memmap=1M$0x10000000``) and raises its interrupt. When gcc
can build a static helper, the guest also times MMIO reads of the ID register through the
proxy and, as a baseline, of QEMU's in-process ``edu`` device.

The second test serves QEMU's own e1000 from QEMU's C remote process (``-machine x-remote``)
behind the same proxy and times its MMIO reads the same way: the C peer on the identical
transport.

Figures (printed; run with ``-s`` to see them): ns per proxied MMIO read, ns per in-QEMU
MMIO read, seconds from QEMU start to ``DEVMODELS-DONE``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from devmodels import GuestMemory
from devmodels.testdev import PciTestDevice
from tests.prerequisites import missing, need

pytestmark = pytest.mark.guest

GUEST_SCRIPT = r"""
# Guest half of tests/integration/test_mpqemu_qemu.py.
find_pci() {
    for _f_dev in /sys/bus/pci/devices/*; do
        if [ "$(cat $_f_dev/vendor)" = "$1" ] && [ "$(cat $_f_dev/device)" = "$2" ]; then
            echo $_f_dev
            return 0
        fi
    done
    return 1
}
bar_base() { head -n $(( $2 + 1 )) $1/resource | tail -n 1 | cut -d' ' -f1; }
hex32() { printf '0x%08X' $(( $1 )); }
expect() {  # NAME GOT WANT
    if [ "$2" = "$3" ]; then report "$1" PASS "$2"; else report "$1" FAIL "got $2, want $3"; fi
}

if ! dev=$(find_pci 0x1234 0xde70); then
    report mpqemu.enumerated FAIL "no 1234:de70 in /sys/bus/pci/devices"
    exit 0
fi
report mpqemu.enumerated PASS "${dev##*/}"
expect mpqemu.class "$(cat $dev/class)" 0x00ff00

# MSI and MSI-X are hidden: no capability list at all for this device.
cap_ptr=$(od -A n -t x1 -j 52 -N 1 $dev/config | tr -d ' ')
status=$(od -A n -t x1 -j 6 -N 1 $dev/config | tr -d ' ')
expect mpqemu.msi_hidden "$cap_ptr/$(( 0x$status & 0x10 ))" "00/0"

echo 1 > $dev/enable
base=$(bar_base $dev 0)
expect mpqemu.bar0_id "$(devmem $base 32)" 0x7E57DE70
devmem $(( base + 4 )) 32 0xA5A55A5A
expect mpqemu.bar0_scratch "$(devmem $(( base + 4 )) 32)" 0xA5A55A5A

# BAR1 mirrors ID and SCRATCH in port I/O space; sysfs resource1 does inl/outl.
expect mpqemu.bar1_id "$(dd if=$dev/resource1 bs=4 count=1 2>/dev/null | od -A n -t x4 | tr -d ' ')" 7e57de70
expect mpqemu.bar1_scratch "$(dd if=$dev/resource1 bs=4 skip=1 count=1 2>/dev/null | od -A n -t x4 | tr -d ' ')" a5a55a5a

# DMA: 64 bytes inside the reserved 1 MiB at 0x10000000, with Bus Master enabled.
printf '\007' | dd of=$dev/config bs=1 seek=4 count=1 conv=notrunc 2>/dev/null
src=0x10000000
dst=0x10000800
i=0
while [ $i -lt 16 ]; do
    devmem $(( src + 4 * i )) 32 $(( 0xC0DE0000 + i ))
    devmem $(( dst + 4 * i )) 32 0
    i=$(( i + 1 ))
done
devmem $(( base + 0x20 )) 64 $src
devmem $(( base + 0x28 )) 64 $dst
devmem $(( base + 0x30 )) 32 64
devmem $(( base + 0x34 )) 32 1
expect mpqemu.dma_status "$(devmem $(( base + 0x38 )) 32)" 0x00000001
bad=0
i=0
while [ $i -lt 16 ]; do
    [ "$(devmem $(( dst + 4 * i )) 32)" = "$(hex32 $(( 0xC0DE0000 + i )))" ] || bad=$(( bad + 1 ))
    i=$(( i + 1 ))
done
expect mpqemu.dma_copy "$bad words differ" "0 words differ"
devmem $(( base + 0x10 )) 32 0xFFFFFFFF

# INTx: raise and acknowledge; the host checks that the irqfd was written.
devmem $(( base + 0x0C )) 32 4
echo MPQEMU-IRQ-RAISED
devmem $(( base + 0x10 )) 32 4

if command -v mmio-bench >/dev/null; then
    if out=$(mmio-bench $base 5000); then
        report mpqemu.mmio_bench PASS "$out"
    else
        report mpqemu.mmio_bench FAIL "$out"
    fi
    if edu=$(find_pci 0x1234 0x11e8); then
        echo 1 > $edu/enable
        out=$(mmio-bench $(bar_base $edu 0) 50000)
        report edu.mmio_bench PASS "$out"
    fi
fi
"""

XREMOTE_SCRIPT = r"""
# Guest half of test_qemu_x_remote_peer: QEMU's e1000 served by qemu-system-x86_64 -machine x-remote.
for _x_dev in /sys/bus/pci/devices/*; do
    if [ "$(cat $_x_dev/vendor):$(cat $_x_dev/device)" = 0x8086:0x100e ]; then
        report xremote.enumerated PASS "${_x_dev##*/}"
        echo 1 > $_x_dev/enable
        _x_base=$(head -n 1 $_x_dev/resource | cut -d' ' -f1)
        # STATUS (0x8) reads the same value every time while nothing happens on the link.
        if command -v mmio-bench >/dev/null; then
            if out=$(mmio-bench $(( _x_base + 8 )) 5000); then
                report xremote.mmio_bench PASS "$out"
            else
                report xremote.mmio_bench FAIL "$out"
            fi
        fi
        exit 0
    fi
done
report xremote.enumerated FAIL "no 8086:100e in /sys/bus/pci/devices"
"""

BENCH_C = r"""
/* mmio-bench PHYS COUNT: time COUNT 32-bit reads of the register at PHYS (/dev/mem). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: mmio-bench PHYS COUNT\n");
        return 2;
    }
    unsigned long long phys = strtoull(argv[1], NULL, 0);
    long count = strtol(argv[2], NULL, 0);
    int fd = open("/dev/mem", O_RDONLY | O_SYNC);
    if (fd < 0 || count <= 0) {
        perror("open /dev/mem");
        return 1;
    }
    volatile uint32_t *page = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, (off_t)(phys & ~4095ULL));
    if (page == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    volatile uint32_t *reg = page + (phys & 4095) / 4;
    uint32_t first = *reg;
    long same = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < count; i++)
        same += (*reg == first);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("value=0x%08x reads=%ld same=%ld ns_per_read=%lld\n", first, count, same, ns / count);
    return same == count ? 0 : 1;
}
"""


def _build_bench(directory: Path) -> Path | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    source, binary = directory / "mmio-bench.c", directory / "mmio-bench"
    source.write_text(BENCH_C)
    proc = subprocess.run([gcc, "-static", "-O2", "-o", str(binary), str(source)], capture_output=True, check=False)
    return binary if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def guest_image(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    try:
        from harness.guest import build_image
        from harness.qemu.launcher import qemu_available
    except ImportError as exc:
        missing(f"guest image builder / launcher not available: {exc}")
    need(qemu_available())
    probe = subprocess.run(
        ["qemu-system-x86_64", "-device", "x-pci-proxy-dev,help"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0 or "fd=" not in probe.stdout:
        missing("this QEMU has no x-pci-proxy-dev (multi-process QEMU is not built in)")
    from devmodels import HostError

    extra: dict[str, bytes | str | Path] = {}
    bench = _build_bench(tmp_path_factory.mktemp("mmio-bench"))
    if bench is not None:
        extra["/usr/bin/mmio-bench"] = bench
    try:
        return build_image(
            tests={"mpqemu": GUEST_SCRIPT, "xremote": XREMOTE_SCRIPT},
            extra_files=extra,
            modules=(),
            optional_modules=(),
        )
    except HostError as exc:
        missing(f"cannot build the guest image: {exc}")


def test_testdev_through_x_pci_proxy_dev(guest_image) -> None:  # type: ignore[no-untyped-def]
    from harness.qemu.launcher import QemuLauncher
    from mpqemu import MpqemuServer

    ours, qemus = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    memory = GuestMemory()
    server = MpqemuServer(PciTestDevice(memory), ours, memory)
    thread = threading.Thread(target=server.run, name="mpqemu-server", daemon=True)
    irq_signals: list[int] = []

    def on_line(line: str) -> None:
        if "MPQEMU-IRQ-RAISED" in line and server.endpoint.irq is not None:
            irq_signals.append(server.endpoint.irq.signals)

    thread.start()
    try:
        launcher = QemuLauncher.for_image(
            guest_image,
            test="mpqemu",
            shared_memory=True,
            pass_fds=[qemus.fileno()],
            append=["memmap=1M$0x10000000"],
            args=["-device", f"x-pci-proxy-dev,id=dev0,fd={qemus.fileno()}", "-device", "edu"],
            on_line=on_line,
        )
        with launcher:
            qemus.close()  # QEMU holds its copy; our end sees EOF when QEMU exits
            result = launcher.wait(240)
    finally:
        qemus.close()
        thread.join(30)
        if thread.is_alive():
            server.stop()
            thread.join(10)
    assert not thread.is_alive(), "the server did not end after QEMU exited"
    assert server.closed
    assert result.passed, result.summary()
    for name in ("enumerated", "class", "msi_hidden", "bar0_id", "bar0_scratch", "bar1_id", "bar1_scratch",
                 "dma_status", "dma_copy"):
        assert result.checks.get(f"mpqemu.{name}", (False, "missing"))[0], result.summary()
    stats = server.stats
    assert stats.refused == 0 and stats.bar_errors == 0, stats
    assert irq_signals and irq_signals[0] >= 1, "raising IRQ_STATUS did not write the irqfd"
    print(f"\nmpqemu: boot to DEVMODELS-DONE {result.done_after:.2f} s, QEMU run {result.elapsed:.2f} s; {stats}")
    for name in ("mpqemu.mmio_bench", "edu.mmio_bench"):
        if name in result.checks:
            print(f"mpqemu: {name}: {result.checks[name][1]}")


def test_qemu_x_remote_peer(guest_image) -> None:  # type: ignore[no-untyped-def]
    from harness.qemu.launcher import QemuLauncher

    remote_end, qemus = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    remote = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "x-remote", "-nodefaults", "-nographic", "-device", "e1000,id=nic0",
         "-object", f"x-remote-object,id=robj,devid=nic0,fd={remote_end.fileno()}"],
        pass_fds=[remote_end.fileno()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    remote_end.close()
    try:
        launcher = QemuLauncher.for_image(
            guest_image,
            test="xremote",
            shared_memory=True,
            pass_fds=[qemus.fileno()],
            args=["-device", f"x-pci-proxy-dev,id=dev0,fd={qemus.fileno()}"],
        )
        with launcher:
            qemus.close()
            result = launcher.wait(240)
    finally:
        qemus.close()
        if remote.poll() is None:
            remote.terminate()
        _, remote_err = remote.communicate(timeout=30)
    assert result.passed, f"{result.summary()}\nx-remote stderr: {remote_err.decode(errors='replace')}"
    print(f"\nx-remote: boot to DEVMODELS-DONE {result.done_after:.2f} s")
    if "xremote.mmio_bench" in result.checks:
        print(f"x-remote: xremote.mmio_bench: {result.checks['xremote.mmio_bench'][1]}")
