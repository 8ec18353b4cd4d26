/* Workload for the glibc-truth oracle self-check (tests/test_oracle_selfcheck.py).
 *
 * Builds a heap with something in every place glibc malloc keeps memory:
 *   - NWORKERS threads (so thread arenas exist), each allocating a few thousand
 *     blocks of mixed sizes and freeing a deterministic subset of them, so that
 *     tcache bins, fastbins, the unsorted bin and small/large bins are populated;
 *   - one "big" thread that keeps BIG_TOTAL bytes live in blocks < 64 KiB, so its
 *     arena grows past HEAP_MAX_SIZE and spans several heap_info heaps
 *     (64 MiB heaps on 64-bit, 1 MiB heaps on i386);
 *   - a few blocks above the mmap threshold (mp_.n_mmaps / mmapped_mem);
 *   - the main thread's own allocations in main_arena (sbrk heap).
 * Every worker then parks on a condition variable (threads stay alive, so
 * their tcache stays attached) and the main thread calls oracle_ready(),
 * a no-inline function to put a breakpoint on.  Without a debugger it
 * prints "READY <pid>" and raises SIGSTOP.
 *
 * Deterministic: a fixed LCG per thread, no timing dependence in what is
 * allocated (only the order in which threads pick arenas can vary).
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NWORKERS 6
#if UINTPTR_MAX > 0xffffffffu
#define BIG_TOTAL (210u << 20) /* > 200 MiB: 4 heaps of 64 MiB */
#else
#define BIG_TOTAL (21u << 20) /* > 20 MiB: 20+ heaps of 1 MiB */
#endif

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int ready_count;
static int release_all;

static volatile void *keep_big_mmapped[4];

static uint32_t lcg(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

static size_t pick_size(uint32_t *s)
{
    uint32_t r = lcg(s) % 100;
    if (r < 45)
        return 1 + lcg(s) % 100;   /* fastbin / tcache range */
    if (r < 80)
        return 100 + lcg(s) % 900; /* small bins */
    if (r < 97)
        return 1000 + lcg(s) % 4000; /* small / large bins */
    return 5000 + lcg(s) % 20000; /* large bins */
}

static void park(void)
{
    pthread_mutex_lock(&mu);
    ready_count++;
    pthread_cond_broadcast(&cv);
    while (!release_all)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static void churn(uint32_t seed, int n, void ***out_live, int *out_n)
{
    uint32_t s = seed;
    void **v = calloc((size_t)n, sizeof(void *));
    for (int i = 0; i < n; i++) {
        v[i] = malloc(pick_size(&s));
        memset(v[i], 0xab, 8);
    }
    /* free every third block */
    for (int i = 0; i < n; i += 3) {
        free(v[i]);
        v[i] = NULL;
    }
    /* free a contiguous run so some chunks coalesce into bigger free chunks */
    for (int i = n / 2; i < n / 2 + 60 && i < n; i++) {
        free(v[i]);
        v[i] = NULL;
    }
    /* a malloc that sorts the unsorted bin into small/large bins, then leave a few
       fresh frees of big blocks in the unsorted bin */
    void *sorter = malloc(30000);
    for (int i = 2; i < n && i < 90; i += 9) {
        if (v[i] != NULL) {
            free(v[i]);
            v[i] = NULL;
        }
    }
    (void)sorter;
    /* last, so no later large request consolidates the fastbins away */
    for (int k = 0; k < 5; k++) {
        /* 12 frees of one small size in a row: 7 fill the tcache bin, 5 go to a fastbin.
           The 'keep' blocks stay live so the freed ones cannot coalesce. */
        size_t sz = 24 + (size_t)k * 16;
        void *a[12];
        for (int j = 0; j < 12; j++) {
            a[j] = malloc(sz);
            void *keep = malloc(sz);
            (void)keep;
        }
        for (int j = 0; j < 12; j++)
            free(a[j]);
    }
    *out_live = v;
    *out_n = n;
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    void **live;
    int n;
    churn(1000u + (uint32_t)id * 7919u, 3000 + id * 300, &live, &n);
    park();
    return live;
}

static void *big_worker(void *arg)
{
    (void)arg;
    uint32_t s = 4242;
    size_t total = 0;
    size_t cap = 16384, n = 0;
    void **v = malloc(cap * sizeof(void *));
    while (total < BIG_TOTAL) {
        size_t sz = 1000 + lcg(&s) % 60000; /* < 64 KiB: never mmapped */
        if (n == cap) {
            cap *= 2;
            v = realloc(v, cap * sizeof(void *));
        }
        v[n] = malloc(sz);
        memset(v[n], 0xcd, 16);
        total += sz;
        n++;
    }
    /* some free chunks inside the older heaps, and some tcache / fastbin entries */
    for (size_t i = 5; i < n; i += 97) {
        free(v[i]);
        v[i] = NULL;
    }
    void *small[20];
    for (int i = 0; i < 20; i++) {
        small[i] = malloc(24 + (size_t)(i % 3) * 16);
        void *keep = malloc(40);
        (void)keep;
    }
    for (int i = 0; i < 20; i++)
        free(small[i]);
    park();
    return v;
}

__attribute__((noinline)) void oracle_ready(void)
{
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    pthread_t th[NWORKERS + 1];
    setvbuf(stdout, NULL, _IONBF, 0);
    /* one arena per thread whatever the core count (i386's default limit is
       4 arenas on 2 cores, and the big thread could land in main_arena) */
    mallopt(M_ARENA_MAX, 16);

    /* main_arena: churn too, plus blocks above the mmap threshold (128 KiB default) */
    /* (the mmapped blocks first: a large request would consolidate the fastbins) */
    keep_big_mmapped[0] = malloc(1u << 20);
    keep_big_mmapped[1] = malloc(300u << 10);
    keep_big_mmapped[2] = malloc(200u << 10);
    void **mlive;
    int mn;
    churn(77u, 2500, &mlive, &mn);

    for (int i = 0; i < NWORKERS; i++)
        pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
    pthread_create(&th[NWORKERS], NULL, big_worker, NULL);

    pthread_mutex_lock(&mu);
    while (ready_count < NWORKERS + 1)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);

    oracle_ready();
    if (getenv("ORACLE_PROG_STOP")) {
        printf("READY %d\n", (int)getpid());
        raise(SIGSTOP);
    }

    pthread_mutex_lock(&mu);
    release_all = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i <= NWORKERS; i++)
        pthread_join(th[i], NULL);
    return 0;
}
