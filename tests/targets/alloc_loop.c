/* alloc_loop SHARED_FILE MODE SIZE LIMIT EXIT_CODE
 *
 * Allocates blocks of SIZE bytes in a loop and reports progress through a 4 KiB
 * file mapped MAP_SHARED (word 0: allocations done, written after each malloc
 * returned; word 1: a command from the test, 1 = stop). Stops at LIMIT
 * allocations (0 = no limit) or on the stop command.
 *
 * MODE "free": malloc + free each block (two events per iteration).
 * MODE "leak": malloc and touch each block, never free (for the OOM test).
 *
 * At the end it prints "done N", its SigIgn/SigCgt lines from /proc/self/status,
 * forks one child that does malloc(SIZE + 1) and exits 0 (a new connection made
 * after whatever happened to the collector), and exits with EXIT_CODE.
 * tests/reliability/test_collector_faults.py and test_kills.py drive it.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void print_signal_masks(void) {
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "SigIgn:", 7) || !strncmp(line, "SigCgt:", 7) ||
            !strncmp(line, "SigBlk:", 7))
            fputs(line, stdout);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: alloc_loop SHARED MODE SIZE LIMIT EXIT_CODE\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        perror("open");
        return 2;
    }
    volatile uint64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (shared == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    close(fd);
    int leak = strcmp(argv[2], "leak") == 0;
    size_t size = strtoull(argv[3], NULL, 10);
    uint64_t limit = strtoull(argv[4], NULL, 10);
    int code = atoi(argv[5]);
    uint64_t n = 0;
    while ((limit == 0 || n < limit) && __atomic_load_n(&shared[1], __ATOMIC_RELAXED) != 1) {
        char *p = malloc(size);
        if (p == NULL)
            break;
        if (leak)
            memset(p, 0x5a, size);
        else
            free(p);
        n++;
        __atomic_store_n(&shared[0], n, __ATOMIC_RELAXED);
    }
    printf("done %llu\n", (unsigned long long)n);
    print_signal_masks();
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        free(malloc(size + 1));
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    printf("child %d status %d\n", (int)child, status);
    return code;
}
