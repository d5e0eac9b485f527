/* events.h — the one definition of memtrace's wire format.
 *
 * Included by the shim (csrc/shim/) and by the collector's C helpers
 * (csrc/collector/). What lies between the CDEF markers below is read by cffi
 * (src/tracer/_build_ffi.py), so the Python side takes every constant and
 * layout from here (tracer._format builds on lib.MT_* and ffi.offsetof), and
 * tests/unit/test_wire_format.py fails if C and Python ever disagree. Only what
 * cffi parses goes inside: integer #defines, enums, fixed-size structs.
 *
 * Transport (per traced process):
 *   The shim creates a memfd holding one mt_shm: a header, an event ring and a
 *   metadata byte ring. It connects to the collector's Unix socket, sends an
 *   mt_hello with the memfd attached (SCM_RIGHTS) and closes the socket. From
 *   then on nothing crosses a file descriptor: events are written into shared
 *   memory, so the hot path makes no system call, and whatever was committed
 *   before the target died (SIGKILL, _exit, a crash) is already in the
 *   collector's mapping.
 *
 * Event ring (a bounded multi-producer single-consumer queue):
 *   A producer claims slot positions with one atomic fetch-add on `head`, waits
 *   until the slot is free for this lap (pos - tail < ring_slots), fills it,
 *   then publishes it by storing seq = (uint32)(pos + 1) with release order.
 *   The consumer reads slot[tail % n] while its seq == (uint32)(tail + 1) and
 *   then advances `tail` once per batch; it never writes to the slots, so ring
 *   cache lines only move from producers to the consumer. The claim order is
 *   the order events happened in: a free is claimed before the real free
 *   runs, an allocation after the real malloc returned, so an address is never
 *   seen reused before it was seen freed.
 *
 * Event (32 bytes, little-endian, native alignment):
 *
 *    0       8       16      20      24  26 27 28      32
 *    +-------+-------+-------+-------+---+--+--+-------+
 *    | addr  | size  | stack |  tid  |lib|kd|fl|  seq  |
 *    +-------+-------+-------+-------+---+--+--+-------+
 *
 *   stack: interned Python stack node id, 0 when the thread had no Python frame.
 *   lib:   id of the shared object that called the hooked function (0 unknown).
 *
 * Metadata ring: records of [u16 type][u16 length of payload][payload], each
 * padded to 4 bytes, written under a spin lock (rare: once per new code
 * object, stack node, library or thread) and read by the collector.
 *
 * Regions (tracer.region): a MT_REGION event marks where a thread enters
 * (size 1) or leaves (size 0) region `addr` (its id, named once by a
 * MT_META_REGION record). It takes a ring slot like any event, so it is placed
 * exactly among the thread's allocations and frees.
 *
 * Questions (mt_shm_header.ask_*): the program may ask the collector about its
 * open region (a thread takes ask_lock, fills the question, publishes ask_seq
 * and waits for answer_seq to equal it). The collector answers once it has
 * aggregated every event claimed before the question, with JSON text in the
 * answer area; the shim never aggregates anything itself.
 */
#ifndef MT_EVENTS_H
#define MT_EVENTS_H

#include <stdint.h>

#define MT_SHM_MAGIC "MTSHM001"

/* CDEF-BEGIN */
#define MT_WIRE_VERSION 2
#define MT_HELLO_MAGIC 0x4d54484c /* "MTHL" */

/* Event kinds. Allocation kinds first: the collector uses kind <= MT_LAST_ALLOC. */
enum mt_kind {
    MT_NONE = 0, /* a claimed slot whose call failed: skip */
    MT_MALLOC = 1,
    MT_CALLOC = 2,
    MT_REALLOC = 3, /* the new block of a realloc (its old block: a MT_FREE before) */
    MT_REALLOCARRAY = 4,
    MT_POSIX_MEMALIGN = 5,
    MT_ALIGNED_ALLOC = 6,
    MT_MEMALIGN = 7,
    MT_VALLOC = 8,
    MT_PVALLOC = 9,
    MT_LAST_ALLOC = 9,
    MT_FREE = 10,
    MT_MMAP = 11,   /* a new mapping [addr, addr + size) */
    MT_MUNMAP = 12, /* unmap [addr, addr + size): may cut or span mappings */
    MT_MREMAP = 13, /* the new mapping of an mremap (old one: a MT_MUNMAP just before) */
    MT_REGION = 14, /* the thread enters (size 1) or leaves (size 0) region addr */
    MT_KIND_COUNT = 15
};

/* Event flags. */
#define MT_FLAG_NUMPY 0x01  /* NumPy array data (its data-memory handler made this call) */
#define MT_FLAG_ANON 0x02   /* mmap: anonymous mapping (not file-backed) */
#define MT_FLAG_REMAP 0x04  /* free/munmap half of a realloc/mremap pair */
#define MT_FLAG_SHARED 0x08 /* mmap: MAP_SHARED */
#define MT_FLAG_SAMPLED                                                                            \
    0x10 /* kept by --sample-rate: size is real, weight it (docs/capture-format.md) */
#define MT_FLAG_KEEP 0x20 /* munmap half of an mremap(MREMAP_DONTUNMAP): the old range stays */

typedef struct mt_event {
    uint64_t addr;
    uint64_t size;
    uint32_t stack;
    uint32_t tid;
    uint16_t lib;
    uint8_t kind;
    uint8_t flags;
    uint32_t seq;
} mt_event;

/* Metadata record types; each payload is one of the mt_meta_* structs below,
 * followed by its bytes (names, paths, text). */
enum mt_meta_type {
    MT_META_CODE = 1,
    MT_META_NODE = 2,
    MT_META_LIB = 3,
    MT_META_THREAD = 4,
    MT_META_TEXT = 5,
    MT_META_HEAPSTATS = 6, /* glibc's statistics, asked for by the collector */
    MT_META_REGION = 7     /* names a region id, once per id in a stream */
};

/* Each metadata record: this header, the payload, zero bytes up to a multiple of 4. */
typedef struct mt_meta_header {
    uint16_t type;   /* mt_meta_type */
    uint16_t length; /* of the payload */
} mt_meta_header;

/* Metadata payloads (little-endian, natural alignment: no padding inside). */
typedef struct mt_code_payload { /* then file_len bytes of file name, name_len of function */
    uint32_t code_id;
    int32_t firstlineno;
    uint16_t file_len;
    uint16_t name_len;
} mt_code_payload;

typedef struct mt_node_payload { /* one stack node: a frame and its caller's node */
    uint32_t node_id;
    uint32_t parent_id;
    uint32_t code_id;
    int32_t line;
} mt_node_payload;

typedef struct mt_lib_payload { /* then the shared object's path */
    uint16_t lib_id;
    uint16_t pad;
    uint32_t pad2;
    uint64_t base;
} mt_lib_payload;

typedef struct mt_thread_payload { /* then the thread's name */
    uint32_t tid;
} mt_thread_payload;

typedef struct mt_text_payload { /* then the text (UTF-8) */
    uint16_t key;                /* mt_text_key */
} mt_text_payload;

typedef struct mt_region_payload { /* then the region's name (UTF-8) */
    uint32_t region_id;
    uint32_t region_kind; /* mt_region_kind */
} mt_region_payload;

typedef struct mt_heapstats_payload {
    uint64_t position; /* events claimed when the statistics were read */
    uint32_t reason;   /* mt_stats_reason */
    uint32_t cost_ns;  /* what reading them cost the program, saturated */
    /* glibc's mallinfo2, field by field */
    uint64_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
} mt_heapstats_payload;

/* Who opened a region (reports list tests and notebook cells apart). */
enum mt_region_kind {
    MT_REGION_KIND_USER = 0,
    MT_REGION_KIND_TEST = 1,
    MT_REGION_KIND_CELL = 2,
    MT_REGION_KIND_TASK = 3 /* a task of a Dask worker (tracer.cluster) */
};

/* What the program asks about a region (mt_shm_header.ask_what). */
enum mt_ask {
    MT_ASK_USAGE = 1,     /* {"found", "open", "live", "peak", "allocated", ...} */
    MT_ASK_AT_PEAK = 2,   /* the same, with the lines holding the region's peak */
    MT_ASK_LIVE = 3,      /* the same, with the lines holding what is live in it now */
    MT_ASK_CHECKPOINT = 4 /* write the process's aggregate and regions to the capture now:
                             {"capture": path} (a notebook reads its own capture) */
};

enum mt_stats_reason { MT_STATS_REQUESTED = 0, MT_STATS_EXIT = 1 };

enum mt_text_key {
    MT_TEXT_PYTHON_VERSION = 1, /* e.g. "3.11.7": frames are being recorded */
    MT_TEXT_FRAMES_OFF = 2,     /* why this Python process has no frames */
    MT_TEXT_NUMPY = 3,          /* NumPy version whose data handler is labelled */
    MT_TEXT_WARNING = 4,
    MT_TEXT_LIBRARY_PATHS = 5, /* newline-separated folders of the stdlib and installed packages */
    MT_TEXT_ARGV = 6,          /* /proc/self/cmdline at the stream's start (NUL-separated) */
    MT_TEXT_EXE = 7,           /* /proc/self/exe */
    MT_TEXT_PYMALLOC = 8, /* "position=N reason=R key=value ..." from _PyObject_DebugMallocStats */
    MT_TEXT_TRACER_RANGES = 9, /* "start-end" lines: memory the shim itself mapped */
    MT_TEXT_SAMPLE_RATE = 10,  /* decimal bytes: this stream is sampled (--sample-rate) */
    MT_TEXT_STACKS = 11,       /* how Python stacks are read: pinned frames or whole walks */
    MT_TEXT_CENSUS = 12,       /* JSON: a census of live Python objects (--objects) */
    MT_TEXT_CENSUS_LINES = 13, /* JSON, written by the collector: a census's blocks joined with
                                  the live table (the allocating sites) */
    MT_TEXT_CLUSTER = 14       /* JSON, from a cluster engine's integration (tracer.cluster):
                                  the worker's labels, and the engine's own memory numbers */
};

/* Process states (mt_shm_header.state). */
enum mt_state {
    MT_STATE_RUNNING = 0,
    MT_STATE_EXITED = 1,   /* exit() ran the shim's destructor */
    MT_STATE_DISABLED = 2, /* the shim stopped tracing (collector gone) */
    MT_STATE_EXITING = 3   /* exit() is running the shim's destructor; waits for exit_ack */
};

/* First message on the socket, with the memfd attached. */
typedef struct mt_hello {
    uint32_t magic;
    uint32_t version;
    uint32_t pid;
    uint32_t ppid;
    uint64_t shm_size;
} mt_hello;
/* CDEF-END */

#define MT_CACHELINE 64

typedef struct mt_shm_header {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint32_t ring_slots;  /* a power of two */
    uint32_t meta_bytes;  /* a power of two */
    uint64_t ring_offset; /* from the start of the mapping */
    uint64_t meta_offset;
    uint32_t pid;
    uint32_t ppid;
    uint32_t state;          /* mt_state */
    uint32_t exit_ack;       /* set by the collector once it has seen the exiting process */
    uint32_t stats_request;  /* bumped by the collector: send heap statistics */
    uint32_t python_request; /* bumped by the collector: send pymalloc statistics too */
    /* Producers. */
    uint64_t head;        /* next event position to claim */
    uint32_t forks;       /* children forked (counted in the parent after fork()) */
    uint32_t exit_status; /* 0x100 | status once exit()/_exit()/_Exit() was called */
    char pad2[MT_CACHELINE - 16];
    /* Consumer. */
    uint64_t tail;      /* next event position to read */
    uint64_t heartbeat; /* bumped by the collector on every drain */
    char pad3[MT_CACHELINE - 16];
    /* Metadata ring. */
    uint64_t meta_head; /* bytes committed */
    uint64_t meta_tail; /* bytes consumed */
    uint32_t meta_lock;
    uint32_t pad4;
    /* Counters the shim keeps for the report. */
    uint64_t dropped;      /* events not recorded (stream lost) */
    uint64_t unattributed; /* events whose stack could not be interned (tables full) */
    uint64_t reentrant;    /* calls not recorded: made while the thread was inside a hook
                              (a signal handler interrupting one) */
    uint32_t stats_served; /* last stats_request answered (claimed by CAS) */
    uint32_t python_served;
    uint64_t stats_cost_ns; /* how long the last heap statistics took in the target */
    char pad5[MT_CACHELINE - 64];
    /* Questions about regions (see above). ask_* are written by the asking thread
     * under ask_lock; answer_* by the collector. */
    uint32_t ask_lock;
    uint32_t ask_seq;       /* published (release) once the question is filled */
    uint32_t ask_what;      /* mt_ask */
    uint32_t ask_tid;       /* the asking thread */
    uint32_t ask_region;    /* region id (0: the thread's innermost open region) */
    uint32_t answer_seq;    /* = ask_seq once answered (release) */
    uint64_t ask_position;  /* events claimed when asked: the answer covers them all */
    uint64_t answer_offset; /* the answer area, from the start of the mapping */
    uint32_t answer_bytes;
    uint32_t answer_len; /* bytes of JSON text in the last answer */
    char pad6[2 * MT_CACHELINE - 48];
    /* Object census (--objects): the collector bumps census_request (with a python
     * request); the target claims it (census_served), writes a MT_TEXT_CENSUS record,
     * bumps census_sent and waits, holding the GIL, for census_ack == census_sent: the
     * collector has then drained every event before it and joined its blocks. */
    uint32_t census_request;
    uint32_t census_served;
    uint32_t census_sent;
    uint32_t census_ack;
    char pad7[MT_CACHELINE - 16];
} mt_shm_header;

#endif /* MT_EVENTS_H */
