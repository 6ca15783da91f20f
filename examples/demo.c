// The bundled demo: a tiny program with three kinds of memory.
//   - a config block kept in a global (reachable: not a leak)
//   - a linked list whose head pointer is dropped (1 direct + 4 indirect)
//   - a buffer whose only pointer is overwritten (1 direct)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node {
    struct node *next;
    int value;
};

static char *config;

__attribute__((noinline)) static struct node *push(struct node *head, int value) {
    struct node *n = malloc(sizeof *n);
    n->next = head;
    n->value = value;
    return n;
}

__attribute__((noinline)) static int build_and_forget_list(void) {
    struct node *head = NULL;
    for (int i = 0; i < 5; i++)
        head = push(head, i);
    return head->value; // the list is never freed
}

__attribute__((noinline)) static void format_greeting(const char *name) {
    char *buf = malloc(64);
    snprintf(buf, 64, "hello, %s", name);
    puts(buf);
    buf = NULL; // the only pointer is gone: a direct leak
}

int main(void) {
    config = strdup("verbose=1");
    format_greeting("leakscan");
    printf("list head value: %d\n", build_and_forget_list());
    return 0;
}
