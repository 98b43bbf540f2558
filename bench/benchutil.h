/* The clock and the latency histogram that bench/loadclient.c and bench/publisher.c share.
 * Header-only (static functions), so each tool still builds from one command:
 *     cc -O2 -Wall -o loadclient loadclient.c       (bench/build.sh; bench/run.py rebuilds
 *                                                    when a source or this header is newer) */
#ifndef AIOSRV_BENCHUTIL_H
#define AIOSRV_BENCHUTIL_H

#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define HIST (64 * 64) /* log-scale buckets: 64 per power of two, about 1% wide */

typedef struct {
    long long c[HIST];
    long long n, max, sum; /* count, largest and sum of the values, in ns */
} hist_t;

static inline long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* user + system CPU time of this process */
static inline double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static inline int bucket(long long ns) {
    if (ns < 1) ns = 1;
    int e = 63 - __builtin_clzll((unsigned long long)ns);
    int f = e >= 6 ? (int)((ns >> (e - 6)) & 63) : (int)((ns << (6 - e)) & 63);
    int b = e * 64 + f;
    return b >= HIST ? HIST - 1 : b;
}

static inline double bucket_value(int b) { /* the bucket's middle */
    int e = b / 64, f = b % 64;
    return (double)(1ULL << e) * (1.0 + (f + 0.5) / 64.0);
}

static inline void hadd(hist_t *h, long long ns) {
    if (ns < 0) ns = 0;
    h->c[bucket(ns)]++;
    h->n++;
    h->sum += ns;
    if (ns > h->max) h->max = ns;
}

static inline void hreset(hist_t *h) { memset(h, 0, sizeof *h); }

/* the p-quantile (0..1), never above the largest value seen */
static inline double hpct(const hist_t *h, double p) {
    if (!h->n) return 0;
    long long want = (long long)(p * h->n);
    if (want >= h->n) want = h->n - 1;
    long long seen = 0;
    for (int i = 0; i < HIST; i++) {
        seen += h->c[i];
        if (seen > want) { double v = bucket_value(i); return v > h->max ? h->max : v; }
    }
    return h->max;
}

#endif
