/* intern.c — the interning tables behind recorder.c's caches (see intern.h).
 *
 * Open addressing, insert-only, lock-free: a slot is claimed by CAS on its tag;
 * its id is published last (release), so a reader that sees a matching tag waits
 * for the id, then checks the full key. Library ids are the exception: a caller
 * address never seen before takes lib_lock to name its shared object.
 */
#define _GNU_SOURCE
#include "intern.h"

#include <dlfcn.h>
#include <string.h>
#include <unistd.h>

#include "../hash.h"
#include "transport.h"

#define NODE_BITS 19
#define CODE_BITS 16
#define CALLER_BITS 16
#define MAX_LIBS 4096

typedef struct node_slot {
    uint64_t tag;
    uint32_t parent;
    uint32_t code;
    int32_t lasti;
    uint32_t id;
} node_slot;

typedef struct code_slot {
    uint64_t tag;
    uintptr_t code;
    uintptr_t identity;
    uint32_t id;
    uint32_t pad;
} code_slot;

typedef struct caller_slot {
    uintptr_t addr;
    uint32_t lib; /* lib id + 1 once published */
    uint32_t pad;
} caller_slot;

/* Owned; re-made in a forked child (ids restart in the child's stream). */
static node_slot *nodes;
static code_slot *codes;
static caller_slot *callers;
static uint32_t next_node = 1, next_code = 1;

/* Libraries by load address. Protected by lib_lock (taken only on a caller
 * address never seen before). */
static uintptr_t lib_base[MAX_LIBS];
static uint32_t n_libs;
static int lib_lock;

static char exe_path[512];

static uint32_t wait_id(const uint32_t *id) {
    uint32_t v;
    while ((v = __atomic_load_n(id, __ATOMIC_ACQUIRE)) == 0)
        __builtin_ia32_pause();
    return v;
}

static uint32_t intern_code(const mt_python_reader *r, void *code) {
    uintptr_t identity = r->identity(code);
    uint64_t tag = mix64((uintptr_t)code ^ (identity << 1)) | 1;
    uint64_t mask = (1u << CODE_BITS) - 1;
    for (uint64_t i = tag, n = 0; n <= mask; i++, n++) {
        code_slot *s = &codes[i & mask];
        uint64_t t = __atomic_load_n(&s->tag, __ATOMIC_ACQUIRE);
        if (t == 0) {
            if (!__atomic_compare_exchange_n(&s->tag, &t, tag, 0, __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE)) {
                if (t != tag) /* someone else took it for another key */
                    continue;
            } else {
                s->code = (uintptr_t)code;
                s->identity = identity;
                uint32_t id = __atomic_fetch_add(&next_code, 1, __ATOMIC_RELAXED);
                char file[1024], name[256];
                size_t file_len = sizeof file, name_len = sizeof name;
                int32_t first = 0;
                if (r->describe(code, file, &file_len, name, &name_len, &first) != 0) {
                    file_len = name_len = 0;
                }
                mt_code_payload head = {id, first, (uint16_t)file_len, (uint16_t)name_len};
                char text[sizeof file + sizeof name];
                memcpy(text, file, file_len);
                memcpy(text + file_len, name, name_len);
                mt_meta_write(mt_stream, MT_META_CODE, &head, sizeof head, text,
                              file_len + name_len);
                __atomic_store_n(&s->id, id, __ATOMIC_RELEASE);
                return id;
            }
        }
        if (t == tag) {
            uint32_t id = wait_id(&s->id);
            if (s->code == (uintptr_t)code && s->identity == identity)
                return id;
        }
    }
    return 0; /* table full */
}

uint32_t mt_intern_node(const mt_python_reader *r, uint32_t parent, void *code, int32_t lasti) {
    uint32_t code_id = intern_code(r, code);
    if (code_id == 0)
        return 0;
    uint64_t tag = mix64(((uint64_t)parent << 32 | code_id) ^ mix64((uint32_t)lasti)) | 1;
    uint64_t mask = (1u << NODE_BITS) - 1;
    for (uint64_t i = tag, n = 0; n <= mask / 4 * 3; i++, n++) {
        node_slot *s = &nodes[i & mask];
        uint64_t t = __atomic_load_n(&s->tag, __ATOMIC_ACQUIRE);
        if (t == 0) {
            if (!__atomic_compare_exchange_n(&s->tag, &t, tag, 0, __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE)) {
                if (t != tag)
                    continue;
            } else {
                s->parent = parent;
                s->code = code_id;
                s->lasti = lasti;
                uint32_t id = __atomic_fetch_add(&next_node, 1, __ATOMIC_RELAXED);
                mt_node_payload rec = {id, parent, code_id, r->line(code, lasti)};
                mt_meta_write(mt_stream, MT_META_NODE, &rec, sizeof rec, NULL, 0);
                __atomic_store_n(&s->id, id, __ATOMIC_RELEASE);
                return id;
            }
        }
        if (t == tag) {
            uint32_t id = wait_id(&s->id);
            if (s->parent == parent && s->code == code_id && s->lasti == lasti)
                return id;
        }
    }
    return 0;
}

/* ---- Callers' shared objects -------------------------------------------- */

static void lib_name(const Dl_info *info, const char **name, size_t *len) {
    const char *fname = info->dli_fname;
    if (fname == NULL || fname[0] == '\0' || strchr(fname, '/') == NULL) {
        /* The main executable's link map has no path. */
        if (exe_path[0] == '\0') {
            ssize_t n = readlink("/proc/self/exe", exe_path, sizeof exe_path - 1);
            exe_path[n > 0 ? n : 0] = '\0';
        }
        fname = exe_path[0] ? exe_path : (fname ? fname : "?");
    }
    *name = fname;
    *len = strlen(fname);
}

static uint16_t lib_for_base(uintptr_t base, const Dl_info *info) {
    while (__atomic_exchange_n(&lib_lock, 1, __ATOMIC_ACQUIRE))
        __builtin_ia32_pause();
    uint32_t id = 0;
    for (uint32_t i = 0; i < n_libs; i++)
        if (lib_base[i] == base) {
            id = i + 1;
            break;
        }
    if (id == 0 && n_libs < MAX_LIBS - 1) {
        lib_base[n_libs++] = base;
        id = n_libs;
        const char *name;
        size_t len;
        lib_name(info, &name, &len);
        mt_lib_payload rec = {(uint16_t)id, 0, 0, base};
        mt_meta_write(mt_stream, MT_META_LIB, &rec, sizeof rec, name, len);
    }
    __atomic_store_n(&lib_lock, 0, __ATOMIC_RELEASE);
    return (uint16_t)id;
}

uint16_t mt_caller_lib_lookup(void *caller) {
    uintptr_t addr = (uintptr_t)caller;
    if (addr == 0)
        return 0;
    uint64_t mask = (1u << CALLER_BITS) - 1;
    for (uint64_t i = mix64(addr), n = 0; n <= mask / 4 * 3; i++, n++) {
        caller_slot *s = &callers[i & mask];
        uintptr_t a = __atomic_load_n(&s->addr, __ATOMIC_ACQUIRE);
        if (a == 0 && __atomic_compare_exchange_n(&s->addr, &a, addr, 0, __ATOMIC_ACQ_REL,
                                                  __ATOMIC_ACQUIRE)) {
            /* This thread names the address (a failed CAS left the slot's
             * current address in `a`, checked below). */
            Dl_info info;
            uint16_t lib = 0;
            /* Not bracketed as memtrace's own work (mt_self.untraced): glibc's
             * dladdr allocates nothing, so a call made in here can only come from a
             * signal handler that interrupted it, and must be counted, not hidden
             * (a child forked by that handler inherits the state). */
            if (dladdr(caller, &info) && info.dli_fbase)
                lib = lib_for_base((uintptr_t)info.dli_fbase, &info);
            __atomic_store_n(&s->lib, (uint32_t)lib + 1, __ATOMIC_RELEASE);
            return lib;
        }
        if (a == addr) {
            /* Another thread is naming it: wait a little (dladdr takes
             * microseconds), never long: that thread may be blocked in dladdr on
             * the loader lock held by this one. Unknown, this once, after that. */
            for (int spins = 0; spins < 4096; spins++) {
                uint32_t lib = __atomic_load_n(&s->lib, __ATOMIC_ACQUIRE);
                if (lib)
                    return (uint16_t)(lib - 1);
                __builtin_ia32_pause();
            }
            return 0;
        }
    }
    return 0;
}

/* ---- Set-up and fork ----------------------------------------------------- */

/* The shim's own tables, so the collector can count them as memtrace's. */
void mt_intern_send_ranges(void) {
    char text[256];
    int n = 0;
    const void *starts[3] = {nodes, codes, callers};
    size_t sizes[3] = {sizeof(node_slot) << NODE_BITS, sizeof(code_slot) << CODE_BITS,
                       sizeof(caller_slot) << CALLER_BITS};
    for (int i = 0; i < 3; i++) {
        uintptr_t a = (uintptr_t)starts[i];
        /* hand-rolled hex: no stdio in the shim */
        const char *hex = "0123456789abcdef";
        uintptr_t v[2] = {a, a + sizes[i]};
        for (int k = 0; k < 2; k++) {
            char digits[16];
            int d = 0;
            do {
                digits[d++] = hex[v[k] & 15];
                v[k] >>= 4;
            } while (v[k]);
            while (d)
                text[n++] = digits[--d];
            text[n++] = k ? '\n' : '-';
        }
    }
    uint16_t key = MT_TEXT_TRACER_RANGES;
    mt_meta_write(mt_stream, MT_META_TEXT, &key, sizeof key, text, (size_t)n);
}

int mt_intern_open(void) {
    nodes = mt_sys_mmap(sizeof(node_slot) << NODE_BITS);
    codes = mt_sys_mmap(sizeof(code_slot) << CODE_BITS);
    callers = mt_sys_mmap(sizeof(caller_slot) << CALLER_BITS);
    return nodes && codes && callers ? MT_OK : MT_ERR;
}

void mt_intern_close(void) {
    if (nodes)
        mt_sys_munmap(nodes, sizeof(node_slot) << NODE_BITS);
    if (codes)
        mt_sys_munmap(codes, sizeof(code_slot) << CODE_BITS);
    if (callers)
        mt_sys_munmap(callers, sizeof(caller_slot) << CALLER_BITS);
    nodes = NULL;
    codes = NULL;
    callers = NULL;
}

void mt_intern_after_fork_child(void) {
    /* another thread may have died holding lib_lock or half-way through an insert */
    n_libs = 0;
    lib_lock = 0;
    next_node = next_code = 1;
}
