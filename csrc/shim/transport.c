/* transport.c — shared-memory stream from the shim to the collector.
 *
 * Everything here runs inside the traced process with the reentrancy guard
 * held: it never allocates, never uses stdio, and saves errno where a system
 * call could change it (the callers do that around the hook).
 */
#define _GNU_SOURCE
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MT_DEFAULT_RING_SLOTS (1u << 18) /* 8 MiB of events */
#define MT_META_BYTES (1u << 20)
#define MT_ANSWER_BYTES (1u << 16) /* the collector's answers about regions (JSON) */
#define MT_SPINS_BEFORE_SLEEP 2000
#define MT_LIVENESS_CHECK_NS (200 * 1000 * 1000LL)

mt_shm_header *mt_stream;

_Static_assert(sizeof(mt_shm_header) == 7 * MT_CACHELINE, "mt_shm_header is seven cache lines");

/* Read once from the environment at first init and reused after fork, so a
 * program that edits its environment cannot cut its children off. */
static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static pid_t collector_pid;
static uint64_t
    collector_start; /* its start time (/proc/PID/stat field 22): a reused pid differs */
static uint32_t ring_slots = MT_DEFAULT_RING_SLOTS;
static size_t stream_size;

/* A recent value of h->tail, private to this process: re-reading the shared
 * tail (a cache line the collector writes on every drain) only when the ring
 * looks full keeps it off the hot path. Any value read from tail is a lower
 * bound of the current one, so a stale copy only makes the check stricter. */
uint64_t mt_tail_seen;

void *mt_sys_mmap(size_t len) {
    void *p = (void *)syscall(SYS_mmap, NULL, len, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void mt_sys_munmap(void *p, size_t len) {
    syscall(SYS_munmap, p, len);
}

/* State letter and start time of a process from /proc/PID/stat, with raw system
 * calls and no allocation ('\0' if it cannot be read: the process is gone). */
static char proc_state(pid_t pid, uint64_t *start) {
    char path[32] = "/proc/", digits[12], buf[512];
    int n = 0, len = 6;
    do
        digits[n++] = (char)('0' + pid % 10);
    while ((pid /= 10) && n < 11);
    while (n)
        path[len++] = digits[--n];
    memcpy(path + len, "/stat", 6);
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return '\0';
    ssize_t got = syscall(SYS_read, fd, buf, sizeof buf - 1);
    syscall(SYS_close, fd);
    if (got <= 0)
        return '\0';
    buf[got] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (p == NULL || p[1] != ' ')
        return '\0';
    char state = p[2];
    /* start time: the 20th field after the state */
    for (int field = 0; field < 19 && p; field++)
        p = strchr(p + 1, ' ');
    p = p ? strchr(p + 1, ' ') : NULL;
    *start = p ? strtoull(p + 1, NULL, 10) : 0;
    return state;
}

/* Is the collector gone? A dead collector that its parent has not reaped yet
 * is a zombie: kill(pid, 0) still succeeds on it, so the state decides. */
static int collector_gone(void) {
    if (collector_pid <= 0)
        return 0;
    uint64_t start = 0;
    char state = proc_state(collector_pid, &start);
    return state == '\0' || state == 'Z' || state == 'X' ||
           (collector_start && start != collector_start);
}

static int read_config(void) {
    const char *path = getenv("MEMTRACE_SOCKET");
    if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof(socket_path))
        return MT_ERR;
    strcpy(socket_path, path);
    const char *pid = getenv("MEMTRACE_COLLECTOR_PID");
    collector_pid = pid ? (pid_t)strtol(pid, NULL, 10) : 0;
    if (collector_pid > 0)
        proc_state(collector_pid, &collector_start);
    const char *slots = getenv("MEMTRACE_RING_SLOTS");
    if (slots) {
        unsigned long n = strtoul(slots, NULL, 10);
        if (n >= 64 && n <= (1ul << 26) && (n & (n - 1)) == 0)
            ring_slots = (uint32_t)n;
    }
    return MT_OK;
}

/* The stream's parent: the forking process's pid (a child forked just before
 * its parent exits is re-parented before it connects; getppid() would say 1). */
static pid_t parent_pid;

/* A socket connected to the collector (flags: extra socket() type flags), or -1. */
static int connect_collector(int flags) {
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
    if (sock < 0)
        return -1;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, socket_path);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(sock);
        return -1;
    }
    return sock;
}

static int send_hello(int memfd) {
    int ret = MT_ERR;
    int sock = connect_collector(0);
    if (sock < 0)
        return MT_ERR;

    mt_hello hello = {MT_HELLO_MAGIC, MT_WIRE_VERSION, (uint32_t)getpid(), (uint32_t)parent_pid,
                      stream_size};
    struct iovec iov = {&hello, sizeof hello};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &memfd, sizeof(int));
    ssize_t n;
    do {
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof hello)
        goto error;
    ret = MT_OK;
error:
    close(sock);
    return ret;
}

/* The process's argv and executable, sent first: the collector may accept the
 * connection only after a short-lived process is gone from /proc. */
static void send_identity(mt_shm_header *h) {
    static char buf[16384]; /* init and fork-child only: one thread at a time */
    uint16_t key = MT_TEXT_ARGV;
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n, total = 0;
        while (total < (ssize_t)sizeof buf &&
               (n = read(fd, buf + total, sizeof buf - (size_t)total)) > 0)
            total += n;
        close(fd);
        mt_meta_write(h, MT_META_TEXT, &key, sizeof key, buf, (size_t)total);
    }
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf);
    if (n > 0) {
        key = MT_TEXT_EXE;
        mt_meta_write(h, MT_META_TEXT, &key, sizeof key, buf, (size_t)n);
    }
}

static int open_stream(void) {
    int ret = MT_ERR;
    uint32_t header = sizeof(mt_shm_header);
    stream_size = header + MT_ANSWER_BYTES + (size_t)ring_slots * sizeof(mt_event) + MT_META_BYTES;
    int fd = (int)syscall(SYS_memfd_create, "memtrace", MFD_CLOEXEC);
    if (fd < 0)
        return MT_ERR;
    if (ftruncate(fd, (off_t)stream_size) < 0)
        goto error;
    mt_shm_header *h = (mt_shm_header *)syscall(SYS_mmap, NULL, stream_size, PROT_READ | PROT_WRITE,
                                                MAP_SHARED, fd, 0);
    if ((void *)h == MAP_FAILED)
        goto error;
    memcpy(h->magic, MT_SHM_MAGIC, 8);
    h->version = MT_WIRE_VERSION;
    h->header_size = header;
    h->ring_slots = ring_slots;
    h->meta_bytes = MT_META_BYTES;
    h->answer_offset = header;
    h->answer_bytes = MT_ANSWER_BYTES;
    h->ring_offset = header + MT_ANSWER_BYTES;
    h->meta_offset = h->ring_offset + (uint64_t)ring_slots * sizeof(mt_event);
    h->pid = (uint32_t)getpid();
    h->ppid = (uint32_t)parent_pid;
    /* Slots start with seq 0, which no position's commit value (pos + 1) equals
     * on the first lap. */
    send_identity(h);
    if (send_hello(fd) != MT_OK) {
        mt_sys_munmap(h, stream_size);
        goto error;
    }
    __atomic_store_n(&mt_stream, h, __ATOMIC_RELEASE);
    ret = MT_OK;
error:
    close(fd);
    return ret;
}

int mt_transport_open(void) {
    if (read_config() != MT_OK)
        return MT_ERR;
    parent_pid = getppid();
    return open_stream();
}

void mt_transport_after_fork_child(void) {
    mt_shm_header *parent = mt_stream;
    mt_stream = NULL;
    mt_tail_seen = 0;
    if (parent == NULL)
        return;
    parent_pid = (pid_t)parent->pid;
    /* The parent's ring is shared memory: the child must never write to it. */
    mt_sys_munmap(parent, stream_size);
    open_stream();
}

#define MT_EXIT_WAIT_MS 250

/* Wake a collector waiting between rounds: a connection that sends nothing
 * (it is accepted, then dropped). Never blocks; a failure only costs latency. */
void mt_transport_wake(void) {
    int sock = connect_collector(SOCK_NONBLOCK);
    if (sock >= 0)
        close(sock);
}

void mt_transport_exit_handshake(void) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return;
    int saved = errno;
    if (__atomic_load_n(&h->state, __ATOMIC_RELAXED) == MT_STATE_RUNNING) {
        __atomic_store_n(&h->state, MT_STATE_EXITING, __ATOMIC_RELEASE);
        mt_transport_wake();
        for (int ms = 0; ms < MT_EXIT_WAIT_MS && !__atomic_load_n(&h->exit_ack, __ATOMIC_ACQUIRE);
             ms++) {
            struct timespec pause = {0, 1000 * 1000};
            nanosleep(&pause, NULL);
        }
    }
    /* Still recording what teardown frees; EXITED only marks that exit() ran. */
    if (__atomic_load_n(&h->state, __ATOMIC_RELAXED) != MT_STATE_DISABLED)
        __atomic_store_n(&h->state, MT_STATE_EXITED, __ATOMIC_RELEASE);
    errno = saved;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int mt_transport_ask(mt_shm_header *h, uint32_t what, uint32_t tid, uint32_t region, char *out,
                     size_t cap, uint32_t timeout_ms) {
    int saved = errno;
    int ret = -1;
    while (__atomic_exchange_n(&h->ask_lock, 1, __ATOMIC_ACQUIRE)) {
        struct timespec pause = {0, 20 * 1000};
        nanosleep(&pause, NULL);
    }
    uint32_t seq = h->ask_seq + 1;
    h->ask_what = what;
    h->ask_tid = tid;
    h->ask_region = region;
    h->ask_position = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
    __atomic_store_n(&h->ask_seq, seq, __ATOMIC_RELEASE);
    mt_transport_wake();
    int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000LL;
    int64_t next_check = now_ns() + MT_LIVENESS_CHECK_NS;
    while (__atomic_load_n(&h->answer_seq, __ATOMIC_ACQUIRE) != seq) {
        struct timespec pause = {0, 50 * 1000};
        nanosleep(&pause, NULL);
        int64_t t = now_ns();
        if (t > deadline || __atomic_load_n(&h->state, __ATOMIC_RELAXED) == MT_STATE_DISABLED)
            goto error;
        if (t >= next_check) {
            next_check = t + MT_LIVENESS_CHECK_NS;
            if (collector_gone())
                goto error;
        }
    }
    size_t len = __atomic_load_n(&h->answer_len, __ATOMIC_RELAXED);
    if (len > h->answer_bytes)
        len = h->answer_bytes;
    if (len > cap)
        len = cap;
    memcpy(out, (const char *)h + h->answer_offset, len);
    ret = (int)len;
error:
    __atomic_store_n(&h->ask_lock, 0, __ATOMIC_RELEASE);
    errno = saved;
    return ret;
}

/* A census the collector asked for and nobody has claimed yet: claim it (1) or not (0). */
int mt_transport_census_due(void) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return 0;
    uint32_t want = __atomic_load_n(&h->census_request, __ATOMIC_ACQUIRE);
    uint32_t served = __atomic_load_n(&h->census_served, __ATOMIC_RELAXED);
    return served != want && __atomic_compare_exchange_n(&h->census_served, &served, want, 0,
                                                         __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

#define MT_CENSUS_WAIT_MS 1000

/* A census record is in the metadata ring: wait until the collector has drained
 * every event before it and joined its blocks with the live table. The caller
 * holds the GIL, so no object of the census can be freed meanwhile (the join is
 * exact); a collector that does not answer within a second is not waited for. */
void mt_transport_census_sent(void) {
    mt_shm_header *h = mt_stream;
    if (h == NULL)
        return;
    int saved = errno;
    uint32_t sent = __atomic_add_fetch(&h->census_sent, 1, __ATOMIC_RELEASE);
    mt_transport_wake();
    for (int ms = 0;
         ms < MT_CENSUS_WAIT_MS && __atomic_load_n(&h->census_ack, __ATOMIC_ACQUIRE) != sent &&
         __atomic_load_n(&h->state, __ATOMIC_RELAXED) != MT_STATE_DISABLED;
         ms++) {
        struct timespec pause = {0, 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    errno = saved;
}

uint64_t mt_ring_claim(mt_shm_header *h, uint32_t n) {
    if (__atomic_load_n(&h->state, __ATOMIC_RELAXED) == MT_STATE_DISABLED) {
        __atomic_fetch_add(&h->dropped, n, __ATOMIC_RELAXED);
        return UINT64_MAX;
    }
    return __atomic_fetch_add(&h->head, n, __ATOMIC_RELAXED);
}

/* The ring is full: the collector is behind. Block (backpressure, never
 * silent loss) until it catches up; give up only if it is gone. */
static int wait_for_room(mt_shm_header *h, uint64_t pos) {
    int saved = errno;
    int64_t next_check = now_ns() + MT_LIVENESS_CHECK_NS;
    uint64_t beat = __atomic_load_n(&h->heartbeat, __ATOMIC_RELAXED);
    for (unsigned spins = 0;; spins++) {
        if (pos - __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE) < h->ring_slots)
            break;
        if (__atomic_load_n(&h->state, __ATOMIC_RELAXED) == MT_STATE_DISABLED) {
            errno = saved;
            return MT_ERR;
        }
        if (spins < MT_SPINS_BEFORE_SLEEP) {
            __builtin_ia32_pause();
            continue;
        }
        struct timespec pause = {0, 50 * 1000};
        nanosleep(&pause, NULL);
        int64_t t = now_ns();
        if (t < next_check)
            continue;
        next_check = t + MT_LIVENESS_CHECK_NS;
        uint64_t b = __atomic_load_n(&h->heartbeat, __ATOMIC_RELAXED);
        if (b != beat) {
            beat = b;
            continue;
        }
        if (collector_gone()) {
            __atomic_store_n(&h->state, MT_STATE_DISABLED, __ATOMIC_RELEASE);
            errno = saved;
            return MT_ERR;
        }
    }
    errno = saved;
    return MT_OK;
}

mt_event *mt_ring_slot_wait(mt_shm_header *h, uint64_t pos) {
    uint64_t tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
    if (pos - tail >= h->ring_slots && wait_for_room(h, pos) != MT_OK) {
        __atomic_fetch_add(&h->dropped, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    __atomic_store_n(&mt_tail_seen, __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE), __ATOMIC_RELAXED);
    return mt_ring_at(h, pos);
}

static void meta_lock(mt_shm_header *h) {
    while (__atomic_exchange_n(&h->meta_lock, 1, __ATOMIC_ACQUIRE))
        __builtin_ia32_pause();
}

static void meta_unlock(mt_shm_header *h) {
    __atomic_store_n(&h->meta_lock, 0, __ATOMIC_RELEASE);
}

static void meta_copy(mt_shm_header *h, uint64_t at, const void *src, size_t len) {
    char *ring = (char *)h + h->meta_offset;
    uint64_t mask = h->meta_bytes - 1;
    size_t first = h->meta_bytes - (size_t)(at & mask);
    if (first > len)
        first = len;
    memcpy(ring + (at & mask), src, first);
    memcpy(ring, (const char *)src + first, len - first);
}

void mt_meta_write(mt_shm_header *h, uint16_t type, const void *a, size_t alen, const void *b,
                   size_t blen) {
    size_t payload = alen + blen;
    if (payload > 0xffff - sizeof(mt_meta_header))
        payload = blen = 0xffff - sizeof(mt_meta_header) - alen;
    size_t total = (sizeof(mt_meta_header) + payload + 3) & ~(size_t)3;
    mt_meta_header head = {type, (uint16_t)payload};
    static const char zeros[4];
    meta_lock(h);
    uint64_t at = h->meta_head;
    /* Wait for room; same liveness rule as the event ring. */
    while (at + total - __atomic_load_n(&h->meta_tail, __ATOMIC_ACQUIRE) > h->meta_bytes) {
        if (__atomic_load_n(&h->state, __ATOMIC_RELAXED) == MT_STATE_DISABLED || collector_gone()) {
            __atomic_store_n(&h->state, MT_STATE_DISABLED, __ATOMIC_RELEASE);
            meta_unlock(h);
            return;
        }
        struct timespec pause = {0, 100 * 1000};
        nanosleep(&pause, NULL);
    }
    meta_copy(h, at, &head, sizeof head);
    meta_copy(h, at + sizeof head, a, alen);
    meta_copy(h, at + sizeof head + alen, b, blen);
    meta_copy(h, at + sizeof head + payload, zeros, total - sizeof head - payload);
    __atomic_store_n(&h->meta_head, at + total, __ATOMIC_RELEASE);
    meta_unlock(h);
}
