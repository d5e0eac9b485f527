// thread_teardown THREADS — short threads whose teardown allocates (Fil #99, memray
// test_valloc_at_thread_exit, jemalloc test_tsd_reincarnation).
//
// Each thread: malloc(1111) + free in its body; a pthread key whose value is
// malloc(2222) and whose destructor frees it and does malloc(2223) + free; a C++
// thread_local object whose destructor does malloc(3333) + free. Threads run 8 at
// a time. Prints "anon_after_1000 R1 anon_after_all R2 threads N" (RssAnon: private
// memory; the shim's ring is shared memory, whose touched pages VmRSS would count).
#include <pthread.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>

static pthread_key_t key;

static void key_destructor(void *value) {
    free(value);
    free(malloc(2223));
}

struct Late {
    int touched = 0;
    ~Late() { free(malloc(3333)); }
};
static thread_local Late late;

static void *body(void *) {
    late.touched = 1;  // constructs the thread_local: its destructor is registered
    free(malloc(1111));
    pthread_setspecific(key, malloc(2222));
    return nullptr;
}

static long rss() {
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "RssAnon:", 8))
            kb = atol(line + 8);
    fclose(f);
    return kb * 1024;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000;
    pthread_key_create(&key, key_destructor);
    long r1 = 0;
    for (long i = 0; i < n; i += 8) {
        pthread_t t[8];
        for (int j = 0; j < 8; j++)
            pthread_create(&t[j], nullptr, body, nullptr);
        for (int j = 0; j < 8; j++)
            pthread_join(t[j], nullptr);
        if (i + 8 == 1000)
            r1 = rss();
    }
    printf("anon_after_1000 %ld anon_after_all %ld threads %ld\n", r1, rss(), n);
    return 0;
}
