/* Prints whether the kernel marked this exec secure (AT_SECURE), whether a memtrace
 * shim is mapped and whether it opened a stream (its mt_position() counted this
 * program's allocations); makes a few allocations (tests/reliability/test_not_loaded.py,
 * test_socket_auth.py). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

int main(void) {
    for (int i = 0; i < 10; i++)
        free(malloc(1000));
    int shim = 0;
    char line[4096];
    FILE *maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(line, sizeof line, maps))
        if (strstr(line, "memtrace") || strstr(line, "_preload"))
            shim = 1;
    uint64_t (*position)(void) = (uint64_t(*)(void))dlsym(RTLD_DEFAULT, "mt_position");
    int stream = position != NULL && position() > 0;
    printf("secure %lu shim %d stream %d\n", getauxval(AT_SECURE), shim, stream);
    return 0;
}
