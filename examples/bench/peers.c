/*
 * make bench-peers: the benchmark rows that apply, measured by the same C
 * code against missionstream (its C ABI) and the systems a user would
 * pick instead: Mosquitto 2 (retained messages, QoS 1, persistence on;
 * libmosquitto) and NATS JetStream KV (watch; put acknowledged after
 * storage; the NATS C client, libnats). scripts/bench-peers.sh builds it,
 * starts every server on free loopback ports and runs it:
 *
 *   peers --ms URL --mqtt PORT --nats URL [--rounds N]
 *
 * Rows (docs/BENCHMARK.md, "The peers, side by side"):
 *   P1 publish -> receive, 1 KiB, 200/s, p50
 *   P2 acknowledged publishes/s, 1 KiB (one at a time)
 *   P3 acknowledged publishes/s, 1 MiB (one at a time)
 *   P4 one waypoint moved in a ~1 MiB survey plan: bytes the leader sends
 *      per update (counted by a relay in this process), and publish ->
 *      receive p50 at 20/s
 *   P5 fan-out to 100 followers, 1 KiB, 50/s: last follower's p99
 *   P6 late join of a ~1 MiB plan: a new client until it holds the state
 * Every round measures each row on every system, the systems' order
 * rotating from round to round; each figure is the median over rounds,
 * each ratio (peer / missionstream) the median of the rounds' ratios.
 * States of P1-P3 are random text (no two alike, so no system can send
 * less than the state).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <mosquitto.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "missionstream.h"

/* ------------------------------------------------------------------ util */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_until(int64_t t) {
  for (;;) {
    int64_t d = t - now_ns();
    if (d <= 0) return;
    struct timespec ts = {(time_t)(d / 1000000000), (long)(d % 1000000000)};
    nanosleep(&ts, NULL);
  }
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench-peers: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The q-quantile (0..1) of n values (sorted in place); NAN when n == 0. */
static double quantile(double *v, int n, double q) {
  if (n <= 0) return NAN;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  int i = (int)ceil(q * n) - 1;
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return v[i];
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* `len` bytes of JSON: {"n":0000000000,"pad":"<random>"}; n at offset 5. */
#define N_OFF 5
static char *random_state(size_t len) {
  static const char alpha[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  char *s = malloc(len + 1);
  if (!s) die("out of memory");
  int h = snprintf(s, len + 1, "{\"n\":%010u,\"pad\":\"", 0u);
  for (size_t i = (size_t)h; i < len - 2; i++) s[i] = alpha[rng() % 36];
  s[len - 2] = '"';
  s[len - 1] = '}';
  s[len] = 0;
  return s;
}

static void set_n(char *s, unsigned n) {
  char tmp[11];
  snprintf(tmp, sizeof tmp, "%010u", n);
  memcpy(s + N_OFF, tmp, 10);
}

/* ------------------------------------------------------------------ plan */

/* A QGroundControl survey plan as tests/common/plan.rs writes it (indented
 * by 4): a takeoff, rows of 20 waypoints with a camera trigger at the start
 * of each row and off at its end, a geofence and rally points. One waypoint
 * in the middle is the one dragged; its latitude, at `lat_off`, is
 * lat_base + n * 1e-7 for update n (always 10 characters). */
typedef struct {
  char *text;
  size_t len;
  size_t lat_off;
  double lat_base;
} plan_t;

typedef struct {
  char *b;
  size_t len, cap;
} buf_t;

static void bput(buf_t *b, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    va_start(ap, fmt);
    int n = vsnprintf(b->b + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) die("vsnprintf");
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    b->cap = b->cap * 2 + (size_t)n + 1024;
    b->b = realloc(b->b, b->cap);
    if (!b->b) die("out of memory");
  }
}

static void plan_item(buf_t *b, int jump, int cmd, double alt, double p0, double lat, double lon,
                      bool last, size_t *lat_off) {
  bput(b,
       "            {\n"
       "                \"AMSLAltAboveTerrain\": null,\n"
       "                \"Altitude\": %g,\n"
       "                \"AltitudeMode\": 1,\n"
       "                \"autoContinue\": true,\n"
       "                \"command\": %d,\n"
       "                \"doJumpId\": %d,\n"
       "                \"frame\": 3,\n"
       "                \"params\": [\n"
       "                    %g,\n"
       "                    0,\n"
       "                    0,\n"
       "                    null,\n"
       "                    ",
       alt, cmd, jump, p0);
  if (lat_off) *lat_off = b->len;
  bput(b,
       "%.7f,\n"
       "                    %.7f,\n"
       "                    %g\n"
       "                ],\n"
       "                \"type\": \"SimpleItem\"\n"
       "            }%s\n",
       lat, lon, alt, last ? "" : ",");
}

static void plan_camera(buf_t *b, int jump, double dist, bool last) {
  bput(b,
       "            {\n"
       "                \"autoContinue\": true,\n"
       "                \"command\": 206,\n"
       "                \"doJumpId\": %d,\n"
       "                \"frame\": 2,\n"
       "                \"params\": [\n"
       "                    %g,\n"
       "                    0,\n"
       "                    1,\n"
       "                    0,\n"
       "                    0,\n"
       "                    0,\n"
       "                    0\n"
       "                ],\n"
       "                \"type\": \"SimpleItem\"\n"
       "            }%s\n",
       jump, dist, last ? "" : ",");
}

static plan_t make_plan(size_t bytes) {
  const double lat0 = 47.3977, lon0 = 8.5456;
  const int row_len = 20;
  int n = (int)(bytes / 560); /* about 560 bytes per waypoint with its cameras */
  buf_t b = {malloc(bytes + 65536), 0, bytes + 65536};
  if (!b.b) die("out of memory");
  plan_t p = {0};
  bput(&b,
       "{\n    \"fileType\": \"Plan\",\n    \"geoFence\": {\n        \"circles\": [\n"
       "            {\n                \"circle\": {\n                    \"center\": [\n"
       "                        %.4f,\n                        %.4f\n                    ],\n"
       "                    \"radius\": 850.5\n                },\n"
       "                \"inclusion\": true,\n                \"version\": 1\n            }\n"
       "        ],\n        \"polygons\": [],\n        \"version\": 2\n    },\n"
       "    \"groundStation\": \"QGroundControl\",\n    \"mission\": {\n"
       "        \"cruiseSpeed\": 15,\n        \"firmwareType\": 12,\n"
       "        \"globalPlanAltitudeMode\": 1,\n        \"hoverSpeed\": 5,\n        \"items\": [\n",
       lat0, lon0);
  int jump = 1;
  plan_item(&b, jump++, 22, 50, 15, lat0, lon0, false, NULL);
  for (int i = 0; i < n; i++) {
    int row = i / row_len, col = i % row_len;
    if (col == 0) plan_camera(&b, jump++, 25, false);
    int x = row % 2 == 0 ? col : row_len - 1 - col;
    double lat = round((lat0 + row * 0.00027) * 1e7) / 1e7;
    double lon = round((lon0 + x * 0.00041) * 1e7) / 1e7;
    bool dragged = i == n / 2;
    size_t off = 0;
    plan_item(&b, jump++, 16, 60, 0, lat, lon, false, dragged ? &off : NULL);
    if (dragged) {
      p.lat_off = off;
      p.lat_base = lat;
    }
    if (col == row_len - 1 || i == n - 1) plan_camera(&b, jump++, 0, i == n - 1);
  }
  bput(&b,
       "        ],\n        \"plannedHomePosition\": [\n            %.4f,\n            %.4f,\n"
       "            488.1\n        ],\n        \"vehicleType\": 2,\n        \"version\": 2\n    },\n"
       "    \"rallyPoints\": {\n        \"points\": [],\n        \"version\": 2\n    },\n"
       "    \"version\": 1\n}\n",
       lat0, lon0);
  p.text = b.b;
  p.len = b.len;
  return p;
}

/* Moves the dragged waypoint to its position of update n. */
static void plan_move(plan_t *p, unsigned n) {
  char tmp[32];
  int w = snprintf(tmp, sizeof tmp, "%.7f", p->lat_base + n * 1e-7);
  if (w != 10) die("plan: latitude of update %u is not 10 characters", n);
  memcpy(p->text + p->lat_off, tmp, 10);
}

/* ------------------------------------------------------------- followers */

/* What one follower received: the first arrival time of each numbered
 * state. The number is read from the state itself (N_OFF, or the dragged
 * waypoint's latitude for plans). */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int64_t *recv; /* recv[n]: first arrival, ns; 0: not yet */
  int cap;
  const plan_t *plan; /* NULL: a numbered random state */
  uint64_t states;
  size_t last_len;
} fctx_t;

static void fctx_init(fctx_t *f, int cap, const plan_t *plan) {
  memset(f, 0, sizeof *f);
  pthread_mutex_init(&f->mu, NULL);
  pthread_cond_init(&f->cv, NULL);
  f->cap = cap;
  f->recv = calloc((size_t)cap, sizeof *f->recv);
  f->plan = plan;
}

static void fctx_destroy(fctx_t *f) {
  pthread_mutex_destroy(&f->mu);
  pthread_cond_destroy(&f->cv);
  free(f->recv);
}

/* The shared receive path of every system's follower. */
static void on_state(fctx_t *f, const char *data, size_t len) {
  int64_t t = now_ns();
  long n = -1;
  if (f->plan) {
    if (len == f->plan->len) {
      char tmp[11];
      memcpy(tmp, data + f->plan->lat_off, 10);
      tmp[10] = 0;
      n = lround((strtod(tmp, NULL) - f->plan->lat_base) * 1e7);
    }
  } else if (len > N_OFF + 10 && memcmp(data, "{\"n\":", 5) == 0) {
    char tmp[11];
    memcpy(tmp, data + N_OFF, 10);
    tmp[10] = 0;
    n = strtol(tmp, NULL, 10);
  }
  pthread_mutex_lock(&f->mu);
  if (n >= 0 && n < f->cap && f->recv[n] == 0) f->recv[n] = t;
  f->states++;
  f->last_len = len;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
}

/* Waits until state n arrived (n < 0: any state of length `len`); false on timeout. */
static bool fctx_wait(fctx_t *f, long n, size_t len, int timeout_ms) {
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += timeout_ms / 1000;
  dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
  if (dl.tv_nsec >= 1000000000) {
    dl.tv_sec++;
    dl.tv_nsec -= 1000000000;
  }
  bool ok = false;
  pthread_mutex_lock(&f->mu);
  for (;;) {
    ok = n >= 0 ? (n < f->cap && f->recv[n] != 0) : (f->states > 0 && f->last_len == len);
    if (ok) break;
    if (pthread_cond_timedwait(&f->cv, &f->mu, &dl) == ETIMEDOUT) break;
  }
  pthread_mutex_unlock(&f->mu);
  return ok;
}

/* When the follower held state n or a newer one, for n in [first, last]
 * (out[n - first]; 0: never). missionstream delivers the latest state: a
 * follower whose callback is still busy with one skips to the newest, so a
 * state counts as received when it or a newer one is held. */
static void held_since(fctx_t *f, int first, int last, int64_t *out) {
  int64_t best = 0;
  pthread_mutex_lock(&f->mu);
  for (int n = last; n >= first; n--) {
    int64_t r = n < f->cap ? f->recv[n] : 0;
    if (r && (!best || r < best)) best = r;
    out[n - first] = best;
  }
  pthread_mutex_unlock(&f->mu);
}

/* ----------------------------------------------------------------- relay */

/* A TCP relay on loopback that counts the bytes each way: the leader of
 * row P4 reaches its server through it. */
typedef struct {
  int lfd;
  int target_port;
  int port;
  atomic_ullong up, down; /* client -> server, server -> client */
} relay_t;

typedef struct {
  relay_t *r;
  int a, b;
} relay_conn_t;

static void *relay_pump(void *arg) {
  relay_conn_t *c = arg;
  char buf[65536];
  struct pollfd p[2] = {{c->a, POLLIN, 0}, {c->b, POLLIN, 0}};
  for (;;) {
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    bool done = false;
    for (int i = 0; i < 2 && !done; i++) {
      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(p[i].fd, buf, sizeof buf);
      if (n <= 0) {
        done = true;
        break;
      }
      int to = i == 0 ? c->b : c->a;
      for (ssize_t off = 0; off < n;) {
        ssize_t w = write(to, buf + off, (size_t)(n - off));
        if (w <= 0) {
          done = true;
          break;
        }
        off += w;
      }
      atomic_fetch_add(i == 0 ? &c->r->up : &c->r->down, (unsigned long long)n);
    }
    if (done) break;
  }
  close(c->a);
  close(c->b);
  free(c);
  return NULL;
}

static void *relay_accept(void *arg) {
  relay_t *r = arg;
  for (;;) {
    int a = accept(r->lfd, NULL, NULL);
    if (a < 0) {
      if (errno == EINTR) continue;
      return NULL;
    }
    int b = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->target_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (b < 0 || connect(b, (struct sockaddr *)&sa, sizeof sa) != 0) {
      close(a);
      if (b >= 0) close(b);
      continue;
    }
    int one = 1;
    setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    relay_conn_t *c = malloc(sizeof *c);
    c->r = r;
    c->a = a;
    c->b = b;
    pthread_t t;
    pthread_create(&t, NULL, relay_pump, c);
    pthread_detach(t);
  }
}

static relay_t *relay_start(int target_port) {
  relay_t *r = calloc(1, sizeof *r);
  r->target_port = target_port;
  r->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof sa;
  if (r->lfd < 0 || bind(r->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(r->lfd, 64) != 0 ||
      getsockname(r->lfd, (struct sockaddr *)&sa, &sl) != 0)
    die("relay: %s", strerror(errno));
  r->port = ntohs(sa.sin_port);
  pthread_t t;
  pthread_create(&t, NULL, relay_accept, r);
  pthread_detach(t);
  return r;
}

/* --------------------------------------------------------------- systems */

typedef struct {
  const char *name;
  /* A leader of `topic`; through the relay when `relay` is not NULL. */
  void *(*leader_open)(const char *topic, relay_t *relay);
  /* Hands a state over (not waiting for its acknowledgement). */
  void (*publish)(void *leader, const char *data, size_t len);
  /* Publishes and waits until the server acknowledged it. */
  void (*publish_acked)(void *leader, const char *data, size_t len);
  void (*leader_close)(void *leader);
  /* A new client following `topic`; returns once subscribed. */
  void *(*follower_open)(const char *topic, fctx_t *f);
  void (*follower_close)(void *follower);
} system_t;

static char ms_url[512], nats_url[512];
static int mqtt_port, nats_port, ms_port;
static const char *PASSWORD = "bench-password";
static const char *LEADER_CODE = "bench-leader-code";
static unsigned topic_counter;

/* ---- missionstream, through its C ABI */

static void ms_check(ms_status s, const char *what) {
  if (s != MS_OK) die("missionstream: %s: %s (%s)", what, ms_status_name(s), ms_last_error());
}

static ms_client *ms_new(const char *url) {
  ms_client *c = NULL;
  ms_check(ms_client_new(url, &c), "ms_client_new");
  ms_check(ms_client_set_kdf_iterations(c, MIN_ITERATIONS), "ms_client_set_kdf_iterations");
  return c;
}

typedef struct {
  ms_client *c;
  char name[128];
} ms_leader_t;

static void *ms_leader_open(const char *topic, relay_t *relay) {
  ms_leader_t *l = calloc(1, sizeof *l);
  char url[128];
  if (relay) snprintf(url, sizeof url, "http://127.0.0.1:%d", relay->port);
  l->c = ms_new(relay ? url : ms_url);
  snprintf(l->name, sizeof l->name, "%s", topic);
  ms_check(ms_start(l->c, l->name, PASSWORD, LEADER_CODE), "ms_start");
  return l;
}

static void ms_pub(void *leader, const char *data, size_t len) {
  ms_leader_t *l = leader;
  ms_check(ms_publish(l->c, l->name, data, len), "ms_publish");
}

static void ms_pub_acked(void *leader, const char *data, size_t len) {
  ms_leader_t *l = leader;
  ms_check(ms_publish(l->c, l->name, data, len), "ms_publish");
  ms_check(ms_flush(l->c, l->name, 30000), "ms_flush");
}

static void ms_leader_close(void *leader) {
  ms_leader_t *l = leader;
  ms_check(ms_stop(l->c, l->name), "ms_stop");
  ms_client_free(l->c);
  free(l);
}

static void ms_cb(const ms_event *e, void *ud) {
  if (e->kind == MS_EVENT_STATE) on_state(ud, e->data, e->len);
}

static void *ms_follower_open(const char *topic, fctx_t *f) {
  ms_client *c = ms_new(ms_url);
  ms_check(ms_set_callback(c, ms_cb, f), "ms_set_callback");
  ms_check(ms_connect(c, topic, PASSWORD), "ms_connect");
  return c;
}

static void ms_follower_close(void *follower) { ms_client_free(follower); }

static const system_t MS = {"missionstream", ms_leader_open, ms_pub, ms_pub_acked,
                            ms_leader_close, ms_follower_open, ms_follower_close};

/* ---- Mosquitto 2: retained messages, QoS 1 */

typedef struct {
  struct mosquitto *m;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int connected; /* 1: CONNACK ok; -1: refused */
  int subscribed;
  int acked_mid;
  fctx_t *f;
  char topic[128];
} mq_t;

static void mq_on_connect(struct mosquitto *m, void *ud, int rc) {
  (void)m;
  mq_t *q = ud;
  pthread_mutex_lock(&q->mu);
  q->connected = rc == 0 ? 1 : -1;
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
}

static void mq_on_publish(struct mosquitto *m, void *ud, int mid) {
  (void)m;
  mq_t *q = ud;
  pthread_mutex_lock(&q->mu);
  q->acked_mid = mid;
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
}

static void mq_on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *qos) {
  (void)m;
  (void)mid;
  (void)n;
  (void)qos;
  mq_t *q = ud;
  pthread_mutex_lock(&q->mu);
  q->subscribed = 1;
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
}

static void mq_on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg) {
  (void)m;
  mq_t *q = ud;
  if (q->f && msg->payloadlen > 0) on_state(q->f, msg->payload, (size_t)msg->payloadlen);
}

/* Waits (30 s at most) until *field != 0 (or == want when want != 0). */
static void mq_wait(mq_t *q, int *field, int want, const char *what) {
  int64_t deadline = now_ns() + 30000000000ll;
  pthread_mutex_lock(&q->mu);
  while (want ? *field != want : *field == 0) {
    if (now_ns() > deadline) die("mosquitto: no %s within 30 s", what);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_nsec += 50000000;
    if (dl.tv_nsec >= 1000000000) {
      dl.tv_sec++;
      dl.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&q->cv, &q->mu, &dl);
  }
  pthread_mutex_unlock(&q->mu);
}

static mq_t *mq_open(int port, fctx_t *f) {
  mq_t *q = calloc(1, sizeof *q);
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
  q->f = f;
  q->m = mosquitto_new(NULL, true, q);
  if (!q->m) die("mosquitto_new");
  mosquitto_int_option(q->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_connect_callback_set(q->m, mq_on_connect);
  mosquitto_publish_callback_set(q->m, mq_on_publish);
  mosquitto_subscribe_callback_set(q->m, mq_on_subscribe);
  mosquitto_message_callback_set(q->m, mq_on_message);
  int rc = mosquitto_connect(q->m, "127.0.0.1", port, 60);
  if (rc != MOSQ_ERR_SUCCESS) die("mosquitto_connect: %s", mosquitto_strerror(rc));
  if (mosquitto_loop_start(q->m) != MOSQ_ERR_SUCCESS) die("mosquitto_loop_start");
  mq_wait(q, &q->connected, 0, "CONNACK");
  if (q->connected != 1) die("mosquitto: connection refused");
  return q;
}

static void mq_close(mq_t *q) {
  mosquitto_disconnect(q->m);
  mosquitto_loop_stop(q->m, false);
  mosquitto_destroy(q->m);
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->cv);
  free(q);
}

static void *mq_leader_open(const char *topic, relay_t *relay) {
  mq_t *q = mq_open(relay ? relay->port : mqtt_port, NULL);
  snprintf(q->topic, sizeof q->topic, "%s", topic);
  return q;
}

static int mq_send(mq_t *q, const char *data, size_t len) {
  int mid = 0;
  int rc = mosquitto_publish(q->m, &mid, q->topic, (int)len, data, 1, true);
  if (rc != MOSQ_ERR_SUCCESS) die("mosquitto_publish: %s", mosquitto_strerror(rc));
  return mid;
}

static void mq_pub(void *leader, const char *data, size_t len) { mq_send(leader, data, len); }

static void mq_pub_acked(void *leader, const char *data, size_t len) {
  mq_t *q = leader;
  int mid = mq_send(q, data, len);
  mq_wait(q, &q->acked_mid, mid, "PUBACK");
}

static void mq_leader_close(void *leader) {
  mq_t *q = leader;
  /* An empty retained message deletes the retained one. */
  int mid = 0;
  mosquitto_publish(q->m, &mid, q->topic, 0, NULL, 1, true);
  mq_wait(q, &q->acked_mid, mid, "PUBACK");
  mq_close(q);
}

static void *mq_follower_open(const char *topic, fctx_t *f) {
  mq_t *q = mq_open(mqtt_port, f);
  int rc = mosquitto_subscribe(q->m, NULL, topic, 1);
  if (rc != MOSQ_ERR_SUCCESS) die("mosquitto_subscribe: %s", mosquitto_strerror(rc));
  mq_wait(q, &q->subscribed, 0, "SUBACK");
  return q;
}

static void mq_follower_close(void *follower) { mq_close(follower); }

static const system_t MQ = {"Mosquitto", mq_leader_open, mq_pub, mq_pub_acked,
                            mq_leader_close, mq_follower_open, mq_follower_close};

/* ---- NATS JetStream KV: put (acknowledged after storage), watch */

#define NATS_BUCKET "bench"

static void nats_check(natsStatus s, const char *what) {
  if (s != NATS_OK) die("nats: %s: %s (%s)", what, natsStatus_GetText(s), nats_GetLastError(NULL));
}

typedef struct {
  natsConnection *nc;
  jsCtx *js;
  kvStore *kv;
  kvWatcher *w;
  pthread_t t;
  fctx_t *f;
  atomic_bool stop;
  char key[128];
} nk_t;

static nk_t *nk_open(const char *url) {
  nk_t *k = calloc(1, sizeof *k);
  nats_check(natsConnection_ConnectTo(&k->nc, url), "connect");
  nats_check(natsConnection_JetStream(&k->js, k->nc, NULL), "JetStream");
  nats_check(js_KeyValue(&k->kv, k->js, NATS_BUCKET), "js_KeyValue");
  return k;
}

static void nk_close(nk_t *k) {
  kvStore_Destroy(k->kv);
  jsCtx_Destroy(k->js);
  natsConnection_Destroy(k->nc);
  free(k);
}

/* KV keys may hold letters, digits, '-', '_', '/', '=' and '.'. */
static void *nk_leader_open(const char *topic, relay_t *relay) {
  char url[128];
  if (relay) snprintf(url, sizeof url, "nats://127.0.0.1:%d", relay->port);
  nk_t *k = nk_open(relay ? url : nats_url);
  snprintf(k->key, sizeof k->key, "%s", topic);
  return k;
}

static void nk_pub(void *leader, const char *data, size_t len) {
  nk_t *k = leader;
  nats_check(kvStore_Put(NULL, k->kv, k->key, data, (int)len), "kvStore_Put");
}

static void nk_leader_close(void *leader) {
  nk_t *k = leader;
  nats_check(kvStore_Purge(k->kv, k->key, NULL), "kvStore_Purge");
  nk_close(k);
}

static void *nk_watch_loop(void *arg) {
  nk_t *k = arg;
  while (!atomic_load(&k->stop)) {
    kvEntry *e = NULL;
    natsStatus s = kvWatcher_Next(&e, k->w, 200);
    if (s == NATS_TIMEOUT) continue;
    if (s != NATS_OK) break;
    if (e) {
      if (kvEntry_Operation(e) == kvOp_Put)
        on_state(k->f, kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
      kvEntry_Destroy(e);
    }
  }
  return NULL;
}

static void *nk_follower_open(const char *topic, fctx_t *f) {
  nk_t *k = nk_open(nats_url);
  k->f = f;
  nats_check(kvStore_Watch(&k->w, k->kv, topic, NULL), "kvStore_Watch");
  pthread_create(&k->t, NULL, nk_watch_loop, k);
  return k;
}

static void nk_follower_close(void *follower) {
  nk_t *k = follower;
  atomic_store(&k->stop, true);
  kvWatcher_Stop(k->w);
  pthread_join(k->t, NULL);
  kvWatcher_Destroy(k->w);
  nk_close(k);
}

static const system_t NK = {"NATS KV", nk_leader_open, nk_pub, nk_pub,
                            nk_leader_close, nk_follower_open, nk_follower_close};

#define NSYS 3
static const system_t *SYSTEMS[NSYS] = {&MS, &MQ, &NK};
static relay_t *RELAYS[NSYS];

/* ------------------------------------------------------------------ rows */

#define MAX_ROUNDS 32
enum { P1, P2, P3, P4B, P4L, P5, P6, NROWS };
static const char *ROW_NAME[NROWS] = {
    "P1. publish -> receive, 1 KiB, 200/s, p50",
    "P2. acknowledged publishes/s, 1 KiB",
    "P3. acknowledged publishes/s, 1 MiB",
    "P4. one waypoint moved, ~1 MiB plan: bytes sent per update",
    "P4. one waypoint moved, ~1 MiB plan: publish -> receive p50, 20/s",
    "P5. fan-out 100 followers, 1 KiB, 50/s: last follower p99",
    "P6. late join of a ~1 MiB plan (new client until it holds it), median",
};
static const char *ROW_UNIT[NROWS] = {"ms", "/s", "/s", "B", "ms", "ms", "ms"};
static double fig[NROWS][NSYS][MAX_ROUNDS];
static double ms_cached_join[MAX_ROUNDS];
static int rounds = 5;
static int round_no;

static char *states_1k[64];
static char *states_1m[4];
static plan_t plan;

static void topic_for(char *out, size_t n, const char *row) {
  snprintf(out, n, "peers-%d-%s-r%d-%u", (int)getpid(), row, round_no, topic_counter++);
}

/* P1 (size 1 KiB, 200/s) and the same loop for other sizes. */
static double row_latency(const system_t *s, int count, double rate) {
  char topic[160];
  topic_for(topic, sizeof topic, "lat");
  fctx_t f;
  fctx_init(&f, count + 1, NULL);
  void *l = s->leader_open(topic, NULL);
  void *fo = s->follower_open(topic, &f);
  int64_t *sent = calloc((size_t)count + 1, sizeof *sent);
  int64_t period = (int64_t)(1e9 / rate), t = now_ns();
  for (int n = 1; n <= count; n++) {
    char *st = states_1k[n % 64];
    set_n(st, (unsigned)n);
    sleep_until(t);
    sent[n] = now_ns();
    s->publish(l, st, 1024);
    t += period;
  }
  if (!fctx_wait(&f, count, 0, 10000)) die("%s: the last state of row P1 never arrived", s->name);
  s->follower_close(fo);
  s->leader_close(l);
  int64_t *held = calloc((size_t)count + 1, sizeof *held);
  held_since(&f, 0, count, held);
  double *lat = calloc((size_t)count + 1, sizeof *lat);
  int m = 0;
  for (int n = count / 10; n <= count; n++) /* the first tenth warms up */
    lat[m++] = (double)(held[n] - sent[n]) / 1e6;
  free(held);
  double p50 = quantile(lat, m, 0.5);
  free(lat);
  free(sent);
  fctx_destroy(&f);
  return p50;
}

/* P2, P3: acknowledged publishes, one at a time, for `seconds`. */
static double row_acked(const system_t *s, char **states, int nstates, size_t len, double seconds) {
  char topic[160];
  topic_for(topic, sizeof topic, "acked");
  void *l = s->leader_open(topic, NULL);
  /* Warm-up: the first states (connections, the stream's first record). */
  for (int i = 0; i < 3; i++) {
    set_n(states[i % nstates], (unsigned)i);
    s->publish_acked(l, states[i % nstates], len);
  }
  int64_t t0 = now_ns(), end = t0 + (int64_t)(seconds * 1e9);
  unsigned n = 3;
  while (now_ns() < end) {
    char *st = states[n % (unsigned)nstates];
    set_n(st, n);
    s->publish_acked(l, st, len);
    n++;
  }
  double rate = (n - 3) / ((double)(now_ns() - t0) / 1e9);
  s->leader_close(l);
  return rate;
}

/* P4: one waypoint moved per update of the ~1 MiB plan. */
static void row_plan(int si, double *bytes, double *p50) {
  const system_t *s = SYSTEMS[si];
  char topic[160];
  /* Bytes: the leader through the relay, acknowledged updates at 20/s. */
  topic_for(topic, sizeof topic, "planbytes");
  void *l = s->leader_open(topic, RELAYS[si]);
  plan_move(&plan, 0);
  s->publish_acked(l, plan.text, plan.len);
  /* Two updates before counting: a system may send the first in full. */
  int64_t t = now_ns();
  for (unsigned n = 1; n <= 2; n++) {
    plan_move(&plan, n);
    s->publish_acked(l, plan.text, plan.len);
  }
  const int updates = 20;
  usleep(20000);
  unsigned long long up0 = atomic_load(&RELAYS[si]->up);
  t = now_ns();
  for (unsigned n = 3; n < 3 + (unsigned)updates; n++) {
    sleep_until(t);
    plan_move(&plan, n);
    s->publish_acked(l, plan.text, plan.len);
    t += 50000000;
  }
  usleep(20000);
  *bytes = (double)(atomic_load(&RELAYS[si]->up) - up0) / updates;
  s->leader_close(l);

  /* Latency: the leader direct, one follower, 40 updates at 20/s. */
  const int count = 40;
  topic_for(topic, sizeof topic, "planlat");
  fctx_t f;
  fctx_init(&f, count + 1, &plan);
  l = s->leader_open(topic, NULL);
  plan_move(&plan, 0);
  s->publish_acked(l, plan.text, plan.len);
  void *fo = s->follower_open(topic, &f);
  if (!fctx_wait(&f, 0, 0, 30000)) die("%s: the follower of row P4 never got the plan", s->name);
  int64_t *sent = calloc((size_t)count + 1, sizeof *sent);
  t = now_ns();
  for (int n = 1; n <= count; n++) {
    sleep_until(t);
    plan_move(&plan, (unsigned)n);
    sent[n] = now_ns();
    s->publish(l, plan.text, plan.len);
    t += 50000000;
  }
  if (!fctx_wait(&f, count, 0, 10000)) die("%s: the last plan update never arrived", s->name);
  int64_t *held = calloc((size_t)count + 1, sizeof *held);
  held_since(&f, 0, count, held);
  double *lat = calloc((size_t)count + 1, sizeof *lat);
  int m = 0;
  for (int n = 3; n <= count; n++) lat[m++] = (double)(held[n] - sent[n]) / 1e6;
  free(held);
  *p50 = quantile(lat, m, 0.5);
  s->follower_close(fo);
  s->leader_close(l);
  free(lat);
  free(sent);
  fctx_destroy(&f);
}

/* P5: 100 followers, opened once per system and run, on their own topic. */
#define FANOUT 100
#define FANOUT_STATES 200
typedef struct {
  char topic[160];
  void *leader;
  void *followers[FANOUT];
  fctx_t ctx[FANOUT];
} fanout_t;
static fanout_t fanouts[NSYS];
static unsigned long fanout_skipped[NSYS]; /* (follower, state) pairs never delivered */

static void fanout_open(int si) {
  const system_t *s = SYSTEMS[si];
  fanout_t *fo = &fanouts[si];
  topic_for(fo->topic, sizeof fo->topic, "fanout");
  fo->leader = s->leader_open(fo->topic, NULL);
  set_n(states_1k[0], 0);
  s->publish_acked(fo->leader, states_1k[0], 1024);
  for (int i = 0; i < FANOUT; i++) {
    fctx_init(&fo->ctx[i], MAX_ROUNDS * FANOUT_STATES + 1, NULL);
    fo->followers[i] = s->follower_open(fo->topic, &fo->ctx[i]);
  }
  for (int i = 0; i < FANOUT; i++)
    if (!fctx_wait(&fo->ctx[i], 0, 0, 30000)) die("%s: fan-out follower %d got no state", s->name, i);
}

static void fanout_close(int si) {
  fanout_t *fo = &fanouts[si];
  for (int i = 0; i < FANOUT; i++) {
    SYSTEMS[si]->follower_close(fo->followers[i]);
    fctx_destroy(&fo->ctx[i]);
  }
  SYSTEMS[si]->leader_close(fo->leader);
}

static double row_fanout(int si) {
  const system_t *s = SYSTEMS[si];
  fanout_t *fo = &fanouts[si];
  int first = round_no * FANOUT_STATES + 1, last = first + FANOUT_STATES - 1;
  int64_t sent[FANOUT_STATES];
  int64_t t = now_ns();
  for (int n = first; n <= last; n++) {
    char *st = states_1k[n % 64];
    set_n(st, (unsigned)n);
    sleep_until(t);
    sent[n - first] = now_ns();
    s->publish(fo->leader, st, 1024);
    t += 20000000;
  }
  for (int i = 0; i < FANOUT; i++)
    if (!fctx_wait(&fo->ctx[i], last, 0, 10000))
      die("%s: fan-out follower %d never got the round's last state", s->name, i);
  /* Per state, when the last follower held it (or a newer one). */
  static int64_t worst[FANOUT_STATES], held[FANOUT_STATES];
  memset(worst, 0, sizeof worst);
  for (int i = 0; i < FANOUT; i++) {
    pthread_mutex_lock(&fo->ctx[i].mu);
    for (int n = first; n <= last; n++) fanout_skipped[si] += fo->ctx[i].recv[n] == 0;
    pthread_mutex_unlock(&fo->ctx[i].mu);
    held_since(&fo->ctx[i], first, last, held);
    for (int k = 0; k < FANOUT_STATES; k++)
      if (held[k] > worst[k]) worst[k] = held[k];
  }
  double lat[FANOUT_STATES];
  int m = 0;
  for (int n = first + FANOUT_STATES / 10; n <= last; n++) lat[m++] = (double)(worst[n - first] - sent[n - first]) / 1e6;
  return quantile(lat, m, 0.99);
}

/* P6: the median of 5 late joins of the ~1 MiB plan, each a new client. */
static double row_late_join(int si) {
  const system_t *s = SYSTEMS[si];
  char topic[160];
  topic_for(topic, sizeof topic, "join");
  void *l = s->leader_open(topic, NULL);
  plan_move(&plan, 7);
  s->publish_acked(l, plan.text, plan.len);
  double v[5];
  for (int i = 0; i < 5; i++) {
    fctx_t f;
    fctx_init(&f, 8, &plan);
    int64_t t0 = now_ns();
    void *fo = s->follower_open(topic, &f);
    if (!fctx_wait(&f, 7, 0, 30000)) die("%s: a late joiner never got the plan", s->name);
    v[i] = (double)(f.recv[7] - t0) / 1e6;
    s->follower_close(fo);
    fctx_destroy(&f);
  }
  if (s == &MS) {
    /* For the record: a client that follows the stream again (its key
     * cached; no key derivation). */
    fctx_t f;
    fctx_init(&f, 8, &plan);
    ms_client *c = ms_new(ms_url);
    ms_check(ms_set_callback(c, ms_cb, &f), "ms_set_callback");
    ms_check(ms_connect(c, topic, PASSWORD), "ms_connect");
    fctx_wait(&f, 7, 0, 30000);
    ms_check(ms_disconnect(c, topic), "ms_disconnect");
    double w[5];
    for (int i = 0; i < 5; i++) {
      memset(f.recv, 0, sizeof *f.recv * (size_t)f.cap);
      int64_t t0 = now_ns();
      ms_check(ms_connect(c, topic, PASSWORD), "ms_connect");
      if (!fctx_wait(&f, 7, 0, 30000)) die("missionstream: a reconnecting follower never got the plan");
      w[i] = (double)(f.recv[7] - t0) / 1e6;
      ms_check(ms_disconnect(c, topic), "ms_disconnect");
    }
    ms_client_free(c);
    fctx_destroy(&f);
    ms_cached_join[round_no] = quantile(w, 5, 0.5);
  }
  s->leader_close(l);
  return quantile(v, 5, 0.5);
}

/* ---------------------------------------------------------------- output */

static double median_of(double *v, int n) {
  double tmp[MAX_ROUNDS];
  int m = 0;
  for (int i = 0; i < n; i++)
    if (!isnan(v[i])) tmp[m++] = v[i];
  return quantile(tmp, m, 0.5);
}

static void fmt_fig(char *out, size_t n, double v, const char *unit) {
  if (isnan(v))
    snprintf(out, n, "-");
  else if (strcmp(unit, "B") == 0)
    snprintf(out, n, "%.0f B", v);
  else if (strcmp(unit, "/s") == 0)
    snprintf(out, n, v >= 100 ? "%.0f/s" : "%.1f/s", v);
  else
    snprintf(out, n, v >= 10 ? "%.1f ms" : "%.2f ms", v);
}

static void fmt_ratio(char *out, size_t n, double v) {
  if (isnan(v))
    snprintf(out, n, "-");
  else if (v >= 100)
    snprintf(out, n, "%.0f", v);
  else
    snprintf(out, n, "%.3g", v);
}

static void print_table(void) {
  printf("\n=== peers, median over %d rounds (ratio: peer / missionstream, the median of the rounds' ratios) ===\n",
         rounds);
  printf("| row | missionstream | Mosquitto 2 (QoS 1, retained) | ratio | NATS JetStream KV | ratio |\n");
  printf("|---|---|---|---|---|---|\n");
  for (int r = 0; r < NROWS; r++) {
    char a[64], b[64], c[64];
    fmt_fig(a, sizeof a, median_of(fig[r][0], rounds), ROW_UNIT[r]);
    fmt_fig(b, sizeof b, median_of(fig[r][1], rounds), ROW_UNIT[r]);
    fmt_fig(c, sizeof c, median_of(fig[r][2], rounds), ROW_UNIT[r]);
    double ratio[NSYS][MAX_ROUNDS];
    for (int si = 1; si < NSYS; si++)
      for (int k = 0; k < rounds; k++) ratio[si][k] = fig[r][si][k] / fig[r][0][k];
    char q1[32], q2[32];
    fmt_ratio(q1, sizeof q1, median_of(ratio[1], rounds));
    fmt_ratio(q2, sizeof q2, median_of(ratio[2], rounds));
    printf("| %s | %s | %s | %s | %s | %s |\n", ROW_NAME[r], a, b, q1, c, q2);
  }
  char j[64];
  fmt_fig(j, sizeof j, median_of(ms_cached_join, rounds), "ms");
  printf("\nmissionstream late join by a client that followed the stream before (key cached, no PBKDF2): %s\n", j);
  printf("P5: states the followers skipped for a newer one (of %d x %d x %d delivered):", rounds, FANOUT_STATES, FANOUT);
  for (int si = 0; si < NSYS; si++) printf(" %s %lu%s", SYSTEMS[si]->name, fanout_skipped[si], si < NSYS - 1 ? "," : "\n");
  printf("plan: %zu bytes. Ratios above 1 favour missionstream in P1, P4, P5 and P6 (times and bytes), the peer\n"
         "in P2 and P3 (rates).\n", plan.len);
}

/* ------------------------------------------------------------------ main */

static int url_port(const char *url) {
  const char *c = strrchr(url, ':');
  return c ? atoi(c + 1) : 0;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--ms") && i + 1 < argc)
      snprintf(ms_url, sizeof ms_url, "%s", argv[++i]);
    else if (!strcmp(argv[i], "--mqtt") && i + 1 < argc)
      mqtt_port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--nats") && i + 1 < argc)
      snprintf(nats_url, sizeof nats_url, "%s", argv[++i]);
    else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
      rounds = atoi(argv[++i]);
    else
      die("usage: %s --ms URL --mqtt PORT --nats URL [--rounds N (1-%d)]", argv[0], MAX_ROUNDS);
  }
  if (!ms_url[0] || !mqtt_port || !nats_url[0] || rounds < 1 || rounds > MAX_ROUNDS)
    die("usage: %s --ms URL --mqtt PORT --nats URL [--rounds N (1-%d)]", argv[0], MAX_ROUNDS);
  ms_port = url_port(ms_url);
  nats_port = url_port(nats_url);
  setvbuf(stdout, NULL, _IOLBF, 0);

  for (int i = 0; i < 64; i++) states_1k[i] = random_state(1024);
  for (int i = 0; i < 4; i++) states_1m[i] = random_state(1 << 20);
  plan = make_plan(1 << 20);

  mosquitto_lib_init();
  nats_Open(-1);
  {
    /* The KV bucket: one value per key, on disk. */
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    kvStore *kv = NULL;
    kvConfig cfg;
    nats_check(natsConnection_ConnectTo(&nc, nats_url), "connect");
    nats_check(natsConnection_JetStream(&js, nc, NULL), "JetStream");
    kvConfig_Init(&cfg);
    cfg.Bucket = NATS_BUCKET;
    cfg.History = 1;
    cfg.StorageType = js_FileStorage;
    nats_check(js_CreateKeyValue(&kv, js, &cfg), "js_CreateKeyValue");
    kvStore_Destroy(kv);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
  }
  RELAYS[0] = relay_start(ms_port);
  RELAYS[1] = relay_start(mqtt_port);
  RELAYS[2] = relay_start(nats_port);

  printf("missionstream %s (C ABI), libmosquitto %d.%d.%d, libnats %s; plan of %zu bytes; %d rounds\n",
         ms_version(), LIBMOSQUITTO_MAJOR, LIBMOSQUITTO_MINOR, LIBMOSQUITTO_REVISION, nats_GetVersion(),
         plan.len, rounds);
  int64_t t_start = now_ns();
  for (int si = 0; si < NSYS; si++) {
    int64_t t = now_ns();
    fanout_open(si);
    printf("fan-out: %d followers of %s subscribed in %.1f s\n", FANOUT, SYSTEMS[si]->name,
           (double)(now_ns() - t) / 1e9);
  }
  for (round_no = 0; round_no < rounds; round_no++) {
    int order[NSYS];
    for (int k = 0; k < NSYS; k++) order[k] = (k + round_no) % NSYS;
    for (int k = 0; k < NSYS; k++) {
      int si = order[k];
      fig[P1][si][round_no] = row_latency(SYSTEMS[si], 300, 200);
    }
    for (int k = 0; k < NSYS; k++) {
      int si = order[k];
      fig[P2][si][round_no] = row_acked(SYSTEMS[si], states_1k, 64, 1024, 1.0);
    }
    for (int k = 0; k < NSYS; k++) {
      int si = order[k];
      fig[P3][si][round_no] = row_acked(SYSTEMS[si], states_1m, 4, 1 << 20, 1.5);
    }
    for (int k = 0; k < NSYS; k++) {
      int si = order[k];
      row_plan(si, &fig[P4B][si][round_no], &fig[P4L][si][round_no]);
    }
    for (int k = 0; k < NSYS; k++) {
      int si = order[k];
      fig[P5][si][round_no] = row_fanout(si);
    }
    for (int k = 0; k < NSYS; k++) {
      int si = order[k];
      fig[P6][si][round_no] = row_late_join(si);
    }
    printf("round %d of %d (order", round_no + 1, rounds);
    for (int k = 0; k < NSYS; k++) printf(" %s%s", SYSTEMS[order[k]]->name, k < NSYS - 1 ? "," : ")");
    printf(":");
    for (int r = 0; r < NROWS; r++) {
      printf(" P%d", r < P4L ? r + 1 : r);
      for (int si = 0; si < NSYS; si++) printf("%s%.4g", si ? "/" : " ", fig[r][si][round_no]);
    }
    printf(" (%.0f s)\n", (double)(now_ns() - t_start) / 1e9);
  }
  for (int si = 0; si < NSYS; si++) fanout_close(si);
  print_table();
  return 0;
}
