/* fork_torture FORKS — fork at random moments while 4 threads sit in the hooks.
 *
 * 4 threads loop over malloc/calloc/realloc/free/mmap/munmap; the main thread
 * forks FORKS times with random 0-500 us pauses. Each child does
 * malloc(32), malloc(1024), malloc(2 MiB) (an mmap'd chunk), frees them and
 * _exit(0)s; the parent checks every status. Prints "forks F bad B".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int stop;

static void *churn(void *arg) {
    unsigned seed = (unsigned)(long)arg;
    while (!stop) {
        void *a = malloc(rand_r(&seed) % 5000 + 1);
        void *b = calloc(4, rand_r(&seed) % 300 + 1);
        a = realloc(a, rand_r(&seed) % 9000 + 1);
        void *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m != MAP_FAILED)
            munmap(m, 8192);
        free(b);
        free(a);
    }
    return NULL;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 300;
    pthread_t t[4];
    for (long i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, churn, (void *)(i + 1));
    unsigned seed = 42;
    long bad = 0, forks = 0;
    for (long i = 0; i < n; i++) {
        usleep(rand_r(&seed) % 500);
        pid_t pid = fork();
        if (pid == 0) {
            void *a = malloc(32), *b = malloc(1024), *c = malloc(2 << 20);
            free(a);
            free(b);
            free(c);
            _exit(0);
        }
        int status;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0)
            bad++;
        forks++;
    }
    stop = 1;
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    printf("forks %ld bad %ld\n", forks, bad);
    return bad ? 1 : 0;
}
