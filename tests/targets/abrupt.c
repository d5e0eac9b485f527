/* abrupt MODE [N] — one malloc(12001), then N (default 0) malloc(101), then ends by MODE:
 *   exit, _exit, _Exit, quick_exit (status 3), abort, sigkill (raise SIGKILL),
 *   segv (a NULL write).
 * The blocks are kept (never freed) so the capture must show them live at the end.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *volatile keep;

int main(int argc, char **argv) {
    const char *mode = argv[1];
    long n = argc > 2 ? atol(argv[2]) : 0;
    keep = malloc(12001);
    for (long i = 0; i < n; i++)
        keep = malloc(101);
    if (!strcmp(mode, "exit"))
        exit(3);
    if (!strcmp(mode, "_exit"))
        _exit(3);
    if (!strcmp(mode, "_Exit"))
        _Exit(3);
    if (!strcmp(mode, "quick_exit"))
        quick_exit(3);
    if (!strcmp(mode, "abort"))
        abort();
    if (!strcmp(mode, "sigkill"))
        raise(SIGKILL);
    if (!strcmp(mode, "segv"))
        *(volatile int *)0 = 1;
    return 99;
}
