/* virtio-blk payload: a minimal virtio 1.2 block driver over virtio-mmio (default) or
 * virtio-pci (built with -DTRANSPORT_PCI): device initialization (§3.1.1), one split
 * virtqueue (§2.7), requests (§5.2.6) — a batch of writes, reads of the same sectors, a
 * flush, GET_ID — and the error statuses the spec defines for a read past the end
 * (IOERR) and an unknown request type (UNSUPP).
 *
 * Interrupts: virtio-mmio interrupts by INTx (a level GSI the host names in
 * virtio_config[1]; the handler acknowledges InterruptStatus, §4.2.3.4); virtio-pci by
 * MSI-X, vector 0 for configuration changes and vector 1 for the queue (§4.1.5.1.2).
 *
 * The host passes, in virtio_config: [0] the virtio-mmio window's address, [1] its GSI,
 * [2] the disk's capacity in sectors. It checks the disk image afterwards.
 *
 * results.values: [0] capacity read, [1] requests completed, [2] used-buffer interrupts,
 * [3] negotiated features (low 32 bits), [4] negotiated features (high 32 bits),
 * [5] spurious interrupts.
 */
#include "rt.h"

volatile u64 virtio_config[4] = {0xD0000000ul, 20, 0, 0};

#define VIRTIO_F_VERSION_1 32
#define VIRTIO_BLK_F_FLUSH 9
#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_NEEDS_RESET 64
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_S_OK 0
#define BLK_S_IOERR 1
#define BLK_S_UNSUPP 2
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

#define QSIZE 16
#define VEC_QUEUE 0x50
#define VEC_CONFIG 0x51

struct desc { u64 addr; u32 len; u16 flags, next; };
struct avail { u16 flags, idx, ring[QSIZE], used_event; };
struct used_elem { u32 id, len; };
struct used { u16 flags, idx; struct used_elem ring[QSIZE]; u16 avail_event; };

static struct desc descs[QSIZE] __attribute__((aligned(4096)));
static struct avail avail __attribute__((aligned(4096)));
static struct used used __attribute__((aligned(4096)));
static volatile u32 used_irqs, spurious;

static void write_address(u64 reg, const volatile void *p) {
    mmio_write32(reg, (u32)(u64)p);
    mmio_write32(reg + 4, (u32)((u64)p >> 32));
}

/* -- the transport: the same few operations over MMIO registers or PCI structures --------- */
#ifndef TRANSPORT_PCI
/* virtio-mmio version 2 (§4.2.2) */
static u64 base;
#define MMIO_MAGIC 0x000
#define MMIO_VERSION 0x004
#define MMIO_DEVICE_ID 0x008
#define MMIO_DEVICE_FEATURES 0x010
#define MMIO_DEVICE_FEATURES_SEL 0x014
#define MMIO_DRIVER_FEATURES 0x020
#define MMIO_DRIVER_FEATURES_SEL 0x024
#define MMIO_QUEUE_SEL 0x030
#define MMIO_QUEUE_NUM_MAX 0x034
#define MMIO_QUEUE_NUM 0x038
#define MMIO_QUEUE_READY 0x044
#define MMIO_QUEUE_NOTIFY 0x050
#define MMIO_INTERRUPT_STATUS 0x060
#define MMIO_INTERRUPT_ACK 0x064
#define MMIO_STATUS 0x070
#define MMIO_QUEUE_DESC 0x080
#define MMIO_QUEUE_DRIVER 0x090
#define MMIO_QUEUE_DEVICE 0x0A0
#define MMIO_CONFIG 0x100

static void on_interrupt(u8 vector) {
    (void)vector;
    u32 status = mmio_read32(base + MMIO_INTERRUPT_STATUS);
    if (!status) { spurious++; return; }
    mmio_write32(base + MMIO_INTERRUPT_ACK, status);     /* drops the level line (§4.2.3.4) */
    if (status & 1) used_irqs++;
}

static int transport_init(void) {
    base = virtio_config[0];
    CHECK_EQ(mmio_read32(base + MMIO_MAGIC), 0x74726976);   /* "virt" */
    CHECK_EQ(mmio_read32(base + MMIO_VERSION), 2);
    CHECK_EQ(mmio_read32(base + MMIO_DEVICE_ID), 2);         /* block device */
    irq_set_handler(VEC_QUEUE, on_interrupt);
    ioapic_route((u8)virtio_config[1], VEC_QUEUE, 1);
    return mmio_read32(base + MMIO_MAGIC) == 0x74726976;
}
static u8 get_status(void) { return (u8)mmio_read32(base + MMIO_STATUS); }
static void set_status(u8 s) { mmio_write32(base + MMIO_STATUS, s); }
static u32 get_features(u32 sel) { mmio_write32(base + MMIO_DEVICE_FEATURES_SEL, sel); return mmio_read32(base + MMIO_DEVICE_FEATURES); }
static void set_features(u32 sel, u32 v) { mmio_write32(base + MMIO_DRIVER_FEATURES_SEL, sel); mmio_write32(base + MMIO_DRIVER_FEATURES, v); }
static u32 queue_max(void) { mmio_write32(base + MMIO_QUEUE_SEL, 0); return mmio_read32(base + MMIO_QUEUE_NUM_MAX); }
static void queue_enable(u16 size) {
    mmio_write32(base + MMIO_QUEUE_SEL, 0);
    mmio_write32(base + MMIO_QUEUE_NUM, size);
    /* 64-bit addresses as two 32-bit halves: §4.2.2.2 allows only 32-bit accesses. */
    write_address(base + MMIO_QUEUE_DESC, descs);
    write_address(base + MMIO_QUEUE_DRIVER, &avail);
    write_address(base + MMIO_QUEUE_DEVICE, &used);
    mmio_write32(base + MMIO_QUEUE_READY, 1);
    CHECK_EQ(mmio_read32(base + MMIO_QUEUE_READY), 1);
}
static void notify(void) { mmio_write32(base + MMIO_QUEUE_NOTIFY, 0); }
static u64 config64(u32 off) { return mmio_read32(base + MMIO_CONFIG + off) | (u64)mmio_read32(base + MMIO_CONFIG + off + 4) << 32; }
#else
/* virtio-pci modern (§4.1.4): the structures the vendor capabilities point at. */
static u64 common, notify_base, isr, device_cfg;
static u32 notify_mult;
static u16 notify_off;
#define COMMON_DFSELECT 0
#define COMMON_DF 4
#define COMMON_GFSELECT 8
#define COMMON_GF 12
#define COMMON_MSIX_CONFIG 16
#define COMMON_NUM_QUEUES 18
#define COMMON_STATUS 20
#define COMMON_Q_SELECT 22
#define COMMON_Q_SIZE 24
#define COMMON_Q_MSIX 26
#define COMMON_Q_ENABLE 28
#define COMMON_Q_NOFF 30
#define COMMON_Q_DESC 32
#define COMMON_Q_DRIVER 40
#define COMMON_Q_DEVICE 48
#define NO_VECTOR 0xFFFF

static void on_queue(u8 vector) { (void)vector; used_irqs++; }
static void on_config(u8 vector) { (void)vector; }

static int transport_init(void) {
    int devfn = pci_find(0x1AF4, 0x1042);                 /* 0x1040 + device ID 2 (§4.1.2.1) */
    CHECK(devfn >= 0);
    if (devfn < 0) return 0;
    CHECK_EQ(pci_read8((u8)devfn, 0x08), 1);              /* revision 1: modern only */
    for (u8 at = pci_find_cap((u8)devfn, 0x09); at; at = pci_read8((u8)devfn, at + 1) & 0xFC) {
        if (pci_read8((u8)devfn, at) != 0x09) continue;
        u8 type = pci_read8((u8)devfn, at + 3), bar = pci_read8((u8)devfn, at + 4);
        u64 where = bar < 6 ? pci_bar((u8)devfn, bar) + pci_read32((u8)devfn, at + 8) : 0;
        if (type == 1 && !common) common = where;
        if (type == 2 && !notify_base) { notify_base = where; notify_mult = pci_read32((u8)devfn, at + 16); }
        if (type == 3 && !isr) isr = where;
        if (type == 4 && !device_cfg) device_cfg = where;
    }
    CHECK(common && notify_base && isr && device_cfg);
    /* MSI-X: entry 0 for configuration changes, entry 1 for the queue. */
    u8 cap = pci_find_cap((u8)devfn, 0x11);
    CHECK(cap != 0);
    u32 table = pci_read32((u8)devfn, cap + 4);
    u64 t = pci_bar((u8)devfn, table & 7) + (table & ~7u);
    mmio_write32(t + 0, MSI_ADDRESS); mmio_write32(t + 4, 0); mmio_write32(t + 8, VEC_CONFIG); mmio_write32(t + 12, 0);
    mmio_write32(t + 16, MSI_ADDRESS); mmio_write32(t + 20, 0); mmio_write32(t + 24, VEC_QUEUE); mmio_write32(t + 28, 0);
    irq_set_handler(VEC_QUEUE, on_queue);
    irq_set_handler(VEC_CONFIG, on_config);
    pci_write16((u8)devfn, cap + 2, pci_read16((u8)devfn, cap + 2) | 0x8000);
    return common != 0;
}
static u8 get_status(void) { return mmio_read8(common + COMMON_STATUS); }
static void set_status(u8 s) { mmio_write8(common + COMMON_STATUS, s); }
static u32 get_features(u32 sel) { mmio_write32(common + COMMON_DFSELECT, sel); return mmio_read32(common + COMMON_DF); }
static void set_features(u32 sel, u32 v) { mmio_write32(common + COMMON_GFSELECT, sel); mmio_write32(common + COMMON_GF, v); }
static u32 queue_max(void) { mmio_write16(common + COMMON_Q_SELECT, 0); return mmio_read16(common + COMMON_Q_SIZE); }
static void queue_enable(u16 size) {
    mmio_write16(common + COMMON_MSIX_CONFIG, 0);
    CHECK_EQ(mmio_read16(common + COMMON_MSIX_CONFIG), 0);  /* the mapping took (§4.1.5.1.2.1) */
    mmio_write16(common + COMMON_Q_SELECT, 0);
    mmio_write16(common + COMMON_Q_SIZE, size);
    mmio_write16(common + COMMON_Q_MSIX, 1);
    CHECK_EQ(mmio_read16(common + COMMON_Q_MSIX), 1);
    /* §4.1.3.1: 64-bit fields take 32-bit accesses. */
    write_address(common + COMMON_Q_DESC, descs);
    write_address(common + COMMON_Q_DRIVER, &avail);
    write_address(common + COMMON_Q_DEVICE, &used);
    notify_off = mmio_read16(common + COMMON_Q_NOFF);
    mmio_write16(common + COMMON_Q_ENABLE, 1);
    CHECK_EQ(mmio_read16(common + COMMON_Q_ENABLE), 1);
}
static void notify(void) { mmio_write16(notify_base + (u64)notify_off * notify_mult, 0); }
static u64 config64(u32 off) { return mmio_read32(device_cfg + off) | (u64)mmio_read32(device_cfg + off + 4) << 32; }
#endif

/* -- the split virtqueue (§2.7) ------------------------------------------------------------ */
struct request { u32 type, reserved; u64 sector; };
static struct request headers[QSIZE / 3];
static u8 statuses[QSIZE / 3];
static u16 used_seen;

/* Queue request slot r (descriptors 3r..3r+2): header, optional data, status. */
static void queue_request(u16 r, u32 type, u64 sector, void *data, u32 len, int device_writes) {
    headers[r] = (struct request){type, 0, sector};
    statuses[r] = 0xFF;
    u16 d = (u16)(3 * r);
    descs[d] = (struct desc){(u64)&headers[r], sizeof headers[r], DESC_F_NEXT, (u16)(d + 1)};
    if (len) {
        descs[d + 1] = (struct desc){(u64)data, len, (u16)(DESC_F_NEXT | (device_writes ? DESC_F_WRITE : 0)), (u16)(d + 2)};
        descs[d + 2] = (struct desc){(u64)&statuses[r], 1, DESC_F_WRITE, 0};
    } else {
        descs[d].next = (u16)(d + 2);
        descs[d + 2] = (struct desc){(u64)&statuses[r], 1, DESC_F_WRITE, 0};
    }
    avail.ring[avail.idx % QSIZE] = d;
    mb();
    avail.idx++;                                  /* §2.7.13.3: the ring entry before idx */
}

static void kick_and_wait(u16 count) {
    mb();
    notify();
    u16 want = (u16)(used_seen + count);
    while ((u16)(*(volatile u16 *)&used.idx - want) & 0x8000) wait_for(&used_irqs, used_irqs + 1);
    mb();
    used_seen = want;
}

static u8 request(u32 type, u64 sector, void *data, u32 len, int device_writes) {
    queue_request(0, type, sector, data, len, device_writes);
    kick_and_wait(1);
    return statuses[0];
}

/* -- the test ------------------------------------------------------------------------------ */
#define SECTORS 8
static u8 wbuf[4][SECTORS * 512] __attribute__((aligned(512)));
static u8 rbuf[4][SECTORS * 512] __attribute__((aligned(512)));
static char id[20];

int main(void) {
    interrupts_init();
    if (!transport_init()) return finish();

    /* §3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK. */
    set_status(0);
    CHECK_EQ(get_status(), 0);
    set_status(STATUS_ACKNOWLEDGE);
    set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    u32 lo = get_features(0), hi = get_features(1);
    CHECK(hi & (1u << (VIRTIO_F_VERSION_1 - 32)));
    CHECK(lo & (1u << VIRTIO_BLK_F_FLUSH));
    u32 want_lo = lo & (1u << VIRTIO_BLK_F_FLUSH), want_hi = 1u << (VIRTIO_F_VERSION_1 - 32);
    set_features(0, want_lo);
    set_features(1, want_hi);
    set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    CHECK(get_status() & STATUS_FEATURES_OK);
    u32 max = queue_max();
    CHECK(max >= QSIZE);
    queue_enable(QSIZE);
    set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    results.values[3] = want_lo;
    results.values[4] = want_hi;

    u64 capacity = config64(0);
    CHECK_EQ(capacity, virtio_config[2]);
    results.values[0] = capacity;

    /* Four writes in one batch: four chains, one notification. */
    for (u32 r = 0; r < 4; r++) {
        for (u32 i = 0; i < sizeof wbuf[r]; i++) wbuf[r][i] = (u8)(r * 17 + i * 3 + (i >> 9));
        queue_request((u16)r, BLK_T_OUT, 16 + r * SECTORS, wbuf[r], sizeof wbuf[r], 0);
    }
    kick_and_wait(4);
    for (u32 r = 0; r < 4; r++) CHECK_EQ(statuses[r], BLK_S_OK);
    /* ...and four reads of the same sectors. */
    for (u32 r = 0; r < 4; r++) queue_request((u16)r, BLK_T_IN, 16 + r * SECTORS, rbuf[r], sizeof rbuf[r], 1);
    kick_and_wait(4);
    for (u32 r = 0; r < 4; r++) {
        CHECK_EQ(statuses[r], BLK_S_OK);
        CHECK(memcmp(wbuf[r], rbuf[r], sizeof rbuf[r]) == 0);
    }
    CHECK_EQ(request(BLK_T_FLUSH, 0, 0, 0, 0), BLK_S_OK);
    CHECK_EQ(request(BLK_T_GET_ID, 0, id, sizeof id, 1), BLK_S_OK);
    CHECK(memcmp(id, "devmodels", 10) == 0);
    /* §5.2.6.1: a request past the end fails with IOERR; an unknown type with UNSUPP. */
    CHECK_EQ(request(BLK_T_IN, capacity, rbuf[0], 512, 1), BLK_S_IOERR);
    CHECK_EQ(request(0xFF, 0, 0, 0, 0), BLK_S_UNSUPP);
    CHECK_EQ(get_status() & STATUS_NEEDS_RESET, 0);
    results.values[1] = used_seen;
    results.values[2] = used_irqs;
    results.values[5] = spurious;
    return finish();
}
