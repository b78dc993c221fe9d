/* PCI functions through sysfs, and the hidden DMA range through /dev/mem (hostile.h rule 1). */
#include "hostile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define IORESOURCE_MEM 0x00000200

static int read_hex_file(const char *path, unsigned long *out) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fscanf(f, "%lx", out) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int map_bars(struct pci_dev *d, char *err, size_t n) {
    char path[256];
    snprintf(path, sizeof path, "%s/resource", d->path);
    FILE *f = fopen(path, "r");
    if (!f) { snprintf(err, n, "open %s: %s", path, strerror(errno)); return -1; }
    for (int i = 0; i < MAX_BARS; i++) {
        unsigned long long start, end, flags;
        if (fscanf(f, "%llx %llx %llx", &start, &end, &flags) != 3) break;
        d->bar[i].phys = start;
        d->bar[i].size = start ? end - start + 1 : 0;
        d->bar[i].flags = flags;
        d->bar[i].map = NULL;
        if (!start || !(flags & IORESOURCE_MEM)) continue;
        snprintf(path, sizeof path, "%s/resource%d", d->path, i);
        int fd = open(path, O_RDWR | O_SYNC);
        if (fd < 0) { snprintf(err, n, "open %s: %s", path, strerror(errno)); fclose(f); return -1; }
        void *p = mmap(NULL, d->bar[i].size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED) { snprintf(err, n, "mmap %s: %s", path, strerror(errno)); fclose(f); return -1; }
        d->bar[i].map = p;
    }
    fclose(f);
    return 0;
}

int pci_find(struct pci_dev *d, uint16_t vendor, const uint16_t *devices, const char *driver, char *err, size_t n) {
    DIR *dir = opendir("/sys/bus/pci/devices");
    if (!dir) { snprintf(err, n, "no /sys/bus/pci/devices"); return -1; }
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(dir))) {
        if (e->d_name[0] == '.' || strlen(e->d_name) >= sizeof d->bdf) continue;
        char path[256];
        unsigned long v, id;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%.31s/vendor", e->d_name);
        if (read_hex_file(path, &v) || v != vendor) continue;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%.31s/device", e->d_name);
        if (read_hex_file(path, &id)) continue;
        for (const uint16_t *p = devices; *p; p++)
            if (*p == id) found = 1;
        if (found) {
            memset(d, 0, sizeof *d);
            snprintf(d->bdf, sizeof d->bdf, "%.31s", e->d_name);
            snprintf(d->path, sizeof d->path, "/sys/bus/pci/devices/%.31s", e->d_name);
            d->vendor = (uint16_t)v;
            d->device = (uint16_t)id;
        }
    }
    closedir(dir);
    if (!found) { snprintf(err, n, "no PCI function %04x:(%04x...)", vendor, devices[0]); return -1; }
    char path[256];
    snprintf(path, sizeof path, "%s/driver", d->path);
    if (access(path, F_OK) == 0) {
        snprintf(path, sizeof path, "%s/driver/unbind", d->path);
        if (write_file(path, d->bdf)) { snprintf(err, n, "unbinding %s from %s failed", d->bdf, driver); return -1; }
        note("unbound %s from its driver", d->bdf);
    }
    snprintf(path, sizeof path, "%s/enable", d->path);
    if (write_file(path, "1")) { snprintf(err, n, "enabling %s failed: %s", d->bdf, strerror(errno)); return -1; }
    snprintf(path, sizeof path, "%s/config", d->path);
    d->config_fd = open(path, O_RDWR);
    if (d->config_fd < 0) { snprintf(err, n, "open %s: %s", path, strerror(errno)); return -1; }
    pci_bus_master(d, 1);
    return map_bars(d, err, n);
}

uint32_t cfg_read(struct pci_dev *d, int off, int size) {
    uint32_t v = 0;
    if (pread(d->config_fd, &v, size, off) != size) return 0xffffffff;
    return v;
}

void cfg_write(struct pci_dev *d, int off, int size, uint32_t value) {
    if (pwrite(d->config_fd, &value, size, off) != size) note("config write at %#x failed", off);
}

void pci_bus_master(struct pci_dev *d, int on) {
    uint16_t cmd = cfg_read(d, 4, 2);
    cmd = on ? (cmd | 0x6) : (cmd & ~0x4);  /* Memory Space (+ Bus Master) */
    cfg_write(d, 4, 2, cmd);
}

int cfg_find_cap(struct pci_dev *d, uint8_t id, int start) {
    if (!(cfg_read(d, 6, 2) & 0x10)) return 0;
    int pos = start ? cfg_read(d, start + 1, 1) : cfg_read(d, 0x34, 1);
    for (int guard = 0; pos >= 0x40 && guard < 48; guard++) {
        pos &= ~3;
        if (cfg_read(d, pos, 1) == id) return pos;
        pos = cfg_read(d, pos + 1, 1);
    }
    return 0;
}

int dma_map(char *err, size_t n) {
    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) { snprintf(err, n, "open /dev/mem: %s", strerror(errno)); return -1; }
    void *p = mmap(NULL, g.dma_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)g.dma_phys);
    close(fd);
    if (p == MAP_FAILED) {
        snprintf(err, n, "mmap /dev/mem at %#llx: %s", (unsigned long long)g.dma_phys, strerror(errno));
        return -1;
    }
    g.dma = p;
    return 0;
}

void dma_reset(void) {
    memset((void *)g.dma, 0, g.dma_used);
    memset((void *)(g.dma + g.dma_size - 0x200000), 0, 0x200000);  /* the end-of-RAM area */
    g.dma_used = 0;
}

void *dma_alloc(size_t size, size_t align) {
    size_t at = (g.dma_used + align - 1) & ~(align - 1);
    if (at + size > g.dma_size - 0x200000) {
        note("DMA range exhausted (%zu + %zu)", at, size);
        at = 0;
    }
    g.dma_used = at + size;
    return (void *)(g.dma + at);
}

void *dma_at_end(size_t size) { return (void *)(g.dma + g.dma_size - size); }

uint64_t pa(const volatile void *p) { return g.dma_phys + (uint64_t)((const volatile uint8_t *)p - g.dma); }

/* Every dword of ``bar`` in [start, end): all ones written and read back in ascending order,
 * then zero in descending order (so a register that starts work, such as a doorbell or a
 * status bit, is cleared before the addresses it uses). Returns the number of dwords swept. */
int bar_sweep(struct pci_dev *d, int bar, uint32_t start, uint32_t end) {
    volatile uint8_t *base = d->bar[bar].map;
    if (!base) return 0;
    if (end > d->bar[bar].size) end = (uint32_t)d->bar[bar].size;
    start &= ~3u;
    end &= ~3u;
    for (uint32_t off = start; off < end; off += 4) {
        wr32(base, off, 0xffffffff);
        (void)rd32(base, off);
    }
    for (uint32_t off = end; off > start; off -= 4) wr32(base, off - 4, 0);
    return (int)((end - start) / 4);
}

/* Every dword of the device-specific config space (0x40-0xff) except the power management
 * capability (a D3hot -> D0 transition may reset the function, BARs included: architected,
 * not a failure): all ones, read back, then the old value. */
int config_sweep(struct pci_dev *d) {
    int pm = cfg_find_cap(d, 0x01, 0);
    int swept = 0;
    for (int off = 0x40; off < 0x100; off += 4) {
        if (pm && off >= pm && off < pm + 8) continue;
        uint32_t old = cfg_read(d, off, 4);
        cfg_write(d, off, 4, 0xffffffff);
        (void)cfg_read(d, off, 4);
        cfg_write(d, off, 4, old);
        swept++;
    }
    return swept;
}
