/* Prints whether the kernel marked this exec secure (AT_SECURE) and whether a memtrace
 * shim is mapped; makes a few allocations (tests/reliability/test_not_loaded.py). */
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
    printf("secure %lu shim %d\n", getauxval(AT_SECURE), shim);
    return 0;
}
