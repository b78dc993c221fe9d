/* The devmodels PCI test device (1234:de70; devmodels/testdev/regs.py): DMA and interrupt abuse.
 *
 * Architected errors (devmodels/testdev/device.py): a DMA with a bad address, an oversized
 * length or Bus Master disabled ends with DMA_STATUS = ERROR and IRQ_STATUS.DMA_ERROR.
 * Liveness: acknowledge every interrupt, then one 64-byte copy inside the DMA range.
 */
#include "hostile.h"

#include <string.h>

#define ID 0x00
#define IRQ_STATUS 0x08
#define IRQ_RAISE 0x0c
#define IRQ_ACK 0x10
#define DMA_SRC 0x20
#define DMA_DST 0x28
#define DMA_LEN 0x30
#define DMA_CMD 0x34
#define DMA_STATUS 0x38
#define MAGIC 0x7e57de70u
#define STATUS_DONE 1
#define STATUS_ERROR 2
#define IRQ_DONE 1
#define IRQ_ERROR 2
#define MAX_LEN (1u << 20)

static volatile uint8_t *regs(struct ctx *c) { return c->dev->bar[0].map; }

static void wr64(volatile uint8_t *r, uint32_t off, uint64_t v) {
    wr32(r, off, (uint32_t)v);
    wr32(r, off + 4, (uint32_t)(v >> 32));
}

/* Starts one copy and waits for its end; returns the DMA status (or -1: no end seen). */
static int copy(struct ctx *c, uint64_t src, uint64_t dst, uint32_t len) {
    volatile uint8_t *r = regs(c);
    wr32(r, IRQ_ACK, 0xffffffff);
    wr64(r, DMA_SRC, src);
    wr64(r, DMA_DST, dst);
    wr32(r, DMA_LEN, len);
    wr32(r, DMA_CMD, 1);
    if (!WAIT_FOR(rd32(r, IRQ_STATUS) & (IRQ_DONE | IRQ_ERROR), REACT_MS * 5)) return -1;
    return (int)rd32(r, DMA_STATUS);
}

/* The DMA must end in the architected error. */
static int expect_error(struct ctx *c, uint64_t src, uint64_t dst, uint32_t len) {
    int status = copy(c, src, dst, len);
    uint32_t irq = rd32(regs(c), IRQ_STATUS);
    if (status != STATUS_ERROR || !(irq & IRQ_ERROR))
        return fail(c, "src=%#llx dst=%#llx len=%#x: DMA_STATUS=%d IRQ_STATUS=%#x, want ERROR", (unsigned long long)src,
                    (unsigned long long)dst, len, status, irq);
    return 0;
}

static uint64_t scratch(void) { return pa(dma_alloc(4096, 4096)); }

static int open_testdev(struct ctx *c) {
    if (!c->dev->bar[0].map) return fail(c, "BAR0 is not mapped");
    if (rd32(regs(c), ID) != MAGIC) return fail(c, "ID reads %#x", rd32(regs(c), ID));
    return 0;
}

static int liveness(struct ctx *c) {
    uint8_t *src = dma_alloc(64, 64), *dst = dma_alloc(64, 64);
    for (int i = 0; i < 64; i++) src[i] = (uint8_t)(0xc0 + i);
    if (rd32(regs(c), ID) != MAGIC) return fail(c, "ID reads %#x", rd32(regs(c), ID));
    int status = copy(c, pa(src), pa(dst), 64);
    if (status != STATUS_DONE) return fail(c, "valid copy: DMA_STATUS=%d", status);
    if (memcmp(src, dst, 64)) return fail(c, "valid copy: destination differs");
    return 0;
}

static int src_beyond_ram(struct ctx *c) { return expect_error(c, g.ram_end, scratch(), 64); }
static int dst_beyond_ram(struct ctx *c) { return expect_error(c, scratch(), g.ram_end + 0x1000, 64); }
static int src_straddles_end(struct ctx *c) { return expect_error(c, g.ram_end - 32, scratch(), 64); }
static int dst_straddles_end(struct ctx *c) { return expect_error(c, scratch(), g.ram_end - 32, 64); }
static int dst_in_own_bar(struct ctx *c) { return expect_error(c, scratch(), c->dev->bar[0].phys, 64); }
static int src_in_msix_bar(struct ctx *c) {
    uint64_t bar = c->dev->bar[2].phys ? c->dev->bar[2].phys : c->dev->bar[0].phys;
    return expect_error(c, bar, scratch(), 64);
}
static int huge_len(struct ctx *c) { return expect_error(c, scratch(), scratch(), 0xffffffff); }
static int max_len_plus_one(struct ctx *c) {
    uint64_t base = pa(dma_alloc(2 * MAX_LEN + 8192, 4096));
    return expect_error(c, base, base + MAX_LEN + 4096, MAX_LEN + 1);
}
static int address_wraps(struct ctx *c) { return expect_error(c, 0xffffffffffffffe0ull, scratch(), 64); }
static int dst_wraps(struct ctx *c) { return expect_error(c, scratch(), 0xfffffffffffffff0ull, 64); }
static int no_bus_master(struct ctx *c) {
    pci_bus_master(c->dev, 0);
    int r = expect_error(c, scratch(), scratch(), 64);
    pci_bus_master(c->dev, 1);
    return r;
}
static int zero_len(struct ctx *c) {
    int status = copy(c, scratch(), scratch(), 0);
    if (status != STATUS_DONE && status != STATUS_ERROR) return fail(c, "zero-length copy did not end (status %d)", status);
    return 0;
}
static int back_to_back(struct ctx *c) {
    volatile uint8_t *r = regs(c);
    uint64_t a = scratch();
    wr64(r, DMA_SRC, a);
    wr64(r, DMA_DST, g.ram_end);
    wr32(r, DMA_LEN, 4096);
    for (int i = 0; i < 2000; i++) wr32(r, DMA_CMD, 1);
    return 0;
}

/* INTx storm: raise and acknowledge as fast as the guest can. */
static int irq_storm(struct ctx *c) {
    volatile uint8_t *r = regs(c);
    for (int i = 0; i < 20000; i++) {
        wr32(r, IRQ_RAISE, 0xffffffff);
        wr32(r, IRQ_ACK, 0xffffffff);
    }
    uint32_t left = rd32(r, IRQ_STATUS);
    if (left) return fail(c, "IRQ_STATUS %#x after the last acknowledge", left);
    return 0;
}

/* MSI-X storm with the vector masked: the pending bit must be set (PCI 3.0 §6.8.2.9). Where
 * the attachment hides MSI-X (QEMU 7.2's proxy) it is an INTx storm without acknowledges. */
static int msix_masked_storm(struct ctx *c) {
    volatile uint8_t *r = regs(c);
    int cap = cfg_find_cap(c->dev, 0x11, 0);
    if (!cap) {
        for (int i = 0; i < 20000; i++) wr32(r, IRQ_RAISE, 1u << (i % 32));
        wr32(r, IRQ_ACK, 0xffffffff);
        return 0;
    }
    uint32_t table = cfg_read(c->dev, cap + 4, 4), pba = cfg_read(c->dev, cap + 8, 4);
    volatile uint8_t *tbar = c->dev->bar[table & 7].map, *pbar = c->dev->bar[pba & 7].map;
    if (!tbar || !pbar) return fail(c, "MSI-X table BAR not mapped");
    uint32_t toff = table & ~7u, poff = pba & ~7u;
    wr32(tbar, toff + 12, 1); /* mask vector 0 */
    wr32(tbar, toff + 0, 0xfee00000);
    wr32(tbar, toff + 4, 0);
    wr32(tbar, toff + 8, 0xef);
    uint16_t ctl = cfg_read(c->dev, cap + 2, 2);
    cfg_write(c->dev, cap + 2, 2, ctl | 0x8000);
    for (int i = 0; i < 20000; i++) {
        wr32(r, IRQ_RAISE, 1);
        wr32(r, IRQ_ACK, 1);
    }
    wr32(r, IRQ_RAISE, 1);
    int pending = rd32(pbar, poff) & 1;
    wr32(r, IRQ_ACK, 0xffffffff);
    cfg_write(c->dev, cap + 2, 2, ctl & ~0x8000);
    if (!pending) return fail(c, "masked vector 0 has no pending bit while IRQ_STATUS is set");
    return 0;
}

static int register_sweep(struct ctx *c) {
    bar_sweep(c->dev, 0, 0, 0x1000);
    bar_sweep(c->dev, 2, 0, 0x1000);
    return 0;
}

static int config_abuse(struct ctx *c) {
    config_sweep(c->dev);
    return 0;
}

static const struct scenario scenarios[] = {
    {"dma-src-beyond-ram", "copy from the first address past RAM", src_beyond_ram},
    {"dma-dst-beyond-ram", "copy to a page past RAM", dst_beyond_ram},
    {"dma-src-straddles-end", "copy 64 bytes starting 32 bytes before the end of RAM", src_straddles_end},
    {"dma-dst-straddles-end", "copy to 32 bytes before the end of RAM, 64 bytes long", dst_straddles_end},
    {"dma-dst-in-own-bar", "copy into the device's own BAR0 registers", dst_in_own_bar},
    {"dma-src-in-msix-bar", "copy from the MSI-X BAR", src_in_msix_bar},
    {"dma-huge-len", "length 0xffffffff", huge_len},
    {"dma-max-len-plus-one", "length DMA_MAX_LEN + 1 inside RAM", max_len_plus_one},
    {"dma-src-wraps", "source 32 bytes below 2^64, 64 bytes long", address_wraps},
    {"dma-dst-wraps", "destination 16 bytes below 2^64", dst_wraps},
    {"dma-without-bus-master", "start a copy with Bus Master Enable clear", no_bus_master},
    {"dma-zero-len", "length 0", zero_len},
    {"dma-start-storm", "2000 starts of a failing 4 KiB copy, back to back", back_to_back},
    {"irq-storm", "20000 raise/acknowledge pairs", irq_storm},
    {"msix-masked-storm", "MSI-X vector 0 masked, 20000 raises; pending bit set (INTx storm without MSI-X)",
     msix_masked_storm},
    {"register-sweep", "all ones, then zero, into every dword of BAR0 and BAR2 (MSI-X)", register_sweep},
    {"config-sweep", "all ones into every dword of config space 0x40-0xff (PM capability left out)", config_abuse},
};

static const uint16_t ids[] = {0xde70, 0};

const struct device_class testdev_class = {
    .name = "testdev",
    .vendor = 0x1234,
    .devices = ids,
    .driver = "none",
    .open = open_testdev,
    .liveness = liveness,
    .scenarios = scenarios,
    .count = sizeof scenarios / sizeof scenarios[0],
};
