// malloc/free pairs issued 30 frames deep (frame pointers kept), to measure
// the cost of capturing full allocation stacks. Usage: deepstack [ops]
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long ops;

__attribute__((noinline)) static void leaf(void) {
    for (long i = 0; i < ops; i++) {
        void *p = malloc(64 + (i & 255));
        *(volatile char *)p = 1;
        free(p);
    }
}

__attribute__((noinline)) static void descend(int depth) {
    if (depth == 0)
        leaf();
    else
        descend(depth - 1);
    __asm__ volatile("" ::: "memory"); /* keep the frame: no tail call */
}

int main(int argc, char **argv) {
    ops = argc > 1 ? atol(argv[1]) : 5000000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    descend(30);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f ns/pair\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / ops);
    return 0;
}
