/* A library (loaded with ctypes by tests/reliability/test_report_injection.py) that
 * starts a native thread with the given name and allocates in it, with no Python frame. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

static char thread_name[16];
static void *kept;

static void *body(void *arg) {
    prctl(PR_SET_NAME, thread_name, 0, 0, 0);
    kept = malloc(777777);
    return NULL;
}

int spawn_named(const char *name) {
    strncpy(thread_name, name, 15);
    pthread_t t;
    if (pthread_create(&t, NULL, body, NULL))
        return -1;
    return pthread_join(t, NULL);
}
