/* exit_from_thread SHARED_FILE — 8 threads allocate while a 9th calls exit(0).
 *
 * Thread i loops malloc(1000 + i) / free, and after each malloc returned stores its
 * count in word i of SHARED_FILE (MAP_SHARED), so the test knows how many calls each
 * thread had completed when the process died. After 200 ms another thread calls
 * exit(0): atexit handlers and the shim's destructor run while the 8 keep going.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t *shared;

static void *allocate(void *arg) {
    long i = (long)arg;
    for (uint64_t n = 1;; n++) {
        void *p = malloc(1000 + i);
        __atomic_store_n(&shared[i], n, __ATOMIC_RELEASE);
        free(p);
    }
    return NULL;
}

static void *quitter(void *arg) {
    (void)arg;
    struct timespec t = {0, 200 * 1000 * 1000};
    nanosleep(&t, NULL);
    exit(0);
}

int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR);
    shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    pthread_t t[9];
    for (long i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, allocate, (void *)i);
    pthread_create(&t[8], NULL, quitter, NULL);
    for (;;)
        pause();
}
