/* fork_storm SECONDS — glibc malloc/tst-malloc-fork-deadlock.c under the shim.
 *
 * 4 threads fork in a loop; each child does malloc(3131) + free, then _exit(17),
 * and its parent thread checks the status. 8 threads run getline() on a memory
 * stream + free (plus malloc(2000 + i) + free of a size unique to thread i).
 * 1 thread runs fflush(NULL). For SECONDS seconds.
 * Prints: "forks F bad B" then for each allocating thread "thread i size S count N".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static long forks[4], bad[4], counts[8];

static void *forker(void *arg) {
    long i = (long)arg;
    while (!stop) {
        pid_t pid = fork();
        if (pid < 0) {
            bad[i]++;
            continue;
        }
        if (pid == 0) {
            free(malloc(3131));
            _exit(17);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 17)
            bad[i]++;
        forks[i]++;
    }
    return NULL;
}

static void *allocator(void *arg) {
    long i = (long)arg;
    static const char text[] = "line one\nline two is longer\nthree\n";
    while (!stop) {
        FILE *f = fmemopen((void *)text, sizeof text - 1, "r");
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, f) > 0)
            ;
        free(line);
        fclose(f);
        free(malloc(2000 + i));
        counts[i]++;
    }
    return NULL;
}

static void *flusher(void *arg) {
    (void)arg;
    while (!stop)
        fflush(NULL);
    return NULL;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 3;
    pthread_t f[4], a[8], fl;
    for (long i = 0; i < 4; i++)
        pthread_create(&f[i], NULL, forker, (void *)i);
    for (long i = 0; i < 8; i++)
        pthread_create(&a[i], NULL, allocator, (void *)i);
    pthread_create(&fl, NULL, flusher, NULL);
    struct timespec t = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    nanosleep(&t, NULL);
    stop = 1;
    long total_forks = 0, total_bad = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(f[i], NULL);
        total_forks += forks[i];
        total_bad += bad[i];
    }
    for (int i = 0; i < 8; i++)
        pthread_join(a[i], NULL);
    pthread_join(fl, NULL);
    printf("forks %ld bad %ld\n", total_forks, total_bad);
    for (int i = 0; i < 8; i++)
        printf("thread %d size %d count %ld\n", i, 2000 + i, counts[i]);
    return total_bad ? 1 : 0;
}
