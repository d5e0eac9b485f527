/* A tiny interpreter of mmap/munmap/mremap sequences (tests/reliability/test_mmap_ranges.py).
 *
 *   mmap_interp WARMUP OP...
 *
 * Every address-range op works on a 64-page arena reserved (PROT_NONE) with a raw
 * syscall far from where the kernel places other mappings, so the shim never sees
 * the reservation and nothing else lands in the holes the ops punch. Ops:
 *
 *   a,N                  mmap(NULL, N pages)                      (a "slot")
 *   m,OFF,N              mmap(arena+OFF, N pages, MAP_FIXED)      overlays/fills
 *   u,OFF,N              munmap(arena+OFF, N pages)               may span mappings/holes
 *   U,K,OFF,N            munmap(slot K + OFF, N pages)
 *   r,OFF,OLD,NEW,MODE,DST  mremap(arena+OFF, OLD, NEW, MODE)
 *   A,K,OLD,NEW,MODE,DST    mremap(slot K, OLD, NEW, MODE)
 *        MODE 0: no flags (in place or fail)  1: MAYMOVE
 *             2: MAYMOVE|FIXED to arena+DST    3: MAYMOVE|DONTUNMAP
 *
 * Every mapping is anonymous, private, read-write. After the first WARMUP ops (which
 * warm up the shim's per-call-site caches) the program copies /proc/self/maps; at
 * the end it copies it again. It prints one line per op ("OP i OK addr" or "OP i
 * FAIL errno"), the arena, the page size and both maps; it never calls malloc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARENA_PAGES 64
#define MAXOPS 256

static char out[1 << 18];
static size_t used;
static char maps_before[1 << 16], maps_after[1 << 16];
static uintptr_t slot[MAXOPS];
static long slot_pages[MAXOPS];
static int nslots;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    used += (size_t)vsnprintf(out + used, sizeof out - used, fmt, ap);
    va_end(ap);
}

static void read_maps(char *buf, size_t cap) {
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    size_t n = 0;
    ssize_t r;
    while (fd >= 0 && n < cap - 1 && (r = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = 0;
    if (fd >= 0)
        close(fd);
}

static long num(char **s) {
    long v = strtol(*s, s, 10);
    if (**s == ',')
        (*s)++;
    return v;
}

static int remap_flags(long mode) {
    switch (mode) {
    case 1: return MREMAP_MAYMOVE;
    case 2: return MREMAP_MAYMOVE | MREMAP_FIXED;
#ifdef MREMAP_DONTUNMAP
    case 3: return MREMAP_MAYMOVE | MREMAP_DONTUNMAP;
#endif
    default: return 0;
    }
}

int main(int argc, char **argv) {
    long page = sysconf(_SC_PAGESIZE);
    const int prot = PROT_READ | PROT_WRITE, anon = MAP_PRIVATE | MAP_ANONYMOUS;
    /* the arena, out of the shim's sight, far below where mmap(NULL) places things */
    char *arena = (char *)syscall(SYS_mmap, (void *)0x200000000000UL, ARENA_PAGES * page,
                                  PROT_NONE, anon | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (arena == MAP_FAILED) {
        perror("arena");
        return 2;
    }
    int warmup = argc > 1 ? atoi(argv[1]) : 0;
    for (int i = 2; i < argc; i++) {
        if (i - 2 == warmup)
            read_maps(maps_before, sizeof maps_before);
        char *s = argv[i];
        char op = *s;
        s += 2;
        void *res = MAP_FAILED;
        int ok = 0;
        errno = 0;
        if (op == 'a') {
            long n = num(&s);
            res = mmap(NULL, n * page, prot, anon, -1, 0);
            ok = res != MAP_FAILED;
            slot_pages[nslots] = n;
            slot[nslots++] = ok ? (uintptr_t)res : 0;
        } else if (op == 'm') {
            long off = num(&s), n = num(&s);
            res = mmap(arena + off * page, n * page, prot, anon | MAP_FIXED, -1, 0);
            ok = res != MAP_FAILED;
        } else if (op == 'u' || op == 'U') {
            char *base = arena;
            long k = -1;
            if (op == 'U') {
                k = num(&s) % (nslots ? nslots : 1);
                if (nslots == 0 || slot[k] == 0) {
                    say("OP %d SKIP\n", i - 2);
                    continue;
                }
                base = (char *)slot[k];
            }
            long off = num(&s), n = num(&s);
            if (k >= 0) {
                /* never beyond the slot: its neighbours may be anybody's (the shim's) */
                if (off >= slot_pages[k]) {
                    say("OP %d SKIP\n", i - 2);
                    continue;
                }
                if (off + n > slot_pages[k])
                    n = slot_pages[k] - off;
                slot[k] = 0; /* partly gone: retire it (its other pages stay mapped) */
                say("LEN %d %ld\n", i - 2, n);
            }
            res = base + off * page;
            ok = munmap(res, n * page) == 0;
        } else if (op == 'r' || op == 'A') {
            char *from;
            long k = 0;
            if (op == 'A') {
                k = num(&s) % (nslots ? nslots : 1);
                if (nslots == 0 || slot[k] == 0) {
                    say("OP %d SKIP\n", i - 2);
                    continue;
                }
                from = (char *)slot[k];
            } else {
                from = arena + num(&s) * page;
            }
            long old = num(&s), new = num(&s), mode = num(&s), dst = num(&s);
            if (op == 'A' && old > slot_pages[k])
                old = slot_pages[k];
            say("LEN %d %ld\n", i - 2, old);
            int flags = remap_flags(mode);
            say("FROM %d %lx\n", i - 2, (unsigned long)(uintptr_t)from);
            if (flags & MREMAP_FIXED)
                res = mremap(from, old * page, new * page, flags, arena + dst * page);
            else
                res = mremap(from, old * page, new * page, flags);
            ok = res != MAP_FAILED;
            if (ok && op == 'A') {
                slot[k] = (uintptr_t)res;
                slot_pages[k] = new;
            }
        }
        if (ok)
            say("OP %d OK %lx\n", i - 2, (unsigned long)(uintptr_t)res);
        else
            say("OP %d FAIL %d\n", i - 2, errno);
    }
    if (argc - 2 <= warmup)
        read_maps(maps_before, sizeof maps_before);
    read_maps(maps_after, sizeof maps_after);
    say("ARENA %lx %d\nPAGE %ld\n", (unsigned long)(uintptr_t)arena, ARENA_PAGES, page);
    say("MAPS-BEFORE\n%sMAPS-AFTER\n%sEND\n", maps_before, maps_after);
    (void)!write(1, out, used);
    return 0;
}
