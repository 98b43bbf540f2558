/*
 * publisher: the independent publisher of aiosrv's benchmarks (bench/README.md).
 *
 * Its own process, apart from the subscribers' load client (bench/loadclient),
 * so that a busy subscriber loop can never make it send bigger batches. It
 * publishes at a target rate on a clock of its own: message i is due at the
 * absolute CLOCK_MONOTONIC deadline start + i / rate, a timerfd armed with
 * TFD_TIMER_ABSTIME wakes it for the next deadline, and every message goes
 * out in a send() of its own, stamped with the time of that send. When it
 * runs late it sends what is due one message at a time, each with its own
 * system call; it never puts two messages in one request, one frame or one
 * send() (what TCP does with back-to-back segments is TCP's business).
 *
 * Modes
 *   --mode http   one message per POST /api/publish (HTTP/1.1 keep-alive),
 *                 body {"type":"bench","payload":{...}}; 202 = acked, any
 *                 other status = refused.
 *   --mode ws     one masked text frame per message,
 *                 {"action":"publish","id":"<c>-<n>","payload":{"type":"bench","payload":{...}}},
 *                 each answered by one reply frame ("error" in it = refused,
 *                 "ack" = acked); pings are answered.
 *   --conns N     N connections (default 1); message i goes to connection
 *                 i mod N if that one has room, else to the next one that
 *                 has. A connection has room when it has fewer than --depth
 *                 requests unanswered and nothing of an earlier message left
 *                 unwritten (a full socket buffer). HTTP: --depth 1 (the
 *                 default) is one request outstanding per connection, as an
 *                 ordinary HTTP client; --depth D > 1 pipelines up to D
 *                 requests, each still its own send(). WS: --depth (default
 *                 256) is how many publish frames may await their replies.
 *                 When no connection has room the due message waits (and is
 *                 late: see late_ms); it is never merged with the next.
 *
 * Payload stamps: {"t":<CLOCK_MONOTONIC ns at the send>,"n":<number on its
 * connection, from 0 each step>,"s":<step>,"c":<connection index>,"p":"xx.."}
 * padded to --size bytes. The subscribers' client tracks "n" per (subscriber,
 * "c"), so reordering across publisher connections is not counted as loss.
 *
 *   publisher --mode http -p API_PORT --control      commands on stdin:
 *       step S RATE SECS SIZE DRAIN   publish RATE/s for SECS (RATE 0: closed
 *                                     loop, every connection sends as soon as
 *                                     it has room), then wait up to DRAIN s
 *                                     for the replies; one JSON line
 *       quit
 *   publisher --mode ws -p PORT -P /ws/realtime --rate 100 --secs 5 --size 100
 *                                     one step, one JSON line
 *
 * SIGUSR1 during a step stops it early (the load client sends it when a
 * delivery is seconds late: the server is overloaded).
 *
 *   cc -O2 -o bench/publisher bench/publisher.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"

#define EV_TIMER 0xFFFFFFFEu
#define EV_STDIN 0xFFFFFFFDu

enum { MODE_HTTP = 1, MODE_WS = 2 };
enum { C_CLOSED, C_OPEN };

typedef struct {
    int fd, state, idx;
    unsigned char *out; /* the unwritten rest of one message */
    size_t out_len, out_off, out_cap;
    unsigned char *in;
    size_t in_len, in_cap;
    long long *sent_at; /* FIFO of the send times of unanswered requests */
    int q_head, q_len;
    long long seq;      /* "n" of the next message on this connection */
    long long sent, acked, refused;
} pconn_t;

static int mode = MODE_HTTP;
static const char *host = "127.0.0.1", *path = NULL, *type = "bench";
static int port = 0, nconns = 1, depth = 0;
static pconn_t *cs;
static int ep, tfd;
static volatile sig_atomic_t abort_flag;
static long long step_id;
static int size = 100;
static char pad[70000];
static hist_t late_h, resp_h;
static long long closed_in_step, bad_status, other_status_first;
static uint32_t mask_state = 0x9e3779b9u;

static void on_usr1(int sig) { (void)sig; abort_flag = 1; }

/* ---------- connections ---------- */
static void set_events(pconn_t *c) {
    struct epoll_event ev = {.events = EPOLLIN | (c->out_len ? EPOLLOUT : 0), .data.u32 = (uint32_t)c->idx};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(pconn_t *c, const char *why) {
    if (c->state == C_CLOSED) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = C_CLOSED;
    c->out_len = c->out_off = 0;
    c->in_len = 0;
    c->q_len = 0; /* unanswered requests stay unanswered */
    closed_in_step++;
    fprintf(stderr, "publisher: connection %d closed: %s\n", c->idx, why);
}

/* blocking connect (and WebSocket upgrade), then non-blocking; 0 on success */
static int conn_open(pconn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "publisher: connect %s:%d: %s\n", host, port, strerror(errno));
        close(fd);
        return -1;
    }
    c->in_len = 0;
    if (mode == MODE_WS) {
        char req[1024];
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                         path, host, port);
        if (send(fd, req, n, MSG_NOSIGNAL) != n) { close(fd); return -1; }
        /* read the 101 response; frames after it stay in c->in */
        if (!c->in) { c->in_cap = 65536; c->in = malloc(c->in_cap); }
        long long deadline = now_ns() + 10000000000LL;
        for (;;) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            int left = (int)((deadline - now_ns()) / 1000000);
            if (left <= 0 || poll(&pfd, 1, left) <= 0) { fprintf(stderr, "publisher: no upgrade reply\n"); close(fd); return -1; }
            ssize_t r = recv(fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
            if (r <= 0) { fprintf(stderr, "publisher: closed during the upgrade\n"); close(fd); return -1; }
            c->in_len += r;
            unsigned char *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
            if (!e) continue;
            if (c->in_len < 12 || memcmp(c->in, "HTTP/1.1 101", 12)) {
                fprintf(stderr, "publisher: upgrade refused: %.60s\n", c->in);
                close(fd);
                return -1;
            }
            size_t hl = e + 4 - c->in;
            memmove(c->in, c->in + hl, c->in_len - hl);
            c->in_len -= hl;
            break;
        }
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    c->fd = fd;
    c->state = C_OPEN;
    c->out_len = c->out_off = 0;
    c->q_len = c->q_head = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)c->idx};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static int count_open(void) {
    int k = 0;
    for (int i = 0; i < nconns; i++) k += cs[i].state == C_OPEN;
    return k;
}

/* write c's pending bytes; a message not written whole stays in c->out */
static void flush(pconn_t *c) {
    while (c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { conn_close(c, "send failed"); return; }
        c->out_off += w;
        c->out_len -= w;
    }
    if (!c->out_len) c->out_off = 0;
    set_events(c);
}

/* one buffer, one send(); the rest (if the socket is full) goes before anything else */
static void send_one(pconn_t *c, const unsigned char *d, size_t n) {
    ssize_t w;
    do w = send(c->fd, d, n, MSG_NOSIGNAL); while (w < 0 && errno == EINTR);
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { conn_close(c, "send failed"); return; }
    if (w < 0) w = 0;
    if ((size_t)w < n) {
        if (c->out_cap < n - w) { c->out_cap = n - w + 4096; c->out = realloc(c->out, c->out_cap); }
        memcpy(c->out, d + w, n - w);
        c->out_off = 0;
        c->out_len = n - w;
        set_events(c);
    }
}

static int has_room(const pconn_t *c) { return c->state == C_OPEN && !c->out_len && c->q_len < depth; }

static void answered(pconn_t *c, int ok, long long now) {
    if (!c->q_len) return; /* a reply to nothing we sent (e.g. an error about a ping) */
    long long t = c->sent_at[c->q_head];
    c->q_head = (c->q_head + 1) % depth;
    c->q_len--;
    hadd(&resp_h, now - t);
    if (ok) c->acked++;
    else c->refused++;
}

/* ---------- one message ---------- */
static size_t make_payload(char *out, size_t cap, long long t, long long n, int ci) {
    int base = snprintf(out, cap, "{\"t\":%lld,\"n\":%lld,\"s\":%lld,\"c\":%d,\"p\":\"\"}", t, n, step_id, ci);
    int padn = size - base;
    if (padn < 0) padn = 0;
    if (padn > (int)sizeof pad - 1) padn = sizeof pad - 1;
    return snprintf(out, cap, "{\"t\":%lld,\"n\":%lld,\"s\":%lld,\"c\":%d,\"p\":\"%.*s\"}", t, n, step_id, ci, padn, pad);
}

static long long publish_on(pconn_t *c) {
    static char pl[72000], body[73000];
    static unsigned char msg[74000];
    long long t = now_ns();
    size_t pn = make_payload(pl, sizeof pl, t, c->seq, c->idx);
    size_t m = 0;
    if (mode == MODE_HTTP) {
        int bn = snprintf(body, sizeof body, "{\"type\":\"%s\",\"payload\":%.*s}", type, (int)pn, pl);
        int hn = snprintf((char *)msg, sizeof msg,
                          "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\n\r\n", path, host, port, bn);
        memcpy(msg + hn, body, bn);
        m = hn + bn;
    } else {
        int bn = snprintf(body, sizeof body,
                          "{\"action\":\"publish\",\"id\":\"%d-%lld\",\"payload\":{\"type\":\"%s\",\"payload\":%.*s}}",
                          c->idx, c->seq, type, (int)pn, pl);
        size_t h = 0;
        msg[h++] = 0x81;
        if (bn < 126) msg[h++] = 0x80 | bn;
        else if (bn < 65536) { msg[h++] = 0x80 | 126; msg[h++] = bn >> 8; msg[h++] = bn & 255; }
        else { msg[h++] = 0x80 | 127; for (int i = 7; i >= 0; i--) msg[h++] = ((uint64_t)bn >> (8 * i)) & 255; }
        mask_state ^= mask_state << 13; mask_state ^= mask_state >> 17; mask_state ^= mask_state << 5;
        unsigned char mk[4];
        memcpy(mk, &mask_state, 4);
        memcpy(msg + h, mk, 4);
        h += 4;
        for (int i = 0; i < bn; i++) msg[h + i] = body[i] ^ mk[i & 3];
        m = h + bn;
    }
    c->sent_at[(c->q_head + c->q_len) % depth] = t;
    c->q_len++;
    c->seq++;
    c->sent++;
    send_one(c, msg, m);
    return t;
}

/* ---------- replies ---------- */
static void http_replies(pconn_t *c, long long now) {
    for (;;) {
        unsigned char *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!e) return;
        size_t hl = e + 4 - c->in, total;
        int status = c->in_len > 12 ? atoi((char *)c->in + 9) : 0;
        unsigned char *cl = memmem(c->in, hl, "ontent-Length:", 14);
        if (!cl) cl = memmem(c->in, hl, "ontent-length:", 14);
        if (cl) {
            total = hl + (size_t)atoll((char *)cl + 14);
        } else if (memmem(c->in, hl, "chunked", 7)) {
            unsigned char *z = memmem(c->in + hl, c->in_len - hl, "0\r\n\r\n", 5);
            if (!z) return;
            total = z + 5 - c->in;
        } else {
            total = hl;
        }
        if (c->in_len < total) return;
        if (status != 202) {
            if (!bad_status++) {
                other_status_first = status;
                fprintf(stderr, "publisher: HTTP %d: %.*s\n", status, (int)(c->in_len > 300 ? 300 : c->in_len), c->in);
            }
        }
        int closing = memmem(c->in, hl, "onnection: close", 16) != NULL;
        answered(c, status == 202, now);
        memmove(c->in, c->in + total, c->in_len - total);
        c->in_len -= total;
        if (closing) { conn_close(c, "server sent Connection: close"); return; }
    }
}

static void ws_frames(pconn_t *c, long long now) {
    size_t i = 0;
    while (c->in_len - i >= 2) {
        unsigned char *p = c->in + i;
        size_t avail = c->in_len - i, h = 2;
        int op = p[0] & 15;
        uint64_t n = p[1] & 127;
        if (p[1] & 0x80) h += 4;
        if (n == 126) { if (avail < 4) break; n = ((uint64_t)p[2] << 8) | p[3]; h += 2; }
        else if (n == 127) { if (avail < 10) break; n = 0; for (int k = 0; k < 8; k++) n = (n << 8) | p[2 + k]; h += 8; }
        if (avail < h || avail - h < n) break;
        unsigned char *pl = p + h;
        if (op == 1) {
            if (memmem(pl, n, "\"error\"", 7)) {
                if (!bad_status++) fprintf(stderr, "publisher: refused: %.*s\n", (int)(n > 300 ? 300 : n), pl);
                answered(c, 0, now);
            } else if (memmem(pl, n, "\"ack\"", 5)) {
                answered(c, 1, now);
            }
        } else if (op == 9) { /* pong, masked */
            unsigned char f[140];
            size_t k = n > 125 ? 125 : n;
            f[0] = 0x8A; f[1] = 0x80 | k;
            memset(f + 2, 0, 4);
            memcpy(f + 6, pl, k);
            if (!c->out_len) send_one(c, f, 6 + k); /* mask of zeros: the bytes as they are */
        } else if (op == 8) {
            i += h + n;
            conn_close(c, "close frame from the server");
            return;
        }
        i += h + n;
    }
    memmove(c->in, c->in + i, c->in_len - i);
    c->in_len -= i;
}

static void on_readable(pconn_t *c, long long now) {
    for (;;) {
        if (c->in_cap - c->in_len < 65536) { c->in_cap = c->in_cap * 2 + 65536; c->in = realloc(c->in, c->in_cap); }
        ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (r == 0) { conn_close(c, "closed by the server"); return; }
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) conn_close(c, strerror(errno));
            return;
        }
        c->in_len += r;
        if (mode == MODE_HTTP) http_replies(c, now);
        else ws_frames(c, now);
        if (c->state != C_OPEN) return;
        if ((size_t)r < 65536) return;
    }
}

static int stdin_ready;

static void handle(int timeout_ms) {
    struct epoll_event evs[256];
    int k = epoll_wait(ep, evs, 256, timeout_ms);
    long long now = now_ns();
    for (int e = 0; e < k; e++) {
        uint32_t id = evs[e].data.u32;
        if (id == EV_TIMER) { uint64_t x; if (read(tfd, &x, sizeof x) < 0) {} continue; }
        if (id == EV_STDIN) { stdin_ready = 1; continue; }
        pconn_t *c = &cs[id];
        if (c->state != C_OPEN) continue;
        if (evs[e].events & EPOLLOUT) flush(c);
        if (c->state != C_OPEN) continue;
        if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c, now);
    }
}

static void arm(long long at) { /* absolute CLOCK_MONOTONIC; 0 disarms */
    struct itimerspec its = {0};
    if (at > 0) { its.it_value.tv_sec = at / 1000000000LL; its.it_value.tv_nsec = at % 1000000000LL; }
    timerfd_settime(tfd, at > 0 ? TFD_TIMER_ABSTIME : 0, &its, NULL);
}

/* ---------- one step ---------- */
static void run_step(long long sid, double rate, double secs, int sz, double drain) {
    step_id = sid;
    size = sz;
    abort_flag = 0;
    hreset(&late_h);
    hreset(&resp_h);
    closed_in_step = bad_status = 0;
    int reopened = 0;
    for (int i = 0; i < nconns; i++) {
        pconn_t *c = &cs[i];
        if (c->state == C_OPEN && (c->q_len || c->out_len)) conn_close(c, "replies owed from the last step");
        if (c->state != C_OPEN && conn_open(c) == 0) reopened++;
        c->seq = c->sent = c->acked = c->refused = 0;
        c->q_len = c->q_head = 0; /* replies to an earlier step are not counted */
    }
    closed_in_step = 0;
    int open_at_start = count_open();
    double cpu0 = cpu_seconds();
    long long target = rate > 0 ? (long long)(rate * secs + 0.5) : -1; /* -1: closed loop */
    long long start = now_ns() + 2000000; /* first deadline 2 ms ahead */
    long long stop_at = start + (long long)(secs * 1e9);
    long long give_up = start + (long long)((secs + 2.0) * 1e9); /* stop sending what is still due */
    long long next = 0, first_send = 0, last_send = 0, rr = 0, send_end = 0;
    int closed_loop = target < 0;
    int aborted = 0, gave_up = 0;
    while (now_ns() < start) handle(1);
    for (;;) {
        long long now = now_ns();
        if (abort_flag && !aborted) { aborted = 1; target = next; }
        if (target < 0 && now >= stop_at) { target = next; send_end = now; }
        if (target >= 0 && next < target && now >= give_up) { gave_up = 1; target = next; }
        if (target >= 0 && next >= target) break;
        /* send every message that is due, one by one, while a connection has room */
        while (target < 0 || next < target) {
            long long due = target < 0 ? now : start + (long long)((double)next * 1e9 / rate);
            if (due > now) { now = now_ns(); if (due > now) break; }
            pconn_t *c = NULL;
            for (int k = 0; k < nconns; k++) {
                pconn_t *d = &cs[(rr + k) % nconns];
                if (has_room(d)) { c = d; rr = (rr + k + 1) % nconns; break; }
            }
            if (!c) break; /* wait for a reply (the message is late meanwhile) */
            long long t = publish_on(c);
            if (target >= 0) hadd(&late_h, t - due);
            if (!first_send) first_send = t;
            last_send = t;
            next++;
            if (count_open() == 0) break;
        }
        if (count_open() == 0) { target = next; break; }
        int room = 0;
        for (int k = 0; k < nconns && !room; k++) room = has_room(&cs[k]);
        /* the timer only when a connection could take the next message; else a reply wakes us */
        if (room && target >= 0 && next < target) arm(start + (long long)((double)next * 1e9 / rate));
        else arm(0);
        handle(target < 0 ? 1 : 50);
    }
    arm(0);
    /* the replies still owed */
    long long drain_end = now_ns() + (long long)(drain * 1e9);
    for (;;) {
        int owed = 0;
        for (int i = 0; i < nconns; i++) owed += cs[i].state == C_OPEN ? cs[i].q_len : 0;
        if (!owed || now_ns() >= drain_end) break;
        handle(10);
    }
    long long end = now_ns();
    double cpu = cpu_seconds() - cpu0;
    long long sent = 0, acked = 0, refused = 0, unanswered = 0, minc = -1, maxc = 0;
    for (int i = 0; i < nconns; i++) {
        sent += cs[i].sent;
        acked += cs[i].acked;
        refused += cs[i].refused;
        if (minc < 0 || cs[i].sent < minc) minc = cs[i].sent;
        if (cs[i].sent > maxc) maxc = cs[i].sent;
    }
    unanswered = sent - acked - refused;
    double send_secs = last_send > first_send ? (last_send - first_send) / 1e9 : 0;
    /* paced: (sent - 1) intervals between the first and the last send; closed loop: per second of the step */
    if (!send_end) send_end = last_send;
    double prate = closed_loop ? (send_end > start ? acked / ((send_end - start) / 1e9) : 0.0)
                               : (send_secs > 0 ? (sent - 1) / send_secs : (double)sent);
    printf("{\"event\": \"publish\", \"step\": %lld, \"mode\": \"%s\", \"conns\": %d, \"open_at_start\": %d, "
           "\"reopened\": %d, \"depth\": %d, \"rate\": %.3f, \"seconds\": %.3f, \"size\": %d, \"sent\": %lld, "
           "\"acked\": %lld, \"refused\": %lld, \"unanswered\": %lld, \"closed\": %lld, \"aborted\": %s, "
           "\"gave_up\": %s, \"per_conn_sent_min\": %lld, \"per_conn_sent_max\": %lld, "
           "\"publish_rate\": %.1f, \"acked_per_second\": %.1f, \"send_seconds\": %.3f, \"elapsed\": %.3f, "
           "\"cpu\": %.3f, \"cpu_fraction\": %.3f, "
           "\"late_ms\": {\"p50\": %.3f, \"p99\": %.3f, \"p999\": %.3f, \"max\": %.3f}, "
           "\"response_ms\": {\"count\": %lld, \"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, "
           "\"p999\": %.3f, \"max\": %.3f}}\n",
           step_id, mode == MODE_HTTP ? "http" : "ws", nconns, open_at_start, reopened, depth, rate, secs, size,
           sent, acked, refused, unanswered, closed_in_step, aborted ? "true" : "false", gave_up ? "true" : "false",
           minc < 0 ? 0 : minc, maxc, prate, (end - start) > 0 ? acked / ((end - start) / 1e9) : 0.0, send_secs,
           (end - start) / 1e9, cpu, cpu / ((end - start) / 1e9), hpct(&late_h, 0.5) / 1e6, hpct(&late_h, 0.99) / 1e6,
           hpct(&late_h, 0.999) / 1e6, late_h.max / 1e6, resp_h.n, resp_h.n ? resp_h.sum / (double)resp_h.n / 1e6 : 0.0,
           hpct(&resp_h, 0.5) / 1e6, hpct(&resp_h, 0.9) / 1e6, hpct(&resp_h, 0.99) / 1e6, hpct(&resp_h, 0.999) / 1e6,
           resp_h.max / 1e6);
    fflush(stdout);
}

static void usage(void) {
    fprintf(stderr,
            "usage: publisher --mode http|ws [-h host] -p port [-P path] [--conns N] [--depth D] [--type T]\n"
            "                 (--control | --rate R --secs S --size B [--step S])\n");
}

int main(int argc, char **argv) {
    double rate = 100, secs = 5;
    int control = 0;
    long long sid = 1;
    memset(pad, 'x', sizeof pad);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--control")) { control = 1; continue; }
        if (!strcmp(a, "--help")) { usage(); return 0; }
        if (i + 1 >= argc) { usage(); return 2; }
        const char *v = argv[++i];
        if (!strcmp(a, "--mode")) mode = !strcmp(v, "ws") ? MODE_WS : !strcmp(v, "http") ? MODE_HTTP : 0;
        else if (!strcmp(a, "-h")) host = v;
        else if (!strcmp(a, "-p")) port = atoi(v);
        else if (!strcmp(a, "-P")) path = v;
        else if (!strcmp(a, "--conns")) nconns = atoi(v);
        else if (!strcmp(a, "--depth")) depth = atoi(v);
        else if (!strcmp(a, "--type")) type = v;
        else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--secs")) secs = atof(v);
        else if (!strcmp(a, "--size")) size = atoi(v);
        else if (!strcmp(a, "--step")) sid = atoll(v);
        else { usage(); return 2; }
    }
    if (!mode || !port || nconns < 1) { usage(); return 2; }
    if (!path) path = mode == MODE_HTTP ? "/api/publish" : "/ws/realtime";
    if (depth < 1) depth = mode == MODE_HTTP ? 1 : 256;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGUSR1, &sa, NULL);
    ep = epoll_create1(0);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = EV_TIMER};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
    cs = calloc(nconns, sizeof *cs);
    for (int i = 0; i < nconns; i++) {
        cs[i].idx = i;
        cs[i].sent_at = calloc(depth, sizeof(long long));
        cs[i].in_cap = 65536;
        cs[i].in = malloc(cs[i].in_cap);
        conn_open(&cs[i]);
    }
    int open = count_open();
    printf("{\"event\": \"ready\", \"mode\": \"%s\", \"conns\": %d, \"open\": %d, \"depth\": %d, \"pid\": %d}\n",
           mode == MODE_HTTP ? "http" : "ws", nconns, open, depth, (int)getpid());
    fflush(stdout);
    if (!control) {
        if (open) run_step(sid, rate, secs, size, 10.0);
        return open ? 0 : 1;
    }
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = EV_STDIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
    fcntl(0, F_SETFL, O_NONBLOCK);
    char line[512];
    size_t ll = 0;
    for (;;) {
        stdin_ready = 0;
        handle(1000); /* answers pings between steps */
        ssize_t r = read(0, line + ll, sizeof line - 1 - ll);
        if (r == 0) break;
        if (r < 0) continue;
        ll += r;
        line[ll] = 0;
        char *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = 0;
            long long s = 0;
            double a1 = 0, a2 = 0, a4 = 10;
            int a3 = 100;
            if (sscanf(line, "step %lld %lf %lf %d %lf", &s, &a1, &a2, &a3, &a4) >= 4) run_step(s, a1, a2, a3, a4);
            else if (!strncmp(line, "quit", 4)) {
                printf("{\"event\": \"bye\", \"open\": %d}\n", count_open());
                fflush(stdout);
                return 0;
            } else if (line[0]) { printf("{\"event\": \"error\", \"message\": \"unknown command\"}\n"); fflush(stdout); }
            size_t rest = ll - (nl + 1 - line);
            memmove(line, nl + 1, rest);
            ll = rest;
            line[ll] = 0;
        }
        if (ll >= sizeof line - 1) ll = 0;
    }
    return 0;
}
