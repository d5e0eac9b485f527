/* 16 threads touch 1 MiB of their stacks each, then park on a condition variable;
 * main exits while they are parked. tests/integration/test_reconcile.py checks the
 * stacks row. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 16
#define TOUCH (1 << 20)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int ready;

static void *park(void *arg) {
    volatile char buf[TOUCH];
    memset((char *)buf, 1, sizeof buf);
    pthread_mutex_lock(&lock);
    ready++;
    pthread_cond_broadcast(&cond);
    while (1)
        pthread_cond_wait(&cond, &lock); /* parked for good */
    return (void *)buf[0];
}

int main(void) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 4 * TOUCH);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], &attr, park, NULL);
    pthread_mutex_lock(&lock);
    while (ready < THREADS)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    printf("parked %d\n", ready);
    fflush(stdout);
    exit(0);
}
