/* The virtio PCI transport by hand (VIRTIO 1.2 §4.1) and the ring scenarios both virtio
 * classes share (§2.7). The "work queue" is the queue the device processes on a kick: the
 * blk request queue, or the net transmit queue.
 *
 * Architected behaviour checked after ring abuse (§2.7.8): the device never returns a used
 * element whose id is not a head it was given, and the used index never moves by more than
 * the number of chains made available. The device may instead set DEVICE_NEEDS_RESET; a
 * driver reset must then bring the queue back (§2.1.1, §2.4).
 */
#include "virtio.h"

#include <string.h>

#define VC_DFSEL 0x00
#define VC_DF 0x04
#define VC_GFSEL 0x08
#define VC_GF 0x0c
#define VC_MSIX 0x10
#define VC_NUMQ 0x12
#define VC_STATUS 0x14
#define VC_QSEL 0x16
#define VC_QSIZE 0x18
#define VC_QMSIX 0x1a
#define VC_QENABLE 0x1c
#define VC_QNOFF 0x1e
#define VC_QDESC 0x20
#define VC_QDRIVER 0x28
#define VC_QDEVICE 0x30

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40

#define F_VERSION_1 (1ull << 32)
#define F_INDIRECT_DESC (1ull << 28)
#define NO_VECTOR 0xffff
#define AVAIL_F_NO_INTERRUPT 1

#define VIRTIO_BLK_T_IN 0

static struct vdev vdev_state;
static uint32_t notify_len;

static struct vdev *V(struct ctx *c) { return c->priv; }

void set_desc(volatile struct vdesc *d, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    d->addr = addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

static void wr64(volatile uint8_t *base, uint32_t off, uint64_t v) {
    wr32(base, off, (uint32_t)v);
    wr32(base, off + 4, (uint32_t)(v >> 32));
}

int v_open(struct ctx *c, int net) {
    struct vdev *v = &vdev_state;
    memset(v, 0, sizeof *v);
    v->net = net;
    c->priv = v;
    struct pci_dev *d = c->dev;
    for (int pos = cfg_find_cap(d, 0x09, 0); pos; pos = cfg_find_cap(d, 0x09, pos)) {
        uint8_t type = cfg_read(d, pos + 3, 1), bar = cfg_read(d, pos + 4, 1);
        uint32_t off = cfg_read(d, pos + 8, 4), len = cfg_read(d, pos + 12, 4);
        if (bar >= MAX_BARS || !d->bar[bar].map || off + (uint64_t)len > d->bar[bar].size) continue;
        volatile uint8_t *at = d->bar[bar].map + off;
        switch (type) {
        case 1: v->common = at; v->common_phys = d->bar[bar].phys + off; v->common_bar = bar; break;
        case 2: v->notify_base = at; v->notify_mult = cfg_read(d, pos + 16, 4); notify_len = len; break;
        case 3: v->isr = at; break;
        case 4: v->devcfg = at; break;
        }
    }
    if (!v->common || !v->notify_base) return fail(c, "no modern virtio capabilities (common/notify)");
    v->nq = net ? 2 : 1;
    if (rd16(v->common, VC_NUMQ) < v->nq) return fail(c, "num_queues %u", rd16(v->common, VC_NUMQ));
    return 0;
}

int v_reset(struct ctx *c) {
    struct vdev *v = V(c);
    wr8(v->common, VC_STATUS, 0);
    /* §4.1.4.3.2: after writing 0 the driver waits for device_status to read 0. */
    if (!WAIT_FOR(rd8(v->common, VC_STATUS) == 0, 2000)) return fail(c, "device_status stays %#x after reset", rd8(v->common, VC_STATUS));
    return 0;
}

static int setup_queue(struct ctx *c, int i, const struct ring_override *o) {
    struct vdev *v = V(c);
    struct vq *q = &v->q[i];
    wr16(v->common, VC_QSEL, i);
    uint16_t max = rd16(v->common, VC_QSIZE);
    if (max == 0) return fail(c, "queue %d has size 0", i);
    memset(q, 0, sizeof *q);
    q->index = i;
    q->size = max < QSZ ? max : QSZ;
    q->desc = dma_alloc(16 * 4096, 4096); /* room for any head index a scenario uses */
    q->avail = dma_alloc(4096, 4096);
    q->used = dma_alloc(4096, 4096);
    q->avail[0] = AVAIL_F_NO_INTERRUPT;
    uint64_t desc = pa(q->desc), driver = pa(q->avail), device = pa(q->used);
    uint16_t size = q->size;
    if (o && o->queue == i) {
        if (o->desc) desc = o->desc;
        if (o->driver) driver = o->driver;
        if (o->device) device = o->device;
        if (o->size) size = o->size;
    }
    wr16(v->common, VC_QSIZE, size);
    wr16(v->common, VC_QMSIX, NO_VECTOR);
    wr64(v->common, VC_QDESC, desc);
    wr64(v->common, VC_QDRIVER, driver);
    wr64(v->common, VC_QDEVICE, device);
    uint32_t off = (uint32_t)rd16(v->common, VC_QNOFF) * v->notify_mult;
    if (off + 2 > notify_len) return fail(c, "queue %d notify offset %#x outside the notify area", i, off);
    q->notify = v->notify_base + off;
    wr16(v->common, VC_QENABLE, 1);
    return 0;
}

/* Reset and the full initialisation of §3.1.1; ``o`` changes one queue's layout. */
static int init_device(struct ctx *c, const struct ring_override *o, int driver_ok) {
    struct vdev *v = V(c);
    if (v_reset(c)) return 1;
    wr8(v->common, VC_STATUS, S_ACK);
    wr8(v->common, VC_STATUS, S_ACK | S_DRIVER);
    wr32(v->common, VC_DFSEL, 0);
    uint64_t lo = rd32(v->common, VC_DF);
    wr32(v->common, VC_DFSEL, 1);
    v->offered = lo | (uint64_t)rd32(v->common, VC_DF) << 32;
    if (!(v->offered & F_VERSION_1)) return fail(c, "VIRTIO_F_VERSION_1 not offered (features %#llx)", (unsigned long long)v->offered);
    uint64_t want = F_VERSION_1 | (v->offered & F_INDIRECT_DESC);
    wr32(v->common, VC_GFSEL, 0);
    wr32(v->common, VC_GF, (uint32_t)want);
    wr32(v->common, VC_GFSEL, 1);
    wr32(v->common, VC_GF, (uint32_t)(want >> 32));
    wr8(v->common, VC_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(rd8(v->common, VC_STATUS) & S_FEATURES_OK)) return fail(c, "FEATURES_OK not accepted (status %#x)", rd8(v->common, VC_STATUS));
    wr16(v->common, VC_MSIX, NO_VECTOR);
    for (int i = 0; i < v->nq; i++)
        if (setup_queue(c, i, o)) return 1;
    if (driver_ok) wr8(v->common, VC_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    uint8_t status = rd8(v->common, VC_STATUS);
    if (status & S_NEEDS_RESET) return fail(c, "DEVICE_NEEDS_RESET right after initialisation (status %#x)", status);
    return 0;
}

int v_init(struct ctx *c, const struct ring_override *o) { return init_device(c, o, 1); }

uint16_t v_used_idx(struct vq *q) { return *(volatile uint16_t *)(q->used + 2); }

void vq_publish(struct vq *q, uint16_t head) {
    q->avail[2 + q->avail_idx % q->size] = head;
    mb();
    q->avail[1] = ++q->avail_idx;
    mb();
}

void vq_kick(struct vq *q) {
    mb();
    *(volatile uint16_t *)q->notify = (uint16_t)q->index;
}

int vq_wait(struct vq *q, unsigned ms) { return WAIT_FOR(v_used_idx(q) != q->last_used, ms); }

void vq_pop(struct vq *q, uint32_t *id, uint32_t *len) {
    volatile uint8_t *e = q->used + 4 + 8 * (q->last_used % q->size);
    *id = *(volatile uint32_t *)e;
    *len = *(volatile uint32_t *)(e + 4);
    q->last_used++;
}

int used_sane(struct ctx *c, struct vq *q, unsigned max_new) {
    uint16_t idx = v_used_idx(q), n = (uint16_t)(idx - q->last_used);
    if (n > max_new) return fail(c, "used.idx moved by %u with %u chains available", n, max_new);
    for (uint16_t i = 0; i < n; i++) {
        uint32_t id, len;
        vq_pop(q, &id, &len);
        if (id >= q->size) return fail(c, "used element id %u outside a queue of %u", id, q->size);
    }
    return 0;
}

struct vq *work_queue(struct ctx *c) { return &V(c)->q[V(c)->net ? 1 : 0]; }

/* An ARP request for 10.0.2.2 from 52:54:00:12:34:56 / 10.0.2.15, padded to 60 bytes. */
static void arp_request(uint8_t *f) {
    static const uint8_t frame[42] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 2, 15,
        0, 0, 0, 0, 0, 0, 10, 0, 2, 2,
    };
    memset(f, 0, 60);
    memcpy(f, frame, sizeof frame);
}

void req_head(struct ctx *c, volatile struct vdesc *d) {
    if (V(c)->net) {
        uint8_t *b = dma_alloc(12 + 60, 16); /* virtio_net_hdr (12 bytes with VERSION_1) + frame */
        arp_request(b + 12);
        set_desc(d, pa(b), 72, 0, 0);
    } else {
        uint32_t *h = dma_alloc(16, 16); /* type, reserved, sector */
        h[0] = VIRTIO_BLK_T_IN;
        set_desc(d, pa(h), 16, 0, 0);
    }
}

void req_body(struct ctx *c, volatile struct vdesc *d, uint32_t len) {
    uint8_t *b = dma_alloc(len && len < (1u << 22) ? len : 64, 64);
    set_desc(d, pa(b), len, V(c)->net ? 0 : F_WRITE, 0);
}

void req_tail(struct ctx *c, volatile struct vdesc *d) {
    uint8_t *b = dma_alloc(16, 16);
    b[0] = 0xff;
    set_desc(d, pa(b), V(c)->net ? 16 : 1, V(c)->net ? 0 : F_WRITE, 0);
}

/* head at ``i``, a ``len``-byte body at i+1, the tail at i+2; returns the head. */
static uint16_t build_req(struct ctx *c, struct vq *q, uint16_t i, uint32_t len) {
    req_head(c, &q->desc[i]);
    req_body(c, &q->desc[i + 1], len);
    req_tail(c, &q->desc[i + 2]);
    q->desc[i].flags |= F_NEXT;
    q->desc[i].next = i + 1;
    q->desc[i + 1].flags |= F_NEXT;
    q->desc[i + 1].next = i + 2;
    return i;
}

/* Publish ``head``, kick, give the device time to react, then check the used ring. */
static int submit_and_check(struct ctx *c, struct vq *q, uint16_t head) {
    vq_publish(q, head);
    vq_kick(q);
    sleep_ms(REACT_MS);
    return used_sane(c, q, 1);
}

#define INIT_OR_FAIL(c, o)                                                  \
    do {                                                                    \
        if (v_init((c), (o))) return fail((c), "init: %s", (c)->detail);    \
    } while (0)

int avail_idx_jump(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 512);
    for (int i = 0; i < q->size; i++) q->avail[2 + i] = 0;
    q->avail_idx += q->size + 5;
    mb();
    q->avail[1] = q->avail_idx;
    vq_kick(q);
    sleep_ms(REACT_MS);
    return used_sane(c, q, q->size + 5); /* as many as avail.idx claims, each naming a real head */
}

int head_out_of_range(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 512);
    return submit_and_check(c, q, q->size + 3);
}

int next_out_of_range(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    req_head(c, &q->desc[0]);
    q->desc[0].flags |= F_NEXT;
    q->desc[0].next = 0x7fff;
    return submit_and_check(c, q, 0);
}

int desc_loop(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 512);
    q->desc[2].flags |= F_NEXT;
    q->desc[2].next = 1;
    return submit_and_check(c, q, 0);
}

int desc_self_loop(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    req_head(c, &q->desc[0]);
    q->desc[0].flags |= F_NEXT;
    q->desc[0].next = 0;
    return submit_and_check(c, q, 0);
}

int full_ring_loop(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    req_head(c, &q->desc[0]);
    for (int i = 1; i < q->size; i++) req_body(c, &q->desc[i], 512);
    for (int i = 0; i < q->size; i++) {
        q->desc[i].flags |= F_NEXT;
        q->desc[i].next = (i + 1) % q->size;
    }
    return submit_and_check(c, q, 0);
}

/* An indirect table of ``n`` entries forming one request: head, bodies, tail. */
static volatile struct vdesc *indirect_table(struct ctx *c, int n, volatile struct vdesc *at) {
    volatile struct vdesc *t = at ? at : dma_alloc(16 * n, 16);
    req_head(c, &t[0]);
    for (int i = 1; i < n - 1; i++) req_body(c, &t[i], 512);
    req_tail(c, &t[n - 1]);
    for (int i = 0; i < n - 1; i++) {
        t[i].flags |= F_NEXT;
        t[i].next = i + 1;
    }
    return t;
}

static int indirect_request(struct ctx *c, uint64_t table, uint32_t len, uint16_t flags) {
    struct vq *q = work_queue(c);
    set_desc(&q->desc[0], table, len, F_INDIRECT | flags, 1);
    req_tail(c, &q->desc[1]);
    return submit_and_check(c, q, 0);
}

int indirect_chain_2q(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    int n = 2 * work_queue(c)->size + 2;
    return indirect_request(c, pa(indirect_table(c, n, NULL)), 16 * n, 0);
}

int indirect_chain_huge(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return indirect_request(c, pa(indirect_table(c, 4096, NULL)), 16 * 4096, 0);
}

int indirect_bad_len(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return indirect_request(c, pa(indirect_table(c, 3, NULL)), 24, 0);
}

int indirect_zero_len(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return indirect_request(c, pa(indirect_table(c, 3, NULL)), 0, 0);
}

int indirect_nested(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    volatile struct vdesc *inner = indirect_table(c, 3, NULL);
    volatile struct vdesc *outer = dma_alloc(16, 16);
    set_desc(outer, pa(inner), 48, F_INDIRECT, 0);
    return indirect_request(c, pa(outer), 16, 0);
}

int indirect_with_next(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return indirect_request(c, pa(indirect_table(c, 3, NULL)), 48, F_NEXT);
}

int indirect_loop(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    volatile struct vdesc *t = indirect_table(c, 3, NULL);
    t[2].flags |= F_NEXT;
    t[2].next = 1;
    return indirect_request(c, pa(t), 48, 0);
}

int indirect_next_out(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    volatile struct vdesc *t = indirect_table(c, 3, NULL);
    t[1].next = 50;
    return indirect_request(c, pa(t), 48, 0);
}

int indirect_in_bar(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return indirect_request(c, V(c)->common_phys, 64, 0);
}

int indirect_straddles_end(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    volatile struct vdesc *t = dma_at_end(16);
    req_head(c, t);
    t->flags |= F_NEXT;
    t->next = 1;
    return indirect_request(c, pa(t), 64, 0);
}

int indirect_beyond_ram(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return indirect_request(c, g.ram_end + 0x1000, 48, 0);
}

static int body_at(struct ctx *c, uint64_t addr, uint32_t len) {
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 512);
    q->desc[1].addr = addr;
    q->desc[1].len = len;
    return submit_and_check(c, q, 0);
}

int desc_zero_len(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 0);
    return submit_and_check(c, q, 0);
}

int desc_huge_len(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return body_at(c, pa(dma_alloc(4096, 4096)), 0xffffffff);
}

int desc_straddles_end(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return body_at(c, g.ram_end - 256, 512);
}

int desc_beyond_ram(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 512);
    build_req(c, q, 3, 512);
    q->desc[1].addr = g.ram_end;
    q->desc[4].addr = g.ram_end + 0x100000;
    vq_publish(q, 0);
    vq_publish(q, 3);
    vq_kick(q);
    sleep_ms(REACT_MS);
    return used_sane(c, q, 2);
}

int desc_addr_wraps(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return body_at(c, 0xffffffffffffff00ull, 512);
}

int desc_in_bar(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    return body_at(c, V(c)->common_phys + 0x800, 512);
}

static int ring_at(struct ctx *c, uint64_t desc, uint64_t driver, uint64_t device) {
    struct ring_override o = {V(c)->net ? 1 : 0, desc, driver, device, 0};
    INIT_OR_FAIL(c, &o);
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 512);
    vq_publish(q, 0);
    vq_kick(q);
    sleep_ms(REACT_MS);
    return 0;
}

int ring_desc_beyond_ram(struct ctx *c) { return ring_at(c, g.ram_end + 0x1000, 0, 0); }
int ring_avail_beyond_ram(struct ctx *c) { return ring_at(c, 0, g.ram_end + 0x2000, 0); }
int ring_used_beyond_ram(struct ctx *c) { return ring_at(c, 0, 0, g.ram_end + 0x3000); }
int ring_used_straddles_end(struct ctx *c) { return ring_at(c, 0, 0, pa(dma_at_end(64))); }
int ring_desc_in_bar(struct ctx *c) { return ring_at(c, V(c)->common_phys, 0, 0); }

int queue_size_odd(struct ctx *c) {
    struct ring_override o = {V(c)->net ? 1 : 0, 0, 0, 0, 15};
    INIT_OR_FAIL(c, &o);
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 512);
    vq_publish(q, 0);
    vq_kick(q);
    sleep_ms(REACT_MS);
    return 0;
}

int notify_bogus_queue(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vdev *v = V(c);
    if (7 * v->notify_mult + 2 <= notify_len) wr16(v->notify_base, 7 * v->notify_mult, 7);
    *(volatile uint16_t *)work_queue(c)->notify = 0xffff;
    sleep_ms(REACT_MS);
    return used_sane(c, work_queue(c), 0);
}

int kick_before_driver_ok(struct ctx *c) {
    if (init_device(c, NULL, 0)) return fail(c, "init: %s", c->detail);
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 512);
    return submit_and_check(c, q, 0);
}

int reset_mid_io(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    for (int i = 0; i < 5; i++) {
        build_req(c, q, 3 * i, V(c)->net ? 64 : 65536);
        vq_publish(q, 3 * i);
    }
    vq_kick(q);
    return v_reset(c);
}

int register_sweep(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    struct vq *q = work_queue(c);
    build_req(c, q, 0, 512);
    vq_publish(q, 0);
    vq_kick(q);
    bar_sweep(c->dev, V(c)->common_bar, 0, 0x10000);
    return 0;
}

int config_sweep_scenario(struct ctx *c) {
    INIT_OR_FAIL(c, NULL);
    config_sweep(c->dev);
    return 0;
}
