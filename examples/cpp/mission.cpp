// A leader and a follower in one program, with the C++ API
// (missionstream.hpp) of an installed missionstream, built with CMake
// (find_package(missionstream)): the follower prints each state the leader
// publishes, then ENDED when the leader stops the stream.
//
//   build/mission_cpp [URL]   # the Webdis URL, else $MISSIONSTREAM_URL
#include <missionstream.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <string>

#include <unistd.h>

int main(int argc, char **argv)
{
    namespace ms = missionstream;
    using namespace std::chrono_literals;
    const char *url = argc > 1 ? argv[1] : std::getenv("MISSIONSTREAM_URL");
    if (url == nullptr) {
        std::cerr << "usage: " << argv[0] << " WEBDIS_URL (or set MISSIONSTREAM_URL)\n";
        return 2;
    }
    std::mutex m;
    std::condition_variable cv;
    int states = 0;
    bool ended = false;
    auto wait = [&](auto done) {
        std::unique_lock<std::mutex> lock(m);
        return cv.wait_for(lock, 5s, done);
    };

    try {
        const std::string name = "example-cpp/" + std::to_string(getpid());
        ms::Client leader(url);
        ms::Client follower(url);
        follower.on_event([&](const ms::Event &e) {
            std::lock_guard<std::mutex> lock(m);
            if (e.kind == ms::EventKind::state) {
                std::cout << e.stream << " #" << e.seq << ": " << e.data << std::endl;
                states++;
            } else if (e.kind == ms::EventKind::ended) {
                std::cout << e.stream << " ended" << std::endl;
                ended = true;
            }
            cv.notify_all();
        });

        ms::Leader lead = leader.start(name, "follower-pw", "leader-code");
        ms::Follower follow = follower.connect(name, "follower-pw");
        wait([&] { return states >= 1; });
        lead.publish(R"({"waypoints":[[48.1,11.5],[48.2,11.6]]})");
        lead.flush(5s);
        bool ok = wait([&] { return states >= 2; });
        for (const ms::StreamInfo &info : follower.list())
            if (info.name == name)
                std::cout << info.name << ": seq " << info.seq << ", " << info.followers << " follower(s)" << std::endl;
        lead.stop();
        ok = wait([&] { return ended; }) && ok;
        if (!ok) {
            std::cerr << "did not see the published state and ENDED within 5 s\n";
            return 1;
        }
    } catch (const ms::Error &e) {
        std::cerr << "failed: " << e.status_name() << ": " << e.what() << "\n";
        return 1;
    }
    return 0;
}
