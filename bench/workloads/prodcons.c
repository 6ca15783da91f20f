// Cross-thread free: a producer thread mallocs random 16–512 B blocks and
// hands them through a single-producer/single-consumer ring to a consumer
// thread that frees them. Every free lands on a block another thread
// allocated, the case where per-thread state in an allocator or a tracker
// stops helping. Usage: prodcons [pairs]   Prints wall ns per pair.
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

// Big enough that neither side waits on the other for long, small enough
// to stay in cache.
#define RING 4096
static void *ring[RING];
// Each index on its own cache line: the two threads write different ones.
static _Alignas(64) _Atomic long head;
static _Alignas(64) _Atomic long tail;
static long pairs;

static void *producer(void *arg) {
    (void)arg;
    unsigned long long rng = 88172645463325252ull;
    for (long i = 0; i < pairs; i++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        void *p = malloc(16 + rng % 497);
        *(volatile char *)p = 1;
        long h = atomic_load_explicit(&head, memory_order_relaxed);
        // Yield rather than spin: on a 2-core machine the consumer may
        // share our core.
        while (h - atomic_load_explicit(&tail, memory_order_acquire) == RING) sched_yield();
        ring[h % RING] = p;
        atomic_store_explicit(&head, h + 1, memory_order_release);
    }
    return NULL;
}

static void *consumer(void *arg) {
    (void)arg;
    for (long i = 0; i < pairs; i++) {
        long t = atomic_load_explicit(&tail, memory_order_relaxed);
        while (atomic_load_explicit(&head, memory_order_acquire) == t) sched_yield();
        free(ring[t % RING]);
        atomic_store_explicit(&tail, t + 1, memory_order_release);
    }
    return NULL;
}

int main(int argc, char **argv) {
    pairs = argc > 1 ? atol(argv[1]) : 5000000;
    struct timespec a, b;
    pthread_t p, c;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pthread_create(&c, NULL, consumer, NULL);
    pthread_create(&p, NULL, producer, NULL);
    pthread_join(p, NULL);
    pthread_join(c, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f ns/pair\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / pairs);
    return 0;
}
