/* e1000 payload: a minimal 82540EM driver (8254x SDM) — reset, MAC address from the
 * receive-address registers and the EEPROM, legacy TX and RX rings, INTx through the
 * I/O APIC — that sends FRAMES frames and receives the host's echo of each.
 *
 * The host side (tests/integration/test_kvm_payloads.py) echoes every frame from the
 * other end of a LoopbackBackend with source and destination swapped and the EtherType
 * ECHO_TYPE, so TX and RX both cross our backend.
 *
 * The host may ask for interrupt throttling in e1000_config[0] (ITR, in 256 ns units, SDM
 * §13.4.18): the device then delays interrupts with its timers, which the VMM's loop must
 * fire while the vCPU halts.
 *
 * results.values: [0] frames sent, [1] frames received and checked, [2] interrupts
 * handled, [3] ICR causes seen (OR), [4] GPTC, [5] GPRC, [6] spurious interrupts.
 */
#include "rt.h"

#define E1000_VENDOR 0x8086
#define E1000_DEVICE 0x100E
#define CTRL 0x0000
#define STATUS 0x0008
#define EERD 0x0014
#define ICR 0x00C0
#define ITR 0x00C4
#define IMS 0x00D0
#define IMC 0x00D8
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
#define GPRC 0x4074
#define GPTC 0x4080

#define CTRL_SLU (1u << 6)
#define CTRL_RST (1u << 26)
#define STATUS_LU (1u << 1)
#define ICR_TXDW (1u << 0)
#define ICR_LSC (1u << 2)
#define ICR_RXT0 (1u << 7)
#define RCTL_EN (1u << 1)
#define RCTL_BAM (1u << 15)
#define RCTL_SECRC (1u << 26)
#define TCTL_EN (1u << 1)
#define TCTL_PSP (1u << 3)
#define TXD_EOP 0x01
#define TXD_IFCS 0x02
#define TXD_RS 0x08
#define DD 0x01
#define RXD_EOP 0x02

#define RING 8
#define FRAMES 6
#define FRAME_LEN 128
#define ECHO_TYPE 0x88B6
#define SEND_TYPE 0x88B5
#define VEC_E1000 0x40

struct tx_desc { u64 addr; u16 length; u8 cso, cmd, status, css; u16 special; };
struct rx_desc { u64 addr; u16 length, csum; u8 status, errors; u16 special; };

static u64 bar0;
volatile u64 e1000_config[2] = {0, 0};

static struct tx_desc tx_ring[RING] __attribute__((aligned(128)));
static struct rx_desc rx_ring[RING] __attribute__((aligned(128)));
static u8 tx_buf[RING][2048] __attribute__((aligned(16)));
static u8 rx_buf[RING][2048] __attribute__((aligned(16)));
static volatile u32 handled, spurious, causes;
static u8 mac[6];

static u32 rd(u32 reg) { return mmio_read32(bar0 + reg); }
static void wr(u32 reg, u32 v) { mmio_write32(bar0 + reg, v); }

static void on_interrupt(u8 vector) {
    (void)vector;
    u32 icr = rd(ICR);                 /* reading ICR clears it and drops INTx (SDM §13.4.17) */
    if (!icr) { spurious++; return; }
    causes |= icr;
    handled++;
}

static u16 eeprom_word(u8 addr) {
    wr(EERD, (u32)addr << 8 | 1);      /* EERD: START, address (SDM §13.4.4) */
    for (int i = 0; i < 100000; i++) {
        u32 v = rd(EERD);
        if (v & (1u << 4)) return (u16)(v >> 16);
    }
    CHECK(!"EERD never reported DONE");
    return 0;
}

static void build_frame(u8 *f, u32 n) {
    memset(f, 0xFF, 6);                /* broadcast */
    memcpy(f + 6, mac, 6);
    f[12] = SEND_TYPE >> 8; f[13] = SEND_TYPE & 0xFF;
    for (u32 i = 14; i < FRAME_LEN; i++) f[i] = (u8)(n * 31 + i);
}

static void check_echo(const u8 *f, u16 len, u32 n) {
    CHECK_EQ(len, FRAME_LEN);
    CHECK(memcmp(f, mac, 6) == 0);              /* swapped: our address is the destination */
    CHECK_EQ(f[12] << 8 | f[13], ECHO_TYPE);
    int same = 1;
    for (u32 i = 14; i < FRAME_LEN; i++) same &= f[i] == (u8)(n * 31 + i);
    CHECK(same);
}

int main(void) {
    interrupts_init();
    int devfn = pci_find(E1000_VENDOR, E1000_DEVICE);
    CHECK(devfn >= 0);
    if (devfn < 0) return finish();
    bar0 = pci_bar((u8)devfn, 0);
    u8 gsi = pci_read8((u8)devfn, 0x3C);
    CHECK(bar0 != 0 && gsi >= 16 && gsi < 24);

    /* Reset (SDM §14.9), then link up. */
    wr(IMC, 0xFFFFFFFFu);
    wr(CTRL, rd(CTRL) | CTRL_RST);
    for (int i = 0; i < 1000 && (rd(CTRL) & CTRL_RST); i++) {}
    CHECK_EQ(rd(CTRL) & CTRL_RST, 0);
    wr(CTRL, rd(CTRL) | CTRL_SLU);
    CHECK(rd(STATUS) & STATUS_LU);

    /* The MAC address: RAL0/RAH0 (loaded from the EEPROM at reset) and the EEPROM itself. */
    u32 ral = rd(RAL0), rah = rd(RAH0);
    for (int i = 0; i < 4; i++) mac[i] = (u8)(ral >> (8 * i));
    mac[4] = (u8)rah; mac[5] = (u8)(rah >> 8);
    CHECK(rah & (1u << 31));                    /* Address Valid */
    for (u8 w = 0; w < 3; w++) {
        u16 word = eeprom_word(w);
        CHECK_EQ(word, (u16)(mac[2 * w] | mac[2 * w + 1] << 8));
    }

    /* Rings (SDM §3.2, §3.3): lengths are multiples of 128 bytes. */
    for (int i = 0; i < RING; i++) rx_ring[i] = (struct rx_desc){(u64)rx_buf[i], 0, 0, 0, 0, 0};
    wr(RDBAL, (u32)(u64)rx_ring); wr(RDBAH, 0);
    wr(RDLEN, sizeof rx_ring);
    wr(RDH, 0); wr(RDT, RING - 1);
    wr(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);  /* 2048-byte buffers */
    memset(tx_ring, 0, sizeof tx_ring);
    wr(TDBAL, (u32)(u64)tx_ring); wr(TDBAH, 0);
    wr(TDLEN, sizeof tx_ring);
    wr(TDH, 0); wr(TDT, 0);
    wr(TIPG, 10 | 8 << 10 | 6 << 20);
    wr(TCTL, TCTL_EN | TCTL_PSP | 0x0F << 4 | 0x40 << 12);
    (void)rd(GPTC); (void)rd(GPRC);             /* statistics clear on read */

    irq_set_handler(VEC_E1000, on_interrupt);
    ioapic_route(gsi, VEC_E1000, 1);
    (void)rd(ICR);
    wr(ITR, (u32)e1000_config[0]);
    CHECK_EQ(rd(ITR), (u32)e1000_config[0]);
    wr(IMS, ICR_TXDW | ICR_RXT0 | ICR_LSC);

    u32 rx_next = 0, received = 0;
    for (u32 n = 0; n < FRAMES; n++) {
        u32 slot = n % RING;
        build_frame(tx_buf[slot], n);
        tx_ring[slot] = (struct tx_desc){(u64)tx_buf[slot], FRAME_LEN, 0, TXD_EOP | TXD_IFCS | TXD_RS, 0, 0, 0};
        mb();
        wr(TDT, (slot + 1) % RING);
        /* The TX descriptor comes back with DD, and the echo arrives; each raises an interrupt. */
        while (!(rx_ring[rx_next].status & DD)) wait_for(&handled, handled + 1);
        CHECK(tx_ring[slot].status & DD);
        struct rx_desc *d = &rx_ring[rx_next];
        CHECK(d->status & RXD_EOP);
        CHECK_EQ(d->errors, 0);
        check_echo(rx_buf[rx_next], d->length, n);
        received++;
        d->status = 0;
        mb();
        wr(RDT, rx_next);                       /* give the buffer back */
        rx_next = (rx_next + 1) % RING;
    }
    CHECK_EQ(rd(TDH), FRAMES % RING);
    u32 gptc = rd(GPTC), gprc = rd(GPRC);
    CHECK_EQ(gptc, FRAMES);
    CHECK_EQ(gprc, FRAMES);
    CHECK(causes & ICR_TXDW);
    CHECK(causes & ICR_RXT0);
    results.values[0] = FRAMES;
    results.values[1] = received;
    results.values[2] = handled;
    results.values[3] = causes;
    results.values[4] = gptc;
    results.values[5] = gprc;
    results.values[6] = spurious;
    return finish();
}
