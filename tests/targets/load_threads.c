/* load_threads THREADS N — THREADS threads each do N x (malloc(5000 + i) + free).
 * Prints "ok". tests/reliability/test_load.py checks every one is in the capture. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static long n;
static pthread_barrier_t start;

static void *work(void *arg) {
    size_t size = 5000 + (long)arg;
    pthread_barrier_wait(&start);
    for (long k = 0; k < n; k++)
        free(malloc(size));
    return NULL;
}

int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    n = atol(argv[2]);
    pthread_t t[64];
    pthread_barrier_init(&start, NULL, threads);
    for (long i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, work, (void *)i);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    printf("ok\n");
    return 0;
}
