/* Deterministic reproducer for the caller-library race (tests/reliability/test_tls.py):
 * thread A dlopens a library whose constructor takes 300 ms, so it holds the loader
 * lock (dl_load_lock, which dladdr takes) all that time; thread B makes the first malloc from a fresh call site,
 * so the shim's dladdr() for that site waits for the lock; meanwhile thread C mallocs
 * from the same call site 1000 times. Prints the number of mallocs made there. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#ifdef SLOW_LIB /* built with -shared -DSLOW_LIB: the slow library */
extern volatile int holding;
__attribute__((constructor)) static void slow_constructor(void) {
    holding = 1;
    usleep(300 * 1000);
}
#else
volatile int holding;
static const char *slow_lib;

static void *hold_lock(void *arg) {
    if (!dlopen(slow_lib, RTLD_NOW)) {
        fprintf(stderr, "%s\n", dlerror());
        exit(2);
    }
    return NULL;
}

__attribute__((noinline)) static void *site(size_t n) { return malloc(n); }

static void *first(void *arg) {
    free(site(11));
    return NULL;
}

static void *many(void *arg) {
    usleep(50 * 1000);
    for (int i = 0; i < 1000; i++) {
        free(site(13));
        usleep(100);
    }
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t a, b, c;
    slow_lib = argv[1];
    pthread_create(&a, NULL, hold_lock, NULL);
    while (!holding)
        ;
    pthread_create(&b, NULL, first, NULL);
    pthread_create(&c, NULL, many, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    pthread_join(c, NULL);
    printf("site mallocs %d\n", 1001);
    return 0;
}
#endif
