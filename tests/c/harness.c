/*
 * C test harness for libmissionstream: drives a leader and followers
 * (separate ms_client objects) through the whole lifecycle against a real
 * Webdis + Redis, reading the Webdis URL from the environment (MISSIONSTREAM_URL).
 *
 * Build: gcc -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude \
 *            tests/c/harness.c -Ltarget/release -lmissionstream -lpthread
 * Run:   MISSIONSTREAM_URL=http://127.0.0.1:PORT LD_LIBRARY_PATH=target/release ./harness
 *
 * Prints one line per check and ends with "N passed, M failed"; exits
 * non-zero on any failure. MS_HARNESS_QUICK=1 skips the 4 MiB/8 MiB states
 * (for slow runs under valgrind); MS_HARNESS_KDF_ITERATIONS=N makes the
 * harness's clients start streams with N PBKDF2 iterations (valgrind runs
 * the KDF some hundred times slower: 100000, the floor, keeps it in time).
 */
#define _POSIX_C_SOURCE 200809L

#include "missionstream.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 10000u   /* generous: how long to wait for an expected event */
#define FLUSH_MS 10000u  /* ms_flush timeout */
#define QUIET_MS 1000u   /* how long to watch for events that must not come */

/* ------------------------------------------------------------------ checks */

static int g_passed;
static int g_failed;

static int check(int ok, const char *fmt, ...)
{
    va_list ap;
    printf("%s - ", ok ? "ok  " : "FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (ok)
        g_passed++;
    else
        g_failed++;
    return ok;
}

static void section(const char *title)
{
    printf("# %s\n", title);
    fflush(stdout);
}

/* A short, printable excerpt of the last error, for the check line. */
static const char *err_excerpt(void)
{
    static char buf[160];
    const char *e = ms_last_error();
    size_t i;
    if (e == NULL)
        return "(NULL)";
    for (i = 0; i + 1 < sizeof buf && e[i] != '\0'; i++)
        buf[i] = (e[i] == '\n' || e[i] == '\r') ? ' ' : e[i];
    buf[i] = '\0';
    if (e[i] != '\0' && i >= 3)
        memcpy(buf + i - 3, "...", 3);
    return buf;
}

/*
 * Checks a status. On an expected failure the last error must also be
 * non-empty (and must not leak `secret`, when given).
 */
static int expect_s(ms_status got, ms_status want, const char *secret, const char *what)
{
    const char *e = ms_last_error();
    int ok = (got == want);
    if (want != MS_OK) {
        int nonempty = (e != NULL && e[0] != '\0');
        int leaks = (secret != NULL && secret[0] != '\0' && e != NULL && strstr(e, secret) != NULL);
        ok = ok && nonempty && !leaks;
        check(ok, "%s -> %s (want %s)%s%s [last_error: \"%s\"]", what, ms_status_name(got),
              ms_status_name(want), nonempty ? "" : " LAST_ERROR EMPTY",
              leaks ? " LAST_ERROR LEAKS A SECRET" : "", err_excerpt());
    } else if (!ok) {
        check(0, "%s -> %s (want MS_OK) [last_error: \"%s\"]", what, ms_status_name(got), err_excerpt());
    } else {
        check(1, "%s -> MS_OK", what);
    }
    return ok;
}

static int expect(ms_status got, ms_status want, const char *what)
{
    return expect_s(got, want, NULL, what);
}

/* ------------------------------------------------------------------- time */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + (int64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000u);
    ts.tv_nsec = (long)(ms % 1000u) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---------------------------------------------------------------- recorder */

typedef struct rec_event {
    int kind;
    char *stream;
    char *data;     /* copy of the state (NUL-terminated), or NULL */
    size_t len;
    uint64_t seq;
    int status;
    uint64_t at_ms; /* monotonic time of arrival */
} rec_event;

typedef struct recorder {
    const char *label;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rec_event *ev;
    size_t n, cap;
    /* invariants of the callback itself */
    int in_cb;
    int concurrent;     /* a callback started while another was running */
    int on_main;        /* a callback ran on the main thread */
    int bad_shape;      /* an event broke the documented shape */
    char shape_note[200];
    /* optional: ms_disconnect from inside the callback on the first STATE */
    ms_client *self;
    int disconnect_in_cb;
    int disconnect_done;
    ms_status disconnect_status;
} recorder;

static pthread_t g_main_thread;

static void rec_init(recorder *r, const char *label)
{
    memset(r, 0, sizeof *r);
    r->label = label;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

static void rec_destroy(recorder *r)
{
    size_t i;
    for (i = 0; i < r->n; i++) {
        free(r->ev[i].stream);
        free(r->ev[i].data);
    }
    free(r->ev);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static void note_shape(recorder *r, const char *what, const ms_event *e)
{
    if (!r->bad_shape) {
        r->bad_shape = 1;
        snprintf(r->shape_note, sizeof r->shape_note, "%s (kind %d, len %lu, seq %llu, status %d)", what,
                 (int)e->kind, (unsigned long)e->len, (unsigned long long)e->seq, (int)e->status);
    }
}

static void on_event(const ms_event *e, void *user_data)
{
    recorder *r = (recorder *)user_data;
    rec_event rec;
    int do_disconnect = 0;
    char *stream_copy = NULL;

    memset(&rec, 0, sizeof rec);
    pthread_mutex_lock(&r->mu);
    if (r->in_cb)
        r->concurrent = 1;
    r->in_cb = 1;
    if (pthread_equal(pthread_self(), g_main_thread))
        r->on_main = 1;
    pthread_mutex_unlock(&r->mu);

    if (e == NULL) {
        pthread_mutex_lock(&r->mu);
        r->bad_shape = 1;
        snprintf(r->shape_note, sizeof r->shape_note, "NULL event pointer");
        r->in_cb = 0;
        pthread_mutex_unlock(&r->mu);
        return;
    }

    rec.kind = (int)e->kind;
    rec.len = e->len;
    rec.seq = e->seq;
    rec.status = (int)e->status;
    rec.at_ms = now_ms();
    rec.stream = strdup(e->stream != NULL ? e->stream : "(NULL)");
    if (e->data != NULL) {
        rec.data = (char *)malloc(e->len + 1);
        if (rec.data != NULL) {
            memcpy(rec.data, e->data, e->len);
            rec.data[e->len] = '\0';
        }
    }

    pthread_mutex_lock(&r->mu);
    if (e->stream == NULL)
        note_shape(r, "stream is NULL", e);
    if (e->kind == MS_EVENT_STATE) {
        if (e->data == NULL)
            note_shape(r, "STATE with NULL data", e);
        else if (e->data[e->len] != '\0')
            note_shape(r, "STATE data not NUL-terminated at len", e);
        if (e->status != MS_OK)
            note_shape(r, "STATE with status != MS_OK", e);
    } else {
        if (e->data != NULL || e->len != 0 || e->seq != 0)
            note_shape(r, "non-STATE event with data/len/seq", e);
        if (e->kind != MS_EVENT_CONNECTION_LOST && e->kind != MS_EVENT_PUBLISH_FAILED && e->status != MS_OK)
            note_shape(r, "status != MS_OK on an event that carries none", e);
        if ((int)e->kind < 0 || (int)e->kind > (int)MS_EVENT_LEADER_ONLINE)
            note_shape(r, "unknown event kind", e);
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        rec_event *p = (rec_event *)realloc(r->ev, cap * sizeof *p);
        if (p == NULL) {
            fprintf(stderr, "out of memory\n");
            abort();
        }
        r->ev = p;
        r->cap = cap;
    }
    r->ev[r->n++] = rec;
    if (r->disconnect_in_cb && !r->disconnect_done && e->kind == MS_EVENT_STATE) {
        r->disconnect_done = 1;
        do_disconnect = 1;
        stream_copy = strdup(e->stream);
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);

    if (do_disconnect) {
        ms_status st = ms_disconnect(r->self, stream_copy);
        free(stream_copy);
        pthread_mutex_lock(&r->mu);
        r->disconnect_status = st;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }

    pthread_mutex_lock(&r->mu);
    r->in_cb = 0;
    pthread_mutex_unlock(&r->mu);
}

/* Predicates, called with the recorder's mutex held. */
typedef int (*pred_fn)(recorder *r, const void *arg);

typedef struct match {
    const char *stream;
    int kind;            /* -1: any */
    size_t from;         /* only events at index >= from */
    const char *data;    /* STATE: exact data (with len), or NULL for any */
    size_t len;
    size_t min_count;    /* at least this many matching events */
} match;

static int ev_matches(const rec_event *e, const match *m)
{
    if (m->stream != NULL && strcmp(e->stream, m->stream) != 0)
        return 0;
    if (m->kind >= 0 && e->kind != m->kind)
        return 0;
    if (m->data != NULL) {
        if (e->data == NULL || e->len != m->len || memcmp(e->data, m->data, m->len) != 0)
            return 0;
    }
    return 1;
}

static int pred_count(recorder *r, const void *arg)
{
    const match *m = (const match *)arg;
    size_t i, c = 0;
    for (i = m->from; i < r->n; i++)
        if (ev_matches(&r->ev[i], m))
            c++;
    return c >= (m->min_count ? m->min_count : 1);
}

/* Waits until pred holds or timeout_ms pass; returns whether it holds. */
static int wait_for(recorder *r, pred_fn pred, const void *arg, unsigned timeout_ms)
{
    struct timespec dl;
    int ok;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += (time_t)(timeout_ms / 1000u);
    dl.tv_nsec += (long)(timeout_ms % 1000u) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec += 1;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    while (!(ok = pred(r, arg))) {
        if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT) {
            ok = pred(r, arg);
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return ok;
}

static int wait_event(recorder *r, const char *stream, int kind, size_t from, unsigned timeout_ms)
{
    match m;
    memset(&m, 0, sizeof m);
    m.stream = stream;
    m.kind = kind;
    m.from = from;
    return wait_for(r, pred_count, &m, timeout_ms);
}

static int wait_state(recorder *r, const char *stream, const char *data, size_t len, size_t from,
                      unsigned timeout_ms)
{
    match m;
    memset(&m, 0, sizeof m);
    m.stream = stream;
    m.kind = MS_EVENT_STATE;
    m.from = from;
    m.data = data;
    m.len = len;
    return wait_for(r, pred_count, &m, timeout_ms);
}

static size_t rec_count(recorder *r)
{
    size_t n;
    pthread_mutex_lock(&r->mu);
    n = r->n;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Number of events of `kind` (-1 any) for `stream` at index >= from. */
static size_t count_of(recorder *r, const char *stream, int kind, size_t from)
{
    size_t i, c = 0;
    match m;
    memset(&m, 0, sizeof m);
    m.stream = stream;
    m.kind = kind;
    pthread_mutex_lock(&r->mu);
    for (i = from; i < r->n; i++)
        if (ev_matches(&r->ev[i], &m))
            c++;
    pthread_mutex_unlock(&r->mu);
    return c;
}

/* CONNECTION_LOST events whose cause is not Webdis hanging up. */
static size_t lost_not_by_webdis(recorder *r)
{
    size_t i, c = 0;
    pthread_mutex_lock(&r->mu);
    for (i = 0; i < r->n; i++)
        if (r->ev[i].kind == MS_EVENT_CONNECTION_LOST && r->ev[i].status != MS_ERR_UNAVAILABLE)
            c++;
    pthread_mutex_unlock(&r->mu);
    return c;
}

/* Copies the first (first != 0) or last STATE event of `stream` at index >= from. */
static int get_state(recorder *r, const char *stream, size_t from, int first, rec_event *out, char **data)
{
    size_t i;
    int found = 0;
    pthread_mutex_lock(&r->mu);
    for (i = from; i < r->n; i++) {
        const rec_event *e = &r->ev[i];
        if (e->kind == MS_EVENT_STATE && strcmp(e->stream, stream) == 0) {
            *out = *e;
            found = 1;
            if (first)
                break;
        }
    }
    if (found && data != NULL) {
        *data = (char *)malloc(out->len + 1);
        if (*data != NULL) {
            memcpy(*data, out->data != NULL ? out->data : "", out->data != NULL ? out->len : 0);
            (*data)[out->data != NULL ? out->len : 0] = '\0';
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (found) {
        out->stream = NULL;
        out->data = NULL;
    }
    return found;
}

/* Whether the STATE events of `stream` have strictly increasing seq. */
static int seq_increasing(recorder *r, const char *stream, char *why, size_t whylen)
{
    size_t i;
    int have = 0, ok = 1;
    uint64_t last = 0;
    pthread_mutex_lock(&r->mu);
    for (i = 0; i < r->n; i++) {
        const rec_event *e = &r->ev[i];
        if (e->kind != MS_EVENT_STATE || strcmp(e->stream, stream) != 0)
            continue;
        if (have && e->seq <= last) {
            ok = 0;
            snprintf(why, whylen, "seq %llu after %llu", (unsigned long long)e->seq, (unsigned long long)last);
            break;
        }
        have = 1;
        last = e->seq;
    }
    pthread_mutex_unlock(&r->mu);
    if (ok)
        snprintf(why, whylen, "ok");
    return ok;
}

/* Prints every event of `kind` (-1: any non-STATE event), for diagnosis. */
static void dump_events(recorder *r, int kind)
{
    size_t i;
    pthread_mutex_lock(&r->mu);
    for (i = 0; i < r->n; i++) {
        const rec_event *e = &r->ev[i];
        if ((kind < 0 && e->kind != MS_EVENT_STATE) || e->kind == kind)
            printf("#   %s event #%lu: kind %d stream \"%s\" seq %llu len %lu status %s\n", r->label,
                   (unsigned long)i, e->kind, e->stream, (unsigned long long)e->seq, (unsigned long)e->len,
                   ms_status_name((ms_status)e->status));
    }
    pthread_mutex_unlock(&r->mu);
}

static void check_callback_invariants(recorder *r)
{
    pthread_mutex_lock(&r->mu);
    check(!r->concurrent, "%s: callbacks never ran concurrently", r->label);
    check(!r->on_main, "%s: callbacks ran on a library thread, not the caller's", r->label);
    check(!r->bad_shape, "%s: every event had the documented shape%s%s", r->label, r->bad_shape ? ": " : "",
          r->shape_note);
    pthread_mutex_unlock(&r->mu);
}

/* -------------------------------------------------------------- ms_list */

typedef struct list_hit {
    int status;       /* ms_list status */
    int found;        /* times the name appears */
    uint64_t seq;
    uint32_t followers;
    int64_t updated_ms;
    int sorted;       /* names sorted by bytes */
    size_t count;
} list_hit;

static list_hit list_find(ms_client *c, const char *name)
{
    ms_stream_info *list = NULL;
    size_t count = 0, i;
    list_hit h;
    memset(&h, 0, sizeof h);
    h.sorted = 1;
    h.status = (int)ms_list(c, &list, &count);
    if (h.status != MS_OK)
        return h;
    h.count = count;
    for (i = 0; i < count; i++) {
        if (list[i].name == NULL) {
            h.sorted = 0;
            continue;
        }
        if (i > 0 && list[i - 1].name != NULL && strcmp(list[i - 1].name, list[i].name) >= 0)
            h.sorted = 0;
        if (strcmp(list[i].name, name) == 0) {
            h.found++;
            h.seq = list[i].seq;
            h.followers = list[i].followers;
            h.updated_ms = list[i].updated_ms;
        }
    }
    ms_list_free(list, count);
    return h;
}

/* Polls ms_list until the stream shows `followers` followers (or timeout). */
static list_hit list_wait_followers(ms_client *c, const char *name, uint32_t followers, unsigned timeout_ms,
                                    uint64_t *waited)
{
    uint64_t t0 = now_ms();
    list_hit h;
    for (;;) {
        h = list_find(c, name);
        if (h.status == MS_OK && h.found == 1 && h.followers == followers)
            break;
        if (now_ms() - t0 >= timeout_ms)
            break;
        sleep_ms(50);
    }
    *waited = now_ms() - t0;
    return h;
}

/* ------------------------------------------------------------------ misc */

static ms_client *new_client(const char *url, recorder *r, const char *what)
{
    ms_client *c = NULL;
    ms_status st = ms_client_new(url, &c);
    if (!expect(st, MS_OK, what) || c == NULL) {
        fprintf(stderr, "cannot create a client; giving up\n");
        return NULL;
    }
    if (r != NULL) {
        r->self = c;
        expect(ms_set_callback(c, on_event, r), MS_OK, "ms_set_callback");
    }
    /* Under valgrind the library runs many times slower while Webdis does
     * not: MS_HARNESS_TIMEOUT_MS gives requests more time there. */
    if (getenv("MS_HARNESS_TIMEOUT_MS") != NULL) {
        unsigned long t = strtoul(getenv("MS_HARNESS_TIMEOUT_MS"), NULL, 10);
        if (t > 0 && t <= 3600000ul)
            expect(ms_client_set_timeout(c, (uint32_t)t), MS_OK, "ms_client_set_timeout(MS_HARNESS_TIMEOUT_MS)");
    }
    if (getenv("MS_HARNESS_KDF_ITERATIONS") != NULL) {
        unsigned long n = strtoul(getenv("MS_HARNESS_KDF_ITERATIONS"), NULL, 10);
        expect(ms_client_set_kdf_iterations(c, (uint32_t)n), MS_OK,
               "ms_client_set_kdf_iterations(MS_HARNESS_KDF_ITERATIONS)");
    }
    return c;
}

static ms_status publish_str(ms_client *c, const char *name, const char *s)
{
    return ms_publish(c, name, s, strlen(s));
}

/* A state of exactly `len` bytes of valid UTF-8 JSON with varied content. */
static char *make_big_state(size_t len)
{
    static const char *pieces[] = {"\\\"quote\\\"", "\\\\back\\\\", "\\n", "\xc3\xa9", "\xe2\x82\xac",
                                   "\xf0\x9f\x9a\x80", "abc", "%2F/", "+ ", "<>&"};
    char *s = (char *)malloc(len + 1);
    size_t pos, k = 0;
    if (s == NULL)
        return NULL;
    memcpy(s, "{\"plan\":\"", 9);
    pos = 9;
    while (pos < len - 2) {
        const char *p = pieces[k++ % (sizeof pieces / sizeof pieces[0])];
        size_t pl = strlen(p);
        if (pos + pl > len - 2) {
            memset(s + pos, 'x', len - 2 - pos);
            pos = len - 2;
            break;
        }
        memcpy(s + pos, p, pl);
        pos += pl;
    }
    s[len - 2] = '"';
    s[len - 1] = '}';
    s[len] = '\0';
    return s;
}

/* ------------------------------------------------------------------ main */

struct thread_err {
    char text[64];
};

static void *other_thread(void *arg)
{
    struct thread_err *te = (struct thread_err *)arg;
    const char *e = ms_last_error();
    snprintf(te->text, sizeof te->text, "%s", e != NULL ? e : "(NULL)");
    return NULL;
}

int main(void)
{
    const char *url = getenv("MISSIONSTREAM_URL");
    int quick = getenv("MS_HARNESS_QUICK") != NULL && strcmp(getenv("MS_HARNESS_QUICK"), "0") != 0;
    char prefix[64];
    char S[128];        /* the main stream */
    char missing[128];  /* a name that does not exist */
    const char *PW = "pw-s3cret-Ω";
    const char *CODE = "code-l34der-✓";
    recorder rl, rf1, rf2, rl2, rf3, rf4;
    ms_client *L = NULL, *F1 = NULL, *F2 = NULL, *L2 = NULL;
    char buf[512];
    size_t i;
    uint64_t last_seq = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    g_main_thread = pthread_self();
    if (url == NULL || url[0] == '\0') {
        fprintf(stderr, "MISSIONSTREAM_URL is not set (e.g. MISSIONSTREAM_URL=http://127.0.0.1:PORT)\n");
        printf("0 passed, 1 failed\n");
        return 2;
    }
    srand((unsigned)(time(NULL) ^ (getpid() << 8)));
    snprintf(prefix, sizeof prefix, "ctest-%ld-%04x", (long)getpid(), (unsigned)(rand() & 0xffff));
    snprintf(S, sizeof S, "%s-main", prefix);
    snprintf(missing, sizeof missing, "%s-missing", prefix);
    printf("# missionstream C harness, MISSIONSTREAM_URL=%s, streams %s-*%s\n", url, prefix, quick ? " (quick)" : "");

    rec_init(&rl, "leader");
    rec_init(&rf1, "follower1");
    rec_init(&rf2, "follower2");
    rec_init(&rl2, "leader2");
    rec_init(&rf3, "follower3");
    rec_init(&rf4, "follower4");

    /* ------------------------------------------------------------ basics */
    section("version, status names, last error");
    {
        const char *v = ms_version();
        int ok = v != NULL && v[0] >= '0' && v[0] <= '9' && strchr(v, '.') != NULL;
        check(ok, "ms_version() = \"%s\"", v != NULL ? v : "(NULL)");
        check(v != NULL && v == ms_version(), "ms_version() is static (same pointer twice)");
    }
    {
        static const char *names[] = {"MS_OK",
                                      "MS_ERR_INVALID_ARGUMENT",
                                      "MS_ERR_EXISTS",
                                      "MS_ERR_NOT_FOUND",
                                      "MS_ERR_BAD_PASSWORD",
                                      "MS_ERR_BAD_LEADER_CODE",
                                      "MS_ERR_NOT_LEADING",
                                      "MS_ERR_NOT_FOLLOWING",
                                      "MS_ERR_ALREADY",
                                      "MS_ERR_TOO_LARGE",
                                      "MS_ERR_TIMEOUT",
                                      "MS_ERR_UNAVAILABLE",
                                      "MS_ERR_FORBIDDEN",
                                      "MS_ERR_SERVER",
                                      "MS_ERR_PROTOCOL",
                                      "MS_ERR_INTERNAL",
                                      "MS_ERR_THROTTLED"};
        static const int bad[] = {17, 18, 255, 1000, -1, 0x7fffffff};
        int s;
        for (s = 0; s <= (int)MS_ERR_THROTTLED; s++) {
            const char *n = ms_status_name((ms_status)s);
            check(n != NULL && strcmp(n, names[s]) == 0, "ms_status_name(%d) = \"%s\"", s, n ? n : "(NULL)");
        }
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            const char *n = ms_status_name((ms_status)bad[i]);
            check(n != NULL && strcmp(n, "MS_UNKNOWN_STATUS") == 0, "ms_status_name(%d) = \"%s\"", bad[i],
                  n ? n : "(NULL)");
        }
    }
    {
        const char *e = ms_last_error();
        check(e != NULL && e[0] == '\0', "ms_last_error() is \"\" before any failure");
    }

    section("client creation and NULL safety");
    {
        ms_client *c = (ms_client *)&buf; /* sentinel: must stay untouched on failure */
        ms_client *sentinel = c;
        expect(ms_client_new(NULL, &c), MS_ERR_INVALID_ARGUMENT, "ms_client_new(NULL url)");
        check(c == sentinel, "ms_client_new failure leaves *out untouched");
        expect(ms_client_new(url, NULL), MS_ERR_INVALID_ARGUMENT, "ms_client_new(url, NULL out)");
        expect(ms_client_new("not a url", &c), MS_ERR_INVALID_ARGUMENT, "ms_client_new(\"not a url\")");
        expect(ms_client_new("ftp://127.0.0.1:1/", &c), MS_ERR_INVALID_ARGUMENT, "ms_client_new(ftp://...)");
        check(c == sentinel, "ms_client_new failures leave *out untouched");
        expect(ms_client_new("http://127.0.0.1:1\xff", &c), MS_ERR_INVALID_ARGUMENT,
               "ms_client_new(url with invalid UTF-8)");
        {
            struct thread_err te;
            pthread_t t;
            te.text[0] = '?';
            te.text[1] = '\0';
            pthread_create(&t, NULL, other_thread, &te);
            pthread_join(t, NULL);
            check(te.text[0] == '\0', "ms_last_error() is per thread (another thread sees \"%s\")", te.text);
        }
        ms_client_free(NULL);
        check(1, "ms_client_free(NULL) is safe");
        ms_list_free(NULL, 0);
        check(1, "ms_list_free(NULL, 0) is safe");
        ms_list_free(NULL, 3);
        check(1, "ms_list_free(NULL, 3) is safe");
        expect(ms_client_set_timeout(NULL, 1000), MS_ERR_INVALID_ARGUMENT, "ms_client_set_timeout(NULL)");
        expect(ms_client_set_stream_ttl(NULL, 0), MS_ERR_INVALID_ARGUMENT, "ms_client_set_stream_ttl(NULL)");
        expect(ms_client_set_heartbeat(NULL, 1000), MS_ERR_INVALID_ARGUMENT, "ms_client_set_heartbeat(NULL)");
        expect(ms_client_set_kdf_iterations(NULL, 600000), MS_ERR_INVALID_ARGUMENT,
               "ms_client_set_kdf_iterations(NULL)");
        expect(ms_client_set_tls_ca_file(NULL, "/etc/ssl/certs/ca-certificates.crt"), MS_ERR_INVALID_ARGUMENT,
               "ms_client_set_tls_ca_file(NULL client)");
        expect(ms_set_callback(NULL, on_event, NULL), MS_ERR_INVALID_ARGUMENT, "ms_set_callback(NULL client)");
        expect(ms_start(NULL, S, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(NULL client)");
        expect(ms_reconnect(NULL, S, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_reconnect(NULL client)");
        expect(ms_publish(NULL, S, "{}", 2), MS_ERR_INVALID_ARGUMENT, "ms_publish(NULL client)");
        expect(ms_flush(NULL, S, 100), MS_ERR_INVALID_ARGUMENT, "ms_flush(NULL client)");
        expect(ms_stop(NULL, S), MS_ERR_INVALID_ARGUMENT, "ms_stop(NULL client)");
        expect(ms_connect(NULL, S, PW), MS_ERR_INVALID_ARGUMENT, "ms_connect(NULL client)");
        expect(ms_disconnect(NULL, S), MS_ERR_INVALID_ARGUMENT, "ms_disconnect(NULL client)");
        {
            ms_stream_info *l = NULL;
            size_t n = 0;
            expect(ms_list(NULL, &l, &n), MS_ERR_INVALID_ARGUMENT, "ms_list(NULL client)");
        }
        {
            ms_stream_presence *l = NULL;
            size_t n = 0;
            expect(ms_list_presence(NULL, &l, &n), MS_ERR_INVALID_ARGUMENT, "ms_list_presence(NULL client)");
        }
        ms_list_presence_free(NULL, 0);
        check(1, "ms_list_presence_free(NULL, 0) is safe");
    }

    L = new_client(url, &rl, "ms_client_new(leader)");
    F1 = new_client(url, &rf1, "ms_client_new(follower1)");
    F2 = new_client(url, &rf2, "ms_client_new(follower2)");
    if (L == NULL || F1 == NULL || F2 == NULL)
        goto done;
    expect(ms_client_set_timeout(L, 0), MS_ERR_INVALID_ARGUMENT, "ms_client_set_timeout(0)");
    expect(ms_client_set_timeout(L, 3600001), MS_ERR_INVALID_ARGUMENT, "ms_client_set_timeout(3600001)");
    expect(ms_client_set_timeout(L, 20000), MS_OK, "ms_client_set_timeout(20000)");
    expect(ms_client_set_kdf_iterations(L, 99999), MS_ERR_INVALID_ARGUMENT,
           "ms_client_set_kdf_iterations(99999): below the functions' floor");
    expect(ms_client_set_kdf_iterations(L, 10000001), MS_ERR_INVALID_ARGUMENT,
           "ms_client_set_kdf_iterations(10000001)");
    expect(ms_client_set_heartbeat(L, 49), MS_ERR_INVALID_ARGUMENT, "ms_client_set_heartbeat(49)");
    expect(ms_client_set_heartbeat(L, 3600001), MS_ERR_INVALID_ARGUMENT, "ms_client_set_heartbeat(3600001)");
    expect(ms_client_set_heartbeat(L, 200), MS_OK, "ms_client_set_heartbeat(200)");
    expect(ms_client_set_stream_ttl(L, 0), MS_OK, "ms_client_set_stream_ttl(0)");
    expect(ms_client_set_tls_ca_file(L, NULL), MS_ERR_INVALID_ARGUMENT, "ms_client_set_tls_ca_file(NULL path)");
    expect(ms_client_set_tls_ca_file(L, "/nonexistent/ca.pem"), MS_ERR_INVALID_ARGUMENT,
           "ms_client_set_tls_ca_file(missing file)");
    check(strstr(ms_last_error(), "/nonexistent/ca.pem") != NULL, "the message names the path: %s", ms_last_error());

    /* ------------------------------------------------------------- start */
    section("start, connect, current state first");
    expect(ms_start(L, S, PW, CODE), MS_OK, "ms_start(leader, S)");
    expect(ms_start(F1, S, PW, CODE), MS_ERR_EXISTS, "ms_start(S) again from another client");
    expect(ms_start(F1, S, "other", "other"), MS_ERR_EXISTS, "ms_start(S) again, other secrets");
    expect(ms_start(L, S, PW, CODE), MS_ERR_ALREADY, "ms_start(S) again from the leading client");
    expect(ms_reconnect(L, S, PW, CODE), MS_ERR_ALREADY, "ms_reconnect(S) on the leading client");
    expect_s(ms_connect(F1, S, "wrong-password"), MS_ERR_BAD_PASSWORD, PW, "ms_connect(S, wrong password)");
    expect_s(ms_connect(F1, S, ""), MS_ERR_BAD_PASSWORD, PW, "ms_connect(S, empty password)");
    expect(ms_connect(F1, missing, PW), MS_ERR_NOT_FOUND, "ms_connect(missing stream)");
    check(count_of(&rf1, NULL, -1, 0) == 0, "follower1: no event from failed connects");
    expect(ms_connect(F1, S, PW), MS_OK, "ms_connect(follower1, S)");
    expect(ms_connect(F1, S, PW), MS_ERR_ALREADY, "ms_connect(follower1, S) again");
    {
        rec_event first;
        char *data = NULL;
        int got = wait_event(&rf1, S, MS_EVENT_STATE, 0, WAIT_MS);
        check(got, "follower1 receives a STATE event after connect");
        if (got && get_state(&rf1, S, 0, 1, &first, &data)) {
            check(first.len == 2 && data != NULL && strcmp(data, "{}") == 0 && first.seq == 0,
                  "follower1's first STATE is {} seq 0 (got \"%.40s\" len %lu seq %llu)", data ? data : "",
                  (unsigned long)first.len, (unsigned long long)first.seq);
        }
        free(data);
        check(count_of(&rl, NULL, -1, 0) == 0, "leader receives no events of its own stream");
    }

    /* ----------------------------------------------------------- publish */
    section("publish, flush, convergence, order");
    {
        const int N = 12;
        int k;
        rec_event last;
        for (k = 1; k <= N; k++) {
            snprintf(buf, sizeof buf, "{\"step\":%d,\"batch\":\"A\",\"text\":\"h\\u00e9llo \xe2\x9c\x93\"}", k);
            if (!expect(publish_str(L, S, buf), MS_OK, "ms_publish(S, batch A state)"))
                break;
        }
        expect(ms_flush(L, S, FLUSH_MS), MS_OK, "ms_flush(S) after batch A");
        check(wait_state(&rf1, S, buf, strlen(buf), 0, WAIT_MS), "follower1 converges to the last batch-A state");
        {
            char why[100];
            check(seq_increasing(&rf1, S, why, sizeof why), "follower1: STATE seq strictly increasing (%s)", why);
        }
        if (get_state(&rf1, S, 0, 0, &last, NULL)) {
            check(last.seq >= 1 && last.seq <= (uint64_t)N, "follower1 last seq %llu within 1..%d",
                  (unsigned long long)last.seq, N);
            last_seq = last.seq;
        }
    }

    section("late join: follower2 gets the current state first");
    {
        rec_event first;
        char *data = NULL;
        int got;
        expect(ms_connect(F2, S, PW), MS_OK, "ms_connect(follower2, S)");
        got = wait_event(&rf2, S, MS_EVENT_STATE, 0, WAIT_MS);
        check(got, "follower2 receives a STATE event after connect (nothing published since)");
        if (got && get_state(&rf2, S, 0, 1, &first, &data)) {
            check(data != NULL && strcmp(data, buf) == 0 && first.seq == last_seq,
                  "follower2's first STATE is the current one, seq %llu (got seq %llu \"%.60s\")",
                  (unsigned long long)last_seq, (unsigned long long)first.seq, data ? data : "");
        }
        free(data);
    }
    {
        const int N = 12;
        int k;
        rec_event l1, l2;
        char why[100];
        for (k = 1; k <= N; k++) {
            snprintf(buf, sizeof buf, "{\"step\":%d,\"batch\":\"B\"}", k);
            if (!expect(publish_str(L, S, buf), MS_OK, "ms_publish(S, batch B state)"))
                break;
        }
        expect(ms_flush(L, S, FLUSH_MS), MS_OK, "ms_flush(S) after batch B");
        check(wait_state(&rf1, S, buf, strlen(buf), 0, WAIT_MS), "follower1 converges to the last batch-B state");
        check(wait_state(&rf2, S, buf, strlen(buf), 0, WAIT_MS), "follower2 converges to the last batch-B state");
        check(seq_increasing(&rf1, S, why, sizeof why), "follower1: STATE seq strictly increasing (%s)", why);
        check(seq_increasing(&rf2, S, why, sizeof why), "follower2: STATE seq strictly increasing (%s)", why);
        if (get_state(&rf1, S, 0, 0, &l1, NULL) && get_state(&rf2, S, 0, 0, &l2, NULL)) {
            check(l1.seq == l2.seq && l1.seq > last_seq && l1.seq <= last_seq + (uint64_t)N,
                  "both followers end at the same seq (%llu, %llu), above %llu", (unsigned long long)l1.seq,
                  (unsigned long long)l2.seq, (unsigned long long)last_seq);
            last_seq = l1.seq;
        }
    }
    {
        size_t n1 = count_of(&rf1, S, MS_EVENT_STATE, 0), n2 = count_of(&rf2, S, MS_EVENT_STATE, 0);
        sleep_ms(QUIET_MS);
        check(count_of(&rf1, S, MS_EVENT_STATE, 0) == n1 && count_of(&rf2, S, MS_EVENT_STATE, 0) == n2,
              "heartbeats (200 ms) are not delivered as STATE events");
        if (!quick) {
            check(count_of(&rf1, S, MS_EVENT_LEADER_OFFLINE, 0) == 0 &&
                      count_of(&rf2, S, MS_EVENT_LEADER_OFFLINE, 0) == 0,
                  "no LEADER_OFFLINE while the leader is present");
        } else {
            /* Under valgrind (quick mode) one thread runs at a time: a
             * follower's key derivation (PBKDF2, seconds there) silences
             * the leader's 200 ms heartbeats meanwhile. What must hold is
             * that the leader is heard again each time. */
            check(count_of(&rf1, S, MS_EVENT_LEADER_OFFLINE, 0) == count_of(&rf1, S, MS_EVENT_LEADER_ONLINE, 0) &&
                      count_of(&rf2, S, MS_EVENT_LEADER_OFFLINE, 0) ==
                          count_of(&rf2, S, MS_EVENT_LEADER_ONLINE, 0),
                  "every LEADER_OFFLINE is followed by LEADER_ONLINE while the leader is present");
        }
    }

    section("ms_list");
    {
        uint64_t waited;
        list_hit h = list_wait_followers(F1, S, 2, 2000, &waited);
        int64_t now = wall_ms();
        expect((ms_status)h.status, MS_OK, "ms_list(follower1)");
        check(h.found == 1, "ms_list shows S exactly once (found %d in %lu)", h.found, (unsigned long)h.count);
        check(h.seq == last_seq, "ms_list seq of S = %llu (want %llu)", (unsigned long long)h.seq,
              (unsigned long long)last_seq);
        check(h.followers == 2, "ms_list followers of S = %u (want 2; polled %llu ms)", (unsigned)h.followers,
              (unsigned long long)waited);
        check(h.updated_ms > now - 120000 && h.updated_ms <= now + 5000, "ms_list updated_ms is recent (%lld vs now %lld)",
              (long long)h.updated_ms, (long long)now);
        check(h.sorted, "ms_list is sorted by name");
        {
            ms_stream_info *l = (ms_stream_info *)&buf;
            size_t n = 77;
            expect(ms_list(F1, NULL, &n), MS_ERR_INVALID_ARGUMENT, "ms_list(NULL out)");
            check(n == 77, "ms_list failure leaves *count untouched");
            expect(ms_list(F1, &l, NULL), MS_ERR_INVALID_ARGUMENT, "ms_list(NULL count)");
            check(l == (ms_stream_info *)&buf, "ms_list failure leaves *out untouched");
        }
        {
            /* The same list, with the leader's presence: heard within the
               last 2 minutes (it heartbeats), at its announced interval. */
            ms_stream_presence *l = NULL;
            size_t n = 0;
            int found = 0;
            if (expect(ms_list_presence(F1, &l, &n), MS_OK, "ms_list_presence(follower1)")) {
                for (size_t i = 0; i < n; i++) {
                    if (l[i].info.name != NULL && strcmp(l[i].info.name, S) == 0) {
                        found++;
                        check(l[i].info.seq == h.seq && l[i].info.followers == h.followers,
                              "ms_list_presence: the same seq and followers as ms_list");
                        check(l[i].heard_ms > now - 120000 && l[i].heard_ms <= now + 5000,
                              "ms_list_presence heard_ms is recent (%lld vs now %lld)", (long long)l[i].heard_ms,
                              (long long)now);
                        check(l[i].heartbeat_ms >= 50, "ms_list_presence heartbeat_ms = %u",
                              (unsigned)l[i].heartbeat_ms);
                    }
                }
                check(found == 1, "ms_list_presence shows S exactly once (found %d)", found);
                ms_list_presence_free(l, n);
            }
            expect(ms_list_presence(F1, NULL, &n), MS_ERR_INVALID_ARGUMENT, "ms_list_presence(NULL out)");
        }
    }

    /* ------------------------------------------------------- error paths */
    section("error paths");
    {
        char name257[300], name256[300], badutf[128], ctl[128];
        char big_secret[1100];
        char *huge;
        ms_client *X = NULL;

        expect(ms_client_new(url, &X), MS_OK, "ms_client_new(fresh client X)");
        expect_s(ms_reconnect(X, S, PW, "wrong-code"), MS_ERR_BAD_LEADER_CODE, CODE, "ms_reconnect(S, wrong code)");
        expect_s(ms_reconnect(X, S, "wrong-pw", CODE), MS_ERR_BAD_PASSWORD, PW, "ms_reconnect(S, wrong password)");
        expect(ms_reconnect(X, missing, PW, CODE), MS_ERR_NOT_FOUND, "ms_reconnect(missing)");
        expect(ms_publish(X, S, "{}", 2), MS_ERR_NOT_LEADING, "ms_publish(S) from a failed reconnect");
        expect(ms_publish(F1, S, "{}", 2), MS_ERR_NOT_LEADING, "ms_publish(S) from a follower");
        expect(ms_flush(F1, S, 100), MS_ERR_NOT_LEADING, "ms_flush(S) from a follower");
        expect(ms_stop(F1, S), MS_ERR_NOT_LEADING, "ms_stop(S) from a follower");
        expect(ms_publish(L, missing, "{}", 2), MS_ERR_NOT_LEADING, "ms_publish(missing) from the leader");
        expect(ms_stop(X, missing), MS_ERR_NOT_LEADING, "ms_stop(missing)");
        expect(ms_disconnect(L, S), MS_ERR_NOT_FOLLOWING, "ms_disconnect(S) from the leader");
        expect(ms_disconnect(X, missing), MS_ERR_NOT_FOLLOWING, "ms_disconnect(missing)");

        huge = (char *)malloc(MS_MAX_STATE + 2);
        if (huge != NULL) {
            memset(huge, 'a', MS_MAX_STATE + 1);
            huge[MS_MAX_STATE + 1] = '\0';
            expect(ms_publish(L, S, huge, (size_t)MS_MAX_STATE + 1), MS_ERR_TOO_LARGE,
                   "ms_publish(S, 8388609 bytes)");
            free(huge);
        }
        expect(publish_str(L, S, "{\"x\":\"\xff\xfe\"}"), MS_ERR_INVALID_ARGUMENT, "ms_publish(S, invalid UTF-8)");
        expect(ms_publish(L, S, NULL, 5), MS_ERR_INVALID_ARGUMENT, "ms_publish(S, NULL state, len 5)");

        /* NULL arguments */
        expect(ms_start(X, NULL, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(NULL name)");
        expect(ms_start(X, S, NULL, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(NULL password)");
        expect(ms_start(X, S, PW, NULL), MS_ERR_INVALID_ARGUMENT, "ms_start(NULL leader code)");
        expect(ms_reconnect(X, NULL, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_reconnect(NULL name)");
        expect(ms_reconnect(X, S, NULL, CODE), MS_ERR_INVALID_ARGUMENT, "ms_reconnect(NULL password)");
        expect(ms_reconnect(X, S, PW, NULL), MS_ERR_INVALID_ARGUMENT, "ms_reconnect(NULL leader code)");
        expect(ms_publish(L, NULL, "{}", 2), MS_ERR_INVALID_ARGUMENT, "ms_publish(NULL name)");
        expect(ms_flush(L, NULL, 100), MS_ERR_INVALID_ARGUMENT, "ms_flush(NULL name)");
        expect(ms_stop(L, NULL), MS_ERR_INVALID_ARGUMENT, "ms_stop(NULL name)");
        expect(ms_connect(X, NULL, PW), MS_ERR_INVALID_ARGUMENT, "ms_connect(NULL name)");
        expect(ms_connect(X, S, NULL), MS_ERR_INVALID_ARGUMENT, "ms_connect(NULL password)");
        expect(ms_disconnect(F1, NULL), MS_ERR_INVALID_ARGUMENT, "ms_disconnect(NULL name)");

        /* names */
        expect(ms_start(X, "", PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(empty name)");
        expect(ms_connect(X, "", PW), MS_ERR_INVALID_ARGUMENT, "ms_connect(empty name)");
        snprintf(badutf, sizeof badutf, "%s-bad\xff\xfeutf8", prefix);
        expect(ms_start(X, badutf, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(invalid UTF-8 name)");
        expect(ms_connect(X, badutf, PW), MS_ERR_INVALID_ARGUMENT, "ms_connect(invalid UTF-8 name)");
        snprintf(badutf, sizeof badutf, "%s-overlong\xc0\xaf", prefix);
        expect(ms_start(X, badutf, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(name with overlong UTF-8 '/')");
        snprintf(badutf, sizeof badutf, "%s-trunc\xe2\x82", prefix);
        expect(ms_start(X, badutf, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(name with truncated UTF-8)");
        snprintf(ctl, sizeof ctl, "%s-a\nb", prefix);
        expect(ms_start(X, ctl, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(name with \\n)");
        expect(ms_connect(X, ctl, PW), MS_ERR_INVALID_ARGUMENT, "ms_connect(name with \\n)");
        snprintf(ctl, sizeof ctl, "%s-a\x01" "b", prefix);
        expect(ms_start(X, ctl, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(name with \\x01)");
        snprintf(ctl, sizeof ctl, "%s-a\tb", prefix);
        expect(ms_start(X, ctl, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(name with \\t)");
        snprintf(ctl, sizeof ctl, "%s-a\x7f" "b", prefix);
        expect(ms_start(X, ctl, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(name with DEL \\x7f)");
        snprintf(ctl, sizeof ctl, "%s-a\xc2\x85" "b", prefix);
        expect(ms_start(X, ctl, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(name with C1 control U+0085)");
        memset(name257, 'n', 257);
        memcpy(name257, prefix, strlen(prefix));
        name257[257] = '\0';
        expect(ms_start(X, name257, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(257-byte name)");
        expect(ms_connect(X, name257, PW), MS_ERR_INVALID_ARGUMENT, "ms_connect(257-byte name)");
        expect(ms_reconnect(X, name257, PW, CODE), MS_ERR_INVALID_ARGUMENT, "ms_reconnect(257-byte name)");
        memcpy(name256, name257, 256);
        name256[256] = '\0';
        (void)name256;

        /* secrets */
        snprintf(buf, sizeof buf, "%s-emptycode", prefix);
        expect(ms_start(X, buf, PW, ""), MS_ERR_INVALID_ARGUMENT, "ms_start(empty leader code)");
        memset(big_secret, 's', 1025);
        big_secret[1025] = '\0';
        snprintf(buf, sizeof buf, "%s-secrets", prefix);
        expect(ms_start(X, buf, big_secret, CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(1025-byte password)");
        expect(ms_start(X, buf, PW, big_secret), MS_ERR_INVALID_ARGUMENT, "ms_start(1025-byte leader code)");
        expect(ms_start(X, buf, "bad\xff", CODE), MS_ERR_INVALID_ARGUMENT, "ms_start(password with invalid UTF-8)");
        big_secret[1024] = '\0';
        if (expect(ms_start(X, buf, big_secret, big_secret), MS_OK, "ms_start(1024-byte password and code)")) {
            expect(ms_connect(F1, buf, big_secret), MS_OK, "ms_connect(1024-byte password)");
            expect(ms_disconnect(F1, buf), MS_OK, "ms_disconnect(secrets stream)");
            expect(ms_stop(X, buf), MS_OK, "ms_stop(secrets stream)");
        }
        /* empty password: Webdis 0.1.9 drops an empty PUT body */
        snprintf(buf, sizeof buf, "%s-nopw", prefix);
        if (expect(ms_start(X, buf, "", CODE), MS_OK, "ms_start(empty password)")) {
            expect(ms_connect(F1, buf, "x"), MS_ERR_BAD_PASSWORD, "ms_connect(empty-password stream, \"x\")");
            expect(ms_connect(F1, buf, ""), MS_OK, "ms_connect(empty-password stream, \"\")");
            expect(ms_disconnect(F1, buf), MS_OK, "ms_disconnect(empty-password stream)");
            expect(ms_stop(X, buf), MS_OK, "ms_stop(empty-password stream)");
        }
        ms_client_free(X);
    }

    /* -------------------------------------------------- names round trip */
    section("names round-trip through start/connect/publish/list/stop");
    {
        char names[12][300];
        size_t nn = 0, k;
        size_t pl;
        snprintf(names[nn++], 300, "%s-a/b.c%%d+e:f*g?h..i", prefix);
        snprintf(names[nn++], 300, "%s mission plan  with spaces ", prefix);
        snprintf(names[nn++], 300, "%s-Mission \xc3\x9cnic\xc3\xb8" "de-\xe4\xbb\xbb\xe5\x8a\xa1-\xf0\x9f\x9a\x80", prefix);
        snprintf(names[nn++], 300, "../%s/..", prefix);
        snprintf(names[nn++], 300, "%s-plan.json", prefix);
        snprintf(names[nn++], 300, "%s-%%2F%%20%%zz%%", prefix);
        snprintf(names[nn++], 300, "%s-?q=1&r=2#frag", prefix);
        snprintf(names[nn++], 300, "%s-\\back\\slash\"quote'", prefix);
        snprintf(names[nn++], 300, "%s-[\"json\",null]", prefix);
        /* exactly 256 bytes, ending in multi-byte characters */
        pl = (size_t)snprintf(names[nn], 300, "%s-256-", prefix);
        while (pl + 2 <= 256 - 4) {
            memcpy(names[nn] + pl, "\xc3\xa9", 2);
            pl += 2;
        }
        while (pl < 256 - 4)
            names[nn][pl++] = 'x';
        memcpy(names[nn] + pl, "\xf0\x9f\x9a\x80", 4);
        pl += 4;
        names[nn][pl] = '\0';
        check(strlen(names[nn]) == 256, "the long name is 256 bytes (%lu)", (unsigned long)strlen(names[nn]));
        nn++;

        for (k = 0; k < nn; k++) {
            const char *nm = names[k];
            char label[64];
            size_t from = rec_count(&rf1);
            rec_event first;
            char *data = NULL;
            list_hit h;
            snprintf(label, sizeof label, "name #%lu (%lu bytes)", (unsigned long)k, (unsigned long)strlen(nm));
            printf("# %s: \"%s\"\n", label, nm);
            if (!expect(ms_start(L, nm, PW, CODE), MS_OK, "ms_start(special name)"))
                continue;
            expect(ms_start(F2, nm, PW, CODE), MS_ERR_EXISTS, "ms_start(special name) from another client");
            expect(ms_connect(F1, nm, PW), MS_OK, "ms_connect(special name)");
            if (check(wait_event(&rf1, nm, MS_EVENT_STATE, from, WAIT_MS), "%s: STATE event carries the exact name",
                      label) &&
                get_state(&rf1, nm, from, 1, &first, &data)) {
                check(first.seq == 0 && data != NULL && strcmp(data, "{}") == 0, "%s: first STATE is {} seq 0", label);
            }
            free(data);
            snprintf(buf, sizeof buf, "{\"name_no\":%lu}", (unsigned long)k);
            expect(publish_str(L, nm, buf), MS_OK, "ms_publish(special name)");
            expect(ms_flush(L, nm, FLUSH_MS), MS_OK, "ms_flush(special name)");
            check(wait_state(&rf1, nm, buf, strlen(buf), from, WAIT_MS), "%s: follower receives the published state",
                  label);
            h = list_find(F2, nm);
            check(h.status == MS_OK && h.found == 1 && h.seq == 1 && h.followers == 1,
                  "%s: ms_list shows the exact name once, seq 1, 1 follower (status %d found %d seq %llu followers %u)",
                  label, h.status, h.found, (unsigned long long)h.seq, (unsigned)h.followers);
            expect(ms_disconnect(F1, nm), MS_OK, "ms_disconnect(special name)");
            expect(ms_stop(L, nm), MS_OK, "ms_stop(special name)");
            h = list_find(F2, nm);
            check(h.status == MS_OK && h.found == 0, "%s: gone from ms_list after stop", label);
        }
        /* a stream name that differs only by a trailing byte is another stream */
        expect(ms_connect(F1, prefix, PW), MS_ERR_NOT_FOUND, "ms_connect(prefix of existing names)");
    }

    /* -------------------------------------------------------- big states */
    if (!quick) {
        char S2[128];
        ms_client *F3 = NULL;
        char *big4 = make_big_state(4u * 1024u * 1024u);
        char *big8 = make_big_state((size_t)MS_MAX_STATE);
        section("4 MiB and 8 MiB states round-trip byte-exactly");
        snprintf(S2, sizeof S2, "%s-big", prefix);
        if (big4 != NULL && big8 != NULL && expect(ms_start(L, S2, PW, CODE), MS_OK, "ms_start(S2)")) {
            size_t from1 = rec_count(&rf1);
            expect(ms_connect(F1, S2, PW), MS_OK, "ms_connect(follower1, S2)");
            check(wait_event(&rf1, S2, MS_EVENT_STATE, from1, WAIT_MS), "follower1 gets S2's {} first");
            expect(ms_publish(L, S2, big4, 4u * 1024u * 1024u), MS_OK, "ms_publish(S2, 4 MiB)");
            expect(ms_flush(L, S2, 30000), MS_OK, "ms_flush(S2) after 4 MiB");
            check(wait_state(&rf1, S2, big4, 4u * 1024u * 1024u, from1, 20000),
                  "follower1 receives the 4 MiB state byte-exactly (live)");
            F3 = new_client(url, &rf3, "ms_client_new(follower3)");
            if (F3 != NULL) {
                rec_event first;
                expect(ms_connect(F3, S2, PW), MS_OK, "ms_connect(follower3, S2) after the 4 MiB state");
                check(wait_event(&rf3, S2, MS_EVENT_STATE, 0, 20000), "follower3 gets a STATE");
                if (get_state(&rf3, S2, 0, 1, &first, NULL)) {
                    check(first.seq == 1, "follower3's first STATE has seq 1 (got %llu)", (unsigned long long)first.seq);
                }
                check(wait_state(&rf3, S2, big4, 4u * 1024u * 1024u, 0, 1),
                      "follower3's snapshot is the 4 MiB state byte-exactly");
            }
            expect(ms_publish(L, S2, big8, (size_t)MS_MAX_STATE), MS_OK, "ms_publish(S2, exactly 8388608 bytes)");
            expect(ms_flush(L, S2, 30000), MS_OK, "ms_flush(S2) after 8 MiB");
            check(wait_state(&rf1, S2, big8, (size_t)MS_MAX_STATE, from1, 20000),
                  "follower1 receives the 8 MiB state byte-exactly");
            {
                list_hit h = list_find(F1, S2);
                check(h.found == 1 && h.seq == 2, "ms_list: S2 at seq 2 (got found %d seq %llu)", h.found,
                      (unsigned long long)h.seq);
            }
            expect(ms_stop(L, S2), MS_OK, "ms_stop(S2)");
            check(wait_event(&rf1, S2, MS_EVENT_ENDED, from1, WAIT_MS), "follower1 gets ENDED for S2");
            if (F3 != NULL) {
                check(wait_event(&rf3, S2, MS_EVENT_ENDED, 0, WAIT_MS), "follower3 gets ENDED for S2");
                expect(ms_disconnect(F3, S2), MS_ERR_NOT_FOLLOWING, "ms_disconnect(S2) after ENDED");
                ms_client_free(F3);
                check_callback_invariants(&rf3);
            }
        }
        free(big4);
        free(big8);
    }

    /* -------------------------------------------------- leader reconnect */
    section("leader leaves without stop, reconnects from a fresh client");
    {
        size_t from1 = rec_count(&rf1), from2 = rec_count(&rf2);
        list_hit h;
        char pending[128];
        snprintf(pending, sizeof pending, "{\"pending\":\"delivered by ms_client_free\",\"pid\":%ld}", (long)getpid());
        expect(publish_str(L, S, pending), MS_OK, "ms_publish(S, state) right before ms_client_free (no flush)");
        ms_client_free(L);
        L = NULL;
        check(1, "ms_client_free(leader) returned");
        check(wait_state(&rf2, S, pending, strlen(pending), from2, WAIT_MS),
              "follower2 receives the state pending at ms_client_free");
        check(wait_state(&rf1, S, pending, strlen(pending), from1, WAIT_MS),
              "follower1 receives the state pending at ms_client_free");
        check(count_of(&rf2, S, MS_EVENT_ENDED, 0) == 0, "no ENDED when the leader leaves without stop");
        check(wait_event(&rf2, S, MS_EVENT_LEADER_OFFLINE, from2, WAIT_MS),
              "follower2 gets LEADER_OFFLINE after the leader left (heartbeat 200 ms)");
        last_seq++;
        h = list_find(F2, S);
        check(h.found == 1 && h.seq == last_seq, "ms_list: S kept at seq %llu (got found %d seq %llu)",
              (unsigned long long)last_seq, h.found, (unsigned long long)h.seq);

        L2 = new_client(url, &rl2, "ms_client_new(leader2)");
        if (L2 != NULL) {
            size_t from4;
            ms_client *F4;
            expect(ms_client_set_heartbeat(L2, 200), MS_OK, "ms_client_set_heartbeat(leader2, 200)");
            expect_s(ms_reconnect(L2, S, PW, "wrong-code"), MS_ERR_BAD_LEADER_CODE, CODE,
                     "ms_reconnect(leader2, wrong code)");
            expect_s(ms_reconnect(L2, S, "nope", CODE), MS_ERR_BAD_PASSWORD, PW, "ms_reconnect(leader2, wrong password)");
            expect(ms_publish(L2, S, "{}", 2), MS_ERR_NOT_LEADING, "ms_publish before a successful reconnect");
            expect(ms_reconnect(L2, S, PW, CODE), MS_OK, "ms_reconnect(leader2, S)");
            expect(ms_reconnect(L2, S, PW, CODE), MS_ERR_ALREADY, "ms_reconnect(leader2, S) again");
            h = list_find(L2, S);
            check(h.found == 1 && h.seq == last_seq, "reconnect keeps the seq (%llu)", (unsigned long long)h.seq);
            check(wait_event(&rf2, S, MS_EVENT_LEADER_ONLINE, from2, WAIT_MS),
                  "follower2 gets LEADER_ONLINE after the reconnect");
            /* a fresh follower sees the kept state */
            F4 = new_client(url, &rf4, "ms_client_new(follower4)");
            if (F4 != NULL) {
                rec_event first;
                char *data = NULL;
                expect(ms_connect(F4, S, PW), MS_OK, "ms_connect(follower4, S) after the reconnect");
                if (check(wait_event(&rf4, S, MS_EVENT_STATE, 0, WAIT_MS), "follower4 gets a STATE") &&
                    get_state(&rf4, S, 0, 1, &first, &data)) {
                    check(data != NULL && strcmp(data, pending) == 0 && first.seq == last_seq,
                          "reconnect keeps the state: follower4's first STATE is the last one, seq %llu (got %llu)",
                          (unsigned long long)last_seq, (unsigned long long)first.seq);
                }
                free(data);
                expect(ms_disconnect(F4, S), MS_OK, "ms_disconnect(follower4, S)");
                ms_client_free(F4);
                check_callback_invariants(&rf4);
            }
            from4 = rec_count(&rf1);
            from2 = rec_count(&rf2);
            snprintf(buf, sizeof buf, "{\"after\":\"reconnect\"}");
            expect(publish_str(L2, S, buf), MS_OK, "ms_publish(leader2, S)");
            expect(ms_flush(L2, S, FLUSH_MS), MS_OK, "ms_flush(leader2, S)");
            check(wait_state(&rf1, S, buf, strlen(buf), from4, WAIT_MS), "follower1 receives leader2's state");
            check(wait_state(&rf2, S, buf, strlen(buf), from2, WAIT_MS), "follower2 receives leader2's state");
            {
                rec_event l2;
                if (get_state(&rf2, S, from2, 0, &l2, NULL))
                    check(l2.seq == last_seq + 1, "leader2's state has seq %llu (got %llu)",
                          (unsigned long long)(last_seq + 1), (unsigned long long)l2.seq);
                last_seq++;
            }
        }
    }

    /* ------------------------------------------------------- disconnect */
    section("disconnect: no more events for follower1");
    if (L2 != NULL) {
        size_t n1, from2;
        uint64_t t0, dt, waited;
        list_hit h;
        t0 = now_ms();
        expect(ms_disconnect(F1, S), MS_OK, "ms_disconnect(follower1, S)");
        dt = now_ms() - t0;
        check(dt <= 500, "ms_disconnect returned within 500 ms (%llu ms)", (unsigned long long)dt);
        n1 = rec_count(&rf1);
        expect(ms_disconnect(F1, S), MS_ERR_NOT_FOLLOWING, "ms_disconnect(follower1, S) again");
        h = list_wait_followers(F2, S, 1, 1500, &waited);
        check(h.found == 1 && h.followers == 1, "ms_list followers of S drops to 1 (got %u after %llu ms)",
              (unsigned)h.followers, (unsigned long long)waited);
        from2 = rec_count(&rf2);
        snprintf(buf, sizeof buf, "{\"after\":\"disconnect\"}");
        expect(publish_str(L2, S, buf), MS_OK, "ms_publish(leader2, S)");
        expect(ms_flush(L2, S, FLUSH_MS), MS_OK, "ms_flush(leader2, S)");
        check(wait_state(&rf2, S, buf, strlen(buf), from2, WAIT_MS), "follower2 still receives states");
        sleep_ms(QUIET_MS);
        check(rec_count(&rf1) == n1, "follower1 got no event after ms_disconnect returned (%lu new)",
              (unsigned long)(rec_count(&rf1) - n1));
        last_seq++;
    }

    section("disconnect from inside a callback");
    if (L2 != NULL) {
        recorder rf5;
        ms_client *F5;
        rec_init(&rf5, "follower5");
        F5 = new_client(url, &rf5, "ms_client_new(follower5)");
        if (F5 != NULL) {
            size_t n5;
            pthread_mutex_lock(&rf5.mu);
            rf5.disconnect_in_cb = 1;
            rf5.disconnect_status = (ms_status)-1;
            pthread_mutex_unlock(&rf5.mu);
            expect(ms_connect(F5, S, PW), MS_OK, "ms_connect(follower5, S)");
            check(wait_event(&rf5, S, MS_EVENT_STATE, 0, WAIT_MS), "follower5 gets the current state");
            {
                uint64_t t0 = now_ms();
                int st;
                for (;;) {
                    pthread_mutex_lock(&rf5.mu);
                    st = (int)rf5.disconnect_status;
                    pthread_mutex_unlock(&rf5.mu);
                    if (st != -1 || now_ms() - t0 > WAIT_MS)
                        break;
                    sleep_ms(10);
                }
                check(st == MS_OK, "ms_disconnect from its own callback -> %s (want MS_OK, no deadlock)",
                      st == -1 ? "(did not return)" : ms_status_name((ms_status)st));
            }
            n5 = rec_count(&rf5);
            snprintf(buf, sizeof buf, "{\"after\":\"callback disconnect\"}");
            expect(publish_str(L2, S, buf), MS_OK, "ms_publish(leader2, S)");
            expect(ms_flush(L2, S, FLUSH_MS), MS_OK, "ms_flush(leader2, S)");
            check(wait_state(&rf2, S, buf, strlen(buf), 0, WAIT_MS), "follower2 receives it");
            sleep_ms(300);
            check(rec_count(&rf5) == n5, "follower5 got no event after disconnecting in its callback");
            expect(ms_disconnect(F5, S), MS_ERR_NOT_FOLLOWING, "ms_disconnect(follower5, S) afterwards");
            ms_client_free(F5);
            check_callback_invariants(&rf5);
        }
        rec_destroy(&rf5);
        last_seq++;
    }

    /* -------------------------------------------------------------- stop */
    section("stop: follower2 gets ENDED, stream gone");
    if (L2 != NULL) {
        size_t from2 = rec_count(&rf2), nend;
        list_hit h;
        expect(ms_stop(L2, S), MS_OK, "ms_stop(leader2, S)");
        check(wait_event(&rf2, S, MS_EVENT_ENDED, from2, WAIT_MS), "follower2 gets MS_EVENT_ENDED");
        nend = rec_count(&rf2);
        h = list_find(F2, S);
        check(h.status == MS_OK && h.found == 0, "S is gone from ms_list");
        expect(ms_disconnect(F2, S), MS_ERR_NOT_FOLLOWING, "ms_disconnect(follower2, S) after ENDED");
        expect(ms_stop(L2, S), MS_ERR_NOT_LEADING, "ms_stop(S) again");
        expect(ms_publish(L2, S, "{}", 2), MS_ERR_NOT_LEADING, "ms_publish(S) after stop");
        expect(ms_flush(L2, S, 100), MS_ERR_NOT_LEADING, "ms_flush(S) after stop");
        expect(ms_connect(F2, S, PW), MS_ERR_NOT_FOUND, "ms_connect(S) after stop");
        expect(ms_reconnect(L2, S, PW, CODE), MS_ERR_NOT_FOUND, "ms_reconnect(S) after stop");
        sleep_ms(QUIET_MS);
        check(rec_count(&rf2) == nend, "follower2: no event after ENDED (%lu new)", (unsigned long)(rec_count(&rf2) - nend));
        check(count_of(&rf2, S, MS_EVENT_ENDED, 0) == 1, "follower2: exactly one ENDED");
        /* the name is free again */
        if (expect(ms_start(F2, S, "new", "new"), MS_OK, "ms_start(S) anew after stop (name is free)")) {
            expect(ms_stop(F2, S), MS_OK, "ms_stop(S) anew");
        }
    }

    section("callback invariants");
    check_callback_invariants(&rl);
    check_callback_invariants(&rf1);
    check_callback_invariants(&rf2);
    check_callback_invariants(&rl2);
    check(count_of(&rl, NULL, MS_EVENT_PUBLISH_FAILED, 0) == 0 && count_of(&rl2, NULL, MS_EVENT_PUBLISH_FAILED, 0) == 0,
          "leaders got no PUBLISH_FAILED");
    /* Webdis 0.1.9 closes a subscriber's connection when a write to it
     * would block (seen with strace: write() = EAGAIN, then close()), which
     * can happen while an 8 MiB state is still in the socket and another
     * message follows. That loss is Webdis' (MS_ERR_UNAVAILABLE) and must be
     * recovered; a loss the library detects itself (a silent subscription,
     * MS_ERR_TIMEOUT) or any other cause must not happen here; except under
     * valgrind (quick mode), where one thread runs at a time and a key
     * derivation (PBKDF2, seconds there) can hold a probe's echo past its
     * deadline: there, every loss must be recovered. */
    if (!check(((lost_not_by_webdis(&rf1) == 0 && lost_not_by_webdis(&rf2) == 0) || quick) &&
                   count_of(&rf1, NULL, MS_EVENT_CONNECTION_LOST, 0) == count_of(&rf1, NULL, MS_EVENT_RECONNECTED, 0) &&
                   count_of(&rf2, NULL, MS_EVENT_CONNECTION_LOST, 0) == count_of(&rf2, NULL, MS_EVENT_RECONNECTED, 0),
               "followers lost no connection but to Webdis hanging up, and recovered each time")) {
        dump_events(&rf1, getenv("MS_HARNESS_DUMP") ? MS_EVENT_STATE : -1);
        dump_events(&rf1, -1);
        dump_events(&rf2, -1);
    }
    {
        /* setting the callback to NULL, then no more calls */
        expect(ms_set_callback(F2, NULL, NULL), MS_OK, "ms_set_callback(follower2, NULL)");
    }

done:
    section("teardown");
    ms_client_free(L);
    ms_client_free(L2);
    ms_client_free(F1);
    ms_client_free(F2);
    check(1, "all clients freed");
    {
        ms_client *Y = NULL;
        if (ms_client_new(url, &Y) == MS_OK) {
            ms_stream_info *list = NULL;
            size_t count = 0, k, mine = 0;
            if (expect(ms_list(Y, &list, &count), MS_OK, "ms_list after teardown")) {
                for (k = 0; k < count; k++)
                    if (list[k].name != NULL && strncmp(list[k].name, prefix, strlen(prefix)) == 0)
                        mine++;
                check(mine == 0, "no stream of this run is left in ms_list (%lu left)", (unsigned long)mine);
                ms_list_free(list, count);
            }
            ms_client_free(Y);
        }
    }
    rec_destroy(&rl);
    rec_destroy(&rf1);
    rec_destroy(&rf2);
    rec_destroy(&rl2);
    rec_destroy(&rf3);
    rec_destroy(&rf4);

    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
