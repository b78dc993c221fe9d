/* The payloads' runtime: port and MMIO access, the console and exit ports, checks and the
 * results area, PCI config cycles, and interrupts (IDT, local APIC, I/O APIC).
 *
 * Rules:
 * 1. Freestanding: no libc, no floating point or SIMD (-mgeneral-regs-only), so the
 *    payload runs on hypervisors that do not emulate the FPU/XSAVE state.
 * 2. Results leave two ways: text on PORT_CONSOLE, and the `results` area (found by the
 *    host through the ELF symbol table). main()'s return value is written to PORT_EXIT
 *    and ends the run: 0 when every check passed.
 * 3. Every wait is bounded by the host: a payload that waits for an interrupt halts, and the
 *    VMM's run timeout stops it and names where it stopped.
 * 4. main() runs in ring 3 (start.S says why); interrupt handlers run in ring 0. `hlt` is
 *    privileged in ring 3, and kvm_pvm also faults `cli`/`sti` there whatever IOPL says
 *    (and `int n`), so the #GP handler emulates those three for ring 3 — trap and emulate,
 *    as a hypervisor would. A `hlt` issued by wait_for carries its condition (counter in
 *    RDI, target in ESI): the handler checks it with interrupts off and halts only while it
 *    does not hold, so an interrupt arriving between the check and the halt is not missed.
 */
#ifndef DEVMODELS_PAYLOAD_RT_H
#define DEVMODELS_PAYLOAD_RT_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned long size_t;

#define PORT_CONSOLE 0xE9 /* one byte of text per write (Bochs/QEMU "debugcon") */
#define PORT_EXIT 0xF4    /* a 32-bit write ends the run with that status */

#define RESULTS_MAGIC 0x53524d44u /* "DMRS" */
#define RESULT_VALUES 64

struct results {
    u32 magic;
    u32 checks;
    u32 failures;
    u32 first_failure_line;
    u64 values[RESULT_VALUES]; /* what the payload observed, for the host to compare */
};
extern volatile struct results results;

/* -- port I/O and MMIO ------------------------------------------------------------------ */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }

/* A compiler and CPU barrier: ring stores are visible before a doorbell write. */
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

/* -- console, checks, exit ---------------------------------------------------------------- */
void puts(const char *s);
void put_hex(u64 v);
void put_dec(u64 v);
void printf(const char *fmt, ...); /* %s %x %d %u %lx %lu %c only */
void check_at(int ok, int line, const char *what);
#define CHECK(cond) check_at(!!(cond), __LINE__, #cond)
#define CHECK_EQ(a, b) check_eq_at((u64)(a), (u64)(b), __LINE__, #a " == " #b)
void check_eq_at(u64 got, u64 want, int line, const char *what);
__attribute__((noreturn)) void payload_exit(u32 status);
int finish(void); /* prints a summary; returns the failure count (main's return value) */

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* -- PCI (configuration mechanism #1, PCI 3.0 §3.2.2.3.2) ------------------------------- */
u32 pci_read32(u8 devfn, u8 off);
u16 pci_read16(u8 devfn, u8 off);
u8 pci_read8(u8 devfn, u8 off);
void pci_write32(u8 devfn, u8 off, u32 v);
void pci_write16(u8 devfn, u8 off, u16 v);
void pci_write8(u8 devfn, u8 off, u8 v);
int pci_find(u16 vendor, u16 device);          /* devfn on bus 0, or -1 */
u64 pci_bar(u8 devfn, int index);               /* the address firmware assigned */
u8 pci_find_cap(u8 devfn, u8 id);               /* config offset of capability id, or 0 */
void pci_enable(u8 devfn);                      /* memory + I/O decode, bus master */

/* -- interrupts ------------------------------------------------------------------------- */
#define LAPIC_BASE 0xFEE00000ul
#define IOAPIC_BASE 0xFEC00000ul
#define MSI_ADDRESS 0xFEE00000u /* destination APIC ID 0, physical mode (SDM Vol. 3 §11.11.1) */


typedef void (*irq_handler)(u8 vector);
extern volatile u32 irq_count[256];
void interrupts_init(void);  /* local APIC on, 8259 PICs masked, interrupts enabled */
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
void irq_set_handler(u8 vector, irq_handler h);
void ioapic_route(u8 gsi, u8 vector, int level);  /* unmasked, active high, to APIC 0 */
void ioapic_mask(u8 gsi);
/* Halt with interrupts on until *counter reaches target (rule 3); a handler counts. */
void wait_for(volatile u32 *counter, u32 target);
/* Halt with interrupts on until irq_count[vector] reaches count (rule 3). */
void wait_irq(u8 vector, u32 count);

#endif
