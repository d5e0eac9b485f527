/* errno_phases SHARED_FILE ITERATIONS
 *
 * Sets errno = EILSEQ before every call of the malloc and mmap families and checks
 * that errno is still EILSEQ afterwards, in three phases the test sets up:
 *   phase 1: the collector is running;
 *   phase 2: the collector is stopped (SIGSTOP), so the ring fills and the hooks
 *            wait for room (run with a small MEMTRACE_RING_SLOTS);
 *   phase 3: the collector is dead (SIGKILL), so the stream gets disabled.
 * Before phase N (N > 1) it waits until word 1 of SHARED_FILE equals N; after
 * each phase it stores N in word 0 and prints "phase N changed K" where K is the
 * number of calls after which errno was not EILSEQ.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static long changed;

#define CHECK(call)             \
    do {                        \
        errno = EILSEQ;         \
        call;                   \
        if (errno != EILSEQ)    \
            changed++;          \
    } while (0)

static void one_round(void) {
    void *p, *q, *r;
    CHECK(p = malloc(100));
    CHECK(q = calloc(3, 100));
    CHECK(p = realloc(p, 5000));
    CHECK(r = reallocarray(NULL, 4, 25));
    CHECK(free(r));
    CHECK(free(q));
    CHECK(free(p));
    CHECK((void)posix_memalign(&p, 64, 640));
    CHECK(free(p));
    CHECK(p = aligned_alloc(64, 128));
    CHECK(free(p));
    CHECK(p = memalign(64, 192));
    CHECK(free(p));
    CHECK(p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    CHECK(p = mremap(p, 8192, 16384, MREMAP_MAYMOVE));
    CHECK(munmap(p, 16384));
    CHECK(free(NULL));
}

int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR);
    volatile uint64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    long iterations = atol(argv[2]);
    for (int phase = 1; phase <= 3; phase++) {
        while (phase > 1 && __atomic_load_n(&shared[1], __ATOMIC_ACQUIRE) != (uint64_t)phase) {
            struct timespec t = {0, 1000000};
            nanosleep(&t, NULL);
        }
        changed = 0;
        for (long i = 0; i < iterations; i++)
            one_round();
        printf("phase %d changed %ld\n", phase, changed);
        fflush(stdout);
        __atomic_store_n(&shared[0], (uint64_t)phase, __ATOMIC_RELEASE);
    }
    return 0;
}
