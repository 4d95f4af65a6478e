// The C++17 API (include/missionstream.hpp) against a real Redis + Webdis
// ($MISSIONSTREAM_URL), run by tests/c/run.sh under ASan/UBSan:
//   g++ -std=c++17 -Wall -Wextra -Werror -pedantic -Iinclude tests/c/cpp_api.cpp -lmissionstream
// Checks what a C++ user observes: states and events through a lambda,
// missionstream::Error with status() and the library's message, a throwing
// callback caught and reported (the events after it still arrive), RAII
// (a Follower going out of scope stops the events, a moved-from handle is
// refused), list() records, and inputs the C API cannot take (NUL bytes).
#include "missionstream.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ms = missionstream;
using namespace std::chrono_literals;

namespace {

int failures = 0;
int checks = 0;

void check(bool ok, const std::string &what)
{
    checks++;
    if (!ok) {
        failures++;
        std::printf("FAIL - %s\n", what.c_str());
    }
}

struct Copy {
    ms::EventKind kind;
    std::string stream;
    std::string data;
    std::uint64_t seq;
    ms_status status;
};

// Events copied out of the callback, for the main thread to wait on.
struct Seen {
    std::mutex m;
    std::condition_variable cv;
    std::vector<Copy> events;
    std::vector<std::string> errors;

    void add(const ms::Event &e)
    {
        std::lock_guard<std::mutex> lock(m);
        events.push_back(Copy{e.kind, std::string(e.stream), std::string(e.data), e.seq, e.status});
        cv.notify_all();
    }
    void error(const std::string &what)
    {
        std::lock_guard<std::mutex> lock(m);
        errors.push_back(what);
        cv.notify_all();
    }
    template <class Pred>
    bool wait(Pred pred, std::chrono::milliseconds timeout = 15s)
    {
        std::unique_lock<std::mutex> lock(m);
        return cv.wait_for(lock, timeout, [&] { return pred(); });
    }
    bool has_state(const std::string &stream, std::uint64_t seq)
    {
        for (const Copy &c : events)
            if (c.kind == ms::EventKind::state && c.stream == stream && c.seq == seq)
                return true;
        return false;
    }
    std::size_t count(const std::string &stream, ms::EventKind kind)
    {
        std::lock_guard<std::mutex> lock(m);
        std::size_t n = 0;
        for (const Copy &c : events)
            n += c.stream == stream && c.kind == kind;
        return n;
    }
};

// Runs f, expecting ms::Error with `status`; returns its what().
template <class F>
std::string expect_error(ms_status status, const std::string &what, F f)
{
    try {
        f();
        check(false, what + ": no exception, expected " + std::string(ms::status_name(status)));
    } catch (const ms::Error &e) {
        const std::runtime_error &base = e; // derives from std::runtime_error
        check(e.status() == status, what + ": status " + std::string(e.status_name()) + ", expected " +
                                        std::string(ms::status_name(status)) + " (" + e.what() + ")");
        check(std::string(base.what()).size() > 0, what + ": empty message");
        return e.what();
    } catch (const std::exception &e) {
        check(false, what + ": another exception: " + e.what());
    }
    return "";
}

std::string unique(const char *tag)
{
    static int n = 0;
    return "cpp-api-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) + "-" +
           std::to_string(++n) + "-" + tag;
}

} // namespace

int main()
{
    const char *url_env = std::getenv("MISSIONSTREAM_URL");
    if (url_env == nullptr) {
        std::printf("MISSIONSTREAM_URL is not set (tests/c/run.sh starts the servers)\n");
        return 2;
    }
    const std::string url = url_env;

    // Version: the header's macros, made from Cargo.toml, match the library.
    check(ms::version() == MS_VERSION_STRING,
          "version(): library " + std::string(ms::version()) + ", header " + MS_VERSION_STRING);
    check(std::to_string(MS_VERSION_MAJOR) + "." + std::to_string(MS_VERSION_MINOR) + "." +
                  std::to_string(MS_VERSION_PATCH) ==
              MS_VERSION_STRING,
          "MS_VERSION_MAJOR.MINOR.PATCH equals MS_VERSION_STRING");

    // Bad input, before any I/O.
    std::string msg = expect_error(MS_ERR_INVALID_ARGUMENT, "Client(bad URL)", [] { ms::Client c("not a url"); });
    check(msg.find("ms_client_new") != std::string::npos, "the message names the failing call: " + msg);
    expect_error(MS_ERR_INVALID_ARGUMENT, "Client(URL with a NUL)",
                 [&] { ms::Client c(std::string_view("http://127.0.0.1:1\0x", 20)); });
    expect_error(MS_ERR_INVALID_ARGUMENT, "set_timeout(0)", [&] {
        ms::Client c(url);
        c.set_timeout(0ms);
    });
    expect_error(MS_ERR_INVALID_ARGUMENT, "set_timeout(negative)", [&] {
        ms::Client c(url);
        c.set_timeout(-5ms);
    });

    Seen seen;
    const std::string name = unique("main");
    const std::string pw = "pw \xc3\xa9";
    const std::string code = "code-1";
    const std::string name2 = unique("moved");
    {
        ms::Client leader_client(url);
        leader_client.set_timeout(5s);
        ms::Client follower_client(url);

        msg = expect_error(MS_ERR_NOT_FOUND, "connect to a missing stream",
                           [&] { follower_client.connect(name, pw); });
        check(msg.find(name) != std::string::npos || msg.find("no") != std::string::npos, "NOT_FOUND message: " + msg);
        msg = expect_error(MS_ERR_INVALID_ARGUMENT, "start with a NUL in the name",
                           [&] { leader_client.start(std::string_view("a\0b", 3), pw, code); });
        check(msg.find("NUL") != std::string::npos, "the message says NUL: " + msg);

        ms::Leader lead = leader_client.start(name, pw, code);
        check(lead.name() == name, "Leader::name()");
        expect_error(MS_ERR_ALREADY, "start twice on one client", [&] { leader_client.start(name, pw, code); });
        expect_error(MS_ERR_EXISTS, "start a taken name", [&] {
            ms::Client other(url);
            other.start(name, pw, code);
        });
        expect_error(MS_ERR_BAD_PASSWORD, "connect with a wrong password",
                     [&] { follower_client.connect(name, "wrong"); });

        // The first state (seq 0) makes the callback throw: reported to the
        // error handler, and the events after it still arrive.
        follower_client.on_callback_error([&](std::exception_ptr error) {
            try {
                std::rethrow_exception(error);
            } catch (const std::exception &e) {
                seen.error(e.what());
            } catch (...) {
                seen.error("(not a std::exception)");
            }
        });
        follower_client.on_event([&](const ms::Event &e) {
            seen.add(e);
            if (e.kind == ms::EventKind::state && e.seq == 0)
                throw std::runtime_error("boom from the callback");
            if (e.kind == ms::EventKind::state && e.seq == 2)
                throw 42; // not a std::exception
        });
        {
            ms::Follower follow = follower_client.connect(name, pw);
            check(follow.name() == name, "Follower::name()");
            check(seen.wait([&] { return seen.has_state(name, 0) && !seen.errors.empty(); }),
                  "first state (seq 0) and the reported exception");
            lead.publish(R"({"waypoints":[1]})");
            lead.flush(5s);
            check(seen.wait([&] { return seen.has_state(name, 1); }), "state seq 1 after a throwing callback");
            {
                std::lock_guard<std::mutex> lock(seen.m);
                check(seen.errors.size() == 1 && seen.errors[0] == "boom from the callback",
                      "the error handler got the callback's exception");
                for (const Copy &c : seen.events)
                    if (c.seq == 1)
                        check(c.data == R"({"waypoints":[1]})" && c.status == MS_OK, "state 1 data: " + c.data);
            }

            // A Leader moved keeps leading; the moved-from one is refused.
            ms::Leader moved = std::move(lead);
            moved.publish(R"({"waypoints":[1,2]})");
            moved.flush(5s);
            expect_error(MS_ERR_INVALID_ARGUMENT, "publish on a moved-from Leader",
                         [&] { lead.publish("{}"); }); // NOLINT(bugprone-use-after-move)
            check(seen.wait([&] { return seen.has_state(name, 2) && seen.errors.size() == 2; }),
                  "state 2 and the non-std exception reported");
            expect_error(MS_ERR_TOO_LARGE, "publish over MS_MAX_STATE",
                         [&] { moved.publish(std::string(MS_MAX_STATE + 1, ' ')); });

            // list(): the stream, its follower and its sequence number.
            bool listed = false;
            for (const ms::StreamInfo &info : follower_client.list())
                if (info.name == name) {
                    listed = true;
                    check(info.seq == 2 && info.followers >= 1 && info.updated_ms > 0,
                          "list(): seq " + std::to_string(info.seq) + ", followers " +
                              std::to_string(info.followers));
                    // The leader's presence: heard (it published), at its heartbeat interval.
                    check(info.heard_ms >= info.updated_ms && info.heartbeat_ms == 5000,
                          "list(): heard_ms " + std::to_string(info.heard_ms) + ", heartbeat_ms " +
                              std::to_string(info.heartbeat_ms));
                }
            check(listed, "list() has the stream");

            // A new callable set from inside a callback takes the next event.
            Seen second;
            follower_client.on_event([&](const ms::Event &e) {
                seen.add(e);
                if (e.kind == ms::EventKind::state && e.seq == 3)
                    follower_client.on_event([&](const ms::Event &e2) { second.add(e2); });
            });
            moved.publish(R"({"n":3})");
            moved.flush(5s);
            check(seen.wait([&] { return seen.has_state(name, 3); }), "state 3 through the replaced callable");
            moved.publish(R"({"n":4})");
            moved.flush(5s);
            check(second.wait([&] { return second.has_state(name, 4); }),
                  "state 4 through the callable set from a callback");
            check(!seen.has_state(name, 4), "the old callable no longer runs");
            follower_client.on_event([&](const ms::Event &e) { seen.add(e); });
            lead = std::move(moved);
        } // the Follower goes out of scope: the follow ends

        std::size_t states_before = seen.count(name, ms::EventKind::state);
        lead.publish(R"({"n":5})");
        lead.flush(5s);
        std::this_thread::sleep_for(500ms);
        check(seen.count(name, ms::EventKind::state) == states_before, "no state after the Follower is destroyed");

        // Follow again, then the leader stops the stream: ENDED.
        ms::Follower again = follower_client.connect(name, pw);
        check(seen.wait([&] { return seen.has_state(name, 5); }), "state 5 on following again");
        lead.stop();
        check(seen.wait([&] {
            for (const Copy &c : seen.events)
                if (c.kind == ms::EventKind::ended && c.stream == name)
                    return true;
            return false;
        }),
              "ENDED after stop()");
        expect_error(MS_ERR_NOT_FOLLOWING, "disconnect after ENDED", [&] { again.disconnect(); });
        expect_error(MS_ERR_NOT_LEADING, "publish after stop", [&] { lead.publish("{}"); });

        // A moved Client keeps its connection, its callable and its leads.
        ms::Client moved_client = std::move(follower_client);
        ms::Leader lead2 = moved_client.start(name2, "", "c");
        ms::Follower f2 = moved_client.connect(name2, "");
        check(seen.wait([&] { return seen.has_state(name2, 0); }), "a moved Client delivers to its callable");
        expect_error(MS_ERR_INVALID_ARGUMENT, "a moved-from Client", [&] {
            follower_client.list(); // NOLINT(bugprone-use-after-move)
        });
        lead2.publish(R"({"kept":true})");
        lead2.flush(5s);
    } // both clients freed: the lead of name2 ends, its stream stays in Redis

    // Reconnect as the leader after a restart.
    {
        ms::Client client(url);
        expect_error(MS_ERR_NOT_FOUND, "reconnect a stopped stream", [&] { client.reconnect(name, pw, code); });
        expect_error(MS_ERR_BAD_LEADER_CODE, "reconnect with a wrong leader code",
                     [&] { client.reconnect(name2, "", "wrong"); });
        ms::Leader back = client.reconnect(name2, "", "c");
        bool kept = false;
        for (const ms::StreamInfo &info : client.list())
            kept = kept || (info.name == name2 && info.seq == 1);
        check(kept, "the stream of a freed client is kept with its last state (seq 1)");
        back.stop();
    }
    std::printf("C++ API: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
