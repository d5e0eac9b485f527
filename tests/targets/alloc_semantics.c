/* Allocator corner cases, one step at a time, with the program's own ledger as the
 * reference model (tests/reliability/test_alloc_semantics.py).
 *
 * After every step the program prints its ledger — every block it holds, with the
 * size it asked for — as "STEP <n> <name> <addr>:<size> ...", then makes a marker
 * allocation of size MARK + n and frees it at once. The test replays the capture's
 * events up to each marker and compares the live set with the printed ledger.
 * The ledger follows what libc actually returned (e.g. realloc(p, 0) freeing p and
 * returning NULL, a failing realloc leaving p alive).  Output is buffered in a
 * static array and written with write(2) at the end, so stdio allocates nothing
 * between the steps. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MARK 987000
#define MAXL 64

static struct { void *p; size_t size; } ledger[MAXL];
static char out[1 << 16];
static size_t used;
static int step;
static int problems;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    used += (size_t)vsnprintf(out + used, sizeof out - used, fmt, ap);
    va_end(ap);
}

static void hold(void *p, size_t size) {
    for (int i = 0; i < MAXL; i++)
        if (ledger[i].p == NULL) {
            ledger[i].p = p;
            ledger[i].size = size;
            return;
        }
    problems++;
}

static void drop(void *p) {
    for (int i = 0; i < MAXL; i++)
        if (ledger[i].p == p) {
            ledger[i].p = NULL;
            return;
        }
    problems++;
}

static void check(int ok, const char *what) {
    if (!ok) {
        problems++;
        say("PROBLEM %s\n", what);
    }
}

static void done(const char *name) {
    step++;
    say("STEP %d %s", step, name);
    for (int i = 0; i < MAXL; i++)
        if (ledger[i].p)
            say(" %lx:%zu", (unsigned long)(uintptr_t)ledger[i].p, ledger[i].size);
    say("\n");
    void *volatile m = malloc(MARK + (size_t)step);
    free(m);
}

int main(void) {
    void *volatile null = NULL; /* keeps the compiler from folding realloc(NULL, n) */
    void *p, *q, *r;

    p = malloc(0);                                  /* a unique pointer of size 0 */
    check(p != NULL, "malloc(0)");
    hold(p, 0);
    done("malloc0");

    q = realloc(null, 300);                         /* realloc(NULL, n) is malloc */
    hold(q, 300);
    done("realloc_null");

    r = realloc(q, 5000);                           /* grows (may move) */
    check(r != NULL, "realloc grow");
    drop(q);
    hold(r, 5000);
    done("realloc_grow");

    q = realloc(r, 100);                            /* shrinks in place */
    check(q != NULL, "realloc shrink");
    drop(r);
    hold(q, 100);
    done("realloc_shrink");

    r = realloc(q, 0);                              /* glibc: frees q, returns NULL */
    drop(q);
    if (r)
        hold(r, 0);
    done("realloc_zero");

    q = malloc(200);
    hold(q, 200);
    errno = 0;
    r = realloc(q, SIZE_MAX / 2);                   /* fails: q stays live */
    check(r == NULL && errno == ENOMEM, "realloc huge fails with ENOMEM");
    done("realloc_fail");

    errno = 0;
    r = reallocarray(q, SIZE_MAX / 2, 4);           /* overflow: NULL, ENOMEM, q untouched */
    check(r == NULL && errno == ENOMEM, "reallocarray overflow");
    done("reallocarray_overflow");

    r = reallocarray(q, 7, 11);                     /* 77 bytes */
    check(r != NULL, "reallocarray");
    drop(q);
    hold(r, 77);
    done("reallocarray");

    errno = 0;
    q = calloc(SIZE_MAX / 2, 4);                    /* overflow: NULL, nothing recorded */
    check(q == NULL && errno == ENOMEM, "calloc overflow");
    done("calloc_overflow");

    q = calloc(0, 5);
    if (q)
        hold(q, 0);
    done("calloc_zero");

    q = calloc(12, 34);
    hold(q, 408);
    done("calloc");

    void *sentinel = (void *)0x5151, *pm = sentinel;
    int ret = posix_memalign(&pm, 3, 64);           /* bad alignment: EINVAL, *out untouched */
    check(ret == EINVAL && pm == sentinel, "posix_memalign bad alignment");
    ret = posix_memalign(&pm, 4096, 1000);
    check(ret == 0, "posix_memalign");
    hold(pm, 1000);
    done("posix_memalign");

    errno = 0;
    q = aligned_alloc(3, 96);                       /* glibc < 2.38 accepts it; >= 2.38: EINVAL */
    if (q)
        hold(q, 96);
    else
        check(errno == EINVAL, "aligned_alloc bad alignment sets EINVAL");
    q = aligned_alloc(64, 640);
    hold(q, 640);
    done("aligned_alloc");

    errno = 0;
    q = memalign(48, 480);                          /* rounds the alignment up to 64 */
    if (q)
        hold(q, 480);
    q = memalign(SIZE_MAX / 2 + 2, 10);             /* absurd alignment: fails */
    check(q == NULL, "memalign absurd alignment");
    done("memalign");

    q = valloc(10);
    hold(q, 10);
    q = pvalloc(1);                                 /* rounded to a page by libc, 1 asked */
    hold(q, 1);
    done("valloc_pvalloc");

    free(null);                                     /* nothing */
    done("free_null");

    /* C23 free_sized / free_aligned_sized, where libc has them (glibc >= 2.40) */
    void (*free_sized)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    q = malloc(4321);
    hold(q, 4321);
    if (free_sized) {
        free_sized(q, 4321);
        drop(q);
        say("FREE_SIZED yes\n");
    } else {
        say("FREE_SIZED no\n");
    }
    done("free_sized");

    /* release everything the ledger holds */
    for (int i = 0; i < MAXL; i++)
        if (ledger[i].p) {
            free(ledger[i].p);
            ledger[i].p = NULL;
        }
    done("free_all");

    say("PROBLEMS %d\n", problems);
    (void)!write(1, out, used);
    return problems != 0;
}
