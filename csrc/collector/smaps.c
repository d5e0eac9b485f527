/* smaps.c — parsing /proc/PID/smaps (mt_parse_smaps).
 *
 * Parsed here because a snapshot near the heap peak must be quick: a big
 * process's smaps is thousands of lines. A mapping's header line starts with
 * its lower-case hex start address; its fields ("Rss:   12 kB") with a capital. */

#include "native.h"

#include <string.h>

static uint64_t parse_hex(const char **p, const char *end) {
    uint64_t v = 0;
    for (; *p < end; (*p)++) {
        char c = **p;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            break;
        v = v * 16 + (uint64_t)d;
    }
    return v;
}

static const char *skip_field(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (p < end && *p != ' ' && *p != '\t')
        p++;
    return p;
}

static uint64_t field_kib(const char *p, const char *end) {
    while (p < end && (*p < '0' || *p > '9'))
        p++;
    uint64_t v = 0;
    for (; p < end && *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (uint64_t)(*p - '0');
    return v * 1024;
}

static int starts_with(const char *p, const char *end, const char *key) {
    size_t n = strlen(key);
    return (size_t)(end - p) >= n && memcmp(p, key, n) == 0;
}

size_t mt_parse_smaps(const char *text, size_t len, mt_vma *out, size_t max) {
    const char *p = text, *end = text + len;
    size_t n = 0;
    mt_vma *cur = NULL, spare;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        char c = *p;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
            cur = n < max ? &out[n] : &spare;
            n++;
            memset(cur, 0, sizeof *cur);
            const char *q = p;
            cur->start = parse_hex(&q, eol);
            if (q < eol && *q == '-')
                q++;
            cur->end = parse_hex(&q, eol);
            while (q < eol && *q == ' ')
                q++;
            for (int i = 0; i < 7 && q < eol && *q != ' '; i++)
                cur->perms[i] = *q++;
            for (int i = 0; i < 3; i++) /* offset, device, inode */
                q = skip_field(q, eol);
            while (q < eol && (*q == ' ' || *q == '\t'))
                q++;
            cur->path_at = (uint32_t)(q - text);
            cur->path_len = (uint32_t)(eol - q);
        } else if (cur != NULL) {
            if (starts_with(p, eol, "Rss:"))
                cur->rss = field_kib(p + 4, eol);
            else if (starts_with(p, eol, "Anonymous:"))
                cur->anon = field_kib(p + 10, eol);
            else if (starts_with(p, eol, "Swap:"))
                cur->swap = field_kib(p + 5, eol);
        }
        p = eol + 1;
    }
    return n;
}
