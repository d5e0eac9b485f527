/* sigalrm SECONDS — allocation inside a SIGALRM handler at 10 kHz.
 *
 * An interval timer fires every 100 us; the handler does malloc(777) + free and
 * mmap(3 pages) + munmap and counts itself. Meanwhile main loops malloc(4321) +
 * free for SECONDS seconds. Most signals land while main is inside a hook.
 * Prints "handler H main M".
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile long handled;

static void on_alarm(int sig) {
    (void)sig;
    void *p = malloc(777);
    free(p);
    void *m = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m != MAP_FAILED)
        munmap(m, 3 * 4096);
    handled++;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2;
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 100}, {0, 100}};
    setitimer(ITIMER_REAL, &it, NULL);
    long n = 0;
    double end = now() + seconds;
    for (;;) {
        void *p = malloc(4321);
        free(p);
        n++;
        if ((n & 1023) == 0 && now() > end)
            break;
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("handler %ld main %ld\n", (long)handled, n);
    return 0;
}
