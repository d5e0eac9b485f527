/* report.c — helpers for report processes (src/tracer/stacks.py, the reports):
 * metadata indexes, call trees, JSON and pprof encoding of large arrays. */
#include "native.h"

#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "util.h"

void mt_keep_freed_memory(void) {
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
#endif
}

size_t mt_meta_index(const uint8_t *data, size_t len, uint16_t *type, uint64_t *offset,
                     uint16_t *length, size_t max) {
    size_t n = 0, pos = 0;
    while (pos + 4 <= len) {
        uint16_t rtype, rlen;
        memcpy(&rtype, data + pos, 2);
        memcpy(&rlen, data + pos + 2, 2);
        if (pos + 4 + rlen > len)
            break; /* cut short: the process died mid-record */
        if (n < max) {
            type[n] = rtype;
            offset[n] = pos + 4;
            length[n] = rlen;
        }
        n++;
        pos += (4 + (size_t)rlen + 3) & ~(size_t)3;
    }
    return n;
}

/* (a, b) -> value, open addressing; a == INT64_MIN marks an empty slot. */
typedef struct pair_slot {
    int64_t a, b, value;
} pair_slot;

typedef struct pair_map {
    pair_slot *slots;
    size_t cap, count; /* cap: a power of two */
} pair_map;

static size_t pair_hash(int64_t a, int64_t b, size_t mask) {
    return mix64((uint64_t)a * 0x9E3779B97F4A7C15ULL ^ mix64((uint64_t)b)) & mask;
}

static int pair_init(pair_map *m, size_t cap) {
    m->slots = malloc(cap * sizeof(pair_slot));
    if (m->slots == NULL)
        return -1;
    for (size_t i = 0; i < cap; i++)
        m->slots[i].a = INT64_MIN;
    m->cap = cap;
    m->count = 0;
    return 0;
}

static pair_slot *pair_slot_of(const pair_map *m, int64_t a, int64_t b) {
    size_t j = pair_hash(a, b, m->cap - 1);
    while (m->slots[j].a != INT64_MIN && (m->slots[j].a != a || m->slots[j].b != b))
        j = (j + 1) & (m->cap - 1);
    return &m->slots[j];
}

static int pair_resize(pair_map *m, size_t cap) {
    pair_map bigger;
    if (pair_init(&bigger, cap) < 0)
        return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].a != INT64_MIN)
            *pair_slot_of(&bigger, m->slots[i].a, m->slots[i].b) = m->slots[i];
    bigger.count = m->count;
    free(m->slots);
    *m = bigger;
    return 0;
}

static int pair_put(pair_map *m, int64_t a, int64_t b, int64_t value) {
    if ((m->count + 1) * 2 > m->cap && pair_resize(m, m->cap * 2) < 0)
        return -1;
    pair_slot *s = pair_slot_of(m, a, b);
    if (s->a == INT64_MIN)
        m->count++;
    s->a = a;
    s->b = b;
    s->value = value;
    return 0;
}

typedef struct made_node {
    int64_t parent, row;
} made_node;

struct mt_tree {
    pair_map children; /* (parent node, frame id) -> node, for the whole tree */
    made_node *made;   /* the nodes the last mt_tree_frames made */
    size_t n_made, made_cap;
    int64_t *chain;
    size_t chain_cap;
};

mt_tree *mt_tree_new(void) {
    mt_tree *t = calloc(1, sizeof *t);
    if (t == NULL || pair_init(&t->children, 1024) < 0) {
        free(t);
        return NULL;
    }
    return t;
}

void mt_tree_free(mt_tree *t) {
    if (t == NULL)
        return;
    free(t->children.slots);
    free(t->made);
    free(t->chain);
    free(t);
}

/* The node of a frame under a node, made (numbered *next) on first sight. */
static int64_t tree_child(mt_tree *t, int64_t parent, int64_t frame, int64_t row, int64_t *next) {
    pair_slot *s = pair_slot_of(&t->children, parent, frame);
    if (s->a != INT64_MIN)
        return s->value;
    if (mt_grow((void **)&t->made, &t->made_cap, t->n_made + 1, sizeof(made_node)) < 0)
        return -1;
    int64_t node = (*next)++;
    if (pair_put(&t->children, parent, frame, node) < 0)
        return -1;
    t->made[t->n_made].parent = parent;
    t->made[t->n_made++].row = row;
    return node;
}

int64_t mt_tree_frames(mt_tree *t, const int64_t *parent, const int64_t *frame, size_t nrows,
                       const int64_t *base, const int64_t *row, size_t n, int64_t first_id,
                       int64_t *node_out) {
    /* A cache of each row's node under the base it was last reached from (the
     * children index is what defines the nodes: a miss only costs a walk). */
    made_node *seen = malloc((nrows ? nrows : 1) * sizeof *seen); /* .parent: base, .row: node */
    if (seen == NULL)
        return -1;
    /* room for a node per row at once: one table, not a doubling per power of two */
    size_t want = t->children.cap;
    while ((t->children.count + nrows + 1) * 2 > want)
        want *= 2;
    if (want > t->children.cap && pair_resize(&t->children, want) < 0) {
        free(seen);
        return -1;
    }
    for (size_t r = 0; r < nrows; r++)
        seen[r].parent = -1;
    int64_t next = first_id;
    t->n_made = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t r = row[i], b = base[i];
        /* Walk up to the first row whose node is known (or past the outermost),
         * then come back down making nodes. */
        size_t depth = 0;
        int64_t node = b;
        while (r >= 0 && (size_t)r < nrows) {
            if (seen[r].parent == b) {
                node = seen[r].row;
                break;
            }
            if (mt_grow((void **)&t->chain, &t->chain_cap, depth + 1, sizeof(int64_t)) < 0)
                goto oom;
            t->chain[depth++] = r;
            r = parent[r];
        }
        while (depth) {
            int64_t cr = t->chain[--depth];
            node = tree_child(t, node, frame[cr], cr, &next);
            if (node < 0)
                goto oom;
            seen[cr].parent = b;
            seen[cr].row = node;
        }
        node_out[i] = node;
    }
    free(seen);
    return next - first_id;
oom:
    free(seen);
    return -1;
}

int64_t mt_tree_children(mt_tree *t, const int64_t *parent, const int64_t *key, size_t n,
                         int64_t first_id, int64_t *node_out) {
    int64_t next = first_id;
    t->n_made = 0;
    for (size_t i = 0; i < n; i++)
        if ((node_out[i] = tree_child(t, parent[i], key[i], (int64_t)i, &next)) < 0)
            return -1;
    return next - first_id;
}

void mt_tree_made(const mt_tree *t, int64_t *parent, int64_t *row) {
    for (size_t i = 0; i < t->n_made; i++) {
        parent[i] = t->made[i].parent;
        row[i] = t->made[i].row;
    }
}

int64_t mt_tree_fold(mt_tree *t, const int64_t *parent, const int64_t *key, const uint8_t *fold,
                     size_t n, int64_t fold_key, int64_t *out) {
    int64_t next = 1;
    t->n_made = 0;
    if (n)
        out[0] = 0;
    for (size_t i = 1; i < n; i++) {
        int64_t p = parent[i];
        if (fold[i] && fold[p]) {
            out[i] = out[p];
            continue;
        }
        if ((out[i] = tree_child(t, out[p], fold[i] ? fold_key : key[i], (int64_t)i, &next)) < 0)
            return -1;
    }
    return next - 1;
}

typedef struct dfs_item {
    int64_t node, entry; /* a node, and the entry of its parent */
} dfs_item;

size_t mt_tree_preorder(const int64_t *start, const int64_t *kids, const int64_t *n_kids, size_t n,
                        int64_t max_nodes, int64_t *order_out, int64_t *parent_out,
                        int64_t *shown_out) {
    if (n == 0)
        return 0;
    dfs_item *stack = malloc(n * sizeof *stack); /* each node is pushed at most once */
    if (stack == NULL)
        return 0;
    size_t top = 0, count = 0;
    stack[top++] = (dfs_item){0, -1};
    while (top) {
        dfs_item e = stack[--top];
        int64_t index = (int64_t)count;
        order_out[count] = e.node;
        parent_out[count++] = e.entry;
        int64_t keep = start[e.node + 1] - start[e.node];
        if ((int64_t)count + keep > max_nodes)
            keep = 0;
        shown_out[index] = keep;
        if (keep < n_kids[e.node]) {
            order_out[count] = -1 - e.node;
            shown_out[count] = keep;
            parent_out[count++] = index;
        }
        for (int64_t k = keep; k-- > 0;)
            stack[top++] = (dfs_item){kids[start[e.node] + k], index};
    }
    free(stack);
    return count;
}

void mt_tree_child_sums(const int64_t *parent, size_t n, const int64_t *bytes, const int64_t *count,
                        const int64_t *numpy, int64_t threshold, int64_t *n_kids,
                        int64_t *all_bytes, int64_t *all_count, int64_t *all_numpy,
                        int64_t *small_bytes, int64_t *small_count, int64_t *small_numpy) {
    size_t size = n * sizeof(int64_t);
    memset(n_kids, 0, size);
    memset(all_bytes, 0, size);
    memset(all_count, 0, size);
    memset(all_numpy, 0, size);
    memset(small_bytes, 0, size);
    memset(small_count, 0, size);
    memset(small_numpy, 0, size);
    for (size_t i = 1; i < n; i++) {
        if (bytes[i] <= 0)
            continue; /* not in this metric's tree */
        int64_t p = parent[i];
        n_kids[p]++;
        all_bytes[p] += bytes[i];
        all_count[p] += count[i];
        all_numpy[p] += numpy[i];
        if (bytes[i] < threshold) {
            small_bytes[p] += bytes[i];
            small_count[p] += count[i];
            small_numpy[p] += numpy[i];
        }
    }
}

void mt_nearest_flagged(const int64_t *parent, const uint8_t *flag, size_t n, int64_t *out) {
    for (size_t r = 0; r < n; r++)
        out[r] = flag[r] ? (int64_t)r : parent[r] < 0 ? parent[r] : out[parent[r]];
}

void mt_tree_sum_down(const int64_t *parent, size_t n, const int64_t *add, int64_t *out) {
    for (size_t i = 0; i < n; i++)
        out[i] = (i ? out[parent[i]] : 0) + add[i];
}

void mt_tree_leaf_values(const int64_t *leaf, size_t n, const int64_t *size, const int64_t *count,
                         const int64_t *numpy, const int64_t *pos, size_t n_nodes, int64_t *bytes,
                         int64_t *counts, int64_t *numpys, int64_t *first) {
    for (size_t i = 0; i < n_nodes; i++) {
        bytes[i] = counts[i] = numpys[i] = 0;
        first[i] = INT64_MAX;
    }
    for (size_t i = 0; i < n; i++) {
        int64_t node = leaf[i];
        bytes[node] += size[i];
        counts[node] += count[i];
        numpys[node] += numpy[i];
        if (pos[i] < first[node])
            first[node] = pos[i];
    }
}

void mt_tree_sum_up(const int64_t *parent, size_t n, int64_t *bytes, int64_t *count, int64_t *numpy,
                    int64_t *first) {
    for (size_t i = n; i-- > 1;) {
        int64_t p = parent[i];
        bytes[p] += bytes[i];
        count[p] += count[i];
        numpy[p] += numpy[i];
        if (first[i] < first[p])
            first[p] = first[i];
    }
}

static char *put_decimal(char *p, uint64_t v) {
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = digits[--n];
    return p;
}

size_t mt_json_int_lists(const uint64_t *values, const uint64_t *starts, size_t n, char *out) {
    char *p = out;
    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        if (i) {
            *p++ = ',';
            *p++ = ' ';
        }
        *p++ = '[';
        for (uint64_t k = starts[i]; k < starts[i + 1]; k++) {
            if (k > starts[i]) {
                *p++ = ',';
                *p++ = ' ';
            }
            p = put_decimal(p, values[k]);
        }
        *p++ = ']';
    }
    *p++ = ']';
    return (size_t)(p - out);
}

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* A length-delimited field: tag, then the length of what follows. */
static uint8_t *put_field_head(uint8_t *p, unsigned field, size_t len) {
    return mt_put_varint(mt_put_varint(p, (uint64_t)field << 3 | 2), len);
}

/* A varint field, left out when zero (as proto3 writers do). */
static uint8_t *put_field_varint(uint8_t *p, unsigned field, uint64_t v) {
    return v ? mt_put_varint(mt_put_varint(p, (uint64_t)field << 3), v) : p;
}

static size_t field_varint_len(unsigned field, uint64_t v) {
    return v ? varint_len((uint64_t)field << 3) + varint_len(v) : 0;
}

size_t mt_pprof_samples(const uint64_t *ids, const uint64_t *starts, size_t n,
                        const int64_t *counts, const int64_t *sizes, uint8_t *out) {
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        size_t ids_len = 0;
        for (uint64_t k = starts[i]; k < starts[i + 1]; k++)
            ids_len += varint_len(ids[k]);
        size_t values_len = varint_len((uint64_t)counts[i]) + varint_len((uint64_t)sizes[i]);
        size_t ids_field = ids_len ? 1 + varint_len(ids_len) + ids_len : 0;
        p = put_field_head(p, 2, ids_field + 1 + varint_len(values_len) + values_len);
        if (ids_len) {
            p = put_field_head(p, 1, ids_len);
            for (uint64_t k = starts[i]; k < starts[i + 1]; k++)
                p = mt_put_varint(p, ids[k]);
        }
        p = put_field_head(p, 2, values_len);
        p = mt_put_varint(p, (uint64_t)counts[i]);
        p = mt_put_varint(p, (uint64_t)sizes[i]);
    }
    return (size_t)(p - out);
}

size_t mt_pprof_locations(const uint64_t *functions, const int64_t *lines, size_t n, uint8_t *out) {
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        size_t line_len =
            field_varint_len(1, functions[i]) + field_varint_len(2, (uint64_t)lines[i]);
        size_t len = field_varint_len(1, i + 1) + 1 + varint_len(line_len) + line_len;
        p = put_field_head(p, 4, len);
        p = put_field_varint(p, 1, i + 1);
        p = put_field_head(p, 4, line_len);
        p = put_field_varint(p, 1, functions[i]);
        p = put_field_varint(p, 2, (uint64_t)lines[i]);
    }
    return (size_t)(p - out);
}

size_t mt_pprof_functions(const uint64_t *names, const uint64_t *files, size_t n, uint8_t *out) {
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        size_t len = field_varint_len(1, i + 1) + 2 * field_varint_len(2, names[i]) +
                     field_varint_len(4, files[i]);
        /* system_name is field 3: the same length as field 2's */
        p = put_field_head(p, 5, len);
        p = put_field_varint(p, 1, i + 1);
        p = put_field_varint(p, 2, names[i]);
        p = put_field_varint(p, 3, names[i]);
        p = put_field_varint(p, 4, files[i]);
    }
    return (size_t)(p - out);
}
