/* Frees of pointers the shim never saw (tests/reliability/test_unknown_frees.py):
 *  - 20 blocks from libc's own malloc (looked up in libc's scope, past the shim), freed
 *    through the hooked free — the stand-in for memory allocated before the shim;
 *  - 20 blocks malloc'd inside an RTLD_DEEPBIND library (bound to libc, invisible),
 *    freed by the program; and 10 program blocks freed inside that library (invisible
 *    frees: the blocks stay live in the capture, a documented limit);
 *  - 30 blocks allocated before fork() and freed by the child (unknown to its stream).
 * Built twice: as the program, and with -DDEEP_LIB -shared as the deep-bound library. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef DEEP_LIB
void *deep_alloc(size_t n) { return malloc(n); }
void deep_free(void *p) { free(p); }
#else
int main(int argc, char **argv) {
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void *(*libc_malloc)(size_t) = (void *(*)(size_t))dlsym(libc, "malloc");
    if (!libc_malloc || libc_malloc == malloc) {
        printf("no separate libc malloc\n");
        return 2;
    }
    for (int i = 0; i < 20; i++)
        free(libc_malloc(1000 + (size_t)i));            /* 20 unknown frees */

    void *deep = dlopen(argv[1], RTLD_NOW | RTLD_DEEPBIND);
    if (!deep) {
        printf("dlopen: %s\n", dlerror());
        return 2;
    }
    void *(*deep_alloc)(size_t) = (void *(*)(size_t))dlsym(deep, "deep_alloc");
    void (*deep_free)(void *) = (void (*)(void *))dlsym(deep, "deep_free");
    for (int i = 0; i < 20; i++)
        free(deep_alloc(2000 + (size_t)i));             /* 20 unknown frees */
    for (int i = 0; i < 10; i++)
        deep_free(malloc(3000));                        /* 10 invisible frees */

    void *before[30];
    for (int i = 0; i < 30; i++)
        before[i] = malloc(4000);
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < 30; i++)
            free(before[i]);                            /* 30 unknown to the child's stream */
        void *mine = malloc(5000);
        free(mine);
        exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    for (int i = 0; i < 30; i++)
        free(before[i]);
    printf("ok child %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}
#endif
