/* fork_and_leave — main forks a child and leaves at once with _exit(0).
 *
 * Main runs SCHED_FIFO on CPU 0 and the child is reset to normal scheduling at fork
 * (SCHED_RESET_ON_FORK), so the child has not run a single instruction when main
 * stops it with SIGSTOP; main prints the child's pid and _exit(0)s. The test sends
 * SIGCONT 300 ms later (as a busy machine might delay a child). The child then
 * mallocs 12001 bytes and _exit(0)s. Prints "no-rt" on stderr when real-time
 * scheduling is not permitted.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void *volatile keep;

int main(void) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    struct sched_param prio = {.sched_priority = 1};
    if (sched_setaffinity(0, sizeof one, &one) != 0 ||
        sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &prio) != 0) {
        fprintf(stderr, "no-rt\n");
        return 0;
    }
    pid_t pid = fork();
    if (pid == 0) {
        keep = malloc(12001);
        _exit(0);
    }
    kill(pid, SIGSTOP);
    printf("%d\n", (int)pid);
    fflush(stdout);
    _exit(0);
}
