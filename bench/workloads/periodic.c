// A big churning heap for periodic scans: build a heap of about MiB MiB
// (blocks of 16–1008 B, mean ~512 B, each holding a pointer to another
// block so the marker has something to follow), then replace random blocks
// for SECONDS seconds and report the throughput. Run it with and without
// periodic scans to see what they cost the program; the longest gap between
// two progress checks (every 1024 replacements) shows whether a scan ever
// stopped the program.
// Usage: periodic [seconds] [MiB]
// Prints: <ns per replacement> ns/op <longest stall> ms-max-stall <blocks>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static unsigned long long rng = 88172645463325252ull;
static inline unsigned long long next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng;
}
void **blocks; // global: the root the scanner starts from

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *fresh(long n) {
    size_t size = 16 + (next() % 63) * 16;
    void **p = malloc(size);
    for (size_t w = 0; w < size / sizeof(void *); w++) p[w] = (void *)(w * 7); // pointer-free filler
    p[0] = n > 0 ? blocks[next() % n] : NULL;
    return p;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    long mib = argc > 2 ? atol(argv[2]) : 256;
    long n = mib * 2048; // 2048 blocks of ~512 B per MiB
    blocks = calloc(n, sizeof(void *));
    for (long i = 0; i < n; i++) blocks[i] = fresh(i);
    long ops = 0;
    double start = now(), last = start, stall = 0, t = start;
    while (t - start < seconds) {
        for (int i = 0; i < 1024; i++) {
            long k = next() % n;
            // Whoever pointed at the old block now points at a freed one;
            // the scanner must cope with that, like any real program's.
            free(blocks[k]);
            blocks[k] = fresh(n);
        }
        ops += 1024;
        t = now();
        if (t - last > stall) stall = t - last;
        last = t;
    }
    printf("%.1f ns/op %.1f ms-max-stall %ld blocks\n", (t - start) * 1e9 / ops, stall * 1e3, n);
    return 0;
}
