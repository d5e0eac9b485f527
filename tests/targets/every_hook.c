/* Calls every hooked function with known sizes; prints "ok" and the errno checks.
 * tests/integration/test_every_hook.py asserts what memtrace recorded. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int errno_kept = 1;

#define KEEP_ERRNO(call)          \
    do {                          \
        errno = EILSEQ;           \
        call;                     \
        if (errno != EILSEQ)      \
            errno_kept = 0;       \
    } while (0)

int main(void) {
    long page = sysconf(_SC_PAGESIZE);
    void *keep[16];
    int k = 0;

    KEEP_ERRNO(keep[k++] = malloc(1001));                     /* live */
    KEEP_ERRNO(keep[k++] = calloc(10, 202));                  /* live: 2020 */
    void *r;
    void *volatile null_ptr = NULL; /* stops the compiler folding realloc(NULL, n) to malloc */
    KEEP_ERRNO(r = realloc(null_ptr, 3003));                  /* realloc as malloc */
    KEEP_ERRNO(r = realloc(r, 4004));                         /* moves or grows */
    keep[k++] = r;                                            /* live: 4004 */
    void *z = malloc(5005);
    z = realloc(z, 0);                                        /* frees: NULL in glibc */
    void *big = malloc(100);
    errno = 0;
    void *fail = realloc(big, SIZE_MAX / 2);                  /* fails: big stays live */
    int realloc_failed = fail == NULL && errno == ENOMEM;
    keep[k++] = big;                                          /* live: 100 */
    void *ra = reallocarray(null_ptr, 7, 11);                     /* 77 */
    keep[k++] = ra;
    void *ovf = reallocarray(null_ptr, SIZE_MAX / 2, 4);          /* overflow: NULL */
    void *covf = calloc(SIZE_MAX / 2, 4);                     /* overflow: NULL */
    void *pm;
    int pm_ret = posix_memalign(&pm, 64, 6006);               /* live */
    keep[k++] = pm;
    void *bad;
    int bad_ret = posix_memalign(&bad, 3, 10);                /* EINVAL, nothing */
    keep[k++] = aligned_alloc(128, 1280);                     /* live */
    keep[k++] = memalign(256, 7007);                          /* live */
    keep[k++] = valloc(8008);                                 /* live */
    keep[k++] = pvalloc(9009);                                /* live */
    KEEP_ERRNO(free(NULL));
    void *zero = malloc(0);                                   /* a unique pointer, size 0 */
    KEEP_ERRNO(free(zero));
    void *tmp = malloc(12345);
    KEEP_ERRNO(free(tmp));

    /* Maps: 10 anonymous pages, a 2-page hole punched, then a 3-page mremap of a 1-page map */
    char *m = mmap(NULL, 10 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    KEEP_ERRNO(munmap(m + 4 * page, 2 * page));               /* 8 pages left */
    char *one = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *moved = mremap(one, page, 3 * page, MREMAP_MAYMOVE); /* 3 pages */
    void *m64 = mmap64(NULL, 2 * page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(m64, 2 * page);                                    /* gone */

    printf("ok %d %d %d %d %d %d %d %ld\n", errno_kept, realloc_failed, ovf == NULL,
           covf == NULL, pm_ret, bad_ret == EINVAL, moved != MAP_FAILED, page);
    (void)z;
    return 0;
}
