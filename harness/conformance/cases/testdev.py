"""Conformance: the devmodels PCI test device behind ``x-pci-proxy-dev``.

No Linux driver binds this device, so the guest plays the driver from the shell: sysfs
enumeration, BAR0 registers with ``devmem``, BAR1 through port I/O (sysfs ``resource1``),
and a DMA copy inside RAM reserved on the command line (``memmap=1M$0x10000000``).
"""

from __future__ import annotations

from ._served import ATTACHMENTS, ServedCase

__all__ = ["cases", "GUEST_SCRIPT", "REQUIRED_CHECKS"]

GUEST_SCRIPT = r"""
find_pci() {
    for _f_dev in /sys/bus/pci/devices/*; do
        if [ "$(cat $_f_dev/vendor)" = "$1" ] && [ "$(cat $_f_dev/device)" = "$2" ]; then
            echo $_f_dev; return 0
        fi
    done
    return 1
}
expect() {  # NAME GOT WANT
    if [ "$2" = "$3" ]; then report "$1" PASS "$2"; else report "$1" FAIL "got $2, want $3"; fi
}
if ! dev=$(find_pci 0x1234 0xde70); then
    report testdev.enumerated FAIL "no 1234:de70"; exit 0
fi
report testdev.enumerated PASS "${dev##*/}"
expect testdev.class "$(cat $dev/class)" 0x00ff00
echo 1 > $dev/enable
base=$(head -n 1 $dev/resource | cut -d' ' -f1)
expect testdev.bar0_id "$(devmem $base 32)" 0x7E57DE70
devmem $(( base + 4 )) 32 0xA5A55A5A
expect testdev.bar0_scratch "$(devmem $(( base + 4 )) 32)" 0xA5A55A5A
expect testdev.bar1_id "$(dd if=$dev/resource1 bs=4 count=1 2>/dev/null | od -A n -t x4 | tr -d ' ')" 7e57de70
printf '\007' | dd of=$dev/config bs=1 seek=4 count=1 conv=notrunc 2>/dev/null
src=0x10000000; dst=0x10000800; i=0
while [ $i -lt 16 ]; do
    devmem $(( src + 4 * i )) 32 $(( 0xC0DE0000 + i )); devmem $(( dst + 4 * i )) 32 0; i=$(( i + 1 ))
done
devmem $(( base + 0x20 )) 64 $src
devmem $(( base + 0x28 )) 64 $dst
devmem $(( base + 0x30 )) 32 64
devmem $(( base + 0x34 )) 32 1
expect testdev.dma_status "$(devmem $(( base + 0x38 )) 32)" 0x00000001
bad=0; i=0
while [ $i -lt 16 ]; do
    [ "$(devmem $(( dst + 4 * i )) 32)" = "$(printf '0x%08X' $(( 0xC0DE0000 + i )))" ] || bad=$(( bad + 1 ))
    i=$(( i + 1 ))
done
expect testdev.dma_copy "$bad words differ" "0 words differ"
"""


REQUIRED_CHECKS = frozenset({
    "testdev.enumerated", "testdev.class", "testdev.bar0_id", "testdev.bar0_scratch", "testdev.bar1_id",
    "testdev.dma_status", "testdev.dma_copy",
})


def cases() -> list[ServedCase]:
    """The test device's row."""
    return [
        ServedCase("none (sysfs+devmem)", "testdev 1234:de70", "testdev", GUEST_SCRIPT, attachment=attachment,
                   name="testdev", append=("memmap=1M$0x10000000",), required_checks=REQUIRED_CHECKS)
        for attachment in ATTACHMENTS
    ]
