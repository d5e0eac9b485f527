/* census_tables.c — the tables an object census fills (types, the set of untracked
 * objects counted, each type's heaviest blocks) and the JSON record written from
 * them (see census.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "census.h"

#define OUT_TYPES 50 /* types written in full; the rest are summed */
/* A metadata record holds at most 64 KiB: types are listed while the record is
 * under TYPES_UNTIL bytes, and blocks (the heaviest first) under BLOCKS_UNTIL. */
#define TYPES_UNTIL 50000
#define BLOCKS_UNTIL 40000

/* ---- Memory of memtrace's own: anonymous mappings ------------------------- */

void *mt_big_alloc(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void mt_big_free(void *p, size_t n) {
    if (p)
        munmap(p, n);
}

/* Grow an array of `*cap` elements of `size` bytes to hold `need`: 0 or -1. */
int mt_big_grow(void **p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need)
        n *= 2;
    void *q = mt_big_alloc(n * size);
    if (q == NULL)
        return -1;
    if (*p)
        memcpy(q, *p, *cap * size);
    mt_big_free(*p, *cap * size);
    *p = q;
    *cap = n;
    return 0;
}

static inline size_t mix(uintptr_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

/* ---- The tables ------------------------------------------------------------ */

static int types_rehash(census *c) {
    size_t old_cap = c->types_cap, cap = old_cap ? old_cap * 2 : 1024;
    type_row *old = c->types, *rows = mt_big_alloc(cap * sizeof *rows);
    if (rows == NULL)
        return -1;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].type == NULL)
            continue;
        size_t j = mix((uintptr_t)old[i].type) & (cap - 1);
        while (rows[j].type)
            j = (j + 1) & (cap - 1);
        rows[j] = old[i];
    }
    mt_big_free(old, old_cap * sizeof *old);
    c->types = rows;
    c->types_cap = cap;
    return 0;
}

type_row *mt_census_type(census *c, PyTypeObject *tp) {
    if ((c->n_types + 1) * 2 > c->types_cap && types_rehash(c) < 0)
        return NULL;
    size_t j = mix((uintptr_t)tp) & (c->types_cap - 1);
    while (c->types[j].type && c->types[j].type != tp)
        j = (j + 1) & (c->types_cap - 1);
    type_row *r = &c->types[j];
    if (r->type == NULL) {
        r->type = tp;
        mt_census_classify(r, tp);
        c->n_types++;
    }
    return r;
}

/* 1 if o was not in the set (and is now), 0 if it was, -1 on no memory. */
int mt_census_seen_add(census *c, PyObject *o) {
    if ((c->n_seen + 1) * 2 > c->seen_cap) {
        size_t old_cap = c->seen_cap, cap = old_cap ? old_cap * 2 : 1 << 14;
        PyObject **old = c->seen, **set = mt_big_alloc(cap * sizeof *set);
        if (set == NULL)
            return -1;
        for (size_t i = 0; i < old_cap; i++) {
            if (old[i] == NULL)
                continue;
            size_t j = mix((uintptr_t)old[i]) & (cap - 1);
            while (set[j])
                j = (j + 1) & (cap - 1);
            set[j] = old[i];
        }
        mt_big_free(old, old_cap * sizeof *old);
        c->seen = set;
        c->seen_cap = cap;
    }
    size_t j = mix((uintptr_t)o) & (c->seen_cap - 1);
    while (c->seen[j]) {
        if (c->seen[j] == o)
            return 0;
        j = (j + 1) & (c->seen_cap - 1);
    }
    c->seen[j] = o;
    c->n_seen++;
    return 1;
}

/* Keep the CANDIDATES heaviest (address, weight) pairs of a type. */
void mt_census_candidate(census *c, type_row *r, uint64_t addr, uint64_t weight) {
    if (addr == 0 || weight == 0)
        return;
    if (r->cand_at == 0) { /* (the pool may move as it grows: heaps are kept by index) */
        if (mt_big_grow((void **)&c->pool, &c->pool_cap, c->pool_used + CANDIDATES,
                        sizeof(candidate)) < 0)
            return;
        r->cand_at = c->pool_used + 1;
        c->pool_used += CANDIDATES;
    }
    candidate *h = c->pool + (r->cand_at - 1);
    uint32_t i;
    if (r->n_cand < CANDIDATES) {
        i = r->n_cand++;
        while (i > 0 && h[(i - 1) / 2].weight > weight) { /* sift up */
            h[i] = h[(i - 1) / 2];
            i = (i - 1) / 2;
        }
    } else if (weight > h[0].weight) {
        i = 0;
        for (;;) { /* sift down from the root, which is replaced */
            uint32_t k = 2 * i + 1;
            if (k >= CANDIDATES)
                break;
            if (k + 1 < CANDIDATES && h[k + 1].weight < h[k].weight)
                k++;
            if (h[k].weight >= weight)
                break;
            h[i] = h[k];
            i = k;
        }
    } else {
        return;
    }
    h[i].addr = addr;
    h[i].weight = weight;
}

/* ---- The record -------------------------------------------------------------- */

static void put(text *t, const char *s, size_t n) {
    if (t->failed)
        return;
    if (mt_big_grow((void **)&t->p, &t->cap, t->len + n, 1) < 0) {
        t->failed = 1;
        return;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
}

static void putf(text *t, const char *fmt, unsigned long long a, unsigned long long b) {
    char buf[96];
    int n = snprintf(buf, sizeof buf, fmt, a, b);
    put(t, buf, (size_t)n);
}

/* A JSON string of UTF-8 bytes (control characters escaped). */
static void put_string(text *t, const char *s, size_t n) {
    put(t, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            put(t, e, 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", ch);
            put(t, e, 6);
        } else {
            put(t, (const char *)&ch, 1);
        }
    }
    put(t, "\"", 1);
}

/* module.qualname of a class; the C name of a static type. */
static void put_type_name(text *t, PyTypeObject *tp) {
    char buf[512];
    size_t n = 0;
    if (tp->tp_flags & Py_TPFLAGS_HEAPTYPE) {
        PyObject *module = tp->tp_dict ? PyDict_GetItemString(tp->tp_dict, "__module__") : NULL;
        n = mt_utf8_of(module, buf, sizeof buf - 256);
        if (n && !(n == 8 && memcmp(buf, "builtins", 8) == 0))
            buf[n++] = '.';
        else
            n = 0;
        n += mt_utf8_of(((PyHeapTypeObject *)tp)->ht_qualname, buf + n, sizeof buf - n);
    } else {
        n = strnlen(tp->tp_name, sizeof buf);
        memcpy(buf, tp->tp_name, n);
    }
    put_string(t, buf, n);
}

static int by_weight(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    return x->weight < y->weight ? 1 : x->weight > y->weight ? -1 : 0;
}

static int by_bytes(const void *a, const void *b) {
    const type_row *x = *(type_row *const *)a, *y = *(type_row *const *)b;
    return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : 0;
}

static void put_type(text *t, census *c, type_row *r) {
    put(t, "{\"type\":", 8);
    put_type_name(t, r->type);
    putf(t, ",\"count\":%llu,\"bytes\":%llu", r->count, r->bytes);
    if (r->python_sizeof)
        put(t, ",\"sizes_estimated\":true", 23);
    if (r->own_count || r->view_count) {
        putf(t, ",\"numpy\":{\"owning_count\":%llu,\"owning_nbytes\":%llu", r->own_count,
             r->own_nbytes);
        putf(t, ",\"view_count\":%llu,\"view_nbytes\":%llu}", r->view_count, r->view_nbytes);
    }
    if (r->cand_at && t->len < BLOCKS_UNTIL) {
        candidate *h = c->pool + (r->cand_at - 1);
        qsort(h, r->n_cand, sizeof *h, by_weight);
        put(t, ",\"blocks\":[", 11);
        for (uint32_t i = 0; i < r->n_cand && t->len < BLOCKS_UNTIL; i++)
            putf(t, i ? ",[%llu,%llu]" : "[%llu,%llu]", h[i].addr, h[i].weight);
        put(t, "]", 1);
    }
    put(t, "}", 1);
}

void mt_census_record(text *t, census *c, int reason, uint64_t position, long long cost) {
    type_row **order = mt_big_alloc((c->n_types + 1) * sizeof *order);
    if (order == NULL) {
        t->failed = 1;
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < c->types_cap; i++)
        if (c->types[i].type)
            order[n++] = &c->types[i];
    qsort(order, n, sizeof *order, by_bytes);
    put(t, reason ? "{\"reason\":\"exit\"" : "{\"reason\":\"peak\"", 16);
    putf(t, ",\"position\":%llu,\"cost_ns\":%llu", position, (unsigned long long)cost);
    putf(t, ",\"objects\":%llu,\"bytes\":%llu", c->n_objects, c->n_bytes);
    putf(t, ",\"untracked\":%llu,\"frame_roots\":%llu", c->n_untracked, c->n_frame_roots);
    putf(t, ",\"n_types\":%llu", n, 0);
    put(t, ",\"types\":[", 10);
    uint64_t rest_count = 0, rest_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (i < OUT_TYPES && t->len < TYPES_UNTIL) {
            if (i)
                put(t, ",", 1);
            put_type(t, c, order[i]);
        } else {
            rest_count += order[i]->count;
            rest_bytes += order[i]->bytes;
        }
    }
    putf(t, "],\"other\":{\"count\":%llu,\"bytes\":%llu}}", rest_count, rest_bytes);
    mt_big_free(order, (c->n_types + 1) * sizeof *order);
}

void mt_census_free(census *c) {
    mt_big_free(c->types, c->types_cap * sizeof *c->types);
    mt_big_free(c->seen, c->seen_cap * sizeof *c->seen);
    mt_big_free(c->todo, c->todo_cap * sizeof *c->todo);
    mt_big_free(c->pool, c->pool_cap * sizeof *c->pool);
}
