/* testdev payload: drives the devmodels PCI test device (devmodels/testdev) as a minimal
 * driver would — registers through MMIO and port I/O, the DMA engine, and each interrupt
 * kind in turn: INTx through the I/O APIC, MSI, MSI-X (with masking and the PBA).
 *
 * Like a real driver's handler, ours asks the device whether the interrupt was its own
 * (IRQ_STATUS non-zero) and counts the others as spurious: a hypervisor may deliver a
 * level-triggered vector again before the handler deasserted the line (kvm_pvm does;
 * kvm/README.md), which must cost nothing but a spurious call.
 *
 * results.values: [0] INTx GSI, [1] INTx handled, [2] MSI handled, [3] MSI-X handled,
 * [4] DMA bytes checked, [5] spurious (empty-status) calls.
 */
#include "rt.h"

#define TESTDEV_VENDOR 0x1234
#define TESTDEV_DEVICE 0xDE70
#define TESTDEV_MAGIC 0x7E57DE70u
#define R_ID 0x00
#define R_SCRATCH 0x04
#define R_IRQ_STATUS 0x08
#define R_IRQ_RAISE 0x0C
#define R_IRQ_ACK 0x10
#define R_DMA_SRC 0x20
#define R_DMA_DST 0x28
#define R_DMA_LEN 0x30
#define R_DMA_CMD 0x34
#define R_DMA_STATUS 0x38
#define DMA_DONE 1
#define DMA_ERROR 2
#define IRQ_DMA_DONE 1
#define IRQ_DMA_ERROR 2

#define VEC_INTX 0x30
#define VEC_MSI 0x31
#define VEC_MSIX 0x32

static u64 bar0;
static u8 src[4096] __attribute__((aligned(64)));
static u8 dst[4096] __attribute__((aligned(64)));

static volatile u32 handled[256], spurious;

static void ack_device(u8 vector) {
    u32 status = mmio_read32(bar0 + R_IRQ_STATUS);
    if (!status) { spurious++; return; }
    mmio_write32(bar0 + R_IRQ_ACK, status);
    handled[vector]++;
}

static void spin(u32 n) { for (volatile u32 i = 0; i < n; i++) {} }  /* no pause: PVM traps it */

static void test_registers(u8 devfn) {
    CHECK_EQ(mmio_read32(bar0 + R_ID), TESTDEV_MAGIC);
    mmio_write32(bar0 + R_SCRATCH, 0xA5A55A5Au);
    CHECK_EQ(mmio_read32(bar0 + R_SCRATCH), 0xA5A55A5Au);
    mmio_write16(bar0 + R_SCRATCH + 2, 0x1234);                   /* a partial write */
    CHECK_EQ(mmio_read32(bar0 + R_SCRATCH), 0x12345A5Au);
    u16 io = (u16)pci_bar(devfn, 1);
    CHECK(io != 0);
    CHECK_EQ(inl(io + R_ID), TESTDEV_MAGIC);                        /* BAR1 mirrors ID, SCRATCH */
    outl(io + R_SCRATCH, 0xC0FFEE00u);
    CHECK_EQ(mmio_read32(bar0 + R_SCRATCH), 0xC0FFEE00u);
    CHECK_EQ(mmio_read32(bar0 + 0x800), 0);                         /* unimplemented reads 0 */
}

static void test_dma(void) {
    for (int i = 0; i < 4096; i++) src[i] = (u8)(i * 7 + 3);
    memset(dst, 0, sizeof dst);
    mmio_write32(bar0 + R_DMA_SRC, (u32)(u64)src);                 /* two 32-bit halves */
    mmio_write32(bar0 + R_DMA_SRC + 4, (u32)((u64)src >> 32));
    mmio_write64(bar0 + R_DMA_DST, (u64)dst);                       /* one 64-bit write */
    mmio_write32(bar0 + R_DMA_LEN, sizeof src);
    mmio_write32(bar0 + R_DMA_CMD, 1);
    CHECK_EQ(mmio_read32(bar0 + R_DMA_STATUS), DMA_DONE);
    CHECK(memcmp(src, dst, sizeof src) == 0);
    results.values[4] = memcmp(src, dst, sizeof src) == 0 ? sizeof src : 0;
    CHECK_EQ(mmio_read32(bar0 + R_IRQ_STATUS) & IRQ_DMA_DONE, IRQ_DMA_DONE);
    mmio_write32(bar0 + R_IRQ_ACK, 0xFFFFFFFFu);
    /* A source outside guest RAM: the device reports an error, never touches dst. */
    mmio_write64(bar0 + R_DMA_SRC, 0x100000000000ul);
    mmio_write32(bar0 + R_DMA_CMD, 1);
    CHECK_EQ(mmio_read32(bar0 + R_DMA_STATUS), DMA_ERROR);
    CHECK_EQ(mmio_read32(bar0 + R_IRQ_STATUS) & IRQ_DMA_ERROR, IRQ_DMA_ERROR);
    mmio_write32(bar0 + R_IRQ_ACK, 0xFFFFFFFFu);
}

static void test_intx(u8 devfn) {
    u8 gsi = pci_read8(devfn, 0x3C);                                /* Interrupt Line, set by firmware */
    results.values[0] = gsi;
    CHECK(gsi >= 16 && gsi < 24);
    irq_set_handler(VEC_INTX, ack_device);
    ioapic_route(gsi, VEC_INTX, 1);
    for (u32 i = 1; i <= 3; i++) {
        mmio_write32(bar0 + R_IRQ_RAISE, 4);
        wait_for(&handled[VEC_INTX], i);
    }
    CHECK_EQ(handled[VEC_INTX], 3);
    CHECK_EQ(mmio_read32(bar0 + R_IRQ_STATUS), 0);
    /* Command.INTX_DISABLE (PCI 3.0 §6.2.2): the pin stays quiet, Status.INTERRUPT still set.
     * A repeated delivery of the last vector is taken first (spurious, status 0), so that
     * it cannot claim the status raised next. */
    spin(2000000);  /* interrupts on: anything due arrives meanwhile */
    pci_write16(devfn, 0x04, pci_read16(devfn, 0x04) | 0x400);
    mmio_write32(bar0 + R_IRQ_RAISE, 4);
    spin(2000000);  /* interrupts on: anything due arrives meanwhile */
    CHECK_EQ(handled[VEC_INTX], 3);
    CHECK(pci_read16(devfn, 0x06) & 0x8);
    pci_write16(devfn, 0x04, pci_read16(devfn, 0x04) & ~0x400);  /* re-enabled: it fires now */
    wait_for(&handled[VEC_INTX], 4);
    CHECK_EQ(handled[VEC_INTX], 4);
    ioapic_mask(gsi);
    irq_set_handler(VEC_INTX, 0);   /* like free_irq: a late repeat of the vector claims nothing */
    results.values[1] = handled[VEC_INTX];
}

static void test_msi(u8 devfn) {
    u8 cap = pci_find_cap(devfn, 0x05);
    CHECK(cap != 0);
    u16 control = pci_read16(devfn, cap + 2);
    CHECK(control & 0x80);                                           /* 64-bit address */
    pci_write32(devfn, cap + 4, MSI_ADDRESS);
    pci_write32(devfn, cap + 8, 0);
    pci_write16(devfn, cap + 12, VEC_MSI);
    irq_set_handler(VEC_MSI, ack_device);
    pci_write16(devfn, cap + 2, control | 1);                        /* MSI Enable */
    for (u32 i = 1; i <= 3; i++) {
        mmio_write32(bar0 + R_IRQ_RAISE, 8);
        wait_for(&handled[VEC_MSI], i);
    }
    CHECK_EQ(handled[VEC_MSI], 3);
    CHECK_EQ(handled[VEC_INTX], 4);                                /* INTx stays quiet under MSI */
    pci_write16(devfn, cap + 2, control & ~1);
    irq_set_handler(VEC_MSI, 0);
    results.values[2] = handled[VEC_MSI];
}

static void test_msix(u8 devfn) {
    u8 cap = pci_find_cap(devfn, 0x11);
    CHECK(cap != 0);
    u16 control = pci_read16(devfn, cap + 2);
    CHECK_EQ((control & 0x7FF) + 1, 2);                              /* table size */
    u32 table = pci_read32(devfn, cap + 4), pba = pci_read32(devfn, cap + 8);
    u64 tbase = pci_bar(devfn, table & 7) + (table & ~7u);
    u64 pbase = pci_bar(devfn, pba & 7) + (pba & ~7u);
    mmio_write32(tbase + 0, MSI_ADDRESS);
    mmio_write32(tbase + 4, 0);
    mmio_write32(tbase + 8, VEC_MSIX);
    mmio_write32(tbase + 12, 1);                                     /* masked first */
    irq_set_handler(VEC_MSIX, ack_device);
    pci_write16(devfn, cap + 2, control | 0x8000);                   /* MSI-X Enable */
    mmio_write32(bar0 + R_IRQ_RAISE, 16);
    spin(2000000);  /* interrupts on: anything due arrives meanwhile */
    CHECK_EQ(handled[VEC_MSIX], 0);                                /* masked: pending, not sent */
    CHECK_EQ(mmio_read32(pbase) & 1, 1);
    mmio_write32(tbase + 12, 0);                                     /* unmask: the pending one goes */
    wait_for(&handled[VEC_MSIX], 1);
    CHECK_EQ(mmio_read32(pbase) & 1, 0);
    for (u32 i = 2; i <= 4; i++) {
        mmio_write32(bar0 + R_IRQ_RAISE, 16);
        wait_for(&handled[VEC_MSIX], i);
    }
    CHECK_EQ(handled[VEC_MSIX], 4);
    CHECK_EQ(handled[VEC_MSI], 3);
    results.values[3] = handled[VEC_MSIX];
}

int main(void) {
    interrupts_init();
    int devfn = pci_find(TESTDEV_VENDOR, TESTDEV_DEVICE);
    CHECK(devfn >= 0);
    if (devfn < 0) return finish();
    bar0 = pci_bar((u8)devfn, 0);
    CHECK(bar0 != 0);
    CHECK(pci_read16((u8)devfn, 0x04) & 0x4);                        /* firmware set Bus Master */
    test_registers((u8)devfn);
    test_dma();
    test_intx((u8)devfn);
    test_msi((u8)devfn);
    test_msix((u8)devfn);
    results.values[5] = spurious;
    return finish();
}
