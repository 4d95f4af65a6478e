/*
 * A leader and a follower in one program, against an installed
 * missionstream (pkg-config missionstream): the follower prints each state
 * the leader publishes, then ENDED when the leader stops the stream.
 *
 *   make                   # cc mission.c $(pkg-config --cflags --libs missionstream)
 *   ./mission [URL]        # the Webdis URL, else $MISSIONSTREAM_URL
 */
#include <missionstream.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if MS_VERSION_NUMBER < 100 /* 0.1.0 */
#error "missionstream 0.1.0 or later is needed"
#endif

struct seen {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int states;
    int ended;
};

static void on_event(const ms_event *event, void *user_data)
{
    struct seen *s = user_data;
    pthread_mutex_lock(&s->lock);
    if (event->kind == MS_EVENT_STATE) {
        printf("%s #%llu: %s\n", event->stream, (unsigned long long)event->seq, event->data);
        s->states++;
    } else if (event->kind == MS_EVENT_ENDED) {
        printf("%s ended\n", event->stream);
        s->ended = 1;
    }
    fflush(stdout);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* Waits up to 5 s until *counter reaches want. */
static int wait_for(struct seen *s, const int *counter, int want)
{
    struct timespec deadline;
    int ok;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    pthread_mutex_lock(&s->lock);
    while (*counter < want && pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == 0)
        ;
    ok = *counter >= want;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

static void check(ms_status status, const char *what)
{
    if (status != MS_OK) {
        fprintf(stderr, "%s failed: %s (%s)\n", what, ms_status_name(status), ms_last_error());
        exit(1);
    }
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : getenv("MISSIONSTREAM_URL");
    struct seen s = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    ms_client *leader = NULL, *follower = NULL;
    const char *plan = "{\"waypoints\":[[48.1,11.5],[48.2,11.6]]}";
    char name[64];
    int ok;

    if (url == NULL) {
        fprintf(stderr, "usage: %s WEBDIS_URL (or set MISSIONSTREAM_URL)\n", argv[0]);
        return 2;
    }
    if (strcmp(ms_version(), MS_VERSION_STRING) != 0)
        fprintf(stderr, "note: built with missionstream %s, running with %s\n", MS_VERSION_STRING, ms_version());
    snprintf(name, sizeof name, "example-c/%ld", (long)getpid());

    check(ms_client_new(url, &leader), "ms_client_new");
    check(ms_client_new(url, &follower), "ms_client_new");
    check(ms_set_callback(follower, on_event, &s), "ms_set_callback");
    check(ms_start(leader, name, "follower-pw", "leader-code"), "ms_start");
    check(ms_connect(follower, name, "follower-pw"), "ms_connect");
    wait_for(&s, &s.states, 1);
    check(ms_publish(leader, name, plan, strlen(plan)), "ms_publish");
    check(ms_flush(leader, name, 5000), "ms_flush");
    ok = wait_for(&s, &s.states, 2);
    check(ms_stop(leader, name), "ms_stop");
    ok = wait_for(&s, &s.ended, 1) && ok;
    ms_client_free(follower);
    ms_client_free(leader);
    if (!ok) {
        fprintf(stderr, "did not see the published state and ENDED within 5 s\n");
        return 1;
    }
    return 0;
}
