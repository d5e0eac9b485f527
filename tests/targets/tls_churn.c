/* 4 threads dlopen/touch/dlclose a library with big dynamic TLS while 8 threads
 * malloc and free (tests/reliability/test_tls.py). glibc >= 2.39
 * calls malloc/free from the TLS access path in more cases: a shim whose own TLS
 * went through __tls_get_addr would recurse there. Prints the malloc calls made. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const char *lib_path;
static volatile int stop;
static unsigned long mallocs[8];
static volatile unsigned long opens[4];

static void *churn(void *arg) {
    long k = (long)arg;
    while (!stop) {
        void *h = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            exit(3);
        }
        int (*touch)(int) = (int (*)(int))dlsym(h, "touch_tls");
        touch((int)k);
        dlclose(h);
        opens[k]++;
    }
    return NULL;
}

static void *allocate(void *arg) {
    long k = (long)arg;
    unsigned seed = (unsigned)k;
    void *keep[64] = {0};
    /* start allocating only once the loader lock is busy with dlopen/dlclose */
    while (!stop && (opens[0] < 50 || opens[1] < 50 || opens[2] < 50 || opens[3] < 50))
        ;
    while (!stop) {
        int i = rand_r(&seed) % 64;
        free(keep[i]);
        keep[i] = malloc(16 + (size_t)(rand_r(&seed) % 4096));
        mallocs[k]++;
    }
    for (int i = 0; i < 64; i++)
        free(keep[i]);
    return NULL;
}

int main(int argc, char **argv) {
    lib_path = argv[1];
    double seconds = argc > 2 ? atof(argv[2]) : 1.5;
    pthread_t t[12];
    for (long i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, churn, (void *)i);
    for (long i = 0; i < 8; i++)
        pthread_create(&t[4 + i], NULL, allocate, (void *)i);
    struct timespec ts = {(time_t)seconds, (long)((seconds - (long)seconds) * 1e9)};
    nanosleep(&ts, NULL);
    stop = 1;
    for (int i = 0; i < 12; i++)
        pthread_join(t[i], NULL);
    unsigned long m = 0, o = 0;
    for (int i = 0; i < 8; i++)
        m += mallocs[i];
    for (int i = 0; i < 4; i++)
        o += opens[i];
    printf("mallocs %lu opens %lu\n", m, o);
    return 0;
}
