/* anylab-relay: the link relay of lab/links (delay, jitter and bursty loss in user space, on NFQUEUE).
 *
 * The same design as the Python reference (lab/links/relay.py, whose docstring explains it; bench/links.py
 * measures the two side by side): each direction of a shaped link is one NFQUEUE; a packet's id is held
 * until its deadline = max(previous deadline, arrival + delay + jitter), so a link never reorders; one
 * batch verdict releases everything due; losses in runs follow the two-state Gilbert model. Written in C
 * because the Python relay costs 40-80 us of CPU a packet and a lab's probes cross several relays: at the
 * lab's probe rates the relays took the routers' CPU (bgpd stopped answering its vty).
 *
 *   anylab-relay CONFIG CONTROL_SOCKET       (CONFIG: lines "queue maxlen delay_ns jitter_ns dist loss_ppm
 *                                              burst_milli label"; dist 0 uniform, 1 normal)
 *   anylab-relay --check CONFIG              (a dry run: parse the config, exit 0 or 2)
 *
 * Control (one line a connection, mode 0600 socket): "stats" | "set Q delay_ns jitter_ns dist loss_ppm
 * burst_milli" | "add Q maxlen delay_ns jitter_ns dist loss_ppm burst_milli label"; the answer is one
 * JSON line ({"queues": [...]}, {"ok": true} or {"error": "..."}).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>

#define MAXQ 512
#define MAXCONN 8
#define RELEASE_EARLY_NS 50000LL
#define RT_PRIORITY 11

typedef struct { int64_t deadline; uint32_t id; uint8_t drop; } held_t;

typedef struct {
    int q, fd, maxlen, dist, bad;
    int64_t delay_ns, jitter_ns, last;
    double loss, burst;
    held_t *ring; int head, count, cap;
    uint64_t passed, dropped, max_held, overflow;
    char label[96];
} dir_t;

static dir_t dirs[MAXQ];
static int ndirs;
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double uniform01(void) { /* xorshift64*: fast, and the seed makes a run repeatable */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static double jitter_sample(const dir_t *d) {
    if (d->jitter_ns <= 0) return 0.0;
    if (d->dist == 1) { /* normal, sigma = jitter (Box-Muller) */
        double u1 = uniform01(), u2 = uniform01();
        if (u1 < 1e-300) u1 = 1e-300;
        return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2) * (double)d->jitter_ns;
    }
    return (uniform01() * 2.0 - 1.0) * (double)d->jitter_ns;
}

static int gilbert(dir_t *d) { /* returns 1 to drop; see lab/links/relay.py gilbert() */
    if (d->loss <= 0.0) return 0;
    double r = 1.0 / d->burst, p = d->loss * r / (1.0 - d->loss), u = uniform01();
    d->bad = d->bad ? (u >= r) : (u < p);
    return d->bad;
}

/* -- netlink -------------------------------------------------------------------------------------- */

static size_t put_attr(char *buf, size_t off, int type, const void *data, size_t len) {
    struct nlattr *a = (struct nlattr *)(buf + off);
    a->nla_type = type; a->nla_len = NLA_HDRLEN + len;
    memcpy(buf + off + NLA_HDRLEN, data, len);
    return off + NLA_ALIGN(a->nla_len);
}

static size_t start_msg(char *buf, int msg, int q, int flags) {
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    memset(buf, 0, NLMSG_HDRLEN + sizeof(struct nfgenmsg));
    h->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | msg;
    h->nlmsg_flags = NLM_F_REQUEST | flags;
    struct nfgenmsg *g = (struct nfgenmsg *)(buf + NLMSG_HDRLEN);
    g->nfgen_family = AF_UNSPEC; g->version = NFNETLINK_V0; g->res_id = htons(q);
    return NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
}

static int send_msg(int fd, char *buf, size_t len) {
    ((struct nlmsghdr *)buf)->nlmsg_len = len;
    for (;;) {
        if (send(fd, buf, len, 0) >= 0) return 0;
        if (errno == EINTR) continue;
        if (errno == EAGAIN) { struct pollfd p = {fd, POLLOUT, 0}; poll(&p, 1, 10); continue; }
        return -1;
    }
}

static int config_cmd(int fd, int q, int type, const void *data, size_t len, int type2, const void *d2, size_t l2) {
    char buf[256], ack[4096];
    size_t off = start_msg(buf, NFQNL_MSG_CONFIG, q, NLM_F_ACK);
    off = put_attr(buf, off, type, data, len);
    if (d2) off = put_attr(buf, off, type2, d2, l2);
    if (send_msg(fd, buf, off) < 0) return -errno;
    ssize_t n = recv(fd, ack, sizeof ack, 0);
    if (n < (ssize_t)(NLMSG_HDRLEN + sizeof(int))) return -EIO;
    struct nlmsghdr *h = (struct nlmsghdr *)ack;
    if (h->nlmsg_type == NLMSG_ERROR) return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
    return 0;
}

static int bind_queue(dir_t *d) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0) return -errno;
    int big = 8 << 20, one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { int e = -errno; close(fd); return e; }
    struct nfqnl_msg_config_cmd cmd = {.command = NFQNL_CFG_CMD_BIND};
    struct nfqnl_msg_config_params params = {.copy_range = 0, .copy_mode = NFQNL_COPY_META};
    uint32_t maxlen = htonl(d->maxlen), gso = htonl(NFQA_CFG_F_GSO);
    int err = config_cmd(fd, d->q, NFQA_CFG_CMD, &cmd, sizeof cmd, 0, NULL, 0);
    if (!err) err = config_cmd(fd, d->q, NFQA_CFG_PARAMS, &params, sizeof params, 0, NULL, 0);
    if (!err) err = config_cmd(fd, d->q, NFQA_CFG_QUEUE_MAXLEN, &maxlen, 4, 0, NULL, 0);
    if (!err) err = config_cmd(fd, d->q, NFQA_CFG_MASK, &gso, 4, NFQA_CFG_FLAGS, &gso, 4);
    if (err) { close(fd); return err; }
    d->fd = fd;
    return 0;
}

static void verdict(dir_t *d, uint32_t id, int accept, int batch) {
    char buf[128];
    size_t off = start_msg(buf, batch ? NFQNL_MSG_VERDICT_BATCH : NFQNL_MSG_VERDICT, d->q, 0);
    struct nfqnl_msg_verdict_hdr vh = {htonl(accept ? NF_ACCEPT : NF_DROP), htonl(id)};
    off = put_attr(buf, off, NFQA_VERDICT_HDR, &vh, sizeof vh);
    send_msg(d->fd, buf, off);
}

static void take(dir_t *d, uint32_t id, int64_t now) {
    int drop = gilbert(d);
    int64_t t = now + d->delay_ns + (int64_t)jitter_sample(d);
    if (t < now) t = now;
    if (t < d->last) t = d->last;
    d->last = t;
    if (d->count == d->cap) { /* the kernel holds at most maxlen; never here, but never overrun */
        verdict(d, id, 0, 0); d->overflow++; return;
    }
    held_t *h = &d->ring[(d->head + d->count) % d->cap];
    h->deadline = t; h->id = id; h->drop = (uint8_t)drop;
    d->count++;
    if ((uint64_t)d->count > d->max_held) d->max_held = d->count;
}

static void drain(dir_t *d, int64_t now) {
    static char buf[65536];
    for (;;) {
        ssize_t n = recv(d->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) { if (errno == EINTR || errno == ENOBUFS) continue; return; }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) continue;
            char *p = (char *)NLMSG_DATA(h) + NLMSG_ALIGN(sizeof(struct nfgenmsg));
            char *end = (char *)h + h->nlmsg_len;
            while (p + NLA_HDRLEN <= end) {
                struct nlattr *a = (struct nlattr *)p;
                if (a->nla_len < NLA_HDRLEN) break;
                if ((a->nla_type & NLA_TYPE_MASK) == NFQA_PACKET_HDR) {
                    struct nfqnl_msg_packet_hdr *ph = (struct nfqnl_msg_packet_hdr *)(p + NLA_HDRLEN);
                    take(d, ntohl(ph->packet_id), now);
                    break;
                }
                p += NLA_ALIGN(a->nla_len);
            }
        }
    }
}

static void release(dir_t *d, int64_t now) {
    uint32_t top = 0; int any = 0;
    while (d->count && d->ring[d->head].deadline <= now) {
        held_t *h = &d->ring[d->head];
        if (h->drop) { verdict(d, h->id, 0, 0); d->dropped++; }
        else { top = h->id; any = 1; d->passed++; }
        d->head = (d->head + 1) % d->cap; d->count--;
    }
    if (any) verdict(d, top, 1, 1);
}

/* -- config and control ----------------------------------------------------------------------------- */

static int set_shape(dir_t *d, long long delay, long long jitter, int dist, long long loss_ppm, long long burst_milli) {
    if (delay < 0 || delay > 10000000000LL || jitter < 0 || jitter > 10000000000LL || dist < 0 || dist > 1
        || loss_ppm < 0 || loss_ppm >= 1000000 || burst_milli < 1000 || burst_milli > 1000000) return -1;
    d->delay_ns = delay; d->jitter_ns = jitter; d->dist = dist;
    d->loss = loss_ppm / 1e6; d->burst = burst_milli / 1000.0;
    return 0;
}

static dir_t *find(int q) {
    for (int i = 0; i < ndirs; i++) if (dirs[i].q == q) return &dirs[i];
    return NULL;
}

/* "Q maxlen delay jitter dist loss burst label": a new direction (not bound); NULL on a bad line. */
static dir_t *parse_dir(const char *line) {
    int q, maxlen, dist, used = 0; long long delay, jitter, loss, burst;
    if (ndirs >= MAXQ) return NULL;
    if (sscanf(line, "%d %d %lld %lld %d %lld %lld %n", &q, &maxlen, &delay, &jitter, &dist, &loss, &burst, &used) < 7)
        return NULL;
    if (q < 0 || q > 65535 || maxlen < 1 || maxlen > 1000000 || find(q)) return NULL;
    dir_t *d = &dirs[ndirs];
    memset(d, 0, sizeof *d);
    d->q = q; d->maxlen = maxlen; d->fd = -1;
    if (set_shape(d, delay, jitter, dist, loss, burst) < 0) return NULL;
    snprintf(d->label, sizeof d->label, "%s", line + used);
    d->label[strcspn(d->label, "\r\n\"\\")] = 0;
    d->cap = maxlen + 1;
    d->ring = calloc(d->cap, sizeof(held_t));
    if (!d->ring) return NULL;
    ndirs++;
    return d;
}

static void answer(int fd, const char *line) {
    char out[65536]; int n = 0;
    long long a, b, c, e, f; int q, dist;
    if (strncmp(line, "stats", 5) == 0) {
        n += snprintf(out + n, sizeof out - n, "{\"queues\": [");
        for (int i = 0; i < ndirs && n < (int)sizeof out - 512; i++) {
            dir_t *d = &dirs[i];
            n += snprintf(out + n, sizeof out - n, "%s{\"queue\": %d, \"link\": \"%s\", \"shape\": {\"delay_s\": %.9f, "
                          "\"jitter_s\": %.9f, \"distribution\": \"%s\", \"loss\": %.6f, \"burst\": %.3f}, "
                          "\"passed\": %llu, \"dropped\": %llu, \"held\": %d, \"max_held\": %llu, \"overflow\": %llu}",
                          i ? ", " : "", d->q, d->label, d->delay_ns / 1e9, d->jitter_ns / 1e9,
                          d->dist ? "normal" : "uniform", d->loss, d->burst, (unsigned long long)d->passed,
                          (unsigned long long)d->dropped, d->count, (unsigned long long)d->max_held,
                          (unsigned long long)d->overflow);
        }
        n += snprintf(out + n, sizeof out - n, "]}\n");
    } else if (sscanf(line, "set %d %lld %lld %d %lld %lld", &q, &a, &b, &dist, &e, &f) == 6) {
        dir_t *d = find(q);
        n = snprintf(out, sizeof out, !d ? "{\"error\": \"no queue %d\"}\n"
                     : set_shape(d, a, b, dist, e, f) < 0 ? "{\"error\": \"not a shape\"}\n" : "{\"ok\": true}\n", q);
    } else if (strncmp(line, "add ", 4) == 0 && sscanf(line + 4, "%d", &q) == 1 && find(q)) {
        dir_t *d = find(q);
        n = sscanf(line + 4, "%d %lld %lld %lld %d %lld %lld", &q, &c, &a, &b, &dist, &e, &f) == 7
            && set_shape(d, a, b, dist, e, f) == 0 ? snprintf(out, sizeof out, "{\"ok\": true}\n")
            : snprintf(out, sizeof out, "{\"error\": \"not a shape\"}\n");
    } else if (strncmp(line, "add ", 4) == 0) {
        dir_t *d = parse_dir(line + 4);
        int err = d ? bind_queue(d) : -EINVAL;
        if (d && err) { free(d->ring); ndirs--; }
        n = err ? snprintf(out, sizeof out, "{\"error\": \"cannot add queue: %s\"}\n", strerror(-err))
                : snprintf(out, sizeof out, "{\"ok\": true}\n");
    } else {
        n = snprintf(out, sizeof out, "{\"error\": \"unknown request\"}\n");
    }
    struct timeval tv = {0, 50000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (write(fd, out, n) < 0) { /* the client went away: nothing to do */ }
}

static int load(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "anylab-relay: %s: %s\n", path, strerror(errno)); return -1; }
    char line[512]; int no = 0;
    while (fgets(line, sizeof line, f)) {
        no++;
        if (line[0] == '#' || line[0] == '\n') continue;
        if (!parse_dir(line)) { fprintf(stderr, "anylab-relay: %s:%d: not a queue line\n", path, no); fclose(f); return -1; }
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--check") == 0) {
        if (load(argv[2]) < 0) return 2;
        printf("anylab-relay: %d queues, config ok\n", ndirs);
        return 0;
    }
    if (argc != 3) { fprintf(stderr, "usage: anylab-relay CONFIG CONTROL_SOCKET | --check CONFIG\n"); return 2; }
    if (load(argv[1]) < 0) return 2;
    rng_state ^= (uint64_t)getpid() * 0x2545F4914F6CDD1DULL;
    for (int i = 0; i < ndirs; i++) {
        int err = bind_queue(&dirs[i]);
        if (err) { fprintf(stderr, "anylab-relay: queue %d: %s\n", dirs[i].q, strerror(-err)); return 1; }
    }
    int ctl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un su = {.sun_family = AF_UNIX};
    if (strlen(argv[2]) >= sizeof su.sun_path) { fprintf(stderr, "anylab-relay: socket path too long\n"); return 2; }
    strcpy(su.sun_path, argv[2]);
    unlink(argv[2]);
    mode_t old = umask(0177);
    if (ctl < 0 || bind(ctl, (struct sockaddr *)&su, sizeof su) < 0 || listen(ctl, 8) < 0) {
        fprintf(stderr, "anylab-relay: control socket: %s\n", strerror(errno)); return 1;
    }
    umask(old);
    sigset_t mask; sigemptyset(&mask); sigaddset(&mask, SIGTERM); sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    struct rlimit rt = {200000, 400000}; /* SIGXCPU, then SIGKILL, after this much CPU without blocking */
    struct sched_param sp = {.sched_priority = RT_PRIORITY};
    int fifo = setrlimit(RLIMIT_RTTIME, &rt) == 0 && sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
    /* Test-only weakening (ANYLAB_WEAKEN=links): wake-ups only on a 2 ms tick of the clock, as a periodic
     * timer (a HZ-based sleep) would give; bench/links.py and tests/netns/test_links.py must see it miss
     * the goals. */
    const char *weaken = getenv("ANYLAB_WEAKEN");
    int weak = weaken && strcmp(weaken, "links") == 0;
    printf("{\"relay\": \"ready\", \"queues\": %d, \"scheduling\": \"%s\", \"implementation\": \"c\", "
           "\"weakened\": %s}\n", ndirs, fifo ? "fifo" : "none",
           weak ? "true" : "false");
    fflush(stdout);
    int conns[MAXCONN]; char cbuf[MAXCONN][512]; int clen[MAXCONN]; int nconn = 0;
    struct pollfd pfd[MAXQ + MAXCONN + 2];
    for (;;) {
        int64_t now = now_ns(), next = INT64_MAX;
        for (int i = 0; i < ndirs; i++)
            if (dirs[i].count && dirs[i].ring[dirs[i].head].deadline < next) next = dirs[i].ring[dirs[i].head].deadline;
        int np = 0;
        for (int i = 0; i < ndirs; i++) pfd[np++] = (struct pollfd){dirs[i].fd, POLLIN, 0};
        pfd[np++] = (struct pollfd){ctl, POLLIN, 0};
        pfd[np++] = (struct pollfd){sfd, POLLIN, 0};
        for (int i = 0; i < nconn; i++) pfd[np++] = (struct pollfd){conns[i], POLLIN, 0};
        struct timespec ts, *tp = NULL;
        if (next != INT64_MAX) {
            int64_t wait = next - now - RELEASE_EARLY_NS;
            if (wait < 0) wait = 0;
            if (weak) wait = ((now + wait) / 2000000 + 1) * 2000000 - now;
            ts.tv_sec = wait / 1000000000LL; ts.tv_nsec = wait % 1000000000LL; tp = &ts;
        }
        if (ppoll(pfd, np, tp, NULL) < 0 && errno != EINTR) { perror("anylab-relay: ppoll"); return 1; }
        now = now_ns();
        int nd = ndirs; /* control may add a queue below: its fd is polled from the next round */
        for (int i = 0; i < nd; i++) if (pfd[i].revents & POLLIN) drain(&dirs[i], now);
        if (pfd[nd + 1].revents & POLLIN) break; /* SIGTERM or SIGINT */
        for (int i = nconn - 1; i >= 0; i--) {
            if (!pfd[nd + 2 + i].revents) continue;
            ssize_t n = read(conns[i], cbuf[i] + clen[i], sizeof cbuf[i] - 1 - clen[i]);
            if (n > 0) clen[i] += n;
            cbuf[i][clen[i]] = 0;
            if (n > 0 && !strchr(cbuf[i], '\n') && clen[i] < (int)sizeof cbuf[i] - 1) continue;
            if (n > 0 || clen[i]) answer(conns[i], cbuf[i]);
            close(conns[i]);
            conns[i] = conns[nconn - 1]; memcpy(cbuf[i], cbuf[nconn - 1], sizeof cbuf[i]); clen[i] = clen[nconn - 1];
            nconn--;
        }
        if (pfd[nd].revents & POLLIN) {
            int c = accept4(ctl, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (c >= 0 && nconn < MAXCONN) { conns[nconn] = c; clen[nconn] = 0; nconn++; }
            else if (c >= 0) close(c);
        }
        now = weak ? now_ns() / 2000000 * 2000000 : now_ns() + RELEASE_EARLY_NS; /* weak: only what a tick passed */
        for (int i = 0; i < ndirs; i++) if (dirs[i].count && dirs[i].ring[dirs[i].head].deadline <= now) release(&dirs[i], now);
    }
    for (int i = 0; i < ndirs; i++) close(dirs[i].fd);
    unlink(argv[2]);
    return 0;
}
