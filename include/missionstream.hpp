/*
 * missionstream.hpp: the C++17 API of missionstream, header-only, over the
 * C API of missionstream.h (link with -lmissionstream, pkg-config
 * missionstream, or CMake's missionstream::missionstream).
 *
 *   missionstream::Client client("http://127.0.0.1:7379");
 *   client.on_event([](const missionstream::Event &e) {
 *       if (e.kind == missionstream::EventKind::state)
 *           std::cout << e.stream << " #" << e.seq << ": " << e.data << "\n";
 *   });
 *   missionstream::Leader lead = client.start("mission-1", "pw", "code");
 *   lead.publish(R"({"waypoints":[]})");
 *   lead.flush(std::chrono::seconds(5));
 *
 * Conventions:
 *  - Every failure throws missionstream::Error (a std::runtime_error):
 *    status() is the ms_status, what() the library's message.
 *  - Strings are taken as std::string_view and copied; one that holds a
 *    NUL byte is refused with MS_ERR_INVALID_ARGUMENT.
 *  - Event callbacks are any callable taking `const Event &`. They run on
 *    the library's thread; an exception thrown by one is caught there and
 *    passed to the on_callback_error handler (default: a line on stderr):
 *    it never reaches the library and never terminates the program.
 *  - Client, Leader and Follower are move-only. Leader and Follower refer
 *    to their Client's connection and must not outlive it.
 *  - Like the C API, every method may be called from any thread, except
 *    on_event/on_callback_error (call them from one thread at a time, or
 *    from a callback) and the destructor of Client (never from a callback).
 */

#ifndef MISSIONSTREAM_HPP
#define MISSIONSTREAM_HPP

#if !defined(__cplusplus) || (__cplusplus < 201703L && (!defined(_MSVC_LANG) || _MSVC_LANG < 201703L))
#error "missionstream.hpp needs C++17 or later (use missionstream.h from C)"
#endif

#include "missionstream.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace missionstream {

/** The version of the library loaded at run time, e.g. "0.1.0". */
inline std::string_view version() noexcept { return ms_version(); }

/** The C name of a status, e.g. "MS_ERR_NOT_FOUND". */
inline std::string_view status_name(ms_status status) noexcept { return ms_status_name(status); }

/** A failed call: the status and the library's message. */
class Error : public std::runtime_error {
public:
    Error(ms_status status, const std::string &message) : std::runtime_error(message), status_(status) {}

    /** The status of the failure, never MS_OK. */
    ms_status status() const noexcept { return status_; }

    /** The C name of the status, e.g. "MS_ERR_NOT_FOUND". */
    std::string_view status_name() const noexcept { return ms_status_name(status_); }

private:
    ms_status status_;
};

/** Kinds of events (the values of ms_event_kind). */
enum class EventKind : int {
    state = MS_EVENT_STATE,
    ended = MS_EVENT_ENDED,
    connection_lost = MS_EVENT_CONNECTION_LOST,
    reconnected = MS_EVENT_RECONNECTED,
    publish_failed = MS_EVENT_PUBLISH_FAILED,
    leader_offline = MS_EVENT_LEADER_OFFLINE,
    leader_online = MS_EVENT_LEADER_ONLINE,
};

/**
 * An event, lent to the callback: the views are valid only during the
 * callback (copy into std::string what you keep).
 */
struct Event {
    EventKind kind;
    /** The stream's name. */
    std::string_view stream;
    /** EventKind::state: the state (JSON text); otherwise empty. */
    std::string_view data;
    /** EventKind::state: the state's sequence number; otherwise 0. */
    std::uint64_t seq;
    /** connection_lost, publish_failed: the cause; otherwise MS_OK. */
    ms_status status;
};

/** A live stream, as listed by Client::list(). */
struct StreamInfo {
    std::string name;
    std::uint64_t seq;
    std::uint32_t followers;
    /** Unix time in ms of the last stored state. */
    std::int64_t updated_ms;
    /** Unix time in ms when the leader was last heard (it started or
     *  reconnected the stream, published, or sent a heartbeat); 0 if not
     *  known. */
    std::int64_t heard_ms = 0;
    /** The heartbeat interval the leader announced, in ms: a leader not
     *  heard for 3 intervals is offline. */
    std::uint32_t heartbeat_ms = 0;
};

namespace detail {

/** Throws the failure of the call that just returned `status`: the
 *  library's message (it names the C function, e.g. "ms_connect: ..."). */
[[noreturn]] inline void raise(ms_status status, std::string_view what)
{
    const char *last = ms_last_error();
    if (last != nullptr && *last != '\0')
        throw Error(status, last);
    std::string message(what);
    message += ": ";
    message += ms_status_name(status);
    throw Error(status, message);
}

inline void check(ms_status status, std::string_view what)
{
    if (status != MS_OK)
        raise(status, what);
}

/** A NUL-terminated copy of a string_view; refuses embedded NUL bytes. */
inline std::string c_str(std::string_view s, std::string_view what, std::string_view field)
{
    if (s.find('\0') != std::string_view::npos) {
        std::string message(what);
        message += ": the ";
        message += field;
        message += " contains a NUL byte";
        throw Error(MS_ERR_INVALID_ARGUMENT, message);
    }
    return std::string(s);
}

template <class Rep, class Period>
std::uint32_t to_u32_ms(std::chrono::duration<Rep, Period> d, std::string_view what)
{
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
    if (ms < 0 || static_cast<unsigned long long>(ms) > 0xFFFFFFFFull)
        throw Error(MS_ERR_INVALID_ARGUMENT, std::string(what) + ": the duration is out of range");
    return static_cast<std::uint32_t>(ms);
}

/** What the C callback's user_data points to: the client's handlers. */
struct Handlers {
    std::function<void(const Event &)> on_event;
    std::function<void(std::exception_ptr)> on_error;
};

/** The Handlers whose callback runs on this thread, if any. */
inline thread_local const Handlers *running = nullptr;

inline void report(const Handlers &h, std::exception_ptr error) noexcept
{
    try {
        if (h.on_error) {
            h.on_error(error);
            return;
        }
    } catch (...) {
        // The error handler threw too: fall through to the plain report.
    }
    try {
        std::rethrow_exception(error);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "missionstream: an event callback threw: %s\n", e.what());
    } catch (...) {
        std::fprintf(stderr, "missionstream: an event callback threw an exception not derived from std::exception\n");
    }
}

} // namespace detail
} // namespace missionstream

extern "C" {
/** The C callback of every missionstream::Client: calls its handler;
 *  no exception leaves it. */
inline void missionstream_cpp_dispatch(const ms_event *event, void *user_data) noexcept
{
    using namespace missionstream;
    const auto *h = static_cast<const detail::Handlers *>(user_data);
    if (h == nullptr || event == nullptr || !h->on_event)
        return;
    const detail::Handlers *outer = detail::running;
    detail::running = h;
    try {
        Event e{static_cast<EventKind>(event->kind),
                event->stream != nullptr ? std::string_view(event->stream) : std::string_view(),
                event->data != nullptr ? std::string_view(event->data, event->len) : std::string_view(),
                event->seq, event->status};
        h->on_event(e);
    } catch (...) {
        detail::report(*h, std::current_exception());
    }
    detail::running = outer;
}
}

namespace missionstream {

class Client;

/**
 * The lead of a stream, from Client::start or Client::reconnect. Destroying
 * it does not stop the stream: the client keeps leading it until stop() or
 * until the Client is destroyed (which delivers the pending state first and
 * keeps the stream in Redis, for a later reconnect).
 */
class Leader {
public:
    Leader(Leader &&other) noexcept : client_(std::exchange(other.client_, nullptr)), name_(std::move(other.name_)) {}
    Leader &operator=(Leader &&other) noexcept
    {
        client_ = std::exchange(other.client_, nullptr);
        name_ = std::move(other.name_);
        return *this;
    }
    Leader(const Leader &) = delete;
    Leader &operator=(const Leader &) = delete;
    ~Leader() = default;

    const std::string &name() const noexcept { return name_; }

    /** Hands over the new state (UTF-8 JSON, at most MS_MAX_STATE bytes);
     *  returns at once. Failures come as EventKind::publish_failed and from flush(). */
    void publish(std::string_view state)
    {
        detail::check(ms_publish(handle(), name_.c_str(), state.data(), state.size()), "publish");
    }

    /** Waits until every state published before is stored in Redis. */
    template <class Rep, class Period>
    void flush(std::chrono::duration<Rep, Period> timeout)
    {
        detail::check(ms_flush(handle(), name_.c_str(), detail::to_u32_ms(timeout, "flush")), "flush");
    }

    /** Deletes the stream; every follower gets EventKind::ended. */
    void stop() { detail::check(ms_stop(handle(), name_.c_str()), "stop"); }

private:
    friend class Client;
    Leader(ms_client *client, std::string name) : client_(client), name_(std::move(name)) {}
    ms_client *handle() const
    {
        if (client_ == nullptr)
            throw Error(MS_ERR_INVALID_ARGUMENT, "missionstream::Leader: used after being moved from");
        return client_;
    }
    ms_client *client_;
    std::string name_;
};

/**
 * Following a stream, from Client::connect: events come to the Client's
 * on_event callback. Destroying it ends the follow (ms_disconnect); no event
 * of the stream is delivered afterwards.
 */
class Follower {
public:
    Follower(Follower &&other) noexcept : client_(std::exchange(other.client_, nullptr)), name_(std::move(other.name_)) {}
    Follower &operator=(Follower &&other) noexcept
    {
        if (this != &other) {
            release();
            client_ = std::exchange(other.client_, nullptr);
            name_ = std::move(other.name_);
        }
        return *this;
    }
    Follower(const Follower &) = delete;
    Follower &operator=(const Follower &) = delete;
    ~Follower() { release(); }

    const std::string &name() const noexcept { return name_; }

    /** Ends the follow now. Throws MS_ERR_NOT_FOLLOWING after EventKind::ended. */
    void disconnect()
    {
        if (client_ == nullptr)
            throw Error(MS_ERR_NOT_FOLLOWING, "disconnect: this Follower no longer follows a stream");
        ms_client *client = std::exchange(client_, nullptr);
        detail::check(ms_disconnect(client, name_.c_str()), "disconnect");
    }

private:
    friend class Client;
    Follower(ms_client *client, std::string name) : client_(client), name_(std::move(name)) {}
    void release() noexcept
    {
        if (client_ != nullptr)
            (void)ms_disconnect(std::exchange(client_, nullptr), name_.c_str());
    }
    ms_client *client_;
    std::string name_;
};

/** A client of one Webdis endpoint (owns an ms_client). */
class Client {
public:
    /** `http(s)://[user:pass@]host[:port][/prefix]`; does no I/O. */
    explicit Client(std::string_view webdis_url)
    {
        std::string url = detail::c_str(webdis_url, "Client", "URL");
        detail::check(ms_client_new(url.c_str(), &client_), "Client");
    }

    Client(Client &&other) noexcept
        : client_(std::exchange(other.client_, nullptr)), handlers_(std::move(other.handlers_)),
          retired_(std::move(other.retired_))
    {
    }
    Client &operator=(Client &&other) noexcept
    {
        if (this != &other) {
            reset();
            client_ = std::exchange(other.client_, nullptr);
            handlers_ = std::move(other.handlers_);
            retired_ = std::move(other.retired_);
        }
        return *this;
    }
    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;

    /** Delivers pending states of led streams, ends follows; never from a callback. */
    ~Client() { reset(); }

    /** The C handle, for calls the C++ API does not wrap. */
    ms_client *get() const noexcept { return client_; }

    template <class Rep, class Period>
    void set_timeout(std::chrono::duration<Rep, Period> timeout)
    {
        detail::check(ms_client_set_timeout(handle(), detail::to_u32_ms(timeout, "set_timeout")), "set_timeout");
    }

    template <class Rep, class Period>
    void set_stream_ttl(std::chrono::duration<Rep, Period> ttl)
    {
        auto s = std::chrono::duration_cast<std::chrono::seconds>(ttl).count();
        if (s < 0 || static_cast<unsigned long long>(s) > 0xFFFFFFFFull)
            throw Error(MS_ERR_INVALID_ARGUMENT, "set_stream_ttl: the duration is out of range");
        detail::check(ms_client_set_stream_ttl(handle(), static_cast<std::uint32_t>(s)), "set_stream_ttl");
    }

    template <class Rep, class Period>
    void set_heartbeat(std::chrono::duration<Rep, Period> interval)
    {
        detail::check(ms_client_set_heartbeat(handle(), detail::to_u32_ms(interval, "set_heartbeat")),
                      "set_heartbeat");
    }

    /** Trust anchors of https:// URLs: the certificates of a PEM file. */
    void set_tls_ca_file(std::string_view path)
    {
        std::string p = detail::c_str(path, "set_tls_ca_file", "path");
        detail::check(ms_client_set_tls_ca_file(handle(), p.c_str()), "set_tls_ca_file");
    }

    /**
     * Sets the callable that receives every event of this client,
     * `void(const Event &)` (an empty one: none). Its exceptions go to the
     * on_callback_error handler. Returns when the previous callable no
     * longer runs (unless called from a callback).
     */
    template <class F>
    void on_event(F &&callback)
    {
        auto next = std::make_unique<detail::Handlers>();
        next->on_event = std::function<void(const Event &)>(std::forward<F>(callback));
        if (handlers_)
            next->on_error = handlers_->on_error;
        install(std::move(next));
    }

    /**
     * Sets what receives an exception thrown by the event callback, as a
     * std::exception_ptr (rethrow it to inspect it). It runs on the
     * library's thread; what it throws is reported on stderr. Default: a
     * line on stderr.
     */
    template <class F>
    void on_callback_error(F &&handler)
    {
        auto next = std::make_unique<detail::Handlers>();
        next->on_error = std::function<void(std::exception_ptr)>(std::forward<F>(handler));
        if (handlers_)
            next->on_event = handlers_->on_event;
        install(std::move(next));
    }

    /** Creates stream `name` and leads it. */
    Leader start(std::string_view name, std::string_view password, std::string_view leader_code)
    {
        std::string n = detail::c_str(name, "start", "name");
        std::string p = detail::c_str(password, "start", "password");
        std::string c = detail::c_str(leader_code, "start", "leader code");
        detail::check(ms_start(handle(), n.c_str(), p.c_str(), c.c_str()), "start");
        return Leader(client_, std::move(n));
    }

    /** Takes up leading an existing stream (after a restart). */
    Leader reconnect(std::string_view name, std::string_view password, std::string_view leader_code)
    {
        std::string n = detail::c_str(name, "reconnect", "name");
        std::string p = detail::c_str(password, "reconnect", "password");
        std::string c = detail::c_str(leader_code, "reconnect", "leader code");
        detail::check(ms_reconnect(handle(), n.c_str(), p.c_str(), c.c_str()), "reconnect");
        return Leader(client_, std::move(n));
    }

    /** Follows stream `name`; its current state is the first event. */
    Follower connect(std::string_view name, std::string_view password)
    {
        std::string n = detail::c_str(name, "connect", "name");
        std::string p = detail::c_str(password, "connect", "password");
        detail::check(ms_connect(handle(), n.c_str(), p.c_str()), "connect");
        return Follower(client_, std::move(n));
    }

    /** The live streams, sorted by name, each with its leader's presence
     *  (ms_list_presence). */
    std::vector<StreamInfo> list()
    {
        ms_stream_presence *records = nullptr;
        std::size_t count = 0;
        detail::check(ms_list_presence(handle(), &records, &count), "list");
        struct Free {
            ms_stream_presence *records;
            std::size_t count;
            ~Free() { ms_list_presence_free(records, count); }
        } free_records{records, count};
        std::vector<StreamInfo> out;
        out.reserve(count);
        for (std::size_t i = 0; i < count; i++) {
            const ms_stream_info &info = records[i].info;
            out.push_back(StreamInfo{info.name != nullptr ? info.name : "", info.seq, info.followers,
                                     info.updated_ms, records[i].heard_ms, records[i].heartbeat_ms});
        }
        return out;
    }

private:
    ms_client *handle() const
    {
        if (client_ == nullptr)
            throw Error(MS_ERR_INVALID_ARGUMENT, "missionstream::Client: used after being moved from");
        return client_;
    }

    void install(std::unique_ptr<detail::Handlers> next)
    {
        ms_client *client = handle();
        detail::check(ms_set_callback(client, &missionstream_cpp_dispatch, next.get()), "on_event");
        std::unique_ptr<detail::Handlers> previous = std::exchange(handlers_, std::move(next));
        // From a callback the previous handlers may still be running (this
        // very call is inside them): keep them until the client goes.
        if (previous && detail::running == previous.get())
            retired_.push_back(std::move(previous));
    }

    void reset() noexcept
    {
        if (client_ != nullptr)
            ms_client_free(std::exchange(client_, nullptr));
        handlers_.reset();
        retired_.clear();
    }

    ms_client *client_ = nullptr;
    std::unique_ptr<detail::Handlers> handlers_;
    std::vector<std::unique_ptr<detail::Handlers>> retired_;
};

} // namespace missionstream

#endif /* MISSIONSTREAM_HPP */
