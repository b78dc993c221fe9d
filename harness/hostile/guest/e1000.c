/* Intel 82540EM (8086:100e; 8254x SDM): descriptor-ring, buffer and offload abuse.
 *
 * Architected behaviour checked: TDH and RDH stay indices inside their ring (SDM §13.4.x:
 * head registers point at descriptors of the ring; a bad tail is the driver's error and is
 * ignored). Liveness: CTRL.RST (self-clearing, SDM §13.4.1), then rings, MAC address and
 * link as the Linux driver sets them, an ARP request for 10.0.2.2 and its reply received.
 */
#include "hostile.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CTRL 0x0000
#define STATUS 0x0008
#define ICR 0x00c0
#define ICS 0x00c8
#define IMS 0x00d0
#define IMC 0x00d8
#define RCTL 0x0100
#define TCTL 0x0400
#define TIPG 0x0410
#define RDBAL 0x2800
#define RDBAH 0x2804
#define RDLEN 0x2808
#define RDH 0x2810
#define RDT 0x2818
#define TDBAL 0x3800
#define TDBAH 0x3804
#define TDLEN 0x3808
#define TDH 0x3810
#define TDT 0x3818
#define RAL0 0x5400
#define RAH0 0x5404

#define CTRL_ASDE (1u << 5)
#define CTRL_SLU (1u << 6)
#define CTRL_RST (1u << 26)
#define STATUS_LU (1u << 1)
#define RCTL_EN (1u << 1)
#define RCTL_UPE (1u << 3)
#define RCTL_MPE (1u << 4)
#define RCTL_BAM (1u << 15)
#define RCTL_SECRC (1u << 26)
#define TCTL_EN (1u << 1)
#define TCTL_PSP (1u << 3)

#define CMD_EOP 0x01
#define CMD_IFCS 0x02
#define CMD_IC 0x04
#define CMD_RS 0x08
#define CMD_DEXT 0x20
#define TUCMD_TCP 0x01
#define TUCMD_IP 0x02
#define TUCMD_TSE 0x04
#define DD 0x01

#define RING 16
#define BUF 2048

struct txd { /* legacy, context and data descriptors share this shape */
    uint64_t addr;
    uint32_t lower;
    uint32_t upper;
} __attribute__((packed));

struct rxd {
    uint64_t addr;
    uint16_t length, csum;
    uint8_t status, errors;
    uint16_t special;
} __attribute__((packed));

static struct {
    volatile uint8_t *r;
    volatile struct txd *tx;
    volatile struct rxd *rx;
    uint8_t *rxbuf[RING];
    unsigned tail, rx_next;
} e;

/* Ring layout for a scenario; zero fields keep the defaults (fresh rings in the DMA range). */
struct layout {
    uint64_t tdba, rdba, rx_buf;
    uint32_t tdlen, rdlen;
    int no_rdt;
};

static void wr64(uint32_t lo_off, uint64_t v) {
    wr32(e.r, lo_off, (uint32_t)v);
    wr32(e.r, lo_off + 4, (uint32_t)(v >> 32));
}

static int open_e1000(struct ctx *c) {
    e.r = c->dev->bar[0].map;
    if (!e.r) return fail(c, "BAR0 is not mapped");
    return 0;
}

static int reset(struct ctx *c) {
    wr32(e.r, IMC, 0xffffffff);
    wr32(e.r, RCTL, 0);
    wr32(e.r, TCTL, TCTL_PSP);
    sleep_ms(2);
    wr32(e.r, CTRL, rd32(e.r, CTRL) | CTRL_RST);
    sleep_ms(2); /* SDM §14.9: wait at least 1 us before reading after a reset */
    if (!WAIT_FOR(!(rd32(e.r, CTRL) & CTRL_RST), 2000)) return fail(c, "CTRL.RST did not clear");
    wr32(e.r, IMC, 0xffffffff);
    (void)rd32(e.r, ICR);
    return 0;
}

/* The driver's bring-up (e1000_configure): MAC filter, rings, receive and transmit on. */
static int setup(struct ctx *c, const struct layout *l) {
    if (reset(c)) return 1;
    wr32(e.r, CTRL, (rd32(e.r, CTRL) | CTRL_SLU | CTRL_ASDE) & ~(1u << 3 | 1u << 31));
    wr32(e.r, RAL0, 0x12005452);
    wr32(e.r, RAH0, 0x5634 | 1u << 31);
    e.tx = dma_alloc(RING * 16, 128);
    e.rx = dma_alloc(RING * 16, 128);
    for (int i = 0; i < RING; i++) {
        e.rxbuf[i] = dma_alloc(BUF, 64);
        e.rx[i].addr = l && l->rx_buf ? l->rx_buf : pa(e.rxbuf[i]);
    }
    e.tail = 0;
    e.rx_next = 0;
    wr64(TDBAL, l && l->tdba ? l->tdba : pa(e.tx));
    wr32(e.r, TDLEN, l && l->tdlen ? l->tdlen : RING * 16);
    wr32(e.r, TDH, 0);
    wr32(e.r, TDT, 0);
    wr64(RDBAL, l && l->rdba ? l->rdba : pa(e.rx));
    wr32(e.r, RDLEN, l && l->rdlen ? l->rdlen : RING * 16);
    wr32(e.r, RDH, 0);
    wr32(e.r, RDT, 0);
    wr32(e.r, TIPG, 10 | 10 << 10 | 10 << 20);
    wr32(e.r, TCTL, TCTL_EN | TCTL_PSP | 0x10 << 4 | 0x40 << 12);
    wr32(e.r, RCTL, RCTL_EN | RCTL_UPE | RCTL_MPE | RCTL_BAM | RCTL_SECRC);
    if (!(l && l->no_rdt)) wr32(e.r, RDT, RING - 1);
    WAIT_FOR(rd32(e.r, STATUS) & STATUS_LU, 3000);
    return 0;
}

static uint8_t *arp_frame(void) {
    static const uint8_t frame[42] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 2, 15,
        0, 0, 0, 0, 0, 0, 10, 0, 2, 2,
    };
    uint8_t *f = dma_alloc(64, 64);
    memcpy(f, frame, sizeof frame);
    return f;
}

/* Puts a descriptor at the tail and moves TDT past it. */
static void tx_put(uint64_t addr, uint32_t lower, uint32_t upper) {
    volatile struct txd *d = &e.tx[e.tail % RING];
    d->addr = addr;
    d->lower = lower;
    d->upper = upper;
    e.tail = (e.tail + 1) % RING;
    mb();
    wr32(e.r, TDT, e.tail);
}

static void send_arp(void) { tx_put(pa(arp_frame()), 60 | (CMD_EOP | CMD_IFCS | CMD_RS) << 24, 0); }

static int is_arp_reply(const uint8_t *f, unsigned len) {
    return len >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 && f[28] == 10 && f[29] == 0 && f[30] == 2 &&
           f[31] == 2;
}

static int liveness(struct ctx *c) {
    if (setup(c, NULL)) return 1;
    uint64_t deadline = now_ms() + LIVE_MS, next_send = 0;
    int sent = 0, frames = 0;
    while (now_ms() < deadline) {
        if (now_ms() >= next_send) {
            send_arp();
            sent++;
            next_send = now_ms() + 1000;
        }
        volatile struct rxd *d = &e.rx[e.rx_next];
        if (!(d->status & DD)) {
            relax();
            continue;
        }
        frames++;
        if (is_arp_reply(e.rxbuf[e.rx_next], d->length)) return 0;
        d->status = 0;
        wr32(e.r, RDT, e.rx_next);
        e.rx_next = (e.rx_next + 1) % RING;
    }
    return fail(c, "no ARP reply in %d ms (%d requests, %d frames received, TDH %u, RDH %u, STATUS %#x)", LIVE_MS,
                sent, frames, rd32(e.r, TDH), rd32(e.r, RDH), rd32(e.r, STATUS));
}

/* SDM §13.4.x: the heads are indices into their rings. */
static int heads_in_ring(struct ctx *c, uint32_t tx_ring, uint32_t rx_ring) {
    sleep_ms(REACT_MS);
    uint32_t tdh = rd32(e.r, TDH), rdh = rd32(e.r, RDH);
    if (tx_ring && tdh >= tx_ring) return fail(c, "TDH %u outside a ring of %u", tdh, tx_ring);
    if (rx_ring && rdh >= rx_ring) return fail(c, "RDH %u outside a ring of %u", rdh, rx_ring);
    return 0;
}

#define SETUP_OR_FAIL(c, l)                                                   \
    do {                                                                      \
        if (setup((c), (l))) return fail((c), "setup: %s", (c)->detail);      \
    } while (0)

static int tdt_beyond(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    for (int i = 0; i < RING; i++) {
        e.tx[i].addr = pa(arp_frame());
        e.tx[i].lower = 60 | (CMD_EOP | CMD_IFCS | CMD_RS) << 24;
    }
    wr32(e.r, TDT, 100);
    return heads_in_ring(c, RING, RING);
}

static int tdt_equals_size(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    for (int i = 0; i < RING; i++) {
        e.tx[i].addr = pa(arp_frame());
        e.tx[i].lower = 60 | (CMD_EOP | CMD_IFCS | CMD_RS) << 24;
    }
    wr32(e.r, TDT, RING);
    return heads_in_ring(c, RING, RING);
}

static int rdt_beyond(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    wr32(e.r, RDT, 1000);
    send_arp();
    return heads_in_ring(c, RING, RING);
}

static int rdt_equals_size(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    wr32(e.r, RDT, RING);
    send_arp();
    return heads_in_ring(c, RING, RING);
}

static int tx_ring_at(struct ctx *c, uint64_t base, uint32_t len) {
    struct layout l = {.tdba = base, .tdlen = len};
    SETUP_OR_FAIL(c, &l);
    wr32(e.r, TDT, 4);
    sleep_ms(REACT_MS);
    return 0;
}

static int tx_ring_in_bar(struct ctx *c) { return tx_ring_at(c, c->dev->bar[0].phys, 0); }
static int tx_ring_beyond_ram(struct ctx *c) { return tx_ring_at(c, g.ram_end + 0x1000, 0); }
static int tx_ring_straddles_end(struct ctx *c) {
    volatile struct txd *ring = dma_at_end(128);
    for (int i = 0; i < 8; i++) {
        ring[i].addr = pa(arp_frame());
        ring[i].lower = 60 | (CMD_EOP | CMD_IFCS | CMD_RS) << 24;
    }
    struct layout l = {.tdba = pa(ring)};
    SETUP_OR_FAIL(c, &l);
    wr32(e.r, TDT, RING - 1);
    return heads_in_ring(c, RING, 0);
}

static int tdlen_huge(struct ctx *c) {
    struct layout l = {.tdba = g.ram_end - 0x1000, .tdlen = 0xfff80};
    SETUP_OR_FAIL(c, &l);
    wr32(e.r, TDT, 0xfff0);
    sleep_ms(REACT_MS);
    return 0;
}

static int tdlen_zero(struct ctx *c) {
    struct layout l = {.tdlen = 0};
    SETUP_OR_FAIL(c, &l);
    wr32(e.r, TDLEN, 0);
    wr32(e.r, TDT, 5);
    sleep_ms(REACT_MS);
    return 0;
}

static int rx_ring_at(struct ctx *c, uint64_t base) {
    struct layout l = {.rdba = base};
    SETUP_OR_FAIL(c, &l);
    for (int i = 0; i < 3; i++) send_arp();
    sleep_ms(REACT_MS);
    return 0;
}

static int rx_ring_in_bar(struct ctx *c) { return rx_ring_at(c, c->dev->bar[0].phys + 0x1000); }
static int rx_ring_beyond_ram(struct ctx *c) { return rx_ring_at(c, g.ram_end + 0x1000); }

static int rdlen_zero(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    wr32(e.r, RDLEN, 0);
    wr32(e.r, RDT, 5);
    send_arp();
    sleep_ms(REACT_MS);
    return 0;
}

static int rx_buf_at(struct ctx *c, uint64_t addr) {
    struct layout l = {.rx_buf = addr};
    SETUP_OR_FAIL(c, &l);
    for (int i = 0; i < 3; i++) send_arp();
    return heads_in_ring(c, RING, RING);
}

static int rx_buf_beyond_ram(struct ctx *c) { return rx_buf_at(c, g.ram_end + 0x2000); }
static int rx_buf_straddles_end(struct ctx *c) { return rx_buf_at(c, g.ram_end - 64); }
static int rx_buf_in_bar(struct ctx *c) { return rx_buf_at(c, c->dev->bar[0].phys + 0x5200); }
static int rx_buf_wraps(struct ctx *c) { return rx_buf_at(c, 0xffffffffffffffc0ull); }

static int tx_one(struct ctx *c, uint64_t addr, uint32_t len, uint8_t cmd) {
    SETUP_OR_FAIL(c, NULL);
    tx_put(addr, len | (uint32_t)cmd << 24, 0);
    return heads_in_ring(c, RING, RING);
}

static int tx_len_zero(struct ctx *c) { return tx_one(c, pa(arp_frame()), 0, CMD_EOP | CMD_IFCS | CMD_RS); }
static int tx_buf_beyond_ram(struct ctx *c) { return tx_one(c, g.ram_end, 64, CMD_EOP | CMD_IFCS | CMD_RS); }
static int tx_buf_straddles_end(struct ctx *c) { return tx_one(c, g.ram_end - 32, 64, CMD_EOP | CMD_IFCS | CMD_RS); }
static int tx_buf_in_bar(struct ctx *c) { return tx_one(c, c->dev->bar[0].phys + 0x5200, 64, CMD_EOP | CMD_RS); }
static int tx_addr_wraps(struct ctx *c) { return tx_one(c, 0xffffffffffffffe0ull, 64, CMD_EOP | CMD_RS); }
static int tx_csum_beyond(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    /* legacy IC: CSO 250, CSS 200 on a 60-byte frame */
    tx_put(pa(arp_frame()), 60 | (uint32_t)(CMD_EOP | CMD_IFCS | CMD_IC | CMD_RS) << 24 | 250u << 16, 200u << 8);
    return heads_in_ring(c, RING, RING);
}

static int tx_huge(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    uint64_t big = pa(dma_alloc(65536, 4096));
    for (int i = 0; i < RING - 2; i++) tx_put(big, 65535 | (uint32_t)(CMD_IFCS | CMD_RS) << 24, 0);
    tx_put(big, 65535 | (uint32_t)(CMD_EOP | CMD_IFCS | CMD_RS) << 24, 0);
    return heads_in_ring(c, RING, RING);
}

static int tx_no_eop_wrap(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    uint64_t buf = pa(dma_alloc(4096, 4096));
    for (int i = 0; i < 4 * RING; i++) tx_put(buf, 1500 | (uint32_t)(CMD_IFCS | CMD_RS) << 24, 0);
    return heads_in_ring(c, RING, RING);
}

/* A TCP/IPv4 frame header: 14 + 20 + 20 bytes, then payload. */
static uint64_t tcp_frame(uint32_t payload) {
    uint8_t *f = dma_alloc(54 + payload + 64, 64);
    memset(f, 0xab, 54 + payload);
    f[12] = 0x08;
    f[13] = 0x00;
    f[14] = 0x45;
    f[23] = 6;
    f[46] = 0x50;
    return pa(f);
}

/* A TSO context (SDM §3.3.6) then one data descriptor with TSE. */
static int tso(struct ctx *c, uint32_t mss, uint32_t hdrlen, uint32_t paylen, uint32_t datalen, uint32_t ipcss,
               uint32_t ipcso, uint32_t tucss, uint32_t tucso) {
    SETUP_OR_FAIL(c, NULL);
    uint32_t tucmd = TUCMD_TSE | TUCMD_IP | TUCMD_TCP | CMD_DEXT;
    /* context: IPCSS, IPCSO, IPCSE (0: to the end), TUCSS, TUCSO, TUCSE | PAYLEN, DTYP 0,
     * TUCMD | STA, HDRLEN, MSS */
    tx_put(ipcss | ipcso << 8 | (uint64_t)(tucss | tucso << 8) << 32, (paylen & 0xfffff) | tucmd << 24,
           hdrlen << 8 | mss << 16);
    tx_put(tcp_frame(datalen), datalen | 1u << 20 | (uint32_t)(CMD_EOP | CMD_IFCS | TUCMD_TSE | CMD_RS | CMD_DEXT) << 24,
           0x03u << 8);
    return heads_in_ring(c, RING, RING);
}

static int tso_mss_zero(struct ctx *c) { return tso(c, 0, 54, 1000, 1054, 14, 24, 34, 50); }
static int tso_mss_one(struct ctx *c) { return tso(c, 1, 54, 4000, 4054, 14, 24, 34, 50); }
static int tso_hdrlen_huge(struct ctx *c) { return tso(c, 100, 255, 100, 100, 14, 24, 34, 50); }
static int tso_hdrlen_zero(struct ctx *c) { return tso(c, 100, 0, 1000, 1000, 14, 24, 34, 50); }
static int tso_paylen_huge(struct ctx *c) { return tso(c, 1400, 54, 0xfffff, 154, 14, 24, 34, 50); }
static int tso_offsets_beyond(struct ctx *c) { return tso(c, 100, 54, 1000, 1054, 250, 251, 252, 253); }
static int tso_mss_huge(struct ctx *c) { return tso(c, 0xffff, 54, 60000, 60054, 14, 24, 34, 50); }

static int tse_without_context(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    tx_put(tcp_frame(1000), 1054 | 1u << 20 | (uint32_t)(CMD_EOP | CMD_IFCS | TUCMD_TSE | CMD_RS | CMD_DEXT) << 24,
           0x03u << 8);
    return heads_in_ring(c, RING, RING);
}

static int bad_descriptor_type(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    /* DEXT with DTYP 0xf (reserved) */
    tx_put(pa(arp_frame()), 60 | 0xfu << 20 | (uint32_t)(CMD_EOP | CMD_DEXT | CMD_RS) << 24, 0);
    return heads_in_ring(c, RING, RING);
}

static int rst_mid_io(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    for (int i = 0; i < RING - 1; i++) send_arp();
    wr32(e.r, CTRL, rd32(e.r, CTRL) | CTRL_RST);
    sleep_ms(2);
    if (!WAIT_FOR(!(rd32(e.r, CTRL) & CTRL_RST), 2000)) return fail(c, "CTRL.RST did not clear");
    return 0;
}

static int irq_storm(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    wr32(e.r, IMS, 0xffffffff);
    for (int i = 0; i < 5000; i++) {
        wr32(e.r, ICS, 0xffffffff);
        (void)rd32(e.r, ICR);
    }
    wr32(e.r, IMC, 0xffffffff);
    (void)rd32(e.r, ICR);
    return 0;
}

/* Registers as data: all ones then zero into every dword of the register window. */
static int register_sweep(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    bar_sweep(c->dev, 0, 0x0000, 0x6000); /* general, interrupt, receive, transmit, statistics, filters */
    bar_sweep(c->dev, 0, 0x9000, 0xa000); /* flexible filters */
    return 0;
}

static int config_abuse(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    config_sweep(c->dev);
    return 0;
}

/* The I/O window (BAR1, SDM §13.2): IOADDR outside the register space, unaligned, then IODATA. */
static int io_window(struct ctx *c) {
    SETUP_OR_FAIL(c, NULL);
    char path[200];
    snprintf(path, sizeof path, "%s/resource1", c->dev->path);
    int fd = open(path, O_RDWR);
    if (fd < 0) return 0; /* no I/O BAR on this path */
    static const uint32_t addresses[] = {0x20000, 0xfffffffc, 0x3, 0x1fffe, TDT, CTRL};
    for (unsigned i = 0; i < sizeof addresses / sizeof addresses[0]; i++) {
        uint32_t value = addresses[i], data = 0;
        if (pwrite(fd, &value, 4, 0) != 4) break;
        if (pread(fd, &data, 4, 4) != 4) break;
        value = addresses[i] == CTRL ? data : 0xffffffff;
        if (pwrite(fd, &value, 4, 4) != 4) break;
    }
    close(fd);
    return 0;
}

static const struct scenario scenarios[] = {
    {"tdt-beyond-ring", "TDT = 100 on a ring of 16 (TDH must stay in the ring)", tdt_beyond},
    {"tdt-equals-size", "TDT = 16 on a ring of 16", tdt_equals_size},
    {"rdt-beyond-ring", "RDT = 1000 on a ring of 16, then a frame arrives", rdt_beyond},
    {"rdt-equals-size", "RDT = 16 on a ring of 16, then a frame arrives", rdt_equals_size},
    {"tx-ring-in-bar", "TDBA = the device's own BAR0", tx_ring_in_bar},
    {"tx-ring-beyond-ram", "TDBA a page past the end of RAM", tx_ring_beyond_ram},
    {"tx-ring-straddles-end", "a 16-descriptor ring whose second half is past the end of RAM", tx_ring_straddles_end},
    {"tdlen-huge", "TDLEN = 0xfff80 4 KiB before the end of RAM, TDT = 0xfff0", tdlen_huge},
    {"tdlen-zero", "TDLEN = 0 with TDT = 5", tdlen_zero},
    {"rx-ring-in-bar", "RDBA inside the device's own BAR0, frames arrive", rx_ring_in_bar},
    {"rx-ring-beyond-ram", "RDBA a page past the end of RAM, frames arrive", rx_ring_beyond_ram},
    {"rdlen-zero", "RDLEN = 0 with RDT = 5, a frame arrives", rdlen_zero},
    {"rx-buf-beyond-ram", "receive buffers past the end of RAM", rx_buf_beyond_ram},
    {"rx-buf-straddles-end", "receive buffers 64 bytes before the end of RAM", rx_buf_straddles_end},
    {"rx-buf-in-bar", "receive buffers inside the device's own BAR0 (the MTA)", rx_buf_in_bar},
    {"rx-buf-wraps", "receive buffers 64 bytes below 2^64", rx_buf_wraps},
    {"tx-len-zero", "a legacy descriptor of length 0 with EOP", tx_len_zero},
    {"tx-buf-beyond-ram", "a frame at the end of RAM", tx_buf_beyond_ram},
    {"tx-buf-straddles-end", "a 64-byte frame starting 32 bytes before the end of RAM", tx_buf_straddles_end},
    {"tx-buf-in-bar", "a frame read from the device's own BAR0", tx_buf_in_bar},
    {"tx-addr-wraps", "a frame 32 bytes below 2^64", tx_addr_wraps},
    {"tx-csum-beyond", "legacy checksum insertion with CSO 250 and CSS 200 on a 60-byte frame", tx_csum_beyond},
    {"tx-huge", "15 descriptors of 65535 bytes forming one frame", tx_huge},
    {"tx-no-eop-wrap", "64 descriptors without EOP, wrapping the ring four times", tx_no_eop_wrap},
    {"tso-mss-zero", "TSO with MSS 0", tso_mss_zero},
    {"tso-mss-one", "TSO with MSS 1 over 4000 bytes", tso_mss_one},
    {"tso-mss-huge", "TSO with MSS 0xffff over 60000 bytes", tso_mss_huge},
    {"tso-hdrlen-huge", "TSO with HDRLEN 255 and 100 bytes of data", tso_hdrlen_huge},
    {"tso-hdrlen-zero", "TSO with HDRLEN 0", tso_hdrlen_zero},
    {"tso-paylen-huge", "TSO with PAYLEN 0xfffff and 154 bytes of data", tso_paylen_huge},
    {"tso-offsets-beyond", "TSO with IP/TCP checksum offsets past the header", tso_offsets_beyond},
    {"tse-without-context", "a TSE data descriptor with no context descriptor since reset", tse_without_context},
    {"bad-descriptor-type", "an extended descriptor of reserved type 0xf", bad_descriptor_type},
    {"rst-mid-io", "15 frames queued, then CTRL.RST", rst_mid_io},
    {"irq-storm", "5000 ICS writes with every cause enabled", irq_storm},
    {"register-sweep", "all ones, then zero, into every dword of the register ranges of BAR0", register_sweep},
    {"config-sweep", "all ones into every dword of config space 0x40-0xff (PM capability left out)", config_abuse},
    {"io-window-abuse", "IOADDR past the register space, unaligned and huge, then IODATA reads and writes", io_window},
};

static const uint16_t ids[] = {0x100e, 0};

const struct device_class e1000_class = {
    .name = "e1000",
    .vendor = 0x8086,
    .devices = ids,
    .driver = "e1000",
    .open = open_e1000,
    .liveness = liveness,
    .scenarios = scenarios,
    .count = sizeof scenarios / sizeof scenarios[0],
};
