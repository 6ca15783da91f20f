// Single-thread malloc/free churn: random 16–512 B blocks over a live set.
// Usage: churn [ops] [live_set]   Prints ns per malloc+free pair.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static unsigned long long rng = 88172645463325252ull;
static inline unsigned long long next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng;
}

int main(int argc, char **argv) {
    long ops = argc > 1 ? atol(argv[1]) : 20000000;
    long live = argc > 2 ? atol(argv[2]) : 10000;
    void **slots = calloc(live, sizeof(void *));
    for (long i = 0; i < live; i++) slots[i] = malloc(16 + next() % 497);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < ops; i++) {
        long k = next() % live;
        free(slots[k]);
        slots[k] = malloc(16 + next() % 497);
        *(volatile char *)slots[k] = 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f ns/pair\n", ns / ops);
    for (long i = 0; i < live; i++) free(slots[i]);
    free(slots);
    return 0;
}
