/* The exit-rate payload (bench/kvm.py, tests): a fixed number of one kind of access and
 * nothing else, so the host measures what one exit through our bus costs.
 *
 * exits_config: [0] MMIO address, [1] count, [2] port, [3] kind: 0 MMIO reads, 1 MMIO
 * writes of the loop counter, 2 port writes, 3 no access (a loop that only spins),
 * 4 MMIO writes of the constant 0 (what an ioeventfd with a datamatch of 0 takes).
 * results.values: [0] the count, [1] the sum of what the reads returned. */
#include "rt.h"

volatile u64 exits_config[4] = {0xD0000000ul, 100000, 0, 0}; /* address, count, port, kind */

int main(void) {
    u64 addr = exits_config[0], count = exits_config[1];
    u16 port = (u16)exits_config[2];
    u64 sum = 0;
    if (exits_config[3] == 0) {
        for (u64 i = 0; i < count; i++) sum += mmio_read32(addr);
    } else if (exits_config[3] == 1) {
        for (u64 i = 0; i < count; i++) mmio_write32(addr, (u32)i);
    } else if (exits_config[3] == 2) {
        for (u64 i = 0; i < count; i++) outl(port, (u32)i);
    } else if (exits_config[3] == 4) {
        for (u64 i = 0; i < count; i++) mmio_write32(addr, 0);
    } else {
        for (volatile u64 i = 0; i < count; i++) {}
    }
    results.values[0] = count;
    results.values[1] = sum;
    results.magic = RESULTS_MAGIC;
    return 0;
}
