/* hooks.h — the interposed symbols, declared once.
 *
 * HOOK(name, return type, parameter list). Every one is required: the shim
 * refuses to trace (and says so) if the next object does not define it.
 */
#ifndef MT_HOOKS_H
#define MT_HOOKS_H

#include <stddef.h>
#include <sys/types.h>

#define MT_FOR_EACH_HOOK(HOOK)                                                                     \
    HOOK(malloc, void *, (size_t))                                                                 \
    HOOK(calloc, void *, (size_t, size_t))                                                         \
    HOOK(realloc, void *, (void *, size_t))                                                        \
    HOOK(reallocarray, void *, (void *, size_t, size_t))                                           \
    HOOK(free, void, (void *))                                                                     \
    HOOK(posix_memalign, int, (void **, size_t, size_t))                                           \
    HOOK(aligned_alloc, void *, (size_t, size_t))                                                  \
    HOOK(memalign, void *, (size_t, size_t))                                                       \
    HOOK(valloc, void *, (size_t))                                                                 \
    HOOK(pvalloc, void *, (size_t))                                                                \
    HOOK(mmap, void *, (void *, size_t, int, int, int, off_t))                                     \
    HOOK(mmap64, void *, (void *, size_t, int, int, int, off_t))                                   \
    HOOK(munmap, int, (void *, size_t))                                                            \
    HOOK(mremap, void *, (void *, size_t, size_t, int, ...))                                       \
    HOOK(exit, void, (int))                                                                        \
    HOOK(_exit, void, (int))                                                                       \
    HOOK(_Exit, void, (int))

#endif /* MT_HOOKS_H */
