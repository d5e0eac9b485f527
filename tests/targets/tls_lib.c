/* A library with a big block of dynamic (general-dynamic) TLS: every thread that
 * touches it makes the loader allocate its TLS block with malloc, and dlclose frees
 * it (tests/reliability/test_tls.py). */
__thread char big_tls[256 * 1024];

int touch_tls(int v) {
    big_tls[v % sizeof big_tls] = (char)v;
    big_tls[0] += (char)v;
    return big_tls[0];
}
