// A big reachable heap: N blocks of 16–1008 B (mean ~512 B) linked from a
// global array, then exit. Measures the at-exit check (run it with `time`).
// Usage: bigheap [blocks]
#include <stdio.h>
#include <stdlib.h>

static unsigned long long rng = 88172645463325252ull;
static inline unsigned long long next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng;
}
void **blocks;

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    blocks = malloc(n * sizeof(void *));
    for (long i = 0; i < n; i++) {
        size_t size = 16 + (next() % 63) * 16;
        blocks[i] = calloc(1, size);
        // Some pointer-bearing payload: link to an earlier block.
        if (i > 0) *(void **)blocks[i] = blocks[next() % i];
    }
    printf("%ld blocks\n", n);
    return 0;
}
