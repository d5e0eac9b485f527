/* boot_main.c — linked with libbootctor.so (boot_lib.c). Its own constructor's
 * first allocation is calloc(1, 5432); main checks both blocks are zeroed and
 * prints "ok". Run with and without LD_BIND_NOW=1. */
#include <stdio.h>
#include <stdlib.h>

extern void *boot_lib_block;
static unsigned char *main_block;

__attribute__((constructor)) static void boot_main_init(void) {
    main_block = calloc(1, 5432);
}

int main(void) {
    unsigned char *lib = boot_lib_block;
    if (!lib || !main_block)
        return 1;
    for (int i = 0; i < 4321; i++)
        if (lib[i])
            return 2;
    for (int i = 0; i < 5432; i++)
        if (main_block[i])
            return 3;
    printf("ok\n");
    return 0;
}
