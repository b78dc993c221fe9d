/* AHCI 1.3.1 (ICH9 8086:2922, ABAR = BAR5): command list, FIS area, PRDT and FIS abuse on port 0.
 *
 * Architected behaviour checked:
 * - a command the drive rejects (unknown opcode, LBA past the end, PACKET to a disk) ends
 *   with an error: PxIS.TFES and PxTFD.ERR (ATA ABRT/IDNF; AHCI §6.1.2);
 * - a command whose header, table or data buffers cannot be reached, or whose PRDT is too
 *   small, must not complete as a success: it completes with an error (TFES, HBFS, HBDS,
 *   IFS, OFS) or not at all until the port is reset (§6.1.1, §6.1.2);
 * - clearing PxCMD.ST stops the engine within 500 ms and clears PxCI (§3.3.7, §10.3.2).
 * Liveness: GHC.HR (§10.4.3) as libahci does it, port 0 brought up again (CLB, FB, FRE,
 * spin-up, link, ST), then IDENTIFY DEVICE and a READ DMA EXT of sector 0.
 */
#include "hostile.h"

#include <string.h>

#define CAP 0x00
#define GHC 0x04
#define HBA_IS 0x08
#define PI 0x0c
#define GHC_HR (1u << 0)
#define GHC_AE (1u << 31)
#define CAP_S64A (1u << 31)

#define P 0x100 /* port 0 */
#define PxCLB 0x00
#define PxCLBU 0x04
#define PxFB 0x08
#define PxFBU 0x0c
#define PxIS 0x10
#define PxIE 0x14
#define PxCMD 0x18
#define PxTFD 0x20
#define PxSSTS 0x28
#define PxSCTL 0x2c
#define PxSERR 0x30
#define PxSACT 0x34
#define PxCI 0x38

#define CMD_ST (1u << 0)
#define CMD_SUD (1u << 1)
#define CMD_POD (1u << 2)
#define CMD_FRE (1u << 4)
#define CMD_FR (1u << 14)
#define CMD_CR (1u << 15)
#define IS_TFES (1u << 30)
#define IS_HBFS (1u << 29)
#define IS_HBDS (1u << 28)
#define IS_IFS (1u << 27)
#define IS_INFS (1u << 26)
#define IS_OFS (1u << 24)
#define IS_ERRORS (IS_TFES | IS_HBFS | IS_HBDS | IS_IFS | IS_INFS | IS_OFS)
#define TFD_ERR 0x01
#define TFD_DRQ 0x08
#define TFD_BSY 0x80

#define ATA_IDENTIFY 0xec
#define ATA_READ_DMA_EXT 0x25
#define ATA_PACKET 0xa0
#define ATA_READ_FPDMA 0x60

#define H_ATAPI (1u << 5)
#define H_WRITE (1u << 6)

static struct {
    volatile uint8_t *abar;
    uint64_t abar_phys;
    volatile uint32_t *clb; /* 32 headers of 8 dwords */
    uint8_t *fb;
} a;

static uint32_t prd(uint32_t off) { return rd32(a.abar, P + off); }
static void pwr(uint32_t off, uint32_t v) { wr32(a.abar, P + off, v); }

static int open_ahci(struct ctx *c) {
    a.abar = c->dev->bar[5].map;
    a.abar_phys = c->dev->bar[5].phys;
    if (!a.abar) return fail(c, "ABAR (BAR5) is not mapped");
    if (!(rd32(a.abar, PI) & 1)) return fail(c, "port 0 is not implemented (PI %#x)", rd32(a.abar, PI));
    if (!(rd32(a.abar, CAP) & CAP_S64A)) return fail(c, "no 64-bit addressing (CAP %#x): the DMA range is above 4 GiB", rd32(a.abar, CAP));
    return 0;
}

static int port_stop(struct ctx *c) {
    pwr(PxCMD, prd(PxCMD) & ~CMD_ST);
    if (!WAIT_FOR(!(prd(PxCMD) & CMD_CR), 600)) return fail(c, "PxCMD.CR stays set after ST was cleared");
    pwr(PxCMD, prd(PxCMD) & ~CMD_FRE);
    if (!WAIT_FOR(!(prd(PxCMD) & CMD_FR), 600)) return fail(c, "PxCMD.FR stays set after FRE was cleared");
    return 0;
}

static int hba_reset(struct ctx *c) {
    wr32(a.abar, GHC, rd32(a.abar, GHC) | GHC_AE);
    wr32(a.abar, GHC, rd32(a.abar, GHC) | GHC_HR);
    if (!WAIT_FOR(!(rd32(a.abar, GHC) & GHC_HR), 2000)) return fail(c, "GHC.HR did not clear");
    wr32(a.abar, GHC, GHC_AE); /* interrupts off */
    return 0;
}

static void comreset(void) {
    pwr(PxSCTL, (prd(PxSCTL) & ~0xfu) | 1);
    sleep_ms(2);
    pwr(PxSCTL, prd(PxSCTL) & ~0xfu);
}

/* Port bring-up as libahci's ahci_start_port does it; clb/fb of 0 allocate fresh areas. */
static int port_start(struct ctx *c, uint64_t clb, uint64_t fb) {
    if (port_stop(c)) return 1;
    a.clb = dma_alloc(1024, 1024);
    a.fb = dma_alloc(256, 256);
    if (!clb) clb = pa(a.clb);
    if (!fb) fb = pa(a.fb);
    pwr(PxCLB, (uint32_t)clb);
    pwr(PxCLBU, (uint32_t)(clb >> 32));
    pwr(PxFB, (uint32_t)fb);
    pwr(PxFBU, (uint32_t)(fb >> 32));
    pwr(PxIE, 0);
    pwr(PxSERR, 0xffffffff);
    pwr(PxIS, 0xffffffff);
    wr32(a.abar, HBA_IS, 0xffffffff);
    pwr(PxCMD, prd(PxCMD) | CMD_FRE);
    pwr(PxCMD, prd(PxCMD) | CMD_SUD | CMD_POD);
    if (!WAIT_FOR((prd(PxSSTS) & 0xf) == 3, 1500)) {
        comreset();
        if (!WAIT_FOR((prd(PxSSTS) & 0xf) == 3, 3000)) return fail(c, "no link on port 0 (SSTS %#x)", prd(PxSSTS));
    }
    if (!WAIT_FOR(!(prd(PxTFD) & (TFD_BSY | TFD_DRQ)), 5000)) return fail(c, "drive stays busy (TFD %#x)", prd(PxTFD));
    pwr(PxSERR, 0xffffffff);
    pwr(PxIS, 0xffffffff);
    pwr(PxCMD, prd(PxCMD) | CMD_ST);
    return 0;
}

static int bring_up(struct ctx *c) { return hba_reset(c) || port_start(c, 0, 0); }

/* A command table with an H2D register FIS and ``nprd`` PRD entries (not filled). */
static uint8_t *table(size_t nprd) { return dma_alloc(0x80 + 16 * (nprd ? nprd : 1), 128); }

static void h2d(uint8_t *cfis, uint8_t command, uint64_t lba, uint16_t count) {
    memset(cfis, 0, 20);
    cfis[0] = 0x27;
    cfis[1] = 0x80;
    cfis[2] = command;
    cfis[4] = (uint8_t)lba;
    cfis[5] = (uint8_t)(lba >> 8);
    cfis[6] = (uint8_t)(lba >> 16);
    cfis[7] = 0x40;
    cfis[8] = (uint8_t)(lba >> 24);
    cfis[9] = (uint8_t)(lba >> 32);
    cfis[10] = (uint8_t)(lba >> 40);
    cfis[12] = (uint8_t)count;
    cfis[13] = (uint8_t)(count >> 8);
}

static void set_prd(uint8_t *ct, int i, uint64_t dba, uint32_t bytes) {
    volatile uint32_t *p = (volatile uint32_t *)(ct + 0x80 + 16 * i);
    p[0] = (uint32_t)dba;
    p[1] = (uint32_t)(dba >> 32);
    p[2] = 0;
    p[3] = (bytes - 1) & 0x3fffff;
}

static void header(int slot, uint32_t dw0, uint64_t ctba) {
    volatile uint32_t *h = a.clb + 8 * slot;
    h[0] = dw0;
    h[1] = 0;
    h[2] = (uint32_t)ctba;
    h[3] = (uint32_t)(ctba >> 32);
    h[4] = h[5] = h[6] = h[7] = 0;
}

static uint32_t dw0(uint32_t cfl, uint32_t prdtl, uint32_t flags) { return cfl | flags | prdtl << 16; }

static void issue(int slot) {
    mb();
    pwr(PxCI, 1u << slot);
}

/* Waits for ``slot`` to complete or an error; returns 0 done, 1 error, -1 neither. */
static int wait_slot(int slot, unsigned ms) {
    WAIT_FOR(!(prd(PxCI) & (1u << slot)) || (prd(PxIS) & IS_ERRORS), ms);
    if ((prd(PxIS) & IS_ERRORS) || (prd(PxTFD) & TFD_ERR)) return 1;
    return (prd(PxCI) & (1u << slot)) ? -1 : 0;
}

static int expect_error(struct ctx *c, int slot, const char *what) {
    int r = wait_slot(slot, REACT_MS * 5);
    if (r == 1) return 0;
    return fail(c, "%s: %s, no error reported (PxIS %#x, PxTFD %#x)", what, r == 0 ? "completed" : "still issued",
                prd(PxIS), prd(PxTFD));
}

static int no_false_success(struct ctx *c, int slot, const char *what) {
    int r = wait_slot(slot, REACT_MS * 2);
    if (r != 0) return 0;
    return fail(c, "%s: completed as a success (PxIS %#x, PxTFD %#x)", what, prd(PxIS), prd(PxTFD));
}

/* One valid command: ``command`` on ``lba`` into a 512-byte buffer. */
static int simple(struct ctx *c, uint8_t command, uint64_t lba, uint8_t *buf) {
    uint8_t *ct = table(1);
    h2d(ct, command, lba, 1);
    set_prd(ct, 0, pa(buf), 512);
    header(0, dw0(5, 1, 0), pa(ct));
    issue(0);
    int r = wait_slot(0, LIVE_MS);
    if (r != 0)
        return fail(c, "command %#x %s (PxIS %#x, PxTFD %#x, PxCI %#x, PxSERR %#x)", command,
                    r > 0 ? "failed" : "did not complete", prd(PxIS), prd(PxTFD), prd(PxCI), prd(PxSERR));
    return 0;
}

static int liveness(struct ctx *c) {
    if (bring_up(c)) return 1;
    uint16_t *id = dma_alloc(512, 512);
    if (simple(c, ATA_IDENTIFY, 0, (uint8_t *)id)) return 1;
    if (id[0] & 0x8000) return fail(c, "IDENTIFY word 0 is %#x: not an ATA device", id[0]);
    uint64_t sectors = id[100] | (uint64_t)id[101] << 16 | (uint64_t)id[102] << 32 | (uint64_t)id[103] << 48;
    if (!sectors && !(id[60] | (uint32_t)id[61] << 16)) return fail(c, "IDENTIFY reports no capacity");
    return simple(c, ATA_READ_DMA_EXT, 0, dma_alloc(512, 512));
}

#define UP_OR_FAIL(c)                                                        \
    do {                                                                     \
        if (bring_up(c)) return fail((c), "bring-up: %s", (c)->detail);      \
    } while (0)

/* A one-sector READ DMA EXT in slot 0 whose pieces are given. */
static void read_with(uint64_t ctba_override, uint64_t dba, uint32_t prdtl, uint32_t cfl) {
    uint8_t *ct = table(1);
    h2d(ct, ATA_READ_DMA_EXT, 0, 1);
    set_prd(ct, 0, dba, 512);
    header(0, dw0(cfl, prdtl, 0), ctba_override ? ctba_override : pa(ct));
    issue(0);
}

static uint64_t scratch(void) { return pa(dma_alloc(65536, 4096)); }

static int clb_at(struct ctx *c, uint64_t clb) {
    if (hba_reset(c) || port_start(c, clb, 0)) return fail(c, "bring-up: %s", c->detail);
    issue(0);
    return no_false_success(c, 0, "a command whose list is unreachable");
}

static int clb_beyond_ram(struct ctx *c) { return clb_at(c, g.ram_end + 0x10000); }

static int clb_straddles_end(struct ctx *c) {
    volatile uint32_t *list = dma_at_end(512); /* slots 0-15 in RAM, 16-31 past its end */
    if (hba_reset(c) || port_start(c, pa(list), 0)) return fail(c, "bring-up: %s", c->detail);
    issue(20);
    return no_false_success(c, 20, "slot 20 past the end of RAM");
}

/* The command list is port 0's own registers: slot 0's CTBA is then PxFB, which points at a
 * FIS area followed by a large PRDT of harmless entries, whatever PRDTL the address makes. */
static int clb_in_abar(struct ctx *c) {
    uint8_t *fb = dma_alloc(0x100 + 16 * 0x10000, 256);
    uint64_t sink = scratch();
    for (int i = 0; i < 0x10000; i++) set_prd(fb, i, sink, 512);
    if (hba_reset(c) || port_start(c, a.abar_phys + P, pa(fb))) return fail(c, "bring-up: %s", c->detail);
    h2d(fb, ATA_IDENTIFY, 0, 1);
    issue(0);
    sleep_ms(REACT_MS);
    return 0;
}

static int fb_at(struct ctx *c, uint64_t fb) {
    if (hba_reset(c) || port_start(c, 0, fb)) return fail(c, "bring-up: %s", c->detail);
    uint8_t *ct = table(1);
    h2d(ct, ATA_IDENTIFY, 0, 1);
    set_prd(ct, 0, scratch(), 512);
    header(0, dw0(5, 1, 0), pa(ct));
    issue(0);
    sleep_ms(REACT_MS);
    return 0;
}

static int fb_beyond_ram(struct ctx *c) { return fb_at(c, g.ram_end + 0x1000); }
static int fb_in_abar(struct ctx *c) { return fb_at(c, a.abar_phys); }

static int ctba_beyond_ram(struct ctx *c) {
    UP_OR_FAIL(c);
    read_with(g.ram_end + 0x1000, scratch(), 1, 5);
    return no_false_success(c, 0, "a command table past the end of RAM");
}

static int ctba_in_abar(struct ctx *c) {
    UP_OR_FAIL(c);
    read_with(a.abar_phys, scratch(), 1, 5);
    return no_false_success(c, 0, "a command table in the ABAR");
}

/* A 64 KiB read whose PRDT of 0xffff entries starts 4 entries before the end of RAM. */
static int prdt_ffff_end(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = dma_at_end(0x80 + 4 * 16);
    h2d(ct, ATA_READ_DMA_EXT, 0, 128);
    uint64_t sink = scratch();
    for (int i = 0; i < 4; i++) set_prd(ct, i, sink + 512 * i, 512);
    header(0, dw0(5, 0xffff, 0), pa(ct));
    issue(0);
    return no_false_success(c, 0, "a PRDT running past the end of RAM");
}

static int prd_at(struct ctx *c, uint64_t dba, const char *what) {
    UP_OR_FAIL(c);
    read_with(0, dba, 1, 5);
    return no_false_success(c, 0, what);
}

static int prd_at_abar(struct ctx *c) { return prd_at(c, a.abar_phys, "sector data aimed at the ABAR"); }
static int prd_beyond_ram(struct ctx *c) { return prd_at(c, g.ram_end, "sector data aimed past the end of RAM"); }
static int prd_straddles_end(struct ctx *c) { return prd_at(c, g.ram_end - 256, "sector data straddling the end of RAM"); }
static int prd_wraps(struct ctx *c) { return prd_at(c, 0xffffffffffffff00ull, "sector data aimed 256 bytes below 2^64"); }

static int prd_zero_entries(struct ctx *c) {
    UP_OR_FAIL(c);
    read_with(0, scratch(), 0, 5);
    return no_false_success(c, 0, "a one-sector read with PRDTL 0");
}

static int prd_too_small(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(1);
    h2d(ct, ATA_READ_DMA_EXT, 0, 1);
    set_prd(ct, 0, scratch(), 2);
    header(0, dw0(5, 1, 0), pa(ct));
    issue(0);
    return no_false_success(c, 0, "a one-sector read into a 2-byte PRDT");
}

static int prd_dbc_zero(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(1);
    h2d(ct, ATA_READ_DMA_EXT, 0, 1);
    set_prd(ct, 0, scratch(), 1); /* DBC field 0: a one-byte region */
    header(0, dw0(5, 1, 0), pa(ct));
    issue(0);
    return no_false_success(c, 0, "a one-sector read into a PRD whose byte-count field is 0");
}

/* ATA: a count of 0 in READ DMA EXT means 65536 sectors (32 MiB), far more than the PRDT. */
static int sector_count_zero(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(1);
    h2d(ct, ATA_READ_DMA_EXT, 0, 0);
    set_prd(ct, 0, scratch(), 4096);
    header(0, dw0(5, 1, 0), pa(ct));
    issue(0);
    return no_false_success(c, 0, "a 65536-sector read into a 4 KiB PRDT");
}

static int prd_odd_count(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(2);
    h2d(ct, ATA_READ_DMA_EXT, 0, 1);
    set_prd(ct, 0, scratch(), 511); /* bit 0 of DBC must be 1: an even count */
    set_prd(ct, 1, scratch(), 511);
    header(0, dw0(5, 2, 0), pa(ct));
    issue(0);
    sleep_ms(REACT_MS);
    return 0;
}

static int cfis_type_bogus(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(1);
    h2d(ct, ATA_READ_DMA_EXT, 0, 1);
    ct[0] = 0x5f;
    set_prd(ct, 0, scratch(), 512);
    header(0, dw0(5, 1, 0), pa(ct));
    issue(0);
    return no_false_success(c, 0, "a command FIS of type 0x5f");
}

static int cfis_len(struct ctx *c, uint32_t cfl) {
    UP_OR_FAIL(c);
    read_with(0, scratch(), 1, cfl);
    sleep_ms(REACT_MS);
    return 0;
}

static int cfis_len_zero(struct ctx *c) { return cfis_len(c, 0); }
static int cfis_len_huge(struct ctx *c) { return cfis_len(c, 31); }

static int invalid_opcode(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(1);
    h2d(ct, 0xff, 0, 1);
    set_prd(ct, 0, scratch(), 512);
    header(0, dw0(5, 1, 0), pa(ct));
    issue(0);
    return expect_error(c, 0, "ATA command 0xff");
}

static int lba_beyond(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(1);
    h2d(ct, ATA_READ_DMA_EXT, 0xffffffffff00ull, 16);
    set_prd(ct, 0, scratch(), 16 * 512);
    header(0, dw0(5, 1, 0), pa(ct));
    issue(0);
    return expect_error(c, 0, "READ DMA EXT at LBA 2^48 - 256");
}

static int packet_to_disk(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(1);
    h2d(ct, ATA_PACKET, 0, 0);
    ct[0x40] = 0x28; /* READ(10) in the ATAPI command area */
    set_prd(ct, 0, scratch(), 2048);
    header(0, dw0(5, 1, H_ATAPI), pa(ct));
    issue(0);
    return expect_error(c, 0, "PACKET to an ATA disk");
}

static int ncq_without_sact(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(1);
    h2d(ct, ATA_READ_FPDMA, 0, 0);
    ct[3] = 1;          /* FPDMA: the sector count lives in the features field */
    ct[12] = 5 << 3;    /* tag 5, issued in slot 0 without PxSACT */
    set_prd(ct, 0, scratch(), 512);
    header(0, dw0(5, 1, 0), pa(ct));
    issue(0);
    sleep_ms(REACT_MS);
    return 0;
}

/* Eight queued reads (tags 0-7, PxSACT set as a driver does) whose data is aimed past the
 * end of RAM: none may complete as a success (SACT cleared without an error). */
static int ncq_beyond_ram(struct ctx *c) {
    UP_OR_FAIL(c);
    for (int s = 0; s < 8; s++) {
        uint8_t *ct = table(1);
        h2d(ct, ATA_READ_FPDMA, 8 * s, 0);
        ct[3] = 8;               /* sector count (features) */
        ct[12] = (uint8_t)(s << 3); /* tag */
        set_prd(ct, 0, g.ram_end + 0x10000 * s, 4096);
        header(s, dw0(5, 1, 0), pa(ct));
    }
    mb();
    pwr(PxSACT, 0xff);
    pwr(PxCI, 0xff);
    WAIT_FOR(!prd(PxSACT) || (prd(PxIS) & IS_ERRORS), REACT_MS * 4);
    if (!prd(PxSACT) && !(prd(PxIS) & IS_ERRORS) && !(prd(PxTFD) & TFD_ERR))
        return fail(c, "queued reads aimed past the end of RAM completed as successes (PxIS %#x, PxTFD %#x)",
                    prd(PxIS), prd(PxTFD));
    return 0;
}

static int all_slots_garbage(struct ctx *c) {
    UP_OR_FAIL(c);
    uint8_t *ct = table(1); /* all zero: FIS type 0 */
    for (int s = 0; s < 32; s++) header(s, dw0((uint32_t)s % 17, (uint32_t)s, (uint32_t)s << 5 & 0x7e0), pa(ct));
    mb();
    pwr(PxCI, 0xffffffff);
    sleep_ms(REACT_MS);
    return 0;
}

/* Eight 128 KiB reads in flight. */
static void busy_port(void) {
    for (int s = 0; s < 8; s++) {
        uint8_t *ct = table(1);
        h2d(ct, ATA_READ_DMA_EXT, 256 * s, 256);
        set_prd(ct, 0, pa(dma_alloc(128 << 10, 4096)), 128 << 10);
        header(s, dw0(5, 1, 0), pa(ct));
    }
    mb();
    pwr(PxCI, 0xff);
}

static int st_clear_mid_io(struct ctx *c) {
    UP_OR_FAIL(c);
    busy_port();
    pwr(PxCMD, prd(PxCMD) & ~CMD_ST);
    if (!WAIT_FOR(!(prd(PxCMD) & CMD_CR), 500)) return fail(c, "PxCMD.CR still set 500 ms after ST was cleared");
    if (prd(PxCI)) return fail(c, "PxCI %#x after the engine stopped", prd(PxCI));
    return 0;
}

static int comreset_mid_io(struct ctx *c) {
    UP_OR_FAIL(c);
    busy_port();
    comreset();
    sleep_ms(REACT_MS);
    return 0;
}

static int hba_reset_mid_io(struct ctx *c) {
    UP_OR_FAIL(c);
    busy_port();
    return hba_reset(c);
}

static int ci_while_stopped(struct ctx *c) {
    UP_OR_FAIL(c);
    if (port_stop(c)) return 1;
    read_with(0, scratch(), 1, 5);
    pwr(PxCI, 0xffffffff);
    sleep_ms(REACT_MS);
    return 0;
}

static int register_sweep(struct ctx *c) {
    UP_OR_FAIL(c);
    bar_sweep(c->dev, 5, 0, 0x1000);
    return 0;
}

static int config_abuse(struct ctx *c) {
    UP_OR_FAIL(c);
    busy_port();
    config_sweep(c->dev);
    return 0;
}

static const struct scenario scenarios[] = {
    {"clb-beyond-ram", "PxCLB past the end of RAM, slot 0 issued", clb_beyond_ram},
    {"clb-straddles-end", "a command list whose slots 16-31 are past the end of RAM, slot 20 issued", clb_straddles_end},
    {"clb-in-abar", "PxCLB = port 0's own registers, slot 0 issued", clb_in_abar},
    {"fb-beyond-ram", "PxFB past the end of RAM, IDENTIFY issued", fb_beyond_ram},
    {"fb-in-abar", "PxFB = the ABAR, IDENTIFY issued", fb_in_abar},
    {"ctba-beyond-ram", "a command table past the end of RAM", ctba_beyond_ram},
    {"ctba-in-abar", "a command table in the ABAR", ctba_in_abar},
    {"prdt-ffff-end-of-ram", "PRDTL 0xffff with the table 4 entries before the end of RAM, 64 KiB read", prdt_ffff_end},
    {"prd-at-abar", "a sector read into the ABAR", prd_at_abar},
    {"prd-beyond-ram", "a sector read to the end of RAM", prd_beyond_ram},
    {"prd-straddles-end", "a sector read 256 bytes before the end of RAM", prd_straddles_end},
    {"prd-wraps", "a sector read 256 bytes below 2^64", prd_wraps},
    {"prd-zero-entries", "a sector read with PRDTL 0", prd_zero_entries},
    {"prd-too-small", "a sector read into a PRDT of 2 bytes", prd_too_small},
    {"prd-dbc-zero", "a sector read into a PRD whose byte-count field is 0 (1 byte)", prd_dbc_zero},
    {"sector-count-zero", "READ DMA EXT with count 0 (65536 sectors) into a 4 KiB PRDT", sector_count_zero},
    {"prd-odd-count", "PRD byte counts of 511 (odd)", prd_odd_count},
    {"cfis-type-bogus", "a command FIS of type 0x5f", cfis_type_bogus},
    {"cfis-len-zero", "command FIS length 0", cfis_len_zero},
    {"cfis-len-huge", "command FIS length 31 dwords", cfis_len_huge},
    {"invalid-opcode", "ATA command 0xff (must end in an error)", invalid_opcode},
    {"lba-beyond-capacity", "READ DMA EXT at LBA 2^48 - 256 (must end in an error)", lba_beyond},
    {"packet-to-disk", "an ATAPI PACKET command to the disk (must end in an error)", packet_to_disk},
    {"ncq-without-sact", "READ FPDMA QUEUED tag 5 in slot 0 without PxSACT", ncq_without_sact},
    {"ncq-beyond-ram", "eight READ FPDMA QUEUED (tags 0-7, PxSACT set) aimed past the end of RAM", ncq_beyond_ram},
    {"all-slots-garbage", "32 slots issued at once with zeroed FISes and odd headers", all_slots_garbage},
    {"st-clear-mid-io", "eight 128 KiB reads in flight, then PxCMD.ST cleared (CR and CI must clear)", st_clear_mid_io},
    {"comreset-mid-io", "eight 128 KiB reads in flight, then COMRESET", comreset_mid_io},
    {"hba-reset-mid-io", "eight 128 KiB reads in flight, then GHC.HR", hba_reset_mid_io},
    {"ci-while-stopped", "PxCI written with the engine stopped", ci_while_stopped},
    {"register-sweep", "all ones, then zero, into every dword of the ABAR", register_sweep},
    {"config-sweep", "reads in flight, all ones into config space 0x40-0xff (PM capability left out)", config_abuse},
};

static const uint16_t ids[] = {0x2922, 0};

const struct device_class ahci_class = {
    .name = "ahci",
    .vendor = 0x8086,
    .devices = ids,
    .driver = "ahci",
    .open = open_ahci,
    .liveness = liveness,
    .scenarios = scenarios,
    .count = sizeof scenarios / sizeof scenarios[0],
};
