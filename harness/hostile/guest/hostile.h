/* The hostile guest: programs one PCI device by hand from user space and abuses it.
 *
 * Rules:
 *
 * 1. The device's driver is not bound (the boot blacklists it; a bound driver is unbound
 *    through sysfs). Registers are reached through sysfs resourceN mmap, config space through
 *    sysfs config, and DMA memory is a RAM range hidden from the kernel with memmap= and
 *    mapped through /dev/mem. That range ends at the end of guest RAM, so structures can be
 *    placed to straddle it.
 * 2. Every structure the device may read or write lives in that range, beyond RAM, or in a
 *    BAR: no scenario hands the device an address inside RAM the kernel uses.
 * 3. A scenario is: abuse (with an optional check of the architected error behaviour), then
 *    the liveness check (reset the device the way its driver would, one valid operation).
 *    Every wait is bounded; a scenario that does not finish runs into alarm() (HANG).
 * 4. Results go to the console and, with a handshake, to the host on /dev/ttyS1: the guest
 *    waits after each scenario until the host has checked the device server (GO / STOP).
 */
#ifndef HOSTILE_H
#define HOSTILE_H

#include <stddef.h>
#include <stdint.h>

#define MAX_BARS 6

struct pci_dev {
    char bdf[32];
    char path[160];
    uint16_t vendor, device;
    int config_fd;
    struct {
        uint64_t phys, size, flags;
        volatile uint8_t *map;
    } bar[MAX_BARS];
};

/* Per-scenario context handed to every scenario function. */
struct ctx {
    struct pci_dev *dev;
    void *priv;           /* the device class's own state */
    char detail[240];     /* why a check failed */
};

struct scenario {
    const char *name;
    const char *what;
    /* The abuse; returns 0, or 1 when the architected error behaviour was not seen
     * (``detail`` says what). */
    int (*run)(struct ctx *c);
};

struct device_class {
    const char *name;
    uint16_t vendor;
    const uint16_t *devices;      /* zero-terminated list of device IDs */
    const char *driver;           /* the Linux driver to unbind */
    int (*open)(struct ctx *c);   /* map BARs etc.; 0 on success */
    int (*liveness)(struct ctx *c);  /* reset + one valid operation; 0 when alive */
    const struct scenario *scenarios;
    int count;
};

extern const struct device_class virtio_blk_class, virtio_net_class, e1000_class, ahci_class, testdev_class;

/* Environment from the kernel command line (hostile.ram_end, hostile.dma, ...). */
struct env {
    uint64_t ram_end;       /* first address past guest RAM */
    uint64_t dma_phys;      /* the hidden range */
    uint64_t dma_size;
    volatile uint8_t *dma;  /* its mapping */
    size_t dma_used;        /* bump allocator */
};
extern struct env g;

/* pci.c */
int pci_find(struct pci_dev *d, uint16_t vendor, const uint16_t *devices, const char *driver, char *err, size_t n);
uint32_t cfg_read(struct pci_dev *d, int off, int size);
void cfg_write(struct pci_dev *d, int off, int size, uint32_t value);
void pci_bus_master(struct pci_dev *d, int on);
int cfg_find_cap(struct pci_dev *d, uint8_t id, int start);
int bar_sweep(struct pci_dev *d, int bar, uint32_t start, uint32_t end);
int config_sweep(struct pci_dev *d);
int dma_map(char *err, size_t n);
void dma_reset(void);
void *dma_alloc(size_t size, size_t align);
void *dma_at_end(size_t size);  /* the last ``size`` bytes of RAM */
uint64_t pa(const volatile void *p);

/* util */
uint64_t now_ms(void);
void relax(void);
void sleep_ms(unsigned ms);
int fail(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Waits at most ``ms`` milliseconds for ``cond``; evaluates to 1 when it held. */
#define WAIT_FOR(cond, ms)                                   \
    ({                                                       \
        uint64_t _deadline = now_ms() + (ms);                \
        int _held = 0;                                       \
        for (;;) {                                           \
            if (cond) { _held = 1; break; }                  \
            if (now_ms() > _deadline) break;                 \
            relax();                                         \
        }                                                    \
        _held;                                               \
    })

/* Register access at a mapped BAR. */
static inline uint32_t rd32(volatile uint8_t *base, uint32_t off) { return *(volatile uint32_t *)(base + off); }
static inline void wr32(volatile uint8_t *base, uint32_t off, uint32_t v) { *(volatile uint32_t *)(base + off) = v; }
static inline uint16_t rd16(volatile uint8_t *base, uint32_t off) { return *(volatile uint16_t *)(base + off); }
static inline void wr16(volatile uint8_t *base, uint32_t off, uint16_t v) { *(volatile uint16_t *)(base + off) = v; }
static inline uint8_t rd8(volatile uint8_t *base, uint32_t off) { return *(volatile uint8_t *)(base + off); }
static inline void wr8(volatile uint8_t *base, uint32_t off, uint8_t v) { *(volatile uint8_t *)(base + off) = v; }
static inline void mb(void) { __sync_synchronize(); }

/* Poll bound of a liveness check and of waiting for the device's reaction to abuse. */
#define LIVE_MS 8000
#define REACT_MS 250

#endif
