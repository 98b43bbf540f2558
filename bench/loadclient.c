/*
 * loadclient: the load client of aiosrv's benchmarks (bench/README.md).
 *
 * One thread, one epoll loop, no libraries. It opens N WebSocket subscriber
 * connections to ws://HOST:PORT/PATH (non-blocking connect, ramped at -r per
 * second, HTTP upgrade with a fixed key, 101 checked), sends each a masked
 * subscribe text frame, answers pings with masked pongs, and parses the
 * frames it receives incrementally (frames split across reads, many frames
 * per read, 7/16/64-bit lengths). A data frame is one whose text holds
 * "t":<CLOCK_MONOTONIC ns at publish>, "n":<message number> and "s":<step>:
 * the client finds them by substring search, records publish-to-receive
 * latency in a log-scale histogram (about 1% wide buckets) and counts gaps
 * in n per connection (loss).
 *
 * With an independent publisher (bench/publisher, its own process: the
 * default of bench/run.py) the client only subscribes; the commands "begin"
 * and "end" below frame each step. That publisher also stamps "c":<its
 * connection>, and "n" counts per publisher connection, so gaps are tracked
 * per (subscriber, publisher connection): messages of different publisher
 * connections may arrive in any order without counting as loss.
 *
 * The old in-loop publisher (--pub ws|http) is kept for comparison (the
 * "batched publisher, in the subscribers' loop" rows of bench/run.py): one
 * more connection, in the same loop, that publishes at a target rate with at
 * most --window messages outstanding, sending every message due in one write
 * (so its bursts grow when the loop is busy), stamping t, n and s:
 *   ws    {"action":"publish","id":"<n>","payload":{"type":"bench","payload":{...}}}
 *         one text frame per message, acknowledged by one reply frame each
 *         ("error" in the reply counts as refused);
 *   http  POST /api/publish with a JSON list of the messages due (at most
 *         1,000), one request outstanding; 202 = accepted.
 *
 * Modes
 *   loadclient --ceiling            the client's own ceiling: frames of 100 B
 *                                   and 1,000 B payloads parsed from memory
 *                                   (frames/s), then received through
 *                                   loopback TCP on 1,000 and 10,000
 *                                   connections from an ideal C sender
 *                                   forked onto the other CPU
 *   loadclient --ceiling-memory     only the first part
 *   loadclient -n N -d SECS [-m M] [--pub ws --rate R --size B]
 *                                   one run: connect, (publish), read until
 *                                   SECS pass or every connection has M
 *                                   messages, print one JSON object
 *   loadclient -n N --control ...   connect, print {"event":"ready",...}, then
 *                                   obey commands on stdin, one JSON line each:
 *       step RATE SECS SIZE GRACE ABORT_MS
 *                publish RATE/s for SECS with SIZE-byte payloads; wait at most
 *                GRACE s after the last publish for the deliveries; stop
 *                publishing early when a delivery is ABORT_MS late (overload)
 *                (the in-loop publisher)
 *       begin STEP ABORT_MS PUBPID K
 *                an independent publisher's step STEP begins: reset the
 *                counters, count only frames stamped "s":STEP, track "n" per
 *                (subscriber, "c" < K); send SIGUSR1 to PUBPID once when a
 *                delivery is ABORT_MS late (the publisher stops early)
 *       end PUBLISHED GRACE [RATE SECS SIZE]
 *                the publisher is done and PUBLISHED messages were acked: wait
 *                at most GRACE s for PUBLISHED x subscribers deliveries, then
 *                print the step (with the latency histogram, sparse, so that
 *                bench/run.py can merge several client processes)
 *       quiet MS MAXSECS   wait until no data frame came for MS ms
 *       status             connection counts
 *       quit
 *
 *   cc -O2 -o bench/loadclient bench/loadclient.c
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
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define RBUF (256 * 1024)   /* shared read buffer */
#define EV_STDIN 0xFFFFFFFFu
#define MAXSRC 250

enum { S_CONNECTING, S_HANDSHAKE, S_OPEN, S_CLOSED };

typedef struct {
    int fd;
    int state;
    int is_pub;
    int got_close;
    long long opened_at;
    /* bytes of an incomplete frame carried to the next read */
    unsigned char *carry;
    uint32_t carry_len, carry_cap;
    /* per step */
    long long last_n, received, lost, disorder;
    /* outgoing bytes not yet written (publisher, and rarely others) */
    unsigned char *out;
    size_t out_len, out_cap;
} conn_t;

/* ---------- globals ---------- */
static conn_t *conns;
static int nconns;          /* subscribers */
static conn_t pubc;         /* the publisher connection */
static int ep;
static unsigned char rbuf[RBUF];

static const char *host = "127.0.0.1", *path = "/ws/realtime";
static const char *sub_json = "{\"action\":\"subscribe\",\"payload\":{\"types\":[\"bench\"]}}";
static const char *pub_type = "bench";
static int port = 8765, pub_port = 0;
static const char *pub_path = NULL;
static int pub_mode = 0; /* 0 none, 1 ws, 2 http */
static int window = 1000;
static double ramp = 2000;
static int nsrc = 1, src_auto = 1;
static struct sockaddr_in dst;

static int opened, upgraded, failed, closed_open;
static hist_t lat_h; /* delivery latency */
static long long step_id = 0, data_frames, stale_frames, other_frames;
static long long first_recv_ns, last_recv_ns;
static long long last_data_ns;
static long long late_ns_abort; /* abort publishing when a delivery is this late */
static int late_seen;
static int check_step = 1; /* ignore data frames of other steps */
/* an independent publisher (bench/publisher, --conns K) stamps "c":<connection>; gaps in "n"
 * are tracked per (subscriber, publisher connection) in lastn[sub * npubc + c] */
static int npubc = 1;
static int32_t *lastn;
static long long bad_c, min_t_seen;
static pid_t abort_pid; /* sent SIGUSR1 once when a delivery is ABORT_MS late */
static int abort_sent;

/* publisher state */
static long long pub_sent, pub_acked, pub_refused, pub_target, pub_first_ns, pub_last_ns;
static int http_inflight; /* messages in the outstanding POST, 0 if none */
static long long http_batches;
static unsigned char *http_resp; static size_t http_resp_len, http_resp_cap;
static int pub_ready;

/* ---------- frames ---------- */
/* find "key":<digits> in p[0..n); *next is set past the number (the publisher
 * writes t, n, s in that order, so each search starts where the last ended) */
static int find_num(const unsigned char *p, size_t n, const char *key, size_t kl, long long *out,
                    const unsigned char **next) {
    const unsigned char *q = memmem(p, n, key, kl);
    if (!q) return 0;
    const unsigned char *end = p + n;
    q += kl;
    while (q < end && *q == ' ') q++; /* json.dumps writes ": " */
    long long v = 0;
    int any = 0;
    while (q < end && *q >= '0' && *q <= '9') { v = v * 10 + (*q - '0'); q++; any = 1; }
    if (any) *out = v;
    if (next) *next = q;
    return any;
}

/* find key after `from`, else anywhere */
static int find_after(const unsigned char *p, size_t n, const unsigned char *from, const char *key, long long *out,
                      const unsigned char **next) {
    if (from > p && from < p + n && find_num(from, p + n - from, key, 4, out, next)) return 1;
    return find_num(p, n, key, 4, out, next);
}

static void queue_out(conn_t *c, const unsigned char *d, size_t n);
static void handle_events(int timeout_ms);
static void print_step(double rate, double secs, int size, int subs, int closed_before, long long published,
                       long long start, double cpu0, int aborted);
static double socket_ceiling(int n, int size, double secs, int sender_cpu, int client_cpu, int per_frame);

static void flush_out(conn_t *c) {
    while (c->out_len) {
        ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            c->out_len = 0; /* dead; the read side notices */
            return;
        }
        memmove(c->out, c->out + w, c->out_len - w);
        c->out_len -= w;
    }
    struct epoll_event ev = {.events = EPOLLIN | (c->out_len ? EPOLLOUT : 0),
                             .data.u32 = c->is_pub ? (uint32_t)nconns : (uint32_t)(c - conns)};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void queue_out(conn_t *c, const unsigned char *d, size_t n) {
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n) cap *= 2;
        c->out = realloc(c->out, cap);
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, d, n);
    c->out_len += n;
}

/* append a masked client frame to c's output */
static void put_frame(conn_t *c, int opcode, const unsigned char *payload, size_t n) {
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = 0x80 | opcode;
    if (n < 126) hdr[h++] = 0x80 | n;
    else if (n < 65536) { hdr[h++] = 0x80 | 126; hdr[h++] = n >> 8; hdr[h++] = n & 255; }
    else { hdr[h++] = 0x80 | 127; for (int i = 7; i >= 0; i--) hdr[h++] = (n >> (8 * i)) & 255; }
    static const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    memcpy(hdr + h, mask, 4);
    h += 4;
    queue_out(c, hdr, h);
    size_t need = c->out_len + n;
    if (need > c->out_cap) {
        size_t cap = c->out_cap;
        while (cap < need) cap *= 2;
        c->out = realloc(c->out, cap);
        c->out_cap = cap;
    }
    unsigned char *o = c->out + c->out_len;
    for (size_t i = 0; i < n; i++) o[i] = payload[i] ^ mask[i & 3];
    c->out_len += n;
}

static void on_data(conn_t *c, const unsigned char *pl, size_t n, long long now) {
    long long t, num = -1, s;
    const unsigned char *q = pl;
    if (!find_num(pl, n, "\"t\":", 4, &t, &q)) { other_frames++; return; }
    int has_n = find_after(pl, n, q, "\"n\":", &num, &q);
    if (check_step && (!find_after(pl, n, q, "\"s\":", &s, &q) || s != step_id)) { stale_frames++; return; }
    long long ci = 0;
    if (npubc > 1 && !find_after(pl, n, q, "\"c\":", &ci, &q)) ci = 0;
    long long lat = now - t;
    if (!min_t_seen || t < min_t_seen) min_t_seen = t;
    hadd(&lat_h, lat);
    if (late_ns_abort && lat > late_ns_abort) {
        late_seen = 1;
        if (abort_pid > 0 && !abort_sent) { abort_sent = 1; kill(abort_pid, SIGUSR1); }
    }
    if (has_n && npubc > 1 && lastn && c >= conns && c < conns + nconns) {
        if (ci < 0 || ci >= npubc) bad_c++;
        else {
            int32_t *ln = &lastn[(size_t)(c - conns) * npubc + ci];
            if (num > *ln + 1) c->lost += num - *ln - 1;
            if (num <= *ln) c->disorder++;
            else *ln = (int32_t)num;
        }
    } else if (has_n) {
        if (num > c->last_n + 1) c->lost += num - c->last_n - 1;
        if (num <= c->last_n) c->disorder++;
        else c->last_n = num;
    }
    c->received++;
    data_frames++;
    if (!first_recv_ns) first_recv_ns = now;
    last_recv_ns = now;
    last_data_ns = now;
}

static void on_pub_reply(const unsigned char *pl, size_t n) {
    if (memmem(pl, n, "\"error\"", 7)) pub_refused++;
    else if (memmem(pl, n, "\"ack\"", 5)) pub_acked++;
}

/* parse complete frames in buf[0..len); returns bytes consumed */
static size_t parse(conn_t *c, unsigned char *buf, size_t len, long long now) {
    size_t i = 0;
    for (;;) {
        size_t avail = len - i;
        if (avail < 2) break;
        unsigned char *p = buf + i;
        int opcode = p[0] & 15;
        uint64_t n = p[1] & 127;
        size_t h = 2;
        if (p[1] & 0x80) { /* a masked server frame is a protocol error; skip the key */
            h += 4;
        }
        if (n == 126) {
            if (avail < 4) break;
            n = ((uint64_t)p[2] << 8) | p[3];
            h += 2;
        } else if (n == 127) {
            if (avail < 10) break;
            n = 0;
            for (int k = 0; k < 8; k++) n = (n << 8) | p[2 + k];
            h += 8;
        }
        if (avail < h || avail - h < n) break;
        unsigned char *pl = p + h;
        if (opcode == 1 || opcode == 0) {
            if (c && c->is_pub) on_pub_reply(pl, n);
            else on_data(c, pl, n, now);
        } else if (opcode == 9) {
            if (c) { put_frame(c, 10, pl, n); flush_out(c); }
        } else if (opcode == 8) {
            if (c) c->got_close = 1;
        }
        i += h + n;
    }
    return i;
}

/* ---------- ceiling: parse rate from memory ---------- */
static int ceiling(int with_sockets) {
    static const int sizes[2] = {100, 1000};
    printf("{\"ceiling\": [");
    for (int si = 0; si < 2; si++) {
        size_t cap = 16 << 20;
        unsigned char *buf = malloc(cap);
        char msg[2048], pad[1100];
        size_t off = 0;
        int count = 0;
        conn_t c = {0};
        c.last_n = -1;
        step_id = 1;
        while (off + 1100 < cap) {
            /* the shape aiosrv sends: envelope, then a payload of sizes[si] bytes */
            int base = snprintf(msg, sizeof msg, "{\"t\":%lld,\"n\":%d,\"s\":1,\"p\":\"\"}", now_ns(), count);
            int padn = sizes[si] - base;
            if (padn < 0) padn = 0;
            memset(pad, 'x', padn);
            pad[padn] = 0;
            int m = snprintf(msg, sizeof msg,
                             "{\"id\":\"bench:%d\",\"type\":\"bench\",\"timestamp\":1767400000000,\"seq\":%d,"
                             "\"payload\":{\"t\":%lld,\"n\":%d,\"s\":1,\"p\":\"%s\"}}",
                             count + 1, count + 1, now_ns(), count, pad);
            buf[off] = 0x81;
            size_t h = 2;
            if (m < 126) buf[off + 1] = m;
            else { buf[off + 1] = 126; buf[off + 2] = m >> 8; buf[off + 3] = m & 255; h = 4; }
            memcpy(buf + off + h, msg, m);
            off += h + m;
            count++;
        }
        /* parse it in read-sized chunks with carry, as from sockets */
        long long t0 = now_ns(), frames = 0;
        while (now_ns() - t0 < 1000000000LL) {
            c.last_n = -1;
            size_t pos = 0, carry = 0;
            while (pos < off) {
                size_t chunk = 65536 - carry;
                if (chunk > off - pos) chunk = off - pos;
                memcpy(rbuf + carry, buf + pos, chunk); /* what recv would do */
                pos += chunk;
                size_t len = carry + chunk;
                size_t used = parse(&c, rbuf, len, now_ns());
                carry = len - used;
                memmove(rbuf, rbuf + used, carry);
            }
            if (carry) { fprintf(stderr, "ceiling: %zu bytes left unparsed\n", carry); return 1; }
            frames += count;
        }
        double secs = (now_ns() - t0) / 1e9;
        if (c.received != frames || c.lost) { fprintf(stderr, "ceiling: self-check failed\n"); return 1; }
        printf("%s{\"payload_bytes\": %d, \"frame_bytes\": %zu, \"frames_per_second\": %.0f}", si ? ", " : "",
               sizes[si], off / count, frames / secs);
        free(buf);
        hreset(&lat_h);
    }
    printf("]");
    if (!with_sockets) { printf("}\n"); return 0; }
    /* through loopback TCP from an ideal C sender pinned to the other CPU */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int scpu = ncpu > 1 ? 0 : -1, ccpu = ncpu > 1 ? 1 : -1;
    printf(", \"socket_ceiling\": [");
    int first = 1;
    for (int pf = 0; pf < 2; pf++)
        for (int si = 0; si < 2; si++) {
            int nn[2] = {1000, 10000};
            for (int ni = 0; ni < 2; ni++) {
                double r = socket_ceiling(nn[ni], sizes[si], 2.0, scpu, ccpu, pf);
                printf("%s{\"connections\": %d, \"payload_bytes\": %d, \"sender_writes\": \"%s\", "
                       "\"frames_per_second\": %.0f}", first ? "" : ", ", nn[ni], sizes[si],
                       pf ? "one frame" : "64 KiB", r);
                first = 0;
                fflush(stdout);
            }
        }
    printf("], \"sender_cpu\": %d, \"client_cpu\": %d}\n", scpu, ccpu);
    return 0;
}

/* ---------- socket ceiling: an ideal C sender on the other core ---------- */




/* frames of `size`-byte payloads, whole frames only, about 64 KiB */
static size_t build_frames(unsigned char *buf, size_t cap, int size, int *count) {
    char msg[2048], padb[1100];
    size_t off = 0;
    int k = 0;
    while (off + 1200 < cap) {
        int base = snprintf(msg, sizeof msg, "{\"t\":%lld,\"n\":%d,\"s\":1,\"p\":\"\"}", now_ns(), k);
        int padn = size - base;
        if (padn < 0) padn = 0;
        memset(padb, 'x', padn);
        padb[padn] = 0;
        int m = snprintf(msg, sizeof msg,
                         "{\"id\":\"bench:%d\",\"type\":\"bench\",\"timestamp\":1767400000000,\"seq\":%d,"
                         "\"payload\":{\"t\":%lld,\"n\":%d,\"s\":1,\"p\":\"%s\"}}",
                         k + 1, k + 1, now_ns(), k, padb);
        buf[off] = 0x81;
        size_t h = 2;
        if (m < 126) buf[off + 1] = m;
        else { buf[off + 1] = 126; buf[off + 2] = m >> 8; buf[off + 3] = m & 255; h = 4; }
        memcpy(buf + off + h, msg, m);
        off += h + m;
        k++;
    }
    *count = k;
    return off;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

/* the client reads from n loopback connections fed by a forked C sender */
static double socket_ceiling(int n, int size, double secs, int sender_cpu, int client_cpu, int per_frame) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(0x7f000001u);
    socklen_t al = sizeof a;
    bind(ls, (struct sockaddr *)&a, sizeof a);
    listen(ls, 4096);
    getsockname(ls, (struct sockaddr *)&a, &al);
    pid_t pid = fork();
    if (pid == 0) {
        if (sender_cpu >= 0) pin(sender_cpu);
        static unsigned char fb[65536];
        int count;
        size_t flen = build_frames(fb, sizeof fb, size, &count);
        int *fds = calloc(n, sizeof(int));
        size_t *offs = calloc(n, sizeof(size_t));
        for (int i = 0; i < n; i++) { fds[i] = accept(ls, NULL, NULL); fcntl(fds[i], F_SETFL, O_NONBLOCK); }
        size_t fsz = 0; /* per_frame: one frame per send(), as a server without coalescing */
        if (per_frame) fsz = (fb[1] & 127) == 126 ? 4 + ((fb[2] << 8) | fb[3]) : 2 + (fb[1] & 127);
        if (per_frame) flen = fsz * (flen / fsz); /* frames are the same size but for digits: use one */
        if (per_frame) for (size_t o = fsz; o < flen; o += fsz) memcpy(fb + o, fb, fsz);
        for (;;) {
            for (int i = 0; i < n; i++) {
                size_t len = per_frame ? fsz - offs[i] % fsz : flen - offs[i];
                ssize_t w = send(fds[i], fb + offs[i], len, MSG_NOSIGNAL);
                if (w > 0) offs[i] = (offs[i] + w) % flen;
                else if (w < 0 && errno != EAGAIN) _exit(0);
            }
        }
    }
    if (client_cpu >= 0) pin(client_cpu);
    ep = epoll_create1(0);
    nconns = n;
    conns = calloc(n + 1, sizeof(conn_t));
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        connect(fd, (struct sockaddr *)&a, sizeof a);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        conns[i].fd = fd;
        conns[i].state = S_OPEN;
        conns[i].last_n = -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    step_id = 1;
    long long warm = now_ns();
    while (now_ns() - warm < 300000000LL) handle_events(10);
    data_frames = 0;
    double cpu0 = cpu_seconds();
    long long t0 = now_ns();
    while (now_ns() - t0 < secs * 1e9) handle_events(10);
    double took = (now_ns() - t0) / 1e9;
    double rate = data_frames / took;
    double cpu = (cpu_seconds() - cpu0) / took;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    for (int i = 0; i < n; i++) close(conns[i].fd);
    close(ls);
    close(ep);
    free(conns);
    fprintf(stderr, "loadclient: socket ceiling %d conns %d B%s: %.0f frames/s, client cpu %.2f\n", n, size,
            per_frame ? " one frame per write" : "", rate, cpu);
    return rate;
}

/* ---------- connections ---------- */
static int open_socket(conn_t *c, int idx, int p) {
    for (int attempt = 0; attempt < 3; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0) return -errno;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (nsrc > 1) {
            struct sockaddr_in src = {0};
            src.sin_family = AF_INET;
            src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(idx % nsrc));
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) { int e = errno; close(fd); return -e; }
        }
        struct sockaddr_in a = dst;
        a.sin_port = htons(p);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
            int e = errno;
            close(fd);
            if (e == EADDRNOTAVAIL && src_auto && nsrc < MAXSRC) {
                nsrc = nsrc < 2 ? 4 : nsrc * 2; /* spread over 127.0.0.x */
                if (nsrc > MAXSRC) nsrc = MAXSRC;
                fprintf(stderr, "loadclient: EADDRNOTAVAIL, spreading over %d source addresses\n", nsrc);
                continue;
            }
            return -e;
        }
        c->fd = fd;
        c->state = S_CONNECTING;
        c->opened_at = now_ns();
        c->last_n = -1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)idx};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        return 0;
    }
    return -EADDRNOTAVAIL;
}

static void send_upgrade(conn_t *c, int p, const char *pth) {
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     pth, host, p);
    queue_out(c, (unsigned char *)req, n);
    flush_out(c);
}

static void http_connected(conn_t *c) { c->state = S_OPEN; pub_ready = 1; flush_out(c); }

static void mark_closed(conn_t *c) {
    if (c->state == S_CLOSED) return;
    if (c->state == S_OPEN) { if (!c->is_pub) closed_open++; }
    else if (!c->is_pub) failed++;
    c->state = S_CLOSED;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->is_pub) { pub_ready = 0; fprintf(stderr, "loadclient: publisher connection closed\n"); }
}

/* parse HTTP responses to the publisher's POSTs */
static void http_on_bytes(const unsigned char *d, size_t n) {
    if (http_resp_len + n > http_resp_cap) {
        http_resp_cap = (http_resp_len + n) * 2;
        http_resp = realloc(http_resp, http_resp_cap);
    }
    memcpy(http_resp + http_resp_len, d, n);
    http_resp_len += n;
    for (;;) {
        unsigned char *hend = memmem(http_resp, http_resp_len, "\r\n\r\n", 4);
        if (!hend) return;
        size_t hl = hend + 4 - http_resp;
        long long clen = 0;
        unsigned char *cl = memmem(http_resp, hl, "Content-Length:", 15);
        if (!cl) cl = memmem(http_resp, hl, "content-length:", 15);
        if (cl) clen = atoll((char *)cl + 15);
        if (http_resp_len < hl + clen) return;
        int status = atoi((char *)http_resp + 9);
        if (status == 202) pub_acked += http_inflight;
        else pub_refused += http_inflight;
        http_inflight = 0;
        memmove(http_resp, http_resp + hl + clen, http_resp_len - hl - clen);
        http_resp_len -= hl + clen;
    }
}

static void on_readable(conn_t *c, long long now) {
    size_t len = c->carry_len;
    if (len) memcpy(rbuf, c->carry, len);
    ssize_t r = recv(c->fd, rbuf + len, RBUF - len, 0);
    if (r <= 0) {
        if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) mark_closed(c);
        return;
    }
    len += r;
    size_t start = 0;
    if (c->is_pub && pub_mode == 2) { http_on_bytes(rbuf, len); c->carry_len = 0; return; }
    if (c->state == S_HANDSHAKE) {
        unsigned char *hend = memmem(rbuf, len, "\r\n\r\n", 4);
        if (!hend) goto keep;
        if (len < 12 || memcmp(rbuf, "HTTP/1.1 101", 12) != 0) {
            fprintf(stderr, "loadclient: upgrade refused: %.40s\n", rbuf);
            mark_closed(c);
            return;
        }
        start = hend + 4 - rbuf;
        c->state = S_OPEN;
        if (c->is_pub) pub_ready = 1;
        else {
            upgraded++;
            put_frame(c, 1, (const unsigned char *)sub_json, strlen(sub_json));
            flush_out(c);
        }
    }
    size_t used = start + parse(c, rbuf + start, len - start, now);
    if (c->got_close) { mark_closed(c); return; }
    len -= used;
    if (len == RBUF) { fprintf(stderr, "loadclient: frame larger than %d bytes\n", RBUF); mark_closed(c); return; }
    if (len > c->carry_cap) {
        c->carry_cap = len < 2048 ? 2048 : len * 2;
        c->carry = realloc(c->carry, c->carry_cap);
    }
    memcpy(c->carry, rbuf + used, len);
    c->carry_len = len;
    return;
keep:
    if (len == RBUF) { mark_closed(c); return; }
    if (len > c->carry_cap) { c->carry_cap = len * 2; c->carry = realloc(c->carry, c->carry_cap); }
    memcpy(c->carry, rbuf, len);
    c->carry_len = len;
}

static void on_writable(conn_t *c) {
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) { mark_closed(c); return; }
        c->state = S_HANDSHAKE;
        if (c->is_pub && pub_mode == 2) { http_connected(c); return; }
        send_upgrade(c, c->is_pub ? pub_port : port, c->is_pub ? pub_path : path);
        return;
    }
    flush_out(c);
}

static void handle_events(int timeout_ms) {
    static struct epoll_event evs[1024];
    int k = epoll_wait(ep, evs, 1024, timeout_ms);
    long long now = now_ns();
    for (int e = 0; e < k; e++) {
        uint32_t id = evs[e].data.u32;
        if (id == EV_STDIN) continue; /* read by the command loop */
        conn_t *c = id == (uint32_t)nconns ? &pubc : &conns[id];
        if (c->state == S_CLOSED) continue;
        if (evs[e].events & (EPOLLOUT)) on_writable(c);
        if (c->state == S_CLOSED) continue;
        if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c, now);
    }
}

/* ---------- publishing ---------- */
static int pub_size = 100;
static char pad[70000];

static size_t make_payload(char *out, size_t cap, long long n, long long t) {
    int base = snprintf(out, cap, "{\"t\":%lld,\"n\":%lld,\"s\":%lld,\"p\":\"\"}", t, n, step_id);
    int padn = pub_size - base;
    if (padn < 0) padn = 0;
    if (padn > (int)sizeof pad - 1) padn = sizeof pad - 1;
    return snprintf(out, cap, "{\"t\":%lld,\"n\":%lld,\"s\":%lld,\"p\":\"%.*s\"}", t, n, step_id, padn, pad);
}

/* send what is due; returns 1 while messages remain to send */
static void publish_due(long long now, long long start, double rate) {
    if (!pub_ready || pubc.state != S_OPEN) return;
    long long due = (long long)((now - start) / 1e9 * rate) + 1;
    if (due > pub_target) due = pub_target;
    static char msg[72000], pl[71000];
    if (pub_mode == 1) {
        int sent_now = 0;
        while (pub_sent < due && pub_sent - pub_acked - pub_refused < window && pubc.out_len < (4 << 20)) {
            long long t = now_ns();
            make_payload(pl, sizeof pl, pub_sent, t);
            int m = snprintf(msg, sizeof msg,
                             "{\"action\":\"publish\",\"id\":\"%lld\",\"payload\":{\"type\":\"%s\",\"payload\":%s}}",
                             pub_sent, pub_type, pl);
            put_frame(&pubc, 1, (unsigned char *)msg, m);
            if (!pub_first_ns) pub_first_ns = t;
            pub_last_ns = t;
            pub_sent++;
            sent_now++;
        }
        if (sent_now) flush_out(&pubc);
    } else if (pub_mode == 2) {
        if (http_inflight || pub_sent >= due) return;
        long long k = due - pub_sent;
        if (k > 1000) k = 1000;
        static char body[1000 * 1100 + 64];
        size_t b = 0;
        long long t = now_ns();
        body[b++] = '[';
        for (long long i = 0; i < k; i++) {
            make_payload(pl, sizeof pl, pub_sent + i, t);
            b += snprintf(body + b, sizeof body - b, "%s{\"type\":\"%s\",\"payload\":%s}", i ? "," : "", pub_type, pl);
            if (b > sizeof body - 72000) { k = i + 1; break; }
        }
        body[b++] = ']';
        char hdr[256];
        int hn = snprintf(hdr, sizeof hdr,
                          "POST /api/publish HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\n\r\n", host, pub_port, b);
        queue_out(&pubc, (unsigned char *)hdr, hn);
        queue_out(&pubc, (unsigned char *)body, b);
        flush_out(&pubc);
        if (!pub_first_ns) pub_first_ns = t;
        pub_last_ns = t;
        pub_sent += k;
        http_inflight = (int)k;
        http_batches++;
    }
}

/* ---------- steps ---------- */
static int count_open(void) {
    int k = 0;
    for (int i = 0; i < nconns; i++) k += conns[i].state == S_OPEN;
    return k;
}

static void reset_step(void) {
    step_id++;
    bad_c = min_t_seen = 0;
    abort_sent = 0;
    if (lastn) memset(lastn, 0xff, (size_t)nconns * npubc * sizeof *lastn); /* -1 */
    hreset(&lat_h);
    data_frames = stale_frames = other_frames = 0;
    first_recv_ns = last_recv_ns = 0;
    late_seen = 0;
    for (int i = 0; i < nconns; i++) conns[i].last_n = -1, conns[i].received = conns[i].lost = conns[i].disorder = 0;
    pub_sent = pub_acked = pub_refused = 0;
    pub_first_ns = pub_last_ns = 0;
    http_batches = 0;
}

/* publish at rate for secs, then wait up to grace for deliveries; print a JSON line */
static void run_step(double rate, double secs, int size, double grace, double abort_ms, long long expect_per_conn) {
    reset_step();
    pub_size = size;
    late_ns_abort = abort_ms > 0 ? (long long)(abort_ms * 1e6) : 0;
    int subs = count_open();
    int closed_before = closed_open;
    pub_target = pub_mode ? (long long)(rate * secs + 0.5) : 0;
    double cpu0 = cpu_seconds();
    long long start = now_ns(), pub_done_at = 0;
    long long hard_end = start + (long long)((secs + grace + 5) * 1e9);
    int aborted = 0;
    for (;;) {
        long long now = now_ns();
        if (pub_mode && !pub_done_at) {
            if (late_seen && !aborted) { aborted = 1; pub_target = pub_sent; }
            publish_due(now, start, rate);
            int all_answered = pub_sent - pub_acked - pub_refused <= 0;
            if (pub_sent >= pub_target && (all_answered || now - start > (secs + 2) * 1e9)) pub_done_at = now;
            if (now - start > (secs + 2) * 1e9) { pub_done_at = now; pub_target = pub_sent; }
        }
        if (!pub_mode && now - start >= secs * 1e9) break;
        if (pub_mode && pub_done_at) {
            long long expected = (pub_acked) * (long long)subs;
            if (data_frames >= expected) break;
            if (now - pub_done_at >= grace * 1e9) break;
        }
        if (expect_per_conn > 0) {
            long long tot = 0;
            if (data_frames >= expect_per_conn * (long long)subs) break;
            (void)tot;
        }
        if (now >= hard_end) break;
        /* wake for the next publish due */
        int to = 5;
        if (pub_mode && !pub_done_at && rate > 0) {
            long long next = start + (long long)((pub_sent + 0) / rate * 1e9);
            long long d = (next - now + 999999) / 1000000; /* ms, rounded up: never spin */
            to = d < 1 ? 1 : d > 5 ? 5 : (int)d;
        }
        handle_events(to);
    }
    print_step(rate, secs, size, subs, closed_before, pub_mode ? pub_acked : (expect_per_conn > 0 ? expect_per_conn : 0),
               start, cpu0, aborted);
}

/* one JSON line for the step that just ended; published = messages the publisher had acknowledged */
static void print_step(double rate, double secs, int size, int subs, int closed_before, long long published,
                       long long start, double cpu0, int aborted) {
    long long end = now_ns();
    double cpu = cpu_seconds() - cpu0;
    long long lost = 0, disorder = 0, minr = -1, maxr = 0;
    for (int i = 0; i < nconns; i++) {
        lost += conns[i].lost;
        disorder += conns[i].disorder;
        if (conns[i].state == S_OPEN || conns[i].received) {
            if (minr < 0 || conns[i].received < minr) minr = conns[i].received;
            if (conns[i].received > maxr) maxr = conns[i].received;
        }
    }
    if (minr < 0) minr = 0;
    long long expected = published * subs;
    double pub_secs = pub_last_ns > pub_first_ns ? (pub_last_ns - pub_first_ns) / 1e9 : 0;
    /* delivery window: first publish (or the earliest publish stamp received) to last delivery */
    long long w0 = pub_first_ns ? pub_first_ns : min_t_seen ? min_t_seen : first_recv_ns;
    double del_secs = last_recv_ns > w0 ? (last_recv_ns - w0) / 1e9 : 0;
    printf("{\"event\": \"step\", \"step\": %lld, \"rate\": %.3f, \"seconds\": %.3f, \"size\": %d, "
           "\"subscribers\": %d, \"publisher_conns\": %d, \"sent\": %lld, \"published\": %lld, \"refused\": %lld, "
           "\"publish_rate\": %.1f, \"http_batches\": %lld, \"aborted\": %s, "
           "\"expected\": %lld, \"received\": %lld, \"delivered_fraction\": %.5f, \"missing\": %lld, "
           "\"gaps\": %lld, \"lost\": %lld, \"disorder\": %lld, \"bad_c\": %lld, "
           "\"stale\": %lld, \"other_frames\": %lld, \"closed\": %d, \"min_per_conn\": %lld, \"max_per_conn\": %lld, "
           "\"delivery_seconds\": %.3f, \"delivered_per_second\": %.0f, \"elapsed\": %.3f, "
           "\"client_cpu\": %.3f, \"client_cpu_fraction\": %.3f, "
           "\"latency_ms\": {\"count\": %lld, \"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, "
           "\"p999\": %.3f, \"max\": %.3f}, \"hist_max_ns\": %lld, \"hist_sum_ns\": %lld, \"hist\": [",
           step_id, rate, secs, size, subs, npubc, pub_sent, published, pub_refused,
           pub_secs > 0 ? (pub_sent - 1) / pub_secs : (double)pub_sent, http_batches, aborted ? "true" : "false",
           expected, data_frames, expected ? (double)data_frames / expected : 0.0,
           expected > data_frames ? expected - data_frames : 0, lost, lost, disorder, bad_c, stale_frames,
           other_frames, closed_open - closed_before, minr, maxr, del_secs,
           del_secs > 0 ? data_frames / del_secs : 0.0, (end - start) / 1e9, cpu, cpu / ((end - start) / 1e9),
           lat_h.n, lat_h.n ? lat_h.sum / (double)lat_h.n / 1e6 : 0.0, hpct(&lat_h, 0.5) / 1e6,
           hpct(&lat_h, 0.9) / 1e6, hpct(&lat_h, 0.99) / 1e6, hpct(&lat_h, 0.999) / 1e6, lat_h.max / 1e6,
           lat_h.max, lat_h.sum);
    /* the histogram, sparse ([bucket, count] ...), so that several client processes can be merged */
    int first = 1;
    for (int i = 0; i < HIST; i++)
        if (lat_h.c[i]) { printf("%s[%d,%lld]", first ? "" : ",", i, lat_h.c[i]); first = 0; }
    printf("]}\n");
    fflush(stdout);
}

/* an independent publisher: "begin" resets the counters for its step, "end" waits for the deliveries */
static long long ext_start;
static double ext_cpu0;
static int ext_subs, ext_closed_before;
static double ext_abort_ms;

static void begin_step(long long sid, double abort_ms, long long pid, int k) {
    if (k < 1) k = 1;
    if (k != npubc || !lastn) {
        npubc = k;
        free(lastn);
        lastn = malloc((size_t)nconns * npubc * sizeof *lastn + 1);
    }
    reset_step();
    step_id = sid; /* the publisher stamps the same "s" */
    check_step = 1;
    late_ns_abort = abort_ms > 0 ? (long long)(abort_ms * 1e6) : 0;
    ext_abort_ms = abort_ms;
    abort_pid = (pid_t)pid;
    ext_subs = count_open();
    ext_closed_before = closed_open;
    ext_cpu0 = cpu_seconds();
    ext_start = now_ns();
    printf("{\"event\": \"begun\", \"step\": %lld, \"subscribers\": %d, \"publisher_conns\": %d}\n", sid, ext_subs,
           npubc);
    fflush(stdout);
}

static void end_step(long long published, double grace, double rate, double secs, int size) {
    long long until = now_ns() + (long long)(grace * 1e9);
    long long expected = published * (long long)ext_subs;
    while (data_frames < expected && now_ns() < until) handle_events(5);
    abort_pid = 0;
    print_step(rate, secs, size, ext_subs, ext_closed_before, published, ext_start, ext_cpu0, late_seen);
}

static void wait_quiet(double ms, double maxsecs) {
    long long start = now_ns();
    long long q = (long long)(ms * 1e6);
    long long frames0 = data_frames + stale_frames;
    last_data_ns = now_ns();
    long long seen = 0;
    for (;;) {
        long long before = data_frames + stale_frames;
        handle_events(10);
        long long now = now_ns();
        if (data_frames + stale_frames != before) last_data_ns = now;
        if (now - last_data_ns >= q) break;
        if (now - start >= maxsecs * 1e9) break;
    }
    seen = data_frames + stale_frames - frames0;
    long long now = now_ns();
    printf("{\"event\": \"quiet\", \"quiet\": %s, \"frames\": %lld, \"seconds\": %.3f}\n",
           now - last_data_ns >= q ? "true" : "false", seen, (now - start) / 1e9);
    fflush(stdout);
}

static void print_status(const char *event, double secs) {
    printf("{\"event\": \"%s\", \"connections\": %d, \"open\": %d, \"failed\": %d, \"closed\": %d, "
           "\"source_addresses\": %d, \"publisher\": %s, \"seconds\": %.3f}\n",
           event, nconns, count_open(), failed, closed_open, nsrc, pub_mode ? (pub_ready ? "true" : "false") : "null",
           secs);
    fflush(stdout);
}

/* connect every subscriber (ramped) and the publisher; returns seconds taken */
static double connect_all(double timeout) {
    long long start = now_ns();
    if (pub_mode) {
        pubc.is_pub = 1;
        int r = open_socket(&pubc, nconns, pub_port);
        if (r < 0) fprintf(stderr, "loadclient: publisher connect: %s\n", strerror(-r));
    }
    for (;;) {
        long long now = now_ns();
        long long want = (long long)((now - start) / 1e9 * ramp) + 1;
        while (opened < nconns && opened < want) {
            int r = open_socket(&conns[opened], opened, port);
            if (r < 0) {
                conns[opened].state = S_CLOSED;
                failed++;
                static int said;
                if (!said++) fprintf(stderr, "loadclient: connect: %s\n", strerror(-r));
            }
            opened++;
        }
        /* handshakes that take too long fail */
        if (upgraded + failed >= nconns && (!pub_mode || pub_ready || pubc.state == S_CLOSED)) break;
        if ((now - start) / 1e9 > timeout) {
            for (int i = 0; i < opened; i++)
                if (conns[i].state == S_CONNECTING || conns[i].state == S_HANDSHAKE) mark_closed(&conns[i]);
            break;
        }
        handle_events(opened < nconns ? 1 : 10);
    }
    /* let the subscribe frames land and their acks arrive */
    long long settle = now_ns();
    while (now_ns() - settle < 300000000LL) handle_events(10);
    return (now_ns() - start) / 1e9;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadclient --ceiling\n"
            "       loadclient [-h host] [-p port] [-P path] [-n conns] [-r conn_per_s] [-s subscribe_json]\n"
            "                  [--pub ws|http] [--pub-port P] [--pub-path P] [--window K] [--type T]\n"
            "                  [--src-addrs K] (-d secs [-m msgs_per_conn] [--rate R --size B] | --control)\n");
}

int main(int argc, char **argv) {
    double duration = 5, rate = 0;
    long long expect = 0;
    int control = 0;
    memset(pad, 'x', sizeof pad);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--ceiling")) return ceiling(1);
        if (!strcmp(a, "--ceiling-memory")) return ceiling(0);
        if (!strcmp(a, "--control")) { control = 1; continue; }
        if (!strcmp(a, "--help")) { usage(); return 0; }
        if (i + 1 >= argc) { usage(); return 2; }
        const char *v = argv[++i];
        if (!strcmp(a, "-h")) host = v;
        else if (!strcmp(a, "-p")) port = atoi(v);
        else if (!strcmp(a, "-P")) path = v;
        else if (!strcmp(a, "-n")) nconns = atoi(v);
        else if (!strcmp(a, "-d")) duration = atof(v);
        else if (!strcmp(a, "-m")) expect = atoll(v);
        else if (!strcmp(a, "-s")) sub_json = v;
        else if (!strcmp(a, "-r")) ramp = atof(v);
        else if (!strcmp(a, "--pub")) pub_mode = !strcmp(v, "ws") ? 1 : !strcmp(v, "http") ? 2 : 0;
        else if (!strcmp(a, "--pub-port")) pub_port = atoi(v);
        else if (!strcmp(a, "--pub-path")) pub_path = v;
        else if (!strcmp(a, "--window")) window = atoi(v);
        else if (!strcmp(a, "--type")) pub_type = v;
        else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--size")) pub_size = atoi(v);
        else if (!strcmp(a, "--src-addrs")) { nsrc = atoi(v); src_auto = 0; if (nsrc < 1) nsrc = 1; if (nsrc > MAXSRC) nsrc = MAXSRC; }
        else { usage(); return 2; }
    }
    if (!pub_port) pub_port = port;
    if (!pub_path) pub_path = pub_mode == 2 ? "/api/publish" : path;
    if (pub_mode == 2 && pub_port == port) fprintf(stderr, "loadclient: --pub http normally needs --pub-port (the API port)\n");

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)nconns + 64 > rl.rlim_cur)
        fprintf(stderr, "loadclient: only %llu file descriptors allowed for %d connections\n",
                (unsigned long long)rl.rlim_cur, nconns);

    ep = epoll_create1(0);
    conns = calloc(nconns + 1, sizeof(conn_t));
    dst.sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) { fprintf(stderr, "loadclient: bad host %s\n", host); return 2; }
    if (nsrc > 1) src_auto = 0;
    if (!pub_mode) check_step = 0; /* someone else publishes */

    double took = connect_all(60);
    print_status("ready", took);
    if (!control) {
        if (pub_mode && rate > 0) run_step(rate, duration, pub_size, 2.0, 0, 0);
        else run_step(0, duration, pub_size, 0, 0, expect);
        return 0;
    }
    /* commands on stdin */
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = EV_STDIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    fcntl(0, F_SETFL, O_NONBLOCK);
    char line[512];
    size_t ll = 0;
    for (;;) {
        handle_events(20);
        ssize_t r = read(0, line + ll, sizeof line - 1 - ll);
        if (r == 0) break; /* stdin closed */
        if (r < 0) continue;
        ll += r;
        line[ll] = 0;
        char *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = 0;
            double a1 = 0, a2 = 0, a4 = 0, a5 = 0;
            int a3 = 0;
            long long b1 = 0, b3 = 0;
            int b4 = 1;
            if (sscanf(line, "step %lf %lf %d %lf %lf", &a1, &a2, &a3, &a4, &a5) >= 3) run_step(a1, a2, a3, a4, a5, 0);
            else if (sscanf(line, "begin %lld %lf %lld %d", &b1, &a1, &b3, &b4) >= 1) begin_step(b1, a1, b3, b4);
            else if (sscanf(line, "end %lld %lf %lf %lf %d", &b1, &a1, &a2, &a4, &a3) >= 2) end_step(b1, a1, a2, a4, a3);
            else if (sscanf(line, "quiet %lf %lf", &a1, &a2) == 2) wait_quiet(a1, a2);
            else if (!strncmp(line, "status", 6)) print_status("status", 0);
            else if (!strncmp(line, "quit", 4)) { print_status("bye", 0); return 0; }
            else if (line[0]) { printf("{\"event\": \"error\", \"message\": \"unknown command\"}\n"); fflush(stdout); }
            size_t rest = ll - (nl + 1 - line);
            memmove(line, nl + 1, rest);
            ll = rest;
            line[ll] = 0;
        }
        if (ll >= sizeof line - 1) ll = 0;
    }
    return 0;
}
