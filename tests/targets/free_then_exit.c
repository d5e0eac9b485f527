/* free_then_exit.c — the exit point after a burst: N blocks of 1,000 bytes freed just
 * before exit(), 10 blocks of 70,000 bytes left live. The frees are still in the ring
 * when the process says it is exiting; the exit checkpoint must include them all.
 *   free_then_exit N */
#include <stdlib.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    void **blocks = malloc(sizeof(void *) * (size_t)n);
    for (int i = 0; i < n; i++)
        blocks[i] = malloc(1000);
    for (int i = 0; i < 10; i++)
        (void)malloc(70000);
    for (int i = 0; i < n; i++)
        free(blocks[i]);
    free(blocks);
    exit(0);
}
