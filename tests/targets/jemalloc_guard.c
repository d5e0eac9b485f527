/* Large and small allocations for the jemalloc tests (tests/reliability/test_jemalloc.py):
 * jemalloc's malloc calls mmap while it holds its own locks; under the shim every
 * user malloc must be one event and jemalloc's inner mmaps none (the hook guard).
 * Prints the number of calls it made. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BIG (4u << 20)
#define N 48
#define ROUNDS 3

int main(void) {
    void *big[N], *small[N];
    unsigned long calls = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < N; i++) {
            big[i] = malloc(BIG);
            memset(big[i], 1, 4096);
            small[i] = malloc(24 + (size_t)i);
            calls += 2;
        }
        for (int i = 0; i < N; i++) {
            free(big[i]);
            free(small[i]);
        }
    }
    printf("calls %lu\n", calls);
    return 0;
}
