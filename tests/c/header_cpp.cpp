// Compile check of include/missionstream.h as C++11:
//   g++ -std=c++11 -Wall -Wextra -Werror -pedantic -Iinclude tests/c/header_cpp.cpp -Ltarget/release -lmissionstream
// Uses every type and takes the address of every function, so a missing
// extern "C", a C-only construct or a changed signature fails the build.
// main() does no network I/O: it only calls the functions that need none.
#include "missionstream.h"

#include <cstdio>
#include <cstring>

namespace {

// Signatures are part of the ABI: pin each one.
ms_status (*const p_client_new)(const char *, ms_client **) = &ms_client_new;
void (*const p_client_free)(ms_client *) = &ms_client_free;
ms_status (*const p_set_timeout)(ms_client *, uint32_t) = &ms_client_set_timeout;
ms_status (*const p_set_ttl)(ms_client *, uint32_t) = &ms_client_set_stream_ttl;
ms_status (*const p_set_heartbeat)(ms_client *, uint32_t) = &ms_client_set_heartbeat;
ms_status (*const p_set_callback)(ms_client *, ms_callback, void *) = &ms_set_callback;
ms_status (*const p_start)(ms_client *, const char *, const char *, const char *) = &ms_start;
ms_status (*const p_reconnect)(ms_client *, const char *, const char *, const char *) = &ms_reconnect;
ms_status (*const p_publish)(ms_client *, const char *, const char *, size_t) = &ms_publish;
ms_status (*const p_flush)(ms_client *, const char *, uint32_t) = &ms_flush;
ms_status (*const p_stop)(ms_client *, const char *) = &ms_stop;
ms_status (*const p_connect)(ms_client *, const char *, const char *) = &ms_connect;
ms_status (*const p_disconnect)(ms_client *, const char *) = &ms_disconnect;
ms_status (*const p_list)(ms_client *, ms_stream_info **, size_t *) = &ms_list;
void (*const p_list_free)(ms_stream_info *, size_t) = &ms_list_free;
const char *(*const p_version)() = &ms_version;
const char *(*const p_status_name)(ms_status) = &ms_status_name;
const char *(*const p_last_error)() = &ms_last_error;

struct Counter {
    int states;
    uint64_t last_seq;
};

extern "C" void on_event(const ms_event *event, void *user_data)
{
    Counter *c = static_cast<Counter *>(user_data);
    switch (event->kind) {
    case MS_EVENT_STATE:
        c->states++;
        c->last_seq = event->seq;
        break;
    case MS_EVENT_ENDED:
    case MS_EVENT_CONNECTION_LOST:
    case MS_EVENT_RECONNECTED:
    case MS_EVENT_PUBLISH_FAILED:
    case MS_EVENT_LEADER_OFFLINE:
    case MS_EVENT_LEADER_ONLINE:
        break;
    }
    (void)event->stream;
    (void)event->data;
    (void)event->len;
    (void)event->status;
}

// A C++ lambda without captures converts to the C callback type too.
const ms_callback lambda_cb = [](const ms_event *e, void *) { (void)e; };

static_assert(MS_OK == 0 && MS_ERR_INTERNAL == 15, "status values are ABI");
static_assert(MS_EVENT_STATE == 0 && MS_EVENT_LEADER_ONLINE == 6, "event kinds are ABI");
static_assert(MS_MAX_NAME == 256 && MS_MAX_SECRET == 1024, "limits");
static_assert(MS_MAX_STATE == 8388608, "state limit");

} // namespace

int main()
{
    int failed = 0;
    const void *fns[] = {
        reinterpret_cast<const void *>(p_client_new),  reinterpret_cast<const void *>(p_client_free),
        reinterpret_cast<const void *>(p_set_timeout), reinterpret_cast<const void *>(p_set_ttl),
        reinterpret_cast<const void *>(p_set_heartbeat), reinterpret_cast<const void *>(p_set_callback),
        reinterpret_cast<const void *>(p_start),       reinterpret_cast<const void *>(p_reconnect),
        reinterpret_cast<const void *>(p_publish),     reinterpret_cast<const void *>(p_flush),
        reinterpret_cast<const void *>(p_stop),        reinterpret_cast<const void *>(p_connect),
        reinterpret_cast<const void *>(p_disconnect),  reinterpret_cast<const void *>(p_list),
        reinterpret_cast<const void *>(p_list_free),   reinterpret_cast<const void *>(p_version),
        reinterpret_cast<const void *>(p_status_name), reinterpret_cast<const void *>(p_last_error),
    };
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        if (fns[i] == nullptr)
            failed++;

    // No I/O: ms_client_new does none, and nothing here reaches a server.
    ms_client *client = nullptr;
    if (p_client_new("http://127.0.0.1:1", &client) != MS_OK || client == nullptr) {
        std::printf("FAIL - ms_client_new from C++: %s\n", p_last_error());
        failed++;
    } else {
        Counter counter = {0, 0};
        if (p_set_callback(client, on_event, &counter) != MS_OK)
            failed++;
        if (p_set_callback(client, lambda_cb, nullptr) != MS_OK)
            failed++;
        if (p_set_callback(client, nullptr, nullptr) != MS_OK)
            failed++;
        if (p_publish(client, "not-led", "{}", 2) != MS_ERR_NOT_LEADING)
            failed++;
        p_client_free(client);
    }
    ms_stream_info info = ms_stream_info();
    info.seq = 1;
    info.followers = 2u;
    info.updated_ms = -1;
    (void)info;
    p_list_free(nullptr, 0);
    if (std::strcmp(p_status_name(MS_ERR_NOT_FOUND), "MS_ERR_NOT_FOUND") != 0)
        failed++;
    std::printf("C++ header check: ms_version %s, %d failed\n", p_version(), failed);
    return failed == 0 ? 0 : 1;
}
