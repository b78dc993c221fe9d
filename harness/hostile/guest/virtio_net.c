/* virtio-net (VIRTIO 1.2 §5.1): the ring scenarios on the transmit queue, plus transmit and
 * receive buffer abuse. Queue 0 receives, queue 1 transmits; no offloads are negotiated,
 * so every frame carries a 12-byte virtio_net_hdr (§5.1.6, VIRTIO_F_VERSION_1).
 *
 * Liveness: reset, initialise, post receive buffers, send an ARP request for 10.0.2.2 (the
 * host-side responder, or QEMU's slirp) until an ARP reply arrives.
 */
#include "virtio.h"

#include <string.h>

#define RX 0
#define TX 1
#define HDR 12
#define RX_BUFS 8

static uint8_t *rx_buf[QSZ];

static int open_net(struct ctx *c) { return v_open(c, 1); }

static struct vq *queue(struct ctx *c, int i) { return &((struct vdev *)c->priv)->q[i]; }

/* Posts ``n`` receive buffers of ``len`` bytes at ``addr`` (0: fresh memory) and kicks. */
static void post_rx(struct ctx *c, int n, uint32_t len, uint16_t flags, uint64_t addr) {
    struct vq *q = queue(c, RX);
    for (int i = 0; i < n; i++) {
        rx_buf[i] = dma_alloc(len > 4096 ? 4096 : (len ? len : 16), 64);
        set_desc(&q->desc[i], addr ? addr : pa(rx_buf[i]), len, flags, 0);
        vq_publish(q, i);
    }
    vq_kick(q);
}

static void send_arp(struct ctx *c, uint16_t slot) {
    struct vq *q = queue(c, TX);
    req_head(c, &q->desc[slot]);
    vq_publish(q, slot);
    vq_kick(q);
}

static int is_arp_reply(const volatile uint8_t *f, uint32_t len) {
    if (len < HDR + 42) return 0;
    f += HDR;
    return f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 && f[28] == 10 && f[29] == 0 && f[30] == 2 && f[31] == 2;
}

static int liveness(struct ctx *c) {
    if (v_init(c, NULL)) return 1;
    post_rx(c, RX_BUFS, 2048, F_WRITE, 0);
    struct vq *rx = queue(c, RX);
    uint64_t deadline = now_ms() + LIVE_MS, next_send = 0;
    int sent = 0, frames = 0;
    while (now_ms() < deadline) {
        if (now_ms() >= next_send) {
            send_arp(c, (uint16_t)(sent++ % QSZ));
            next_send = now_ms() + 1000;
        }
        if (!vq_wait(rx, 50)) continue;
        uint32_t id, len;
        vq_pop(rx, &id, &len);
        frames++;
        if (id >= RX_BUFS) return fail(c, "receive completion for unknown buffer %u", id);
        if (is_arp_reply(rx_buf[id], len)) return 0;
        vq_publish(rx, (uint16_t)id);
        vq_kick(rx);
    }
    return fail(c, "no ARP reply in %d ms (%d ARP requests sent, %d frames received)", LIVE_MS, sent, frames);
}

#define INIT_OR_FAIL(c)                                                     \
    do {                                                                    \
        if (v_init((c), NULL)) return fail((c), "init: %s", (c)->detail);   \
    } while (0)

static int tx_then_check(struct ctx *c, uint16_t head) {
    struct vq *q = queue(c, TX);
    vq_publish(q, head);
    vq_kick(q);
    sleep_ms(REACT_MS);
    return used_sane(c, q, 1);
}

static int tx_header_only(struct ctx *c) {
    INIT_OR_FAIL(c);
    set_desc(&queue(c, TX)->desc[0], pa(dma_alloc(HDR, 16)), HDR, 0, 0);
    return tx_then_check(c, 0);
}

static int tx_short_header(struct ctx *c) {
    INIT_OR_FAIL(c);
    set_desc(&queue(c, TX)->desc[0], pa(dma_alloc(16, 16)), 4, 0, 0);
    return tx_then_check(c, 0);
}

static int tx_huge_frame(struct ctx *c) {
    INIT_OR_FAIL(c);
    struct vq *q = queue(c, TX);
    req_head(c, &q->desc[0]);
    q->desc[0].flags |= F_NEXT;
    q->desc[0].next = 1;
    set_desc(&q->desc[1], pa(dma_alloc(70000, 64)), 70000, 0, 0);
    return tx_then_check(c, 0);
}

static int tx_writable(struct ctx *c) {
    INIT_OR_FAIL(c);
    req_head(c, &queue(c, TX)->desc[0]);
    queue(c, TX)->desc[0].flags |= F_WRITE;
    return tx_then_check(c, 0);
}

static int tx_bogus_gso(struct ctx *c) {
    INIT_OR_FAIL(c);
    struct vq *q = queue(c, TX);
    req_head(c, &q->desc[0]);
    /* flags NEEDS_CSUM, gso TCPV4, hdr_len 0xffff, gso_size 0, csum_start/offset past the frame */
    static const uint8_t hdr[HDR] = {1, 1, 0xff, 0xff, 0, 0, 0xf0, 0xff, 0xf0, 0xff, 0, 0};
    uint8_t *b = dma_alloc(HDR + 60, 16);
    memcpy(b, hdr, HDR);
    q->desc[0].addr = pa(b);
    return tx_then_check(c, 0);
}

/* Receive abuse: buffers as given, then ARP requests so that replies arrive. */
static int rx_abuse(struct ctx *c, uint32_t len, uint16_t flags, uint64_t addr) {
    INIT_OR_FAIL(c);
    post_rx(c, RX_BUFS, len, flags, addr);
    for (int i = 0; i < 3; i++) send_arp(c, (uint16_t)i);
    sleep_ms(REACT_MS * 2);
    return used_sane(c, queue(c, RX), RX_BUFS);
}

static int rx_tiny(struct ctx *c) { return rx_abuse(c, 4, F_WRITE, 0); }
static int rx_readonly(struct ctx *c) { return rx_abuse(c, 2048, 0, 0); }
static int rx_straddles_end(struct ctx *c) { return rx_abuse(c, 2048, F_WRITE, g.ram_end - 32); }
static int rx_beyond_ram(struct ctx *c) { return rx_abuse(c, 2048, F_WRITE, g.ram_end + 0x1000); }
static int rx_in_bar(struct ctx *c) { return rx_abuse(c, 64, F_WRITE, ((struct vdev *)c->priv)->common_phys + 0x800); }
static int rx_huge_len(struct ctx *c) { return rx_abuse(c, 0xffffffff, F_WRITE, 0); }

static int rx_loop(struct ctx *c) {
    INIT_OR_FAIL(c);
    struct vq *q = queue(c, RX);
    set_desc(&q->desc[0], pa(dma_alloc(64, 64)), 64, F_WRITE | F_NEXT, 1);
    set_desc(&q->desc[1], pa(dma_alloc(64, 64)), 64, F_WRITE | F_NEXT, 0);
    vq_publish(q, 0);
    vq_kick(q);
    for (int i = 0; i < 3; i++) send_arp(c, (uint16_t)i);
    sleep_ms(REACT_MS * 2);
    return used_sane(c, q, 1);
}

/* Replies on their way while the driver resets (issue 14, finding 2). */
static int reset_with_rx_pending(struct ctx *c) {
    INIT_OR_FAIL(c);
    post_rx(c, RX_BUFS, 2048, F_WRITE, 0);
    for (int i = 0; i < 4; i++) send_arp(c, (uint16_t)i);
    return v_reset(c);
}

static int reset_with_no_rx_buffers(struct ctx *c) {
    INIT_OR_FAIL(c);
    for (int i = 0; i < 4; i++) send_arp(c, (uint16_t)i);
    sleep_ms(REACT_MS);
    return v_reset(c);
}

static const struct scenario scenarios[] = {
    RING_SCENARIOS(SCENARIO_ENTRY)
    {"net-tx-header-only", "a transmit chain of only the 12-byte header", tx_header_only},
    {"net-tx-short-header", "a transmit chain of 4 bytes", tx_short_header},
    {"net-tx-huge-frame", "a 70000-byte frame without GSO", tx_huge_frame},
    {"net-tx-writable", "a transmit descriptor marked device-writable", tx_writable},
    {"net-tx-bogus-gso", "gso TCPV4 with gso_size 0 and checksum offsets past the frame (not negotiated)", tx_bogus_gso},
    {"net-rx-tiny-buffers", "receive buffers of 4 bytes, smaller than the header", rx_tiny},
    {"net-rx-readonly-buffers", "receive buffers not marked device-writable", rx_readonly},
    {"net-rx-straddles-end", "receive buffers 32 bytes before the end of RAM", rx_straddles_end},
    {"net-rx-beyond-ram", "receive buffers a page past the end of RAM", rx_beyond_ram},
    {"net-rx-in-bar", "receive buffers inside the device's own BAR", rx_in_bar},
    {"net-rx-huge-len", "receive buffers of length 0xffffffff", rx_huge_len},
    {"net-rx-loop", "a receive chain that loops", rx_loop},
    {"net-reset-with-rx-pending", "receive buffers posted, ARP requests sent, reset before the replies are read",
     reset_with_rx_pending},
    {"net-reset-with-no-rx-buffers", "ARP requests sent with no receive buffer, then reset", reset_with_no_rx_buffers},
};

static const uint16_t ids[] = {0x1000, 0x1041, 0};

const struct device_class virtio_net_class = {
    .name = "virtio-net",
    .vendor = 0x1af4,
    .devices = ids,
    .driver = "virtio-pci",
    .open = open_net,
    .liveness = liveness,
    .scenarios = scenarios,
    .count = sizeof scenarios / sizeof scenarios[0],
};
