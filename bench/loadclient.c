/*
 * loadclient: many WebSocket subscribers in one epoll thread, for bench/.
 *
 * Opens N connections to ws://HOST:PORT/PATH, sends one subscribe text frame
 * on each, then reads frames until the duration ends, answering pings. For
 * each data frame it finds "t":<CLOCK_MONOTONIC ns> and "n":<number> in the
 * payload (put there by the publisher) to record publish-to-receive latency
 * and per-connection gaps. Prints one JSON object at the end.
 *
 *   cc -O2 -o bench/loadclient bench/loadclient.c
 *   bench/loadclient -p 8765 -n 1000 -d 10 -s '{"action":"subscribe","payload":{"types":["bench"]}}'
 *   bench/loadclient --ceiling     # the client's own parse rate, no sockets
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 262144
#define HIST 4096 /* log-scale latency buckets */

typedef struct {
    int fd;
    int state; /* 0 connecting/handshake, 1 open, 2 closed */
    size_t len;
    long long last_n;
    long long received;
    long long lost;
    unsigned char *buf;
} conn_t;

static long long hist[HIST];
static long long hist_count, hist_max;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* bucket i covers [2^(i/64) .. 2^((i+1)/64)) ns, about 1% wide */
static int bucket(long long ns) {
    if (ns < 1) ns = 1;
    double l = 0;
    long long v = ns;
    int e = 0;
    while (v >= 2) { v >>= 1; e++; }
    double frac = (double)ns / (double)(1LL << e); /* 1..2 */
    l = e * 64 + (int)((frac - 1.0) * 64);
    if (l >= HIST) l = HIST - 1;
    return (int)l;
}

static long long bucket_value(int i) {
    int e = i / 64, f = i % 64;
    return (long long)((double)(1LL << e) * (1.0 + (f + 0.5) / 64.0));
}

static long long percentile(double p) {
    if (!hist_count) return 0;
    long long want = (long long)(p * hist_count);
    if (want >= hist_count) want = hist_count - 1;
    long long seen = 0;
    for (int i = 0; i < HIST; i++) {
        seen += hist[i];
        if (seen > want) return bucket_value(i);
    }
    return hist_max;
}

static long long find_num(const unsigned char *p, size_t n, const char *key) {
    size_t kl = strlen(key);
    const unsigned char *q = memmem(p, n, key, kl);
    if (!q) return -1;
    q += kl;
    while (q < p + n && *q == ' ') q++; /* json.dumps writes ": " */
    long long v = 0;
    int any = 0;
    while (q < p + n && *q >= '0' && *q <= '9') { v = v * 10 + (*q - '0'); q++; any = 1; }
    return any ? v : -1;
}

static void send_frame(int fd, int opcode, const unsigned char *payload, size_t n) {
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = 0x80 | opcode;
    if (n < 126) hdr[h++] = 0x80 | n;
    else if (n < 65536) { hdr[h++] = 0x80 | 126; hdr[h++] = n >> 8; hdr[h++] = n & 255; }
    else { hdr[h++] = 0x80 | 127; for (int i = 7; i >= 0; i--) hdr[h++] = (n >> (8 * i)) & 255; }
    unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(hdr + h, mask, 4); h += 4;
    unsigned char *out = malloc(h + n);
    memcpy(out, hdr, h);
    for (size_t i = 0; i < n; i++) out[h + i] = payload[i] ^ mask[i & 3];
    ssize_t w = send(fd, out, h + n, MSG_NOSIGNAL);
    (void)w;
    free(out);
}

static long long total_frames;

/* parse complete frames in c->buf; returns bytes consumed */
static size_t parse(conn_t *c, int fd, long long now) {
    size_t i = 0;
    for (;;) {
        if (c->len - i < 2) break;
        unsigned char *p = c->buf + i;
        int opcode = p[0] & 15;
        size_t n = p[1] & 127, h = 2;
        if (n == 126) { if (c->len - i < 4) break; n = (p[2] << 8) | p[3]; h = 4; }
        else if (n == 127) {
            if (c->len - i < 10) break;
            n = 0; for (int k = 0; k < 8; k++) n = (n << 8) | p[2 + k]; h = 10;
        }
        if (c->len - i < h + n) break;
        unsigned char *pl = p + h;
        if (opcode == 1) {
            long long t = find_num(pl, n, "\"t\":");
            if (t > 0) {
                long long lat = now - t;
                hist[bucket(lat)]++; hist_count++;
                if (lat > hist_max) hist_max = lat;
                long long num = find_num(pl, n, "\"n\":");
                if (num >= 0) {
                    if (c->last_n >= 0 && num > c->last_n + 1) c->lost += num - c->last_n - 1;
                    if (num > c->last_n) c->last_n = num;
                }
                c->received++;
                total_frames++;
            }
        } else if (opcode == 9 && fd >= 0) {
            send_frame(fd, 10, pl, n);
        } else if (opcode == 8) {
            c->state = 2;
        }
        i += h + n;
    }
    return i;
}

static int ceiling(void) {
    /* a buffer of realistic data frames, parsed over and over */
    conn_t c = {0};
    c.buf = malloc(BUF);
    c.last_n = -1;
    char msg[200];
    size_t off = 0;
    int count = 0;
    while (off + 160 < BUF) {
        int m = snprintf(msg, sizeof msg,
                         "{\"id\":\"bench:%d\",\"type\":\"bench\",\"timestamp\":1,\"seq\":%d,"
                         "\"payload\":{\"t\":%lld,\"n\":%d,\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxx\"}}",
                         count, count, now_ns(), count);
        c.buf[off] = 0x81;
        size_t h = 2;
        if (m < 126) c.buf[off + 1] = m;
        else { c.buf[off + 1] = 126; c.buf[off + 2] = m >> 8; c.buf[off + 3] = m & 255; h = 4; }
        memcpy(c.buf + off + h, msg, m);
        off += h + m; count++;
    }
    long long t0 = now_ns(), frames = 0;
    while (now_ns() - t0 < 1000000000LL) {
        c.len = off; c.last_n = -1;
        size_t used = parse(&c, -1, now_ns());
        if (used != off) { fprintf(stderr, "ceiling: parse stopped at %zu of %zu\n", used, off); return 1; }
        frames += count;
    }
    double secs = (now_ns() - t0) / 1e9;
    printf("{\"ceiling_frames_per_second\": %.0f, \"frame_bytes\": %zu}\n", frames / secs, off / count);
    return 0;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *path = "/ws/realtime";
    const char *sub = "{\"action\":\"subscribe\",\"payload\":{\"types\":[\"bench\"]}}";
    int port = 8765, n = 100;
    double duration = 5, ramp = 5000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ceiling")) return ceiling();
        if (i + 1 >= argc) break;
        if (!strcmp(argv[i], "-h")) host = argv[++i];
        else if (!strcmp(argv[i], "-p")) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-P")) path = argv[++i];
        else if (!strcmp(argv[i], "-n")) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-d")) duration = atof(argv[++i]);
        else if (!strcmp(argv[i], "-s")) sub = argv[++i];
        else if (!strcmp(argv[i], "-r")) ramp = atof(argv[++i]);
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    int ep = epoll_create1(0);
    conn_t *conns = calloc(n, sizeof(conn_t));
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    inet_pton(AF_INET, host, &addr.sin_addr);
    char req[512];
    int reqlen = snprintf(req, sizeof req,
                          "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                          path, host, port);
    long long start = now_ns();
    int opened = 0, upgraded = 0, failed = 0;
    struct epoll_event evs[1024];
    long long end = 0;
    long long ready_at = 0;
    for (;;) {
        long long now = now_ns();
        /* ramp connections up at `ramp` per second */
        long long want = (long long)((now - start) / 1e9 * ramp) + 1;
        while (opened < n && opened < want) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { failed++; close(fd); opened++; continue; }
            fcntl(fd, F_SETFL, O_NONBLOCK);
            conn_t *c = &conns[opened];
            c->fd = fd; c->buf = malloc(BUF); c->last_n = -1;
            send(fd, req, reqlen, MSG_NOSIGNAL);
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = opened};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            opened++;
        }
        if (!ready_at && upgraded + failed >= n) {
            ready_at = now;
            end = now + (long long)(duration * 1e9);
            fprintf(stderr, "loadclient: %d connected, %d failed; reading for %.1fs\n", upgraded, failed, duration);
            fflush(stderr);
        }
        if (end && now >= end) break;
        int k = epoll_wait(ep, evs, 1024, 10);
        now = now_ns();
        for (int e = 0; e < k; e++) {
            conn_t *c = &conns[evs[e].data.u32];
            for (;;) {
                ssize_t r = recv(c->fd, c->buf + c->len, BUF - c->len, 0);
                if (r <= 0) {
                    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                        if (c->state == 0) failed++;
                        c->state = 2;
                    }
                    break;
                }
                c->len += r;
                if (c->state == 0) {
                    unsigned char *hend = memmem(c->buf, c->len, "\r\n\r\n", 4);
                    if (!hend) continue;
                    if (memcmp(c->buf, "HTTP/1.1 101", 12) != 0) {
                        failed++; c->state = 2;
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                        break;
                    }
                    size_t hl = hend + 4 - c->buf;
                    memmove(c->buf, c->buf + hl, c->len - hl);
                    c->len -= hl;
                    c->state = 1;
                    upgraded++;
                    send_frame(c->fd, 1, (const unsigned char *)sub, strlen(sub));
                }
                size_t used = parse(c, c->fd, now);
                memmove(c->buf, c->buf + used, c->len - used);
                c->len -= used;
            }
        }
    }
    double secs = (now_ns() - ready_at) / 1e9;
    long long lost = 0, minr = -1, maxr = 0, closed = 0;
    for (int i = 0; i < opened; i++) {
        lost += conns[i].lost;
        if (minr < 0 || conns[i].received < minr) minr = conns[i].received;
        if (conns[i].received > maxr) maxr = conns[i].received;
        if (conns[i].state == 2) closed++;
    }
    printf("{\"connections\": %d, \"failed\": %d, \"closed\": %lld, \"seconds\": %.3f, "
           "\"received\": %lld, \"per_second\": %.0f, \"lost\": %lld, \"min_per_conn\": %lld, "
           "\"max_per_conn\": %lld, \"latency_ms\": {\"p50\": %.3f, \"p99\": %.3f, \"p999\": %.3f, \"max\": %.3f}}\n",
           upgraded, failed, closed, secs, total_frames, total_frames / secs, lost, minr, maxr,
           percentile(0.5) / 1e6, percentile(0.99) / 1e6, percentile(0.999) / 1e6, hist_max / 1e6);
    return 0;
}
