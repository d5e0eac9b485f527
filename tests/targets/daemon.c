/* daemon LOG PIDFILE — a classic double-fork daemon that closes every descriptor.
 *
 * main: prints the descriptors it has at start (the shim must own none), then
 * forks; the child calls setsid() and forks the daemon and _exit(0)s; main waits
 * for it, waits until the daemon wrote PIDFILE, and exits with status 5.
 * The daemon: closes every fd (close_range(0, ~0)), opens /dev/null on 0, 1, 2,
 * opens LOG (fd 3) and dup2()s it over fds 4..63, writes its pid to PIDFILE, then
 * 500 times mallocs 7777 bytes (kept) and writes "line I\n" to LOG; then forks a
 * child that mallocs 8888 bytes 10 times and _exit(0)s; then writes "end\n" and
 * exit(0)s. With a third argument "pin", see run_intermediate_first().
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void print_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    int own = dirfd(d);
    struct dirent *e;
    int fds[1024], n = 0;
    while ((e = readdir(d)) != NULL && n < 1024) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd != own)
            fds[n++] = fd;
    }
    closedir(d);
    for (int i = 0; i < n; i++)          /* readdir order is not sorted */
        for (int j = i + 1; j < n; j++)
            if (fds[j] < fds[i]) {
                int t = fds[i];
                fds[i] = fds[j];
                fds[j] = t;
            }
    printf("fds");
    for (int i = 0; i < n; i++)
        printf(" %d", fds[i]);
    printf("\n");
    fflush(stdout);
}

static void daemon_main(const char *log, const char *pidfile) {
    syscall(SYS_close_range, 0U, ~0U, 0U);
    int null = open("/dev/null", O_RDWR); /* 0 */
    dup2(null, 1);
    dup2(null, 2);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644); /* 3 */
    for (int n = 4; n < 64; n++)
        dup2(fd, n);
    int pf = open(pidfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char buf[64];
    int len = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (write(pf, buf, len) != len)
        _exit(3);
    close(pf);
    void *kept[500];
    for (int i = 0; i < 500; i++) {
        kept[i] = malloc(7777);
        len = snprintf(buf, sizeof buf, "line %d\n", i);
        if (write(fd, buf, len) != len)
            _exit(4);
    }
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < 10; i++)
            kept[i] = malloc(8888);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    if (write(fd, "end\n", 4) != 4)
        _exit(5);
    (void)kept;
    exit(0);
}

/* "pin": make the intermediate child finish before the daemon runs at all: both on
 * CPU 0, the intermediate real-time (SCHED_FIFO) and the daemon reset to normal
 * scheduling at fork (SCHED_RESET_ON_FORK), so the daemon gets the CPU only once the
 * intermediate has exited. Prints "no-rt" on stderr when that is not permitted. */
static void run_intermediate_first(void) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    struct sched_param prio = {.sched_priority = 1};
    if (sched_setaffinity(0, sizeof one, &one) != 0 ||
        sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &prio) != 0)
        (void)!write(2, "no-rt\n", 6);
}

int main(int argc, char **argv) {
    int pin = argc > 3 && strcmp(argv[3], "pin") == 0;
    print_fds();
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        if (pin)
            run_intermediate_first();
        if (fork() == 0)
            daemon_main(argv[1], argv[2]);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    /* leave only once the daemon is up (its pid file written): it has connected to
     * the collector by then, so memtrace knows to wait for it */
    for (int i = 0; i < 10000 && access(argv[2], F_OK) != 0; i++)
        usleep(1000);
    return 5;
}
