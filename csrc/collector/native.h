/* native.h — the collector's C hot loops, exposed to Python through cffi
 * (src/tracer/_build_ffi.py reads the declarations between the CDEF markers).
 *
 * Draining a process's shared-memory stream and aggregating its events: the
 * collector never handles events one by one in Python. In pipeline order:
 * stream.c (the shared-memory stream), aggregate.c and regions.c (feeding the
 * aggregator), query.c and regions_rows.c (reading it out), smaps.c, codec.c
 * (capture files) and report.c (report processes).
 */
#ifndef MT_NATIVE_H
#define MT_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#include "../events.h"

/* CDEF-BEGIN */
/* One allocation site: everything the reports need, per distinct
 * (stack, thread, caller library, kind, flags). */
typedef struct mt_site {
    uint32_t stack; /* Python stack node, 0 = none */
    uint32_t tid;   /* the allocating thread */
    uint16_t lib;
    uint8_t kind;
    uint8_t flags;        /* MT_FLAG_NUMPY | MT_FLAG_ANON | MT_FLAG_SHARED */
    uint32_t dirty;       /* internal: changed since the last heap peak */
    uint64_t alloc_bytes; /* total allocated here */
    uint64_t n_allocs;
    int64_t live_bytes; /* live now (at exit once the stream ended) */
    int64_t live_count;
    int64_t peak_bytes; /* live at the process's heap peak */
    int64_t peak_count;
    uint64_t temp_bytes; /* freed within the temporary threshold (when tracked) */
    uint64_t temp_count;
} mt_site;

typedef struct mt_totals {
    int64_t heap; /* live malloc-family bytes + live anonymous mmaps */
    int64_t peak_heap;
    double peak_time;         /* seconds, time of the batch that reached the peak */
    uint64_t peak_event;      /* index of the event that reached the peak */
    uint64_t total_allocated; /* bytes of every heap allocation */
    uint64_t n_allocations;
    uint64_t n_frees;
    uint64_t unknown_frees; /* frees of blocks never seen allocated */
    uint64_t n_events;
    int64_t mapped_file; /* live file-backed mappings made by the program */
    uint64_t n_sites;
    uint64_t live_blocks;
    uint64_t live_mappings;
    int64_t feed_max; /* highest heap reached during the last mt_agg_feed */
} mt_totals;

typedef struct mt_agg mt_agg;

mt_agg *mt_agg_new(uint64_t page_size);
/* Count temporary allocations: blocks freed by their thread before `threshold`
 * more allocations on it (1..64; 0 = off). Set before the first feed. */
int mt_agg_track_temporary(mt_agg *agg, uint32_t threshold);
/* Weight events flagged MT_FLAG_SAMPLED as kept by --sample-rate `rate` bytes. */
void mt_agg_set_sample_rate(mt_agg *agg, uint64_t rate);
void mt_agg_free(mt_agg *agg);
/* Feed a batch of events in stream order; t = seconds since the run started. */
int mt_agg_feed(mt_agg *agg, const mt_event *events, size_t n, double t);
void mt_agg_totals(const mt_agg *agg, mt_totals *out);
/* Allocation sizes, by power of two: count and bytes of heap allocations
 * with size in [2^(i-1), 2^i) (bucket 0: size 0). out holds 2 * 65 values. */
#define MT_SIZE_BUCKETS 65
void mt_agg_size_histogram(const mt_agg *agg, uint64_t *out);
/* Copy up to max sites into out; returns the number of sites. */
size_t mt_agg_sites(const mt_agg *agg, mt_site *out, size_t max);
/* Copy site i into out: 0, or -1 if there is no such site. */
int mt_agg_site(const mt_agg *agg, size_t i, mt_site *out);

/* Regions (tracer.region; regions.c). A row is a region's closed instances
 * folded together (instances > 0) or one instance still open (instances = 0). */
typedef struct mt_region_row {
    uint32_t region;         /* region id (named by a MT_META_REGION record) */
    uint32_t tid;            /* an open instance's thread (0: closed instances) */
    uint32_t instances;      /* closed instances folded in this row */
    uint32_t parent;         /* the region around it (its first instance), 0: none */
    int64_t peak_bytes;      /* highest live within one instance (the highest one's) */
    double peak_time;        /* seconds, of the batch that reached it */
    uint64_t peak_event;     /* the aggregator's event index then */
    double t_enter, t_leave; /* first entered, last left (open: -1) */
    uint64_t alloc_bytes;    /* allocated inside (nested regions included) */
    uint64_t n_allocs;
    int64_t live_bytes; /* closed: live at each instance's close, summed; open: now */
    int64_t live_count;
    int64_t last_peak_bytes; /* the last closed instance's own numbers */
    int64_t last_live_bytes;
    uint64_t last_alloc_bytes;
} mt_region_row;

/* One site's numbers inside a row's instances (same columns as mt_site: peak_* at
 * the row's peak, live_* as live_bytes of the row). */
typedef struct mt_region_site {
    uint32_t row;  /* index of its row in the same output */
    uint32_t site; /* index of the site (mt_agg_sites) */
    uint64_t alloc_bytes;
    uint64_t n_allocs;
    int64_t live_bytes;
    int64_t live_count;
    int64_t peak_bytes;
    int64_t peak_count;
    uint64_t temp_bytes;
    uint64_t temp_count;
} mt_region_site;

/* Every row / site record (count only when out is NULL); returns the count. */
size_t mt_agg_region_rows(const mt_agg *agg, mt_region_row *out, size_t max);
size_t mt_agg_region_sites(const mt_agg *agg, mt_region_site *out, size_t max);
/* Region id (0: any) open on thread tid, innermost first: 1 and its row; else
 * 2 and the row of the region's closed instances; 0 if never seen. */
int mt_agg_region_usage(const mt_agg *agg, uint32_t tid, uint32_t region, mt_region_row *out);
/* The site records of that open instance (0 if none is open). */
size_t mt_agg_region_usage_sites(const mt_agg *agg, uint32_t tid, uint32_t region,
                                 mt_region_site *out, size_t max);

/* Shared-memory stream (the mapping the shim created, see events.h). */
int mt_shm_check(const void *shm, size_t size);
/* Copy committed events into out, free their slots; returns how many. */
size_t mt_ring_drain(void *shm, mt_event *out, size_t max);
/* After the process died: like mt_ring_drain, but slots claimed and never
 * filled (a thread killed mid-record) are skipped and counted in *lost. */
size_t mt_ring_drain_dead(void *shm, mt_event *out, size_t max, uint64_t *lost);
/* Copy committed metadata bytes into out; returns how many. */
size_t mt_meta_drain(void *shm, uint8_t *out, size_t max);
/* What the collector keeps of a stream's metadata for live views and censuses: copy
 * the whole records of in[0, len) to keep, except those that come again and again --
 * glibc's statistics (the payload of the last one goes to heapstats, 96 bytes, and
 * *heapstats_seen is set), pymalloc's (dropped) and object censuses (copied to aside,
 * while they fit in aside_cap). Returns the bytes written to keep; *consumed: the
 * bytes of whole records read (a record cut at the end is left for the next call). */
size_t mt_meta_sift(const uint8_t *in, size_t len, uint8_t *keep, uint8_t *aside, size_t aside_cap,
                    size_t *aside_len, size_t *consumed, uint8_t *heapstats, int *heapstats_seen);
/* The shared-memory header's counters, read together (each load atomic). */
typedef struct mt_shm_counters {
    uint64_t dropped;       /* events not recorded (stream lost) */
    uint64_t unattributed;  /* events whose stack could not be interned */
    uint64_t reentrant;     /* calls not recorded: made inside a hook */
    uint64_t state;         /* mt_state */
    uint64_t claimed;       /* event positions claimed by the program (head) */
    uint64_t consumed;      /* event positions drained by the collector (tail) */
    uint64_t stats_cost_ns; /* what the last heap statistics cost the program */
    uint64_t forks;         /* children forked */
    uint64_t exit_status;   /* 0x100 | status once exit()/_exit() was called */
    uint64_t census_sent;   /* object censuses written (--objects) */
    uint64_t census_ack;    /* ... and joined by the collector */
} mt_shm_counters;
void mt_shm_read_counters(const void *shm, mt_shm_counters *out);
/* Ask the target for heap statistics (python: pymalloc's too); let an exiting target go. */
void mt_shm_request_stats(void *shm, int python);
void mt_shm_ack_exit(void *shm);
/* A question from the program (events.h): 1 and its fields if one waits. */
typedef struct mt_question {
    uint32_t seq, what, tid, region;
    uint64_t position;
} mt_question;
int mt_shm_question(const void *shm, mt_question *out);
/* Answer question seq with len bytes of text (cut to the answer area). */
void mt_shm_answer(void *shm, uint32_t seq, const char *text, size_t len);
/* Object census (--objects): ask for one (with pymalloc's statistics); let a target
 * that sent census `sent` go on once its blocks are joined. */
void mt_shm_request_census(void *shm);
void mt_shm_ack_census(void *shm, uint32_t sent);

/* The live malloc-family block starting at each of n addresses: its site (UINT32_MAX:
 * none starts there) and size. Read-only: the object census joins its objects with it. */
void mt_agg_blocks_at(const mt_agg *agg, const uint64_t *addrs, size_t n, uint32_t *site,
                      uint64_t *size);

/* Live traced bytes inside each of n sorted, disjoint ranges [starts[i], ends[i]):
 * malloc-family blocks (by start address) and mappings (by overlap, anonymous and
 * file-backed apart). top_site[i]: the site of the largest block in the range
 * (UINT32_MAX if none). */
void mt_agg_bytes_in_ranges(const mt_agg *agg, const uint64_t *starts, const uint64_t *ends,
                            size_t n, int64_t *block_bytes, int64_t *anon_map_bytes,
                            int64_t *file_map_bytes, uint32_t *top_site, int64_t *top_bytes);

/* One mapping of /proc/PID/smaps: its range, resident, anonymous and swapped
 * bytes, permissions, and where its path lies in the text (path_len 0: none). */
typedef struct mt_vma {
    uint64_t start, end;
    uint64_t rss, anon, swap;
    uint32_t path_at, path_len;
    char perms[8];
} mt_vma;
/* Parse smaps text (procfs.smaps_py is the reference); fills at most max mappings
 * and returns how many the text holds. */
size_t mt_parse_smaps(const char *text, size_t len, mt_vma *out, size_t max);

/* Compact encoding of event batches for the capture file (docs/capture-format.md).
 * mt_encode writes at most n * MT_ENCODED_MAX bytes and returns how many;
 * mt_decode returns the number of events decoded, or -1 if the bytes are
 * malformed (never reads past len, never writes past max). */
#define MT_ENCODED_MAX 40
size_t mt_encode(const mt_event *events, size_t n, uint8_t *out);
int64_t mt_decode(const uint8_t *in, size_t len, mt_event *out, size_t max);
/* The same, with the coder's state carried from one call to the next (the
 * batches of one compressed group form one encoded stream); zero it to start. */
typedef struct mt_codec {
    uint64_t addr;
    uint32_t tid, stack;
    uint16_t lib;
    uint16_t n_recent;
    uint32_t pad;
    uint64_t recent[32]; /* the last blocks allocated, newest first */
} mt_codec;
size_t mt_encode_more(mt_codec *state, const mt_event *events, size_t n, uint8_t *out);
int64_t mt_decode_more(mt_codec *state, const uint8_t *in, size_t len, mt_event *out, size_t max);
/* ---- Report helpers (src/tracer/stacks.py, reports/export.py) ---------------- */

/* For a report process: keep freed memory in glibc's heap rather than unmapping
 * each large block at free (reports make and drop arrays of megabytes by the
 * hundred; mapping them afresh costs a page fault per page). No-op elsewhere. */
void mt_keep_freed_memory(void);

/* Index of a metadata byte stream, record by record as _format.iter_meta reads
 * it (a record cut short ends it): type, payload offset and payload length of
 * the first max records; returns how many records there are. */
size_t mt_meta_index(const uint8_t *data, size_t len, uint16_t *type, uint64_t *offset,
                     uint16_t *length, size_t max);

/* Call trees (reports/flame.py): a node is a frame under its parent node; frames
 * of stack rows reached from the same node with the same frame id are one node.
 * The tree keeps the (parent node, frame id) -> node index across stack tables
 * (processes), nodes being numbered by the caller's counter. */
typedef struct mt_tree mt_tree;
mt_tree *mt_tree_new(void);
void mt_tree_free(mt_tree *tree);
/* One stack table: parent[r] is the parent row of row r (-1: none), frame[r] its
 * frame id. For each query i, node_out[i] is the node of row[i]'s frames hung under
 * node base[i] (row -1: base itself). New nodes are numbered from first_id in the
 * order they are made; returns how many were made (-1: no memory). */
int64_t mt_tree_frames(mt_tree *tree, const int64_t *parent, const int64_t *frame, size_t nrows,
                       const int64_t *base, const int64_t *row, size_t n, int64_t first_id,
                       int64_t *node_out);
/* The node of child key[i] under node parent[i], for each i (made on first sight,
 * numbered from first_id); returns how many were made (-1: no memory). A made
 * node's "row" is the i that made it. */
int64_t mt_tree_children(mt_tree *tree, const int64_t *parent, const int64_t *key, size_t n,
                         int64_t first_id, int64_t *node_out);
/* The parent node and the row of each node the last call made. */
void mt_tree_made(const mt_tree *tree, int64_t *parent, int64_t *row);
/* The same tree with runs of folded nodes made one: source node i (numbered
 * after its parent, 0 the root) becomes out[i] in a new tree (a fresh mt_tree,
 * nodes numbered from 1 as made). A folded node under a folded parent joins its
 * parent's node; any other is the child keyed key[i] (fold_key if folded) of its
 * parent's node. Returns how many nodes were made (-1: no memory). */
int64_t mt_tree_fold(mt_tree *tree, const int64_t *parent, const int64_t *key, const uint8_t *fold,
                     size_t n, int64_t fold_key, int64_t *out);
/* The HTML page's preorder (reports/flame.py flatten): node i's children that may
 * be shown are kids[start[i] .. start[i + 1]), biggest first; it has n_kids[i]
 * children in all. A node's children are shown while the entries stay within
 * max_nodes; those not shown make one "other" entry. Entry k is order_out[k] (a
 * node, or -1 - node for that node's "other" entry) under entry parent_out[k];
 * shown_out[k] is how many of the node's children are shown. The out arrays hold
 * 2 * n + 2; returns the number of entries (0 if out of memory). */
size_t mt_tree_preorder(const int64_t *start, const int64_t *kids, const int64_t *n_kids, size_t n,
                        int64_t max_nodes, int64_t *order_out, int64_t *parent_out,
                        int64_t *shown_out);
/* Per node of a tree (node 0 the root): how many children have bytes (> 0), and
 * the bytes, count and NumPy bytes of those children (all[0..2]) and of those
 * under threshold (small[0..2]). values: bytes, count, numpy, n each. */
void mt_tree_child_sums(const int64_t *parent, size_t n, const int64_t *bytes, const int64_t *count,
                        const int64_t *numpy, int64_t threshold, int64_t *n_kids,
                        int64_t *all_bytes, int64_t *all_count, int64_t *all_numpy,
                        int64_t *small_bytes, int64_t *small_count, int64_t *small_numpy);
/* For each row of a forest whose rows come after their parents (parent[r] < r;
 * -1, -2: none, lost): the first row from r towards the root, r included, whose
 * flag is set, else the end of its chain (-1 or -2). */
void mt_nearest_flagged(const int64_t *parent, const uint8_t *flag, size_t n, int64_t *out);
/* Running sums from the root down a tree whose nodes come after their parents:
 * out[0] = add[0], out[i] = out[parent[i]] + add[i] (depths, with add = 1). */
void mt_tree_sum_down(const int64_t *parent, size_t n, const int64_t *add, int64_t *out);
/* Site values onto their leaf nodes: bytes[leaf[i]] += size[i] (count, numpy
 * likewise), first[leaf[i]] = the least pos[i]; the node arrays (n_nodes each)
 * start at 0 (first at INT64_MAX). */
void mt_tree_leaf_values(const int64_t *leaf, size_t n, const int64_t *size, const int64_t *count,
                         const int64_t *numpy, const int64_t *pos, size_t n_nodes, int64_t *bytes,
                         int64_t *counts, int64_t *numpys, int64_t *first);
/* Subtree totals of a tree whose nodes come after their parents (node 0 the
 * root): each node's values are added to its parent's, first is their minimum. */
void mt_tree_sum_up(const int64_t *parent, size_t n, int64_t *bytes, int64_t *count, int64_t *numpy,
                    int64_t *first);

/* JSON text of lists of non-negative integers, as Python's json.dumps writes
 * them: [[v0, v1], [v2]] with list i being values[starts[i] .. starts[i+1]);
 * out must hold 22 * starts[n] + 4 * n + 2 bytes. Returns the bytes written. */
size_t mt_json_int_lists(const uint64_t *values, const uint64_t *starts, size_t n, char *out);

/* pprof (profile.proto) encoding of many messages at once; each returns the
 * bytes written to out. Values are varints (negative ones as 64-bit two's
 * complement, as protobuf encodes int64); a zero scalar field is left out.
 * Sample (Profile field 2): location ids ids[starts[i] .. starts[i+1]) (packed
 * field 1) and the values (counts[i], sizes[i]) (packed field 2); out must hold
 * 10 * starts[n] + 48 * n bytes. */
size_t mt_pprof_samples(const uint64_t *ids, const uint64_t *starts, size_t n,
                        const int64_t *counts, const int64_t *sizes, uint8_t *out);
/* Location (field 4): id i + 1, one Line {function_id, line}; 48 bytes each at most. */
size_t mt_pprof_locations(const uint64_t *functions, const int64_t *lines, size_t n, uint8_t *out);
/* Function (field 5): id i + 1, name, system_name (= name) and filename string
 * indexes; 48 bytes each at most. */
size_t mt_pprof_functions(const uint64_t *names, const uint64_t *files, size_t n, uint8_t *out);
/* CDEF-END */

#endif /* MT_NATIVE_H */
