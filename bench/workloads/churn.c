// malloc/free churn: random 16–512 B blocks over a live set, on T threads
// that share nothing (each its own live set and random stream), so any
// slowdown with T is the allocator's or the tracker's shared state.
// Usage: churn [ops_per_thread] [live_set_per_thread] [threads]
// Prints the aggregate wall time per malloc+free pair (all threads' pairs
// over the wall time of the timed section): with perfect scaling, T threads
// print 1/T of one thread's figure.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long ops, live;
static pthread_barrier_t start;
// Each worker times its own loop; the section runs from the first start to
// the last end. (Timing from the main thread around barriers would be wrong
// where threads are serialized, as under valgrind: a worker may finish its
// whole loop before the main thread runs again to read the clock.)
static double *t0, *t1;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static inline unsigned long long next(unsigned long long *rng) {
    *rng ^= *rng << 13; *rng ^= *rng >> 7; *rng ^= *rng << 17; return *rng;
}

static void *worker(void *arg) {
    unsigned long long rng = 88172645463325252ull + 7919 * (long)arg;
    void **slots = calloc(live, sizeof(void *));
    for (long i = 0; i < live; i++) slots[i] = malloc(16 + next(&rng) % 497);
    pthread_barrier_wait(&start);
    t0[(long)arg] = now();
    for (long i = 0; i < ops; i++) {
        long k = next(&rng) % live;
        free(slots[k]);
        slots[k] = malloc(16 + next(&rng) % 497);
        *(volatile char *)slots[k] = 1; // keep the pair observable
    }
    t1[(long)arg] = now();
    for (long i = 0; i < live; i++) free(slots[i]);
    free(slots);
    return NULL;
}

int main(int argc, char **argv) {
    ops = argc > 1 ? atol(argv[1]) : 20000000;
    live = argc > 2 ? atol(argv[2]) : 10000;
    long threads = argc > 3 ? atol(argv[3]) : 1;
    if (threads < 1) threads = 1;
    pthread_t *tid = calloc(threads, sizeof *tid);
    t0 = calloc(threads, sizeof *t0);
    t1 = calloc(threads, sizeof *t1);
    // The loops start together, once every live set is built.
    pthread_barrier_init(&start, NULL, threads);
    for (long t = 0; t < threads; t++) pthread_create(&tid[t], NULL, worker, (void *)t);
    for (long t = 0; t < threads; t++) pthread_join(tid[t], NULL);
    double a = t0[0], b = t1[0];
    for (long t = 1; t < threads; t++) {
        if (t0[t] < a) a = t0[t];
        if (t1[t] > b) b = t1[t];
    }
    free(tid);
    free(t0);
    free(t1);
    printf("%.1f ns/pair\n", (b - a) / (ops * threads));
    return 0;
}
