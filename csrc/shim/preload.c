/* preload.c — the interposed malloc and mmap families (LD_PRELOAD front end).
 *
 * Each hook: resolve the real function on first use, pass straight through
 * when not tracing or when called from inside another hook (the reentrancy
 * guard), otherwise call the real function and record the event. The real
 * function's result and errno are always what the caller gets.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hooks.h"
#include "recorder.h"
#include "sampler.h"
#include "transport.h"

#define EXPORT __attribute__((visibility("default")))
#define CALLER __builtin_return_address(0)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define DECLARE_REAL(name, ret, params) static ret(*real_##name) params;
MT_FOR_EACH_HOOK(DECLARE_REAL)

/* ---- Bootstrap arena ------------------------------------------------------
 * dlsym() calls calloc() before the real one is resolved (via _dlerror_run);
 * without this, resolving calloc would recurse into itself. Blocks from here
 * are never freed: free() and realloc() recognise them. */
static char boot_arena[1 << 16] __attribute__((aligned(64)));
static size_t boot_used;

static void *boot_alloc(size_t size) {
    size = (size + 15) & ~(size_t)15;
    size_t at = __atomic_fetch_add(&boot_used, size, __ATOMIC_RELAXED);
    if (at + size > sizeof boot_arena)
        return NULL;
    return boot_arena + at; /* static storage: already zero, so fine for calloc */
}

static int is_boot(const void *p) {
    return (const char *)p >= boot_arena && (const char *)p < boot_arena + sizeof boot_arena;
}

/* ---- Initialisation ------------------------------------------------------- */

enum { INIT_NONE, INIT_RESOLVING, INIT_DONE };
static int init_state;

static void after_fork_child(void) {
    mt_self.in_hook++;
    mt_recorder_after_fork_child();
    mt_self.in_hook--;
}

/* The parent counts its children, so the collector knows how many streams to
 * wait for when the program ends right after forking. */
static void after_fork_parent(void) {
    mt_shm_header *h = mt_stream;
    if (h)
        __atomic_fetch_add(&h->forks, 1, __ATOMIC_RELAXED);
}

static void missing(const char *name) {
    static const char prefix[] = "memtrace: the real ";
    static const char suffix[] = " was not found; cannot run this program under memtrace\n";
    (void)!write(2, prefix, sizeof prefix - 1);
    (void)!write(2, name, strlen(name));
    (void)!write(2, suffix, sizeof suffix - 1);
    _exit(127);
}

/* Resolve every real function in one place, then start recording. Hooks may
 * run before the shim's constructor (other libraries' constructors allocate),
 * so every hook calls this lazily. */
static void ensure_init(void) {
    if (LIKELY(__atomic_load_n(&init_state, __ATOMIC_ACQUIRE) == INIT_DONE))
        return;
    int expected = INIT_NONE;
    if (!__atomic_compare_exchange_n(&init_state, &expected, INIT_RESOLVING, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(&init_state, __ATOMIC_ACQUIRE) != INIT_DONE)
            __builtin_ia32_pause();
        return;
    }
    mt_self.in_hook++;
#define RESOLVE(name, ret, params)                                                                 \
    real_##name = (ret(*) params)dlsym(RTLD_NEXT, #name);                                          \
    if (real_##name == NULL)                                                                       \
        missing(#name);
    MT_FOR_EACH_HOOK(RESOLVE)
#undef RESOLVE
    __atomic_store_n(&init_state, INIT_DONE, __ATOMIC_RELEASE);
    /* A setuid or otherwise secure-execution program never reads our
     * environment (the loader already refuses most of LD_PRELOAD there). */
    if (!getauxval(AT_SECURE)) {
        mt_recorder_init();
        pthread_atfork(NULL, after_fork_parent, after_fork_child);
    }
    mt_self.in_hook--;
}

__attribute__((constructor)) static void shim_constructor(void) {
    ensure_init();
}

/* exit() ran: the stream ended cleanly (_exit and signals skip this). */
__attribute__((destructor)) static void shim_destructor(void) {
    mt_self.in_hook++;
    mt_recorder_exit();
    mt_self.in_hook--;
}

/* Leave a traced call: answer a pending statistics request, drop the guard. */
static inline void leave(void) {
    if (mt_stats_wanted(mt_stream))
        mt_after_call();
    mt_self.in_hook--;
}

/* True when the call must go straight to the real function. A call made while
 * the thread is already inside a hook (a signal handler interrupted one) is not
 * recorded; it is counted. */
#define PASS_THROUGH (UNLIKELY(mt_self.in_hook) ? count_unrecorded() : mt_stream == NULL)

static int count_unrecorded(void) {
    mt_shm_header *h = mt_stream;
    if (h && !mt_self.untraced)
        __atomic_fetch_add(&h->reentrant, 1, __ATOMIC_RELAXED);
    return 1;
}

/* ---- malloc family --------------------------------------------------------- */

EXPORT void *malloc(size_t size) {
    if (UNLIKELY(real_malloc == NULL)) {
        if (mt_self.in_hook)
            return boot_alloc(size);
        ensure_init();
    }
    if (PASS_THROUGH)
        return real_malloc(size);
    mt_self.in_hook++;
    void *p = real_malloc(size);
    if (p && !mt_sample_drop(size)) {
        int saved = errno;
        mt_record_alloc(MT_MALLOC, 0, p, size, CALLER);
        errno = saved;
    }
    leave();
    return p;
}

EXPORT void *calloc(size_t n, size_t size) {
    size_t total;
    if (UNLIKELY(real_calloc == NULL)) {
        if (mt_self.in_hook)
            return __builtin_mul_overflow(n, size, &total) ? NULL : boot_alloc(total);
        ensure_init();
    }
    if (PASS_THROUGH)
        return real_calloc(n, size);
    mt_self.in_hook++;
    void *p = real_calloc(n, size);
    if (p) {
        int saved = errno;
        mt_record_alloc(MT_CALLOC, 0, p, n * size, CALLER);
        errno = saved;
    }
    leave();
    return p;
}

EXPORT void free(void *p) {
    if (p == NULL || UNLIKELY(is_boot(p)))
        return;
    if (UNLIKELY(real_free == NULL)) {
        if (mt_self.in_hook)
            return; /* cannot happen with a sane loader: nothing to free yet */
        ensure_init();
    }
    if (PASS_THROUGH) {
        real_free(p);
        return;
    }
    mt_self.in_hook++;
    if (!mt_sample_unkept(p)) {
        int saved = errno;
        if (mt_sample_rate == 0 || mt_sampled_take(p)) /* claimed before the block is reusable */
            mt_record_free(p);
        errno = saved;
    }
    real_free(p);
    leave();
}

/* realloc of a bootstrap block: move it to the real heap. */
static void *boot_realloc(void *p, size_t size) {
    void *n = malloc(size);
    size_t room = (size_t)(boot_arena + sizeof boot_arena - (char *)p);
    if (n)
        memcpy(n, p, size < room ? size : room);
    return n;
}

/* realloc and reallocarray: the old block's free and the new block are one
 * pair of slots claimed before the real call. */
static void *record_realloc(uint8_t kind, void *p, size_t size, void *n, uint64_t pos, void *caller,
                            int free_kept, int new_kept) {
    int saved = errno;
    int freed = p != NULL && (n != NULL || size == 0);
    if (p != NULL && !freed && free_kept && mt_sample_rate)
        mt_sampled_add(p); /* the realloc failed: the old block is still there */
    mt_commit_free(pos, freed && free_kept ? MT_FREE : MT_NONE, MT_FLAG_REMAP, p, 0);
    mt_commit_alloc(pos + 1, n && new_kept ? kind : MT_NONE, mt_sample_rate ? MT_FLAG_SAMPLED : 0,
                    n, size, caller);
    errno = saved;
    return n;
}

/* Claim realloc's two slots, unless sampling drops both halves. */
static uint64_t realloc_claim(void *p, size_t size, int *free_kept, int *new_kept) {
    *free_kept = *new_kept = 1;
    if (mt_sample_rate == 0)
        return mt_claim(2);
    int saved = errno;
    mt_realloc_decide(p, size, free_kept, new_kept);
    errno = saved;
    return *free_kept || *new_kept ? mt_claim(2) : UINT64_MAX;
}

EXPORT void *realloc(void *p, size_t size) {
    if (UNLIKELY(is_boot(p)))
        return boot_realloc(p, size);
    if (UNLIKELY(real_realloc == NULL)) {
        if (mt_self.in_hook)
            return boot_alloc(size);
        ensure_init();
    }
    if (PASS_THROUGH)
        return real_realloc(p, size);
    mt_self.in_hook++;
    int free_kept, new_kept;
    uint64_t pos = realloc_claim(p, size, &free_kept, &new_kept);
    void *n = record_realloc(MT_REALLOC, p, size, real_realloc(p, size), pos, CALLER, free_kept,
                             new_kept);
    leave();
    return n;
}

EXPORT void *reallocarray(void *p, size_t count, size_t size) {
    size_t total;
    if (UNLIKELY(is_boot(p)))
        return __builtin_mul_overflow(count, size, &total) ? NULL : boot_realloc(p, total);
    if (UNLIKELY(real_reallocarray == NULL))
        ensure_init();
    if (PASS_THROUGH)
        return real_reallocarray(p, count, size);
    mt_self.in_hook++;
    /* An overflowing product fails like a realloc of a non-zero size. */
    size_t want = __builtin_mul_overflow(count, size, &total) ? 1 : total;
    int free_kept, new_kept;
    uint64_t pos = realloc_claim(p, want, &free_kept, &new_kept);
    void *n = real_reallocarray(p, count, size);
    n = record_realloc(MT_REALLOCARRAY, p, want, n, pos, CALLER, free_kept, new_kept);
    leave();
    return n;
}

EXPORT int posix_memalign(void **out, size_t align, size_t size) {
    if (UNLIKELY(real_posix_memalign == NULL))
        ensure_init();
    if (PASS_THROUGH)
        return real_posix_memalign(out, align, size);
    mt_self.in_hook++;
    int ret = real_posix_memalign(out, align, size);
    if (ret == 0) {
        int saved = errno;
        mt_record_alloc(MT_POSIX_MEMALIGN, 0, *out, size, CALLER);
        errno = saved;
    }
    leave();
    return ret;
}

/* aligned_alloc, memalign, valloc, pvalloc: same shape, one body. */
#define ALIGNED_HOOK(name, kind, params, args, size)                                               \
    EXPORT void *name params {                                                                     \
        if (UNLIKELY(real_##name == NULL))                                                         \
            ensure_init();                                                                         \
        if (PASS_THROUGH)                                                                          \
            return real_##name args;                                                               \
        mt_self.in_hook++;                                                                         \
        void *p = real_##name args;                                                                \
        if (p) {                                                                                   \
            int saved = errno;                                                                     \
            mt_record_alloc(kind, 0, p, size, CALLER);                                             \
            errno = saved;                                                                         \
        }                                                                                          \
        leave();                                                                                   \
        return p;                                                                                  \
    }

ALIGNED_HOOK(aligned_alloc, MT_ALIGNED_ALLOC, (size_t align, size_t size), (align, size), size)
ALIGNED_HOOK(memalign, MT_MEMALIGN, (size_t align, size_t size), (align, size), size)
ALIGNED_HOOK(valloc, MT_VALLOC, (size_t size), (size), size)
ALIGNED_HOOK(pvalloc, MT_PVALLOC, (size_t size), (size), size)

/* ---- mmap family ----------------------------------------------------------- */

static uint8_t mmap_flags(int flags) {
    return (uint8_t)(((flags & MAP_ANONYMOUS) ? MT_FLAG_ANON : 0) |
                     ((flags & MAP_SHARED) ? MT_FLAG_SHARED : 0));
}

static void *do_mmap(void *(*real)(void *, size_t, int, int, int, off_t), void *addr, size_t len,
                     int prot, int flags, int fd, off_t off, void *caller) {
    if (UNLIKELY(real == NULL)) /* only while resolving, on the resolving thread */
        return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    if (PASS_THROUGH)
        return real(addr, len, prot, flags, fd, off);
    mt_self.in_hook++;
    void *p = real(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED) {
        int saved = errno;
        mt_record_alloc(MT_MMAP, mmap_flags(flags), p, len, caller);
        errno = saved;
    }
    leave();
    return p;
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (UNLIKELY(real_mmap == NULL) && !mt_self.in_hook)
        ensure_init();
    return do_mmap(real_mmap, addr, len, prot, flags, fd, off, CALLER);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (UNLIKELY(real_mmap64 == NULL) && !mt_self.in_hook)
        ensure_init();
    return do_mmap(real_mmap64, addr, len, prot, flags, fd, off, CALLER);
}

EXPORT int munmap(void *addr, size_t len) {
    if (UNLIKELY(real_munmap == NULL)) {
        if (mt_self.in_hook)
            return (int)syscall(SYS_munmap, addr, len);
        ensure_init();
    }
    if (PASS_THROUGH)
        return real_munmap(addr, len);
    mt_self.in_hook++;
    uint64_t pos = mt_claim(1);
    int ret = real_munmap(addr, len);
    int saved = errno;
    mt_commit_free(pos, ret == 0 ? MT_MUNMAP : MT_NONE, 0, addr, len);
    errno = saved;
    leave();
    return ret;
}

EXPORT void *mremap(void *old, size_t old_size, size_t new_size, int flags, ...) {
    void *want = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        want = va_arg(ap, void *);
        va_end(ap);
    }
    if (UNLIKELY(real_mremap == NULL))
        ensure_init();
    if (PASS_THROUGH)
        return real_mremap(old, old_size, new_size, flags, want);
    mt_self.in_hook++;
    uint64_t pos = mt_claim(2);
    void *p = real_mremap(old, old_size, new_size, flags, want);
    int saved = errno;
    if (p != MAP_FAILED && p == old) {
        /* In place: only the difference changed (the kernel accepts this even over
         * holes in the old range, which stay holes). A shrink unmaps the tail; a
         * growth maps a new tail of the old mapping's kind. */
        int shrink = new_size<old_size, grow = new_size> old_size;
        if (shrink)
            mt_commit_free(pos, MT_MUNMAP, 0, (char *)old + new_size, old_size - new_size);
        else /* a growth's KEEP record names the kind of mapping the tail copies */
            mt_commit_free(pos, grow ? MT_MUNMAP : MT_NONE, MT_FLAG_REMAP | MT_FLAG_KEEP, old,
                           old_size);
        mt_commit_alloc(pos + 1, grow ? MT_MREMAP : MT_NONE, 0, (char *)old + old_size,
                        grow ? new_size - old_size : 0, CALLER);
        errno = saved;
        leave();
        return p;
    }
    int ok = p != MAP_FAILED;
#ifdef MREMAP_DONTUNMAP
    int unmapped = ok && !(flags & MREMAP_DONTUNMAP);
#else
    int unmapped = ok;
#endif
    /* With DONTUNMAP the old range stays mapped; its record only says what kind
     * of mapping the new one copies (anonymous, shared). */
    mt_commit_free(pos, ok ? MT_MUNMAP : MT_NONE, MT_FLAG_REMAP | (unmapped ? 0 : MT_FLAG_KEEP),
                   old, old_size);
    mt_commit_alloc(pos + 1, ok ? MT_MREMAP : MT_NONE, 0, p, new_size, CALLER);
    errno = saved;
    leave();
    return p;
}

/* ---- Process exit ------------------------------------------------------------
 * The exit status goes into the stream's header, so the collector can name how
 * any traced process ended (only the launcher can wait for the main one). */

static void note_exit(int status) {
    mt_shm_header *h = mt_stream;
    if (h)
        __atomic_store_n(&h->exit_status, 0x100u | (uint32_t)(status & 0xff), __ATOMIC_RELEASE);
}

EXPORT void exit(int status) {
    ensure_init();
    note_exit(status);
    real_exit(status);
    __builtin_unreachable();
}

EXPORT void _exit(int status) {
    if (real__exit == NULL) /* only while resolving */
        syscall(SYS_exit_group, status);
    note_exit(status);
    real__exit(status);
    __builtin_unreachable();
}

EXPORT void _Exit(int status) {
    if (real__Exit == NULL)
        syscall(SYS_exit_group, status);
    note_exit(status);
    real__Exit(status);
    __builtin_unreachable();
}
