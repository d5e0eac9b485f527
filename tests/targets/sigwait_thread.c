/* sigwait_thread — an application that routes signals to a dedicated thread
 * (heaptrack's tests/manual/signals.cpp).
 *
 * main blocks every signal, starts a waiter thread that sigtimedwait()s for
 * SIGTERM (10 s at most), prints "ready PID THREADS" (THREADS from
 * /proc/self/status), and allocates until the waiter saw the signal. The waiter
 * prints "waiter got SIG". Exit status 42 if the waiter got SIGTERM, 1 on timeout.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int got;

static void *waiter(void *arg) {
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    struct timespec limit = {10, 0};
    int sig = sigtimedwait(&set, NULL, &limit);
    printf("waiter got %d\n", sig);
    fflush(stdout);
    got = sig == SIGTERM ? 1 : -1;
    return NULL;
}

static int threads(void) {
    char line[256];
    int n = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "Threads:", 8))
            n = atoi(line + 8);
    fclose(f);
    return n;
}

int main(void) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_t t;
    pthread_create(&t, NULL, waiter, NULL);
    printf("ready %d %d\n", (int)getpid(), threads());
    fflush(stdout);
    while (!got)
        free(malloc(2024));
    pthread_join(t, NULL);
    return got == 1 ? 42 : 1;
}
