/* The payloads' runtime (rt.h). */
#include "rt.h"

volatile struct results results;
volatile u32 irq_count[256];
static irq_handler handlers[256];

/* -- memory ------------------------------------------------------------------------------ */
void *memset(void *d, int c, size_t n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, size_t n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }
int memcmp(const void *a, const void *b, size_t n) {
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++) if (*p != *q) return *p < *q ? -1 : 1;
    return 0;
}

/* -- console ----------------------------------------------------------------------------- */
void puts(const char *s) { while (*s) outb(PORT_CONSOLE, (u8)*s++); }

void put_hex(u64 v) {
    char buf[19]; int i = 18; buf[i] = 0;
    do { buf[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
    buf[--i] = 'x'; buf[--i] = '0';
    puts(buf + i);
}

void put_dec(u64 v) {
    char buf[21]; int i = 20; buf[i] = 0;
    do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts(buf + i);
}

void printf(const char *fmt, ...) {
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') { outb(PORT_CONSOLE, (u8)*fmt); continue; }
        int lng = 0;
        if (fmt[1] == 'l') { lng = 1; fmt++; }
        switch (*++fmt) {
        case 's': puts(__builtin_va_arg(ap, const char *)); break;
        case 'c': outb(PORT_CONSOLE, (u8)__builtin_va_arg(ap, int)); break;
        case 'x': put_hex(lng ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32)); break;
        case 'u': put_dec(lng ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32)); break;
        case 'd': {
            long v = lng ? __builtin_va_arg(ap, long) : __builtin_va_arg(ap, int);
            if (v < 0) { outb(PORT_CONSOLE, '-'); v = -v; }
            put_dec((u64)v);
            break;
        }
        case '%': outb(PORT_CONSOLE, '%'); break;
        default: outb(PORT_CONSOLE, '?'); break;
        }
    }
    __builtin_va_end(ap);
}

/* -- checks and exit --------------------------------------------------------------------- */
void check_at(int ok, int line, const char *what) {
    results.magic = RESULTS_MAGIC;
    results.checks++;
    if (ok) return;
    if (!results.failures) results.first_failure_line = (u32)line;
    results.failures++;
    printf("FAIL line %d: %s\n", line, what);
}

void check_eq_at(u64 got, u64 want, int line, const char *what) {
    check_at(got == want, line, what);
    if (got != want) printf("     got %lx, want %lx\n", got, want);
}

void payload_exit(u32 status) {
    for (;;) outl(PORT_EXIT, status);
}

int finish(void) {
    results.magic = RESULTS_MAGIC;
    printf("%u checks, %u failed\n", results.checks, results.failures);
    return (int)results.failures;
}

/* -- PCI --------------------------------------------------------------------------------- */
static void pci_address(u8 devfn, u8 off) { outl(0xCF8, 0x80000000u | (u32)devfn << 8 | (off & 0xFC)); }
u32 pci_read32(u8 devfn, u8 off) { pci_address(devfn, off); return inl(0xCFC); }
u16 pci_read16(u8 devfn, u8 off) { pci_address(devfn, off); return inw(0xCFC + (off & 2)); }
u8 pci_read8(u8 devfn, u8 off) { pci_address(devfn, off); return inb(0xCFC + (off & 3)); }
void pci_write32(u8 devfn, u8 off, u32 v) { pci_address(devfn, off); outl(0xCFC, v); }
void pci_write16(u8 devfn, u8 off, u16 v) { pci_address(devfn, off); outw(0xCFC + (off & 2), v); }
void pci_write8(u8 devfn, u8 off, u8 v) { pci_address(devfn, off); outb(0xCFC + (off & 3), v); }

int pci_find(u16 vendor, u16 device) {
    for (int devfn = 0; devfn < 256; devfn += 8) {
        u32 id = pci_read32((u8)devfn, 0);
        if (id == ((u32)device << 16 | vendor)) return devfn;
    }
    return -1;
}

u64 pci_bar(u8 devfn, int index) {
    u32 lo = pci_read32(devfn, (u8)(0x10 + 4 * index));
    if (lo & 1) return lo & ~3u;                 /* I/O */
    u64 addr = lo & ~0xFu;
    if ((lo & 6) == 4) addr |= (u64)pci_read32(devfn, (u8)(0x14 + 4 * index)) << 32;
    return addr;
}

u8 pci_find_cap(u8 devfn, u8 id) {
    if (!(pci_read16(devfn, 0x06) & 0x10)) return 0;      /* Status.Capabilities List */
    u8 at = pci_read8(devfn, 0x34) & 0xFC;
    for (int ttl = 48; at && ttl; ttl--) {               /* a looping list ends here */
        if (pci_read8(devfn, at) == id) return at;
        at = pci_read8(devfn, at + 1) & 0xFC;
    }
    return 0;
}

void pci_enable(u8 devfn) { pci_write16(devfn, 0x04, pci_read16(devfn, 0x04) | 0x7); }

/* -- interrupts -------------------------------------------------------------------------- */
struct idt_gate { u16 off0, sel; u8 ist, type; u16 off1; u32 off2, zero; } __attribute__((packed));
struct idt_gate idt[256] __attribute__((aligned(16)));   /* start.S loads its address */
extern char isr_table[];
int main(void);
void rt_start(void);

struct frame { u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax, vector, error, rip, cs, rflags, rsp, ss; };

static void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }
static u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }

/* Runs in ring 3 (start.S): the gates first, so that any fault from here on is reported. */
void rt_start(void) {
    for (int v = 0; v < 256; v++) {
        u64 at = (u64)isr_table + 16 * (u64)v;
        /* 64-bit interrupt gates to kernel code (SDM Vol. 3 §6.14.1). */
        u8 type = 0x8E;
        idt[v] = (struct idt_gate){(u16)at, 0x08, 0, type, (u16)(at >> 16), (u32)(at >> 32), 0};
    }
    payload_exit((u32)main());
}

void interrupts_init(void) {
    outb(0x21, 0xFF);            /* mask both 8259s: interrupts come through the APICs */
    outb(0xA1, 0xFF);
    lapic_write(0x80, 0);        /* TPR: accept every priority */
    lapic_write(0xF0, 0x1FF);    /* SVR: APIC software enable, spurious vector 0xFF */
    sti();
}

void irq_set_handler(u8 vector, irq_handler h) { handlers[vector] = h; }

static void ioapic_write(u32 reg, u32 v) { mmio_write32(IOAPIC_BASE, reg); mmio_write32(IOAPIC_BASE + 0x10, v); }

void ioapic_route(u8 gsi, u8 vector, int level) {
    /* 82093AA I/O APIC §3.2.4: vector, fixed delivery, physical destination, active high,
     * trigger mode bit 15, unmasked; destination APIC ID in bits 63:56. */
    ioapic_write(0x11 + 2u * gsi, 0);
    ioapic_write(0x10 + 2u * gsi, vector | (level ? 1u << 15 : 0));
}

void ioapic_mask(u8 gsi) { ioapic_write(0x10 + 2u * gsi, 1u << 16); }

/* rt.h rule 4: the privileged instructions ring 3 uses, emulated on their #GP. IF is 0 in
 * here (an interrupt gate); iretq restores the frame's RFLAGS. */
static int emulate_ring3(struct frame *f) {
    switch (*(const u8 *)f->rip) {
    case 0xFA: f->rflags &= ~0x200ul; break;                             /* cli */
    case 0xFB: f->rflags |= 0x200ul; break;                              /* sti */
    case 0xF4:                                                           /* hlt */
        if (f->rdi && *(volatile u32 *)f->rdi < (u32)f->rsi) __asm__ volatile("sti; hlt; cli" ::: "memory");
        break;
    default: return 0;
    }
    f->rip += 1;
    return 1;
}

void isr_dispatch(struct frame *f);
void isr_dispatch(struct frame *f) {
    u8 v = (u8)f->vector;
    if (v == 13 && (f->cs & 3) == 3 && emulate_ring3(f)) return;
    if (v < 32) {
        printf("EXCEPTION vector %u error %lx at rip %lx\n", v, f->error, f->rip);
        payload_exit(0xE0u | v);
    }
    irq_count[v]++;
    if (handlers[v]) handlers[v](v);
    if (v != 0xFF) lapic_write(0xB0, 0);   /* EOI (SDM Vol. 3 §11.8.5); none for spurious */
    (void)lapic_read;
}

void wait_for(volatile u32 *counter, u32 target) {
    /* In ring 0 (a RING0 build) the hlt runs as is, with the same check just before it. */
    while (*counter < target) __asm__ volatile("hlt" : : "D"(counter), "S"(target) : "memory");
}

void wait_irq(u8 vector, u32 count) { wait_for(&irq_count[vector], count); }
