/* A minimal virtio 1.2 driver over the modern PCI transport (§4.1), split rings only (§2.7). */
#ifndef HOSTILE_VIRTIO_H
#define HOSTILE_VIRTIO_H

#include "hostile.h"

struct vdesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
} __attribute__((packed));

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

#define QSZ 16 /* the queue size this driver asks for (a smaller size is always allowed) */

struct vq {
    int index;
    uint16_t size;
    volatile struct vdesc *desc;
    volatile uint16_t *avail; /* flags, idx, ring[size], used_event */
    volatile uint8_t *used;   /* flags, idx, {id, len}[size], avail_event */
    uint16_t avail_idx, last_used;
    volatile uint8_t *notify;
};

/* Ring addresses to program instead of fresh ones (0 keeps the fresh one). */
struct ring_override {
    int queue;
    uint64_t desc, driver, device;
    uint16_t size;
};

struct vdev {
    volatile uint8_t *common, *notify_base, *isr, *devcfg;
    uint64_t common_phys;
    int common_bar;
    uint32_t notify_mult;
    uint64_t offered;
    int net;
    int nq;
    struct vq q[2];
};

int v_open(struct ctx *c, int net);
int v_reset(struct ctx *c);
int v_init(struct ctx *c, const struct ring_override *o);
uint16_t v_used_idx(struct vq *q);
void vq_publish(struct vq *q, uint16_t head);
void vq_kick(struct vq *q);
int vq_wait(struct vq *q, unsigned ms);
void vq_pop(struct vq *q, uint32_t *id, uint32_t *len);
int used_sane(struct ctx *c, struct vq *q, unsigned max_new);
struct vq *work_queue(struct ctx *c);
void set_desc(volatile struct vdesc *d, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next);

/* Elements of a request on the work queue (blk: header, data, status; net: one frame). */
void req_head(struct ctx *c, volatile struct vdesc *d);
void req_body(struct ctx *c, volatile struct vdesc *d, uint32_t len);
void req_tail(struct ctx *c, volatile struct vdesc *d);

/* The ring scenarios both virtio classes run on their work queue (virtio.c). */
#define RING_SCENARIOS(X)                                                                                      \
    X(avail_idx_jump, "avail-idx-jump", "avail.idx moves QSZ + 5 ahead of the last index seen")                \
    X(head_out_of_range, "head-out-of-range", "avail.ring holds head index QSZ + 3")                          \
    X(next_out_of_range, "next-out-of-range", "descriptor next = 0x7fff with F_NEXT")                         \
    X(desc_loop, "desc-loop", "a chain whose last descriptor points back at its second")                       \
    X(desc_self_loop, "desc-self-loop", "one descriptor whose next is itself")                                 \
    X(full_ring_loop, "full-ring-loop", "all QSZ descriptors chained in a circle")                             \
    X(indirect_chain_2q, "indirect-chain-2q", "an indirect table of 2*QSZ + 2 chained descriptors")           \
    X(indirect_chain_huge, "indirect-chain-huge", "an indirect table of 4096 chained descriptors (64 KiB)")   \
    X(indirect_bad_len, "indirect-bad-len", "indirect descriptor len 24 (not a multiple of 16)")              \
    X(indirect_zero_len, "indirect-zero-len", "indirect descriptor len 0")                                    \
    X(indirect_nested, "indirect-nested", "an indirect table whose entry is itself F_INDIRECT")               \
    X(indirect_with_next, "indirect-with-next", "a descriptor with both F_INDIRECT and F_NEXT")              \
    X(indirect_loop, "indirect-loop", "an indirect table whose chain loops")                                  \
    X(indirect_next_out, "indirect-next-out-of-table", "an indirect entry whose next is past the table")      \
    X(indirect_in_bar, "indirect-in-bar", "the indirect table is the device's own common-config BAR")        \
    X(indirect_straddles_end, "indirect-straddles-end", "an indirect table of 4 entries 16 bytes before the end of RAM") \
    X(indirect_beyond_ram, "indirect-beyond-ram", "an indirect table a page past the end of RAM")             \
    X(desc_zero_len, "desc-zero-len", "a data descriptor of length 0")                                         \
    X(desc_huge_len, "desc-huge-len", "a data descriptor of length 0xffffffff")                                \
    X(desc_straddles_end, "desc-straddles-end", "a 512-byte buffer starting 256 bytes before the end of RAM")  \
    X(desc_beyond_ram, "desc-beyond-ram", "buffers at and past the end of RAM")                                \
    X(desc_addr_wraps, "desc-addr-wraps", "a buffer 256 bytes below 2^64, 512 bytes long")                    \
    X(desc_in_bar, "desc-in-bar", "a device-accessed buffer inside the device's own BAR")                    \
    X(ring_desc_beyond_ram, "ring-desc-beyond-ram", "the descriptor table a page past the end of RAM")        \
    X(ring_avail_beyond_ram, "ring-avail-beyond-ram", "the driver (avail) ring past the end of RAM")          \
    X(ring_used_beyond_ram, "ring-used-beyond-ram", "the device (used) ring past the end of RAM")             \
    X(ring_used_straddles_end, "ring-used-straddles-end", "the used ring 64 bytes before the end of RAM")    \
    X(ring_desc_in_bar, "ring-desc-in-bar", "the descriptor table inside the device's own BAR")              \
    X(queue_size_odd, "queue-size-not-pow2", "queue_size 15 written before queue_enable")                     \
    X(notify_bogus_queue, "notify-bogus-queue", "notifications for queues 7 and 0xffff")                       \
    X(kick_before_driver_ok, "kick-before-driver-ok", "a request and a kick before DRIVER_OK")                \
    X(reset_mid_io, "reset-mid-io", "five requests in flight, then device_status = 0")                      \
    X(register_sweep, "register-sweep", "all ones, then zero, into every dword of the BAR with the common config") \
    X(config_sweep_scenario, "config-sweep", "all ones into config space 0x40-0xff (PM capability left out)")

#define DECLARE_SCENARIO(fn, name, what) int fn(struct ctx *c);
RING_SCENARIOS(DECLARE_SCENARIO)
#define SCENARIO_ENTRY(fn, name, what) {name, what, fn},

#endif
