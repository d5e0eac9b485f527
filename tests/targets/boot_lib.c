/* boot_lib.c — libbootctor.so: its constructor's first allocation is a calloc,
 * made while the loader is still running constructors (before main's). */
#include <stdlib.h>

void *boot_lib_block;

__attribute__((constructor)) static void boot_lib_init(void) {
    boot_lib_block = calloc(1, 4321);
}
