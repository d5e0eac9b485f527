/* fork_in_handler SIGNALS — glibc malloc/tst-mallocfork2.c under the shim.
 *
 * A separate sender process sends SIGUSR1 to this (single-threaded) process as
 * fast as it can; the handler forks, the child maps and unmaps 13 pages
 * (mmap(53248) + munmap) and _exit(0)s from inside the handler, the parent
 * waits for it. Meanwhile main allocates and frees blocks of various sizes, so
 * the signal often lands inside a hook. Stops after SIGNALS handled signals.
 * Prints "handled H forks F bad B main M".
 *
 * The child must not call malloc: glibc makes fork() itself safe in a handler,
 * not the heap the interrupted malloc left half-updated (glibc's own
 * tst-mallocfork2 child only calls _exit). Untraced, MALLOC_PERTURB_=165 makes
 * 1-8 in 1,000 such children abort with "malloc(): corrupted top size"; without
 * it the stale bytes happen to repeat the header being written and it rarely
 * shows. mmap is a system call wrapper: the same hook path, no shared state.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHILD_MAP (13 * 4096)

static volatile sig_atomic_t handled, forks, bad;

static void handler(int sig) {
    (void)sig;
    pid_t pid = fork();
    if (pid == 0) {
        void *p = mmap(NULL, CHILD_MAP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            _exit(1);
        munmap(p, CHILD_MAP);
        _exit(0);
    }
    if (pid < 0) {
        bad++;
    } else {
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            bad++;
        forks++;
    }
    handled++;
}

int main(int argc, char **argv) {
    long want = argc > 1 ? atol(argv[1]) : 1000;
    struct sigaction sa = {0};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    pid_t me = getpid();
    pid_t sender = fork();
    if (sender == 0) {
        for (;;) {
            if (kill(me, SIGUSR1) != 0)
                _exit(0);
            usleep(200);
        }
    }
    long main_allocs = 0;
    static const size_t sizes[] = {16, 300, 4000, 70000, 200000};
    while (handled < want) {
        void *p = malloc(sizes[main_allocs % 5]);
        free(p);
        main_allocs++;
    }
    kill(sender, SIGKILL);
    waitpid(sender, NULL, 0);
    printf("handled %ld forks %ld bad %ld main %ld\n", (long)handled, (long)forks, (long)bad,
           main_allocs);
    return bad ? 1 : 0;
}
