/* stats.c — pymalloc's statistics, for the reconciliation (docs/reconciliation.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "reader.h"
#include "../events.h"

/* Exported by every CPython 3.9-3.15, declared only in internal headers since 3.10. */
extern int _PyObject_DebugMallocStats(FILE *out);

static int stats_pending; /* a pending call is scheduled */

static int format_pymalloc_stats(int reason);

/* Send _PyObject_DebugMallocStats' totals ("key = value" lines) to the collector.
 * Needs the GIL. reason: 0 on request, 1 at exit. Its own allocations (the text
 * buffers) are memtrace's, not the program's: the shim does not record them. */
int mt_send_pymalloc_stats(int reason) {
    if (mt_meta_text_to_shim == NULL || mt_shim_position == NULL || mt_shim_untraced == NULL)
        return -1;
    mt_shim_untraced(1);
    int ret = format_pymalloc_stats(reason);
    mt_shim_untraced(0);
    return ret;
}

static int format_pymalloc_stats(int reason) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return -1;
    int used = _PyObject_DebugMallocStats(f);
    fclose(f);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long cost = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    char head[96];
    int n = snprintf(head, sizeof head, "position=%llu\nreason=%d\npymalloc=%d\ncost_ns=%lld\n",
                     (unsigned long long)mt_shim_position(), reason, used, cost);
    /* Keep the totals (lines with '='), not the per-size-class table. */
    size_t out_len = 0;
    char *out = malloc(len + sizeof head);
    if (out == NULL) {
        free(buf);
        return -1;
    }
    memcpy(out, head, (size_t)n);
    out_len = (size_t)n;
    for (char *line = buf; line && *line;) {
        char *end = strchr(line, '\n');
        size_t line_len = end ? (size_t)(end - line) : strlen(line);
        if (memchr(line, '=', line_len) && strncmp(line, "Small block threshold", 21) != 0) {
            memcpy(out + out_len, line, line_len);
            out_len += line_len;
            out[out_len++] = '\n';
        }
        line = end ? end + 1 : NULL;
    }
    mt_meta_text_to_shim(MT_TEXT_PYMALLOC, out, out_len);
    free(out);
    free(buf);
    return 0;
}

static int pending_stats(void *arg) {
    stats_pending = 0;
    mt_send_pymalloc_stats(0);
    mt_census_if_due(); /* (the collector asks for a census with pymalloc's statistics) */
    return 0;
}

/* From inside an allocation hook, any thread, maybe without the GIL: only schedule. */
void mt_request_stats(void) {
    if (__atomic_exchange_n(&stats_pending, 1, __ATOMIC_ACQ_REL) == 0 &&
        Py_AddPendingCall(pending_stats, NULL) != 0)
        __atomic_store_n(&stats_pending, 0, __ATOMIC_RELEASE);
}
