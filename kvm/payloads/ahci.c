/* AHCI payload: a minimal AHCI 1.3.1 driver — HBA and port 0 start-up (§10.1.2), IDENTIFY
 * DEVICE, WRITE DMA EXT and READ DMA EXT through a command list and command tables
 * (§4.2), completion by MSI, and the error path of a read past the disk's end: the port
 * reports a task-file error (PxIS.TFES, PxTFD.ERR, §6.1.2) and is restarted by clearing
 * and setting PxCMD.ST (§6.2.2.1), after which commands work again.
 *
 * The host passes the disk's capacity in sectors in ahci_config[0] and checks the image.
 *
 * results.values: [0] IDENTIFY LBA48 capacity, [1] commands completed, [2] MSIs handled,
 * [3] PxTFD after the failed read, [4] PxIS causes seen (OR).
 */
#include "rt.h"

volatile u64 ahci_config[2] = {0, 0};

#define AHCI_VENDOR 0x8086
#define AHCI_DEVICE 0x2922
#define CAP 0x00
#define GHC 0x04
#define IS 0x08
#define PI 0x0C
#define VS 0x10
#define GHC_IE (1u << 1)
#define GHC_AE (1u << 31)
#define P0 0x100
#define PxCLB 0x00
#define PxCLBU 0x04
#define PxFB 0x08
#define PxFBU 0x0C
#define PxIS 0x10
#define PxIE 0x14
#define PxCMD 0x18
#define PxTFD 0x20
#define PxSIG 0x24
#define PxSSTS 0x28
#define PxSERR 0x30
#define PxCI 0x38
#define CMD_ST (1u << 0)
#define CMD_SUD (1u << 1)
#define CMD_FRE (1u << 4)
#define CAP_SSS (1u << 27)
#define CMD_FR (1u << 14)
#define CMD_CR (1u << 15)
#define IS_DHRS (1u << 0)
#define IS_PSS (1u << 1)
#define IS_TFES (1u << 30)
#define TFD_ERR 0x01
#define TFD_DRQ 0x08
#define TFD_BSY 0x80
#define ATA_IDENTIFY 0xEC
#define ATA_READ_DMA_EXT 0x25
#define ATA_WRITE_DMA_EXT 0x35
#define VEC_AHCI 0x60

struct cmd_header { u32 dw0, prdbc, ctba, ctbau, reserved[4]; };
struct prd { u32 dba, dbau, reserved, dbc; };
struct cmd_table { u8 cfis[64], acmd[16], reserved[48]; struct prd prdt[8]; };

static u64 abar;
static struct cmd_header cmd_list[32] __attribute__((aligned(1024)));
static u8 rfis[256] __attribute__((aligned(256)));
static struct cmd_table table __attribute__((aligned(128)));
static u16 identify[256];
static u8 wbuf[16 * 512] __attribute__((aligned(512)));
static u8 rbuf[16 * 512] __attribute__((aligned(512)));
static volatile u32 msis, port_causes, completed;

static u32 rd(u32 reg) { return mmio_read32(abar + reg); }
static void wr(u32 reg, u32 v) { mmio_write32(abar + reg, v); }

static void on_interrupt(u8 vector) {
    (void)vector;
    u32 is = rd(IS);
    if (is & 1) {
        u32 pis = rd(P0 + PxIS);
        wr(P0 + PxIS, pis);                        /* RW1C, then the HBA's IS (§10.7.2.1) */
        port_causes |= pis;
    }
    wr(IS, is);
    msis++;
}

static void wait_not_busy(void) {
    for (int i = 0; i < 100000 && (rd(P0 + PxTFD) & (TFD_BSY | TFD_DRQ)); i++) {}
}

/* Issue one command in slot 0 and wait for PxCI to clear or a task-file error. */
static int run_command(u8 command, u64 lba, u16 count, void *buf, u32 bytes, int write) {
    memset(&table, 0, sizeof table);
    u8 *fis = table.cfis;
    fis[0] = 0x27;                                  /* Register FIS - Host to Device */
    fis[1] = 0x80;                                  /* C: a command */
    fis[2] = command;
    fis[4] = (u8)lba; fis[5] = (u8)(lba >> 8); fis[6] = (u8)(lba >> 16);
    fis[7] = 0x40;                                  /* device: LBA mode */
    fis[8] = (u8)(lba >> 24); fis[9] = (u8)(lba >> 32); fis[10] = (u8)(lba >> 40);
    fis[12] = (u8)count; fis[13] = (u8)(count >> 8);
    table.prdt[0] = (struct prd){(u32)(u64)buf, (u32)((u64)buf >> 32), 0, (bytes - 1) | 1u << 31};
    cmd_list[0] = (struct cmd_header){5u | (write ? 1u << 6 : 0) | 1u << 16, 0, (u32)(u64)&table,
                                      (u32)((u64)&table >> 32), {0, 0, 0, 0}};
    mb();
    u32 before = msis;
    wr(P0 + PxCI, 1);
    while ((rd(P0 + PxCI) & 1) && !(rd(P0 + PxIS) & IS_TFES) && !(port_causes & IS_TFES))
        wait_for(&msis, before + 1), before = msis;
    if (rd(P0 + PxTFD) & TFD_ERR) return -1;
    completed++;
    return (int)cmd_list[0].prdbc;
}

static void port_stop(void) {
    wr(P0 + PxCMD, rd(P0 + PxCMD) & ~CMD_ST);
    for (int i = 0; i < 100000 && (rd(P0 + PxCMD) & CMD_CR); i++) {}
    CHECK_EQ(rd(P0 + PxCMD) & CMD_CR, 0);
}

static void port_start(void) {
    wait_not_busy();
    wr(P0 + PxCMD, rd(P0 + PxCMD) | CMD_ST);
    CHECK(rd(P0 + PxCMD) & CMD_CR);
}

int main(void) {
    interrupts_init();
    int devfn = pci_find(AHCI_VENDOR, AHCI_DEVICE);
    CHECK(devfn >= 0);
    if (devfn < 0) return finish();
    abar = pci_bar((u8)devfn, 5);
    CHECK(abar != 0);
    u8 msi = pci_find_cap((u8)devfn, 0x05);
    CHECK(msi != 0);

    wr(GHC, rd(GHC) | GHC_AE);
    CHECK(rd(GHC) & GHC_AE);
    CHECK(rd(PI) & 1);
    CHECK(rd(VS) >= 0x10000);
    /* §10.1.2: the port idle, command list and FIS area, FRE, clear errors, ST. */
    port_stop();
    wr(P0 + PxCMD, rd(P0 + PxCMD) & ~CMD_FRE);
    for (int i = 0; i < 100000 && (rd(P0 + PxCMD) & CMD_FR); i++) {}
    wr(P0 + PxCLB, (u32)(u64)cmd_list); wr(P0 + PxCLBU, 0);
    wr(P0 + PxFB, (u32)(u64)rfis); wr(P0 + PxFBU, 0);
    wr(P0 + PxCMD, rd(P0 + PxCMD) | CMD_FRE);
    if (rd(CAP) & CAP_SSS) wr(P0 + PxCMD, rd(P0 + PxCMD) | CMD_SUD);   /* staggered spin-up (§10.1.1) */
    for (int i = 0; i < 100000 && (rd(P0 + PxSSTS) & 0xF) != 3; i++) {}
    wr(P0 + PxSERR, 0xFFFFFFFFu);
    wr(P0 + PxIS, 0xFFFFFFFFu);
    CHECK_EQ(rd(P0 + PxSSTS) & 0xF, 3);             /* device present, PHY up */
    CHECK_EQ(rd(P0 + PxSIG), 0x00000101);            /* an ATA disk */

    /* MSI (one message) and the port's interrupt causes. */
    u16 control = pci_read16((u8)devfn, msi + 2);
    pci_write32((u8)devfn, msi + 4, MSI_ADDRESS);
    int is64 = control & 0x80;
    if (is64) pci_write32((u8)devfn, msi + 8, 0);
    pci_write16((u8)devfn, msi + (is64 ? 12 : 8), VEC_AHCI);
    pci_write16((u8)devfn, msi + 2, control | 1);
    irq_set_handler(VEC_AHCI, on_interrupt);
    wr(P0 + PxIE, IS_DHRS | IS_PSS | IS_TFES);
    wr(GHC, rd(GHC) | GHC_IE);
    port_start();

    /* IDENTIFY DEVICE (PIO data-in, delivered through the PRDT like DMA on AHCI). */
    CHECK_EQ(run_command(ATA_IDENTIFY, 0, 0, identify, 512, 0), 512);
    u64 sectors = identify[100] | (u64)identify[101] << 16 | (u64)identify[102] << 32 | (u64)identify[103] << 48;
    CHECK(identify[83] & (1u << 10));               /* 48-bit addressing */
    CHECK_EQ(sectors, ahci_config[0]);
    results.values[0] = sectors;
    char model[41];
    for (int i = 0; i < 20; i++) { model[2 * i] = (char)(identify[27 + i] >> 8); model[2 * i + 1] = (char)identify[27 + i]; }
    model[40] = 0;
    CHECK(memcmp(model, "DEVMODELS HARDDISK", 18) == 0);

    for (u32 i = 0; i < sizeof wbuf; i++) wbuf[i] = (u8)(i * 13 + (i >> 9) * 7 + 1);
    CHECK_EQ(run_command(ATA_WRITE_DMA_EXT, 100, 16, wbuf, sizeof wbuf, 1), sizeof wbuf);
    memset(rbuf, 0, sizeof rbuf);
    CHECK_EQ(run_command(ATA_READ_DMA_EXT, 100, 16, rbuf, sizeof rbuf, 0), sizeof rbuf);
    CHECK(memcmp(wbuf, rbuf, sizeof rbuf) == 0);

    /* A read past the end: the task-file error of §6.1.2, then the restart of §6.2.2.1. */
    CHECK_EQ(run_command(ATA_READ_DMA_EXT, sectors, 1, rbuf, 512, 0), -1);
    u32 tfd = rd(P0 + PxTFD);
    results.values[3] = tfd;
    CHECK(tfd & TFD_ERR);
    CHECK(port_causes & IS_TFES);
    port_stop();
    wr(P0 + PxSERR, 0xFFFFFFFFu);
    wr(P0 + PxIS, 0xFFFFFFFFu);
    port_start();
    memset(rbuf, 0, sizeof rbuf);
    CHECK_EQ(run_command(ATA_READ_DMA_EXT, 100, 1, rbuf, 512, 0), 512);
    CHECK(memcmp(wbuf, rbuf, 512) == 0);

    results.values[1] = completed;
    results.values[2] = msis;
    results.values[4] = port_causes;
    return finish();
}
