/* churn.c — a native allocation storm for the collector benchmarks.
 *
 *   churn PAIRS LIVE THREADS
 *
 * Each thread makes PAIRS malloc/free pairs (sizes 16 B .. 4 KiB, pseudo-random),
 * keeping its last LIVE blocks alive (a ring), so the live set stays bounded
 * however long the run: 2 * PAIRS * THREADS events in all.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static long pairs, live;

static void *run(void *arg) {
    uint64_t x = 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)arg;
    void **ring = calloc((size_t)live, sizeof *ring);
    uint64_t sum = 0;
    for (long i = 0; i < pairs; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t size = 16 + (x & 4095);
        long slot = i % live;
        free(ring[slot]);
        char *p = malloc(size);
        p[0] = (char)i;
        sum += (uint64_t)p[0];
        ring[slot] = p;
    }
    for (long i = 0; i < live; i++)
        free(ring[i]);
    free(ring);
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: churn PAIRS LIVE THREADS\n");
        return 2;
    }
    pairs = atol(argv[1]);
    live = atol(argv[2]);
    int threads = atoi(argv[3]);
    if (pairs < 1 || live < 1 || threads < 1 || threads > 64)
        return 2;
    pthread_t t[64];
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, run, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    return 0;
}
