/* The scenario loop, reporting and the handshake with the host (hostile.h rules 3-4).
 *
 * Usage: hostile CLASS [--from N] [--only NAME]   run (settings from /proc/cmdline: hostile.ram_end,
 *                                                 hostile.dma, hostile.dma_size, hostile.from,
 *                                                 hostile.run=I,J,..., hostile.handshake)
 *        hostile CLASS --list                      print the scenario table (runs anywhere)
 *        hostile --classes                         print the device classes
 *
 * Console lines (and the same lines on the handshake port, /dev/ttyS1):
 *   HOSTILE-BEGIN <index> <name>
 *   HOSTILE-END <index> <name> <PASS|MISBEHAVED|DEVICE-DEAD|HANG> <detail>
 *   HOSTILE-FINISHED <count>          HOSTILE-ERROR <text>
 * After each END the guest waits for the host's "GO" (continue) or "STOP" (exit now).
 */
#include "hostile.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

struct env g;

static const struct device_class *const classes[] = {
    &virtio_blk_class, &virtio_net_class, &e1000_class, &ahci_class, &testdev_class,
};

#define SCENARIO_ALARM 40 /* seconds; every wait inside is bounded far below this */
#define HANDSHAKE_WAIT_MS 120000

static int handshake_fd = -1;
static sigjmp_buf alarm_jump;
static const char *volatile phase = "";

uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void relax(void) { usleep(100); }

void sleep_ms(unsigned ms) { usleep(ms * 1000u); }

int fail(struct ctx *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof c->detail, fmt, ap);
    va_end(ap);
    for (char *p = c->detail; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return 1;
}

void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("hostile: ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof line - 3) n = sizeof line - 3;
    line[n++] = '\n';
    line[n] = 0;
    fputs(line, stdout);
    fflush(stdout);
    if (handshake_fd >= 0 && write(handshake_fd, line, n) != n) note("handshake write failed");
}

/* Waits for the host's word after an END line: 1 = GO, 0 = STOP (or no host). */
static int host_says_go(void) {
    if (handshake_fd < 0) return 1;
    char buf[64];
    size_t len = 0;
    uint64_t deadline = now_ms() + HANDSHAKE_WAIT_MS;
    while (now_ms() < deadline) {
        fd_set set;
        FD_ZERO(&set);
        FD_SET(handshake_fd, &set);
        struct timeval tv = {1, 0};
        if (select(handshake_fd + 1, &set, NULL, NULL, &tv) <= 0) continue;
        ssize_t n = read(handshake_fd, buf + len, sizeof buf - 1 - len);
        if (n <= 0) continue;
        len += n;
        buf[len] = 0;
        if (strstr(buf, "GO\n")) return 1;
        if (strstr(buf, "STOP\n")) return 0;
        if (len >= sizeof buf - 1) len = 0;
    }
    note("no word from the host in %d s; stopping", HANDSHAKE_WAIT_MS / 1000);
    return 0;
}

static uint64_t cmdline_value(const char *key, uint64_t fallback);
static int selected(int index);

/* The host asks for the handshake with hostile.handshake=1 and gives the guest a second
 * serial port for it; without it results go to the console only. */
static void open_handshake(void) {
    if (!cmdline_value("hostile.handshake", 0)) return;
    int fd = open("/dev/ttyS1", O_RDWR | O_NOCTTY);
    if (fd < 0) {
        note("no handshake port (/dev/ttyS1: %s); results on the console only", strerror(errno));
        return;
    }
    struct termios t;
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        cfsetspeed(&t, B115200);
        tcsetattr(fd, TCSANOW, &t);
    }
    tcflush(fd, TCIOFLUSH);
    handshake_fd = fd;
}

/* The text after KEY= on the kernel command line, or NULL. */
static const char *cmdline_text(const char *key) {
    static char line[4096];
    FILE *f = fopen("/proc/cmdline", "r");
    if (!f) return NULL;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = 0;
    size_t klen = strlen(key);
    for (char *p = line; (p = strstr(p, key)); p += klen) {
        if ((p == line || p[-1] == ' ') && p[klen] == '=') return p + klen + 1;
    }
    return NULL;
}

static uint64_t cmdline_value(const char *key, uint64_t fallback) {
    const char *text = cmdline_text(key);
    return text ? strtoull(text, NULL, 0) : fallback;
}

/* Whether scenario ``index`` is in hostile.run=I,J,K (every scenario when it is absent). */
static int selected(int index) {
    const char *text = cmdline_text("hostile.run");
    if (!text) return 1;
    for (char *end;; text = end + 1) {
        long value = strtol(text, &end, 10);
        if (end == text) return 0;
        if (value == index) return 1;
        if (*end != ',') return 0;
    }
}

static void on_alarm(int sig) {
    (void)sig;
    siglongjmp(alarm_jump, 1);
}

static const char *run_one(const struct device_class *cls, struct ctx *c, const struct scenario *s) {
    static char hang_detail[64];
    c->detail[0] = 0;
    if (sigsetjmp(alarm_jump, 1)) {
        snprintf(hang_detail, sizeof hang_detail, "no progress in %d s during %s", SCENARIO_ALARM, phase);
        snprintf(c->detail, sizeof c->detail, "%s", hang_detail);
        return "HANG";
    }
    alarm(SCENARIO_ALARM);
    dma_reset();
    pci_bus_master(c->dev, 1);
    phase = "abuse";
    int misbehaved = s->run ? s->run(c) : 0;
    char abuse_detail[sizeof c->detail];
    snprintf(abuse_detail, sizeof abuse_detail, "%s", c->detail);
    phase = "liveness";
    c->detail[0] = 0;
    dma_reset();
    pci_bus_master(c->dev, 1);
    int dead = cls->liveness(c);
    alarm(0);
    if (dead) return "DEVICE-DEAD";
    if (misbehaved) {
        snprintf(c->detail, sizeof c->detail, "%s", abuse_detail);
        return "MISBEHAVED";
    }
    return "PASS";
}

static const struct scenario baseline = {"baseline", "no abuse: reset and one valid operation", NULL};

static int list(const struct device_class *cls) {
    printf("SCENARIO 0 %s %s\n", baseline.name, baseline.what);
    for (int i = 0; i < cls->count; i++) printf("SCENARIO %d %s %s\n", i + 1, cls->scenarios[i].name, cls->scenarios[i].what);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "--classes")) {
        for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) printf("%s\n", classes[i]->name);
        return 0;
    }
    const struct device_class *cls = NULL;
    for (size_t i = 0; argc >= 2 && i < sizeof classes / sizeof classes[0]; i++)
        if (!strcmp(argv[1], classes[i]->name)) cls = classes[i];
    if (!cls) {
        fprintf(stderr, "usage: hostile CLASS [--list] [--from N] [--only NAME]; hostile --classes\n");
        return 2;
    }
    int from = (int)cmdline_value("hostile.from", 1);
    const char *only = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--list")) return list(cls);
        if (!strcmp(argv[i], "--from") && i + 1 < argc) from = atoi(argv[++i]);
        if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    }
    open_handshake();
    g.ram_end = cmdline_value("hostile.ram_end", 0);
    g.dma_phys = cmdline_value("hostile.dma", 0);
    g.dma_size = cmdline_value("hostile.dma_size", 16 << 20);
    char err[200];
    if (!g.ram_end || !g.dma_phys || g.dma_phys + g.dma_size != g.ram_end) {
        emit("HOSTILE-ERROR hostile.ram_end, hostile.dma and hostile.dma_size must describe a range ending at the end of RAM");
        return 1;
    }
    if (dma_map(err, sizeof err)) {
        emit("HOSTILE-ERROR %s", err);
        return 1;
    }
    struct pci_dev dev;
    struct ctx c = {.dev = &dev};
    if (pci_find(&dev, cls->vendor, cls->devices, cls->driver, err, sizeof err) || cls->open(&c)) {
        emit("HOSTILE-ERROR %s", err[0] ? err : c.detail);
        return 1;
    }
    note("%s at %s (%04x:%04x); DMA %#llx-%#llx, RAM ends at %#llx", cls->name, dev.bdf, dev.vendor, dev.device,
         (unsigned long long)g.dma_phys, (unsigned long long)(g.dma_phys + g.dma_size),
         (unsigned long long)g.ram_end);
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL);
    int ran = 0;
    for (int i = 0; i <= cls->count; i++) {
        const struct scenario *s = i ? &cls->scenarios[i - 1] : &baseline;
        if (i && (i < from || !selected(i))) continue;
        if (i && only && strcmp(only, s->name)) continue;
        emit("HOSTILE-BEGIN %d %s", i, s->name);
        const char *outcome = run_one(cls, &c, s);
        emit("HOSTILE-END %d %s %s %s", i, s->name, outcome, c.detail);
        ran++;
        if (!host_says_go()) return 0;
    }
    emit("HOSTILE-FINISHED %d", ran);
    return 0;
}
