/* testdev_ops payload (bench/kvm.py): the same device operations, many times, with a mark
 * on PORT_MARK between phases so that the host times each phase. It finds the PCI test
 * device by its IDs, so the device may be in this process or behind any proxy function.
 *
 * Phases (ops_config[0] operations each): 1 register reads (ID), 2 register writes
 * (SCRATCH), 3 DMA copies of ops_config[1] bytes (SRC, DST, LEN, CMD, then STATUS read:
 * five accesses). No interrupts: the device's status is read back, so the figures are
 * accesses and DMA, not interrupt delivery.
 */
#include "rt.h"

#define PORT_MARK 0xF8
volatile u64 ops_config[2] = {1000, 4096};

static u8 src[65536] __attribute__((aligned(4096)));
static u8 dst[65536] __attribute__((aligned(4096)));

static void mark(u32 phase) { outl(PORT_MARK, phase); }

int main(void) {
    int devfn = pci_find(0x1234, 0xDE70);
    CHECK(devfn >= 0);
    if (devfn < 0) return finish();
    u64 bar0 = pci_bar((u8)devfn, 0);
    u64 count = ops_config[0];
    u32 length = (u32)ops_config[1];
    CHECK(length <= sizeof src);
    if (length > sizeof src) return finish();
    u32 ok = 1;
    mark(1);
    for (u64 i = 0; i < count; i++) ok &= mmio_read32(bar0 + 0x00) == 0x7E57DE70u;
    mark(2);
    for (u64 i = 0; i < count; i++) mmio_write32(bar0 + 0x04, (u32)i);
    mark(3);
    for (u64 i = 0; i < count; i++) {
        mmio_write32(bar0 + 0x20, (u32)(u64)src);
        mmio_write32(bar0 + 0x28, (u32)(u64)dst);
        mmio_write32(bar0 + 0x30, length);
        mmio_write32(bar0 + 0x34, 1);
        ok &= mmio_read32(bar0 + 0x38) == 1;
    }
    mark(4);
    CHECK(ok);
    CHECK_EQ(mmio_read32(bar0 + 0x04), (u32)(count - 1));
    return finish();
}
