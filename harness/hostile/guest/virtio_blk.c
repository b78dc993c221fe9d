/* virtio-blk (VIRTIO 1.2 §5.2): the ring scenarios plus malformed requests.
 *
 * Architected: an unknown request type completes with VIRTIO_BLK_S_UNSUPP, a request beyond
 * the capacity with VIRTIO_BLK_S_IOERR (§5.2.6). Liveness: reset, initialise, read sector 0.
 */
#include "virtio.h"

#include <string.h>

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2

struct blk_req {
    uint32_t *hdr;
    uint8_t *data;
    uint8_t *status;
};

/* A three-descriptor request at 0..2 of the request queue. */
static struct blk_req request(struct ctx *c, uint32_t type, uint64_t sector, uint32_t len, int data_writable) {
    struct vq *q = work_queue(c);
    struct blk_req r;
    r.hdr = dma_alloc(16, 16);
    r.data = dma_alloc(len ? len : 16, 512);
    r.status = dma_alloc(16, 16);
    r.hdr[0] = type;
    r.hdr[1] = 0;
    memcpy(&r.hdr[2], &sector, 8);
    r.status[0] = 0xff;
    set_desc(&q->desc[0], pa(r.hdr), 16, F_NEXT, 1);
    set_desc(&q->desc[1], pa(r.data), len, F_NEXT | (data_writable ? F_WRITE : 0), 2);
    set_desc(&q->desc[2], pa(r.status), 1, F_WRITE, 0);
    return r;
}

/* Submits descriptor 0 and waits for it; returns the status byte, or -1 without completion. */
static int complete(struct ctx *c, struct blk_req *r, unsigned ms) {
    struct vq *q = work_queue(c);
    vq_publish(q, 0);
    vq_kick(q);
    if (!vq_wait(q, ms)) return -1;
    uint32_t id, len;
    vq_pop(q, &id, &len);
    if (id != 0) return -2;
    return r->status[0];
}

static int open_blk(struct ctx *c) { return v_open(c, 0); }

static int liveness(struct ctx *c) {
    if (v_init(c, NULL)) return 1;
    struct blk_req r = request(c, T_IN, 0, 512, 1);
    int status = complete(c, &r, LIVE_MS);
    if (status == -1) return fail(c, "a read of sector 0 did not complete in %d ms", LIVE_MS);
    if (status != S_OK) return fail(c, "a read of sector 0 ended with status %d", status);
    return 0;
}

static uint64_t capacity(struct ctx *c) {
    struct vdev *v = c->priv;
    if (!v->devcfg) return 0;
    return rd32(v->devcfg, 0) | (uint64_t)rd32(v->devcfg, 4) << 32;
}

static int expect_status(struct ctx *c, struct blk_req *r, int want, const char *what) {
    int status = complete(c, r, REACT_MS * 5);
    if (status == -1) return fail(c, "%s: no completion", what);
    if (status != want) return fail(c, "%s: status %d, want %d", what, status, want);
    return 0;
}

static int unknown_type(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    struct blk_req r = request(c, 0x55, 0, 512, 1);
    return expect_status(c, &r, S_UNSUPP, "type 0x55");
}

static int sector_beyond(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    struct blk_req r = request(c, T_IN, capacity(c) + 100, 512, 1);
    return expect_status(c, &r, S_IOERR, "read past the capacity");
}

static int sector_huge(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    struct blk_req r = request(c, T_OUT, 0xfffffffffffffff0ull, 4096, 0);
    return expect_status(c, &r, S_IOERR, "write at sector 2^64 - 16");
}

static int submit_only(struct ctx *c) {
    struct vq *q = work_queue(c);
    vq_publish(q, 0);
    vq_kick(q);
    sleep_ms(REACT_MS);
    return used_sane(c, q, 1);
}

static int short_header(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    request(c, T_IN, 0, 512, 1);
    work_queue(c)->desc[0].len = 8;
    return submit_only(c);
}

static int no_status(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    request(c, T_IN, 0, 512, 1);
    work_queue(c)->desc[1].flags &= ~F_NEXT;
    return submit_only(c);
}

static int status_readonly(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    request(c, T_IN, 0, 512, 1);
    work_queue(c)->desc[2].flags &= ~F_WRITE;
    return submit_only(c);
}

static int header_writable(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    request(c, T_IN, 0, 512, 1);
    work_queue(c)->desc[0].flags |= F_WRITE;
    return submit_only(c);
}

static int write_from_writable(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    request(c, T_OUT, 8, 512, 1);
    return submit_only(c);
}

static int odd_length(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    request(c, T_IN, 0, 100, 1);
    return submit_only(c);
}

static int get_id_short(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    request(c, T_GET_ID, 0, 4, 1);
    return submit_only(c);
}

static int flush_with_data(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    request(c, T_FLUSH, 12345, 4096, 0);
    return submit_only(c);
}

static int big_read_in_tiny_pieces(struct ctx *c) {
    if (v_init(c, NULL)) return fail(c, "init: %s", c->detail);
    struct vq *q = work_queue(c);
    request(c, T_IN, 0, 512, 1);
    /* 14 one-byte write descriptors, then the status: 14 bytes for a 512-byte sector unit. */
    for (int i = 1; i < 15; i++) set_desc(&q->desc[i], pa(dma_alloc(1, 1)), 1, F_WRITE | F_NEXT, i + 1);
    set_desc(&q->desc[15], pa(dma_alloc(1, 1)), 1, F_WRITE, 0);
    return submit_only(c);
}

static const struct scenario scenarios[] = {
    RING_SCENARIOS(SCENARIO_ENTRY)
    {"blk-unknown-type", "request type 0x55 (must complete with VIRTIO_BLK_S_UNSUPP)", unknown_type},
    {"blk-sector-beyond-capacity", "read 100 sectors past the capacity (must complete with IOERR)", sector_beyond},
    {"blk-sector-huge", "write at sector 2^64 - 16 (sector * 512 overflows; must complete with IOERR)", sector_huge},
    {"blk-short-header", "an 8-byte request header", short_header},
    {"blk-no-status", "no status descriptor", no_status},
    {"blk-status-readonly", "the status descriptor is not device-writable", status_readonly},
    {"blk-header-writable", "the header descriptor is device-writable", header_writable},
    {"blk-write-from-writable", "a write whose data descriptor is device-writable", write_from_writable},
    {"blk-odd-length", "a read of 100 bytes (not a multiple of 512)", odd_length},
    {"blk-get-id-short", "GET_ID into a 4-byte buffer", get_id_short},
    {"blk-flush-with-data", "FLUSH with a sector and a 4 KiB data buffer", flush_with_data},
    {"blk-tiny-pieces", "a sector read into one-byte buffers that hold too little", big_read_in_tiny_pieces},
};

static const uint16_t ids[] = {0x1001, 0x1042, 0};

const struct device_class virtio_blk_class = {
    .name = "virtio-blk",
    .vendor = 0x1af4,
    .devices = ids,
    .driver = "virtio-pci",
    .open = open_blk,
    .liveness = liveness,
    .scenarios = scenarios,
    .count = sizeof scenarios / sizeof scenarios[0],
};
