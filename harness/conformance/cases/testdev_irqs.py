"""Conformance: INTx, MSI and MSI-X of the devmodels PCI test device, each delivered to a
real guest driver and counted (vfio-user on QEMU 11.1 only: QEMU 7.2's proxy delivers no
interrupts under TCG).

The driver is ours (``harness/guest/kmod/testdev``), built on the host against the guest
kernel's Debian headers (``harness.guest._kmod``) and added to the image. For each mode in
turn the guest loads it with ``mode=intx|msi|msix``, raises ``RAISES`` interrupts one at a
time through IRQ_RAISE (the driver waits for each to be handled and acknowledged through
IRQ_ACK), runs one DMA copy finished by its IRQ_DMA_DONE interrupt, reads the driver's
counts and its /proc/interrupts lines, and unloads it.

A mode passes when every raise was handled (``IRQ_HANDLED``), none timed out, the kernel
enabled the expected kind (``msi_enabled``/``msix_enabled``, two MSI-X vectors) and
/proc/interrupts names the expected irq chip (``IO-APIC`` for INTx, ``PCI-MSI`` for MSI and
MSI-X: Linux 6.1 calls both ``PCI-MSI``; later kernels say ``PCI-MSIX``) with at least
``RAISES`` interrupts. Without KVM, QEMU emulates the INTx end-of-interrupt at the device's
next BAR access, so the INTx handler also runs on a line that is already quiet and returns
``IRQ_NONE``; those calls are counted apart (``unhandled``) and shown, not failed.

If the module cannot be built on this machine (no network for ``apt-get download``, no
compiler), the row fails with the reason: CI installs everything, and a skip would hide it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from devmodels import HostError, UsageError

from ._served import VFIO_USER, ServedCase
from .._case import Attachment

if TYPE_CHECKING:
    from ...guest import ImageBuilder

__all__ = ["cases", "TestdevIrqCase", "GUEST_SCRIPT", "REQUIRED_CHECKS", "MODULE_PATH", "RAISES"]

MODULE_PATH = "/lib/devmodels/devmodels_testdev.ko"
RAISES = 50
MODES = ("intx", "msi", "msix")

GUEST_SCRIPT = r"""
ko=@MODULE@
want=@RAISES@
find_pci() {
    for _f_dev in /sys/bus/pci/devices/*; do
        if [ "$(cat $_f_dev/vendor)" = "$1" ] && [ "$(cat $_f_dev/device)" = "$2" ]; then
            echo $_f_dev; return 0
        fi
    done
    return 1
}
val() {  # KEY WORDS...: the value of KEY=value among WORDS
    _v_key=$1; shift
    for _v_w in "$@"; do case $_v_w in "$_v_key="*) echo "${_v_w#*=}"; return 0 ;; esac; done
    echo "?"
}
irq_lines() {  # per testdev-MODE* action: "COUNT CHIP HWIRQ-TYPE NAME"
    awk -v p="^testdev-$1[0-9]+\$" '$NF ~ p {
        s = 0; chip = ""; type = ""
        for (i = 2; i < NF; i++) { if ($i ~ /^[0-9]+$/) s += $i; else { chip = $i; type = $(i + 1); break } }
        print s, chip, type, $NF }' /proc/interrupts
}
if ! dev=$(find_pci 0x1234 0xde70); then
    for m in intx msi msix; do report testdev.$m FAIL "no 1234:de70"; done
    report testdev.dma_irq FAIL "no 1234:de70"; exit 0
fi
dma_ok=""; dma_bad=""
for mode in intx msi msix; do
    case $mode in
        intx) chip=IO-APIC; enabled="msi_enabled=0 msix_enabled=0"; vectors=1 ;;
        msi) chip=PCI-MSI; enabled="msi_enabled=1 msix_enabled=0"; vectors=1 ;;
        msix) chip=PCI-MSI; enabled="msi_enabled=0 msix_enabled=1"; vectors=2 ;;
    esac
    if ! out=$(insmod $ko mode=$mode 2>&1); then
        report testdev.$mode FAIL "insmod: $out $(dmesg | grep -i testdev | tail -n 2 | tr '\n' '|')"
        dma_bad="$dma_bad $mode:insmod"; continue
    fi
    attr=$dev/testdev
    if ! wait_for $attr/counts 10; then
        report testdev.$mode FAIL "driver did not bind: $(dmesg | grep -i testdev | tail -n 2 | tr '\n' '|')"
        rmmod devmodels_testdev; dma_bad="$dma_bad $mode:unbound"; continue
    fi
    raise_err=$( (echo $want > $attr/raise) 2>&1 ) && raise_rc=0 || raise_rc=1
    counts=$(cat $attr/counts)
    lines=$(irq_lines $mode)
    echo "testdev-irqs $mode: $counts"
    echo "$lines" | while read -r l; do echo "testdev-irqs $mode /proc/interrupts: $l"; done
    dma_err=$( (echo 4096 > $attr/dma) 2>&1 ) && dma_ok="$dma_ok $mode" || dma_bad="$dma_bad $mode:${dma_err:-failed}"
    after=$(cat $attr/counts)
    echo "testdev-irqs $mode after DMA: $after"
    if [ $mode = msix ]; then  # the DMA engine completes on MSI-X vector 1
        set -- $after
        [ "$(val vec1 "$@")" -ge 1 ] 2>/dev/null || dma_bad="$dma_bad msix:vector-1-unused"
    fi
    rmmod devmodels_testdev || report testdev.$mode.rmmod FAIL "rmmod failed"
    set -- $counts
    raised=$(val raised "$@"); handled=$(val handled "$@"); none=$(val unhandled "$@")
    timeouts=$(val timeouts "$@"); vec0=$(val vec0 "$@"); vec1=$(val vec1 "$@")
    got_enabled="msi_enabled=$(val msi_enabled "$@") msix_enabled=$(val msix_enabled "$@")"
    n_lines=$(echo "$lines" | grep -c .)
    total=0; chips=""
    while read -r c ch ty nm; do
        [ -n "$c" ] || continue
        total=$(( total + c )); chips="$chips $nm:$ch:$ty:$c"
    done <<EOF
$lines
EOF
    detail="$handled/$want handled (raised $raised, IRQ_NONE $none, timeouts $timeouts, vec0 $vec0"
    [ "$vectors" = 2 ] && detail="$detail, vec1 $vec1"
    detail="$detail; /proc/interrupts$chips)"
    bad=""
    [ $raise_rc = 0 ] || bad="$bad raise: $raise_err;"
    [ "$raised" = "$want" ] && [ "$handled" = "$want" ] && [ "$timeouts" = 0 ] || bad="$bad counts;"
    [ "$(val vectors "$@")" = "$vectors" ] && [ "$n_lines" = "$vectors" ] || bad="$bad want $vectors vector(s), $n_lines line(s);"
    [ "$got_enabled" = "$enabled" ] || bad="$bad $got_enabled;"
    case "$chips" in *":$chip"*) ;; *) bad="$bad want $chip;" ;; esac
    [ "$total" -ge "$want" ] || bad="$bad /proc/interrupts counts $total;"
    if [ -z "$bad" ]; then report testdev.$mode PASS "$detail"; else report testdev.$mode FAIL "$bad $detail"; fi
done
if [ -z "$dma_bad" ]; then
    report testdev.dma_irq PASS "4096-byte copy completed by IRQ_DMA_DONE and verified in:$dma_ok"
else
    report testdev.dma_irq FAIL "failed in:$dma_bad (passed in:${dma_ok:- none})"
fi
""".replace("@MODULE@", MODULE_PATH).replace("@RAISES@", str(RAISES))


REQUIRED_CHECKS = frozenset({"testdev.intx", "testdev.msi", "testdev.msix", "testdev.dma_irq"})


class TestdevIrqCase(ServedCase):
    """The interrupt row: builds our driver into the image, fails with the reason if it cannot."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self) -> None:
        super().__init__("devmodels_testdev (ours)", "testdev 1234:de70 INTx/MSI/MSI-X", "testdev", GUEST_SCRIPT,
                         attachment=VFIO_USER, name="testdev-irqs", required_checks=REQUIRED_CHECKS)
        self.build_error: str | None = None

    def image_extras(self, builder: ImageBuilder) -> None:
        """Build the driver for the image's kernel (cached by content) and add it at
        ``MODULE_PATH``; a failure is kept for ``start`` to report."""
        from ...guest import TESTDEV_MODULE_SOURCE, build_module

        try:
            built = build_module(TESTDEV_MODULE_SOURCE, builder.kernel_source(), builder.cache_dir)
        except (HostError, UsageError) as exc:
            self.build_error = f"cannot build the testdev driver: {exc}"
            return
        self.build_error = None
        builder.add_file(MODULE_PATH, built.path)

    def start(self, stack: contextlib.ExitStack, workdir: Path) -> Attachment:
        """The vfio-user server, unless the driver could not be built.

        Raises:
            HostError: the driver could not be built (the reason), or as ``ServedCase.start``.
        """
        if self.build_error is not None:
            raise HostError(self.build_error)
        return super().start(stack, workdir)


def cases() -> list[ServedCase]:
    """The interrupt row (vfio-user only)."""
    return [TestdevIrqCase()]
