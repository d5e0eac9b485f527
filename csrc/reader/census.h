/* census.h — what census.c (walking the heap) and census_tables.c (the tables it
 * fills, and the record written from them) share. Internal to the reader. */
#ifndef MT_CENSUS_H
#define MT_CENSUS_H

#include <stdint.h>

#include "reader.h"

#define CANDIDATES 256 /* largest traced-block objects kept per type */

typedef struct {
    uint64_t addr, weight;
} candidate;

typedef struct {
    PyTypeObject *type; /* NULL: empty slot */
    uint64_t count, bytes;
    uint64_t own_count, own_nbytes, view_count, view_nbytes;
    int64_t fixed_size; /* sys.getsizeof of every instance (-1: call it per object) */
    int python_sizeof;  /* __sizeof__ is Python code: sizes estimated, never called */
    PyCFunction direct; /* its C __sizeof__, called as such (NULL: call sys.getsizeof) */
    int64_t pre;        /* sys.getsizeof minus __sizeof__ (-1: not learned yet) */
    uint32_t n_cand;
    size_t cand_at; /* 1 + index of its min-heap (by weight) in the pool; 0: none */
} type_row;

typedef struct {
    type_row *types;
    size_t types_cap, n_types;
    PyObject **seen; /* untracked objects already counted (a set) */
    size_t seen_cap, n_seen;
    PyObject **todo; /* untracked objects whose references are still to visit */
    size_t todo_cap, n_todo;
    candidate *pool; /* candidate heaps, CANDIDATES per type that has any */
    size_t pool_cap, pool_used;
    uint64_t n_objects, n_bytes, n_untracked, n_frame_roots;
    int failed;
} census;

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} text;

/* census_tables.c: memory of memtrace's own (anonymous mappings, so glibc's heap
 * is left as it was), and the tables. */
void *mt_big_alloc(size_t n);
void mt_big_free(void *p, size_t n);
int mt_big_grow(void **p, size_t *cap, size_t need, size_t size);
type_row *mt_census_type(census *c, PyTypeObject *tp);
int mt_census_seen_add(census *c, PyObject *o);
void mt_census_candidate(census *c, type_row *r, uint64_t addr, uint64_t weight);
void mt_census_record(text *t, census *c, int reason, uint64_t position, long long cost);
void mt_census_free(census *c);

/* census.c: how a new type's objects are sized. */
void mt_census_classify(type_row *r, PyTypeObject *tp);

#endif /* MT_CENSUS_H */
