/* fork_in_handler SIGNALS — glibc malloc/tst-mallocfork2.c under the shim.
 *
 * A separate sender process sends SIGUSR1 to this (single-threaded) process as
 * fast as it can; the handler forks, the child does malloc(55555) + free and
 * _exit(0) from inside the handler, the parent waits for it. Meanwhile main
 * allocates and frees blocks of various sizes. Stops after SIGNALS handled
 * signals. Prints "handled H forks F bad B main M".
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t handled, forks, bad;

static void handler(int sig) {
    (void)sig;
    pid_t pid = fork();
    if (pid == 0) {
        free(malloc(55555));
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
