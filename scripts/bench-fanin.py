#!/usr/bin/env python3
"""What a Webdis (and its Redis) holds per follower and per leader.

For each N (default 100, 300, 1000): a fresh Redis + Webdis pair
(scripts/server.sh, deploy/ configuration) started with this process'
open-file limit raised to its hard limit; one client leads N distinct
small streams, another follows all N. Before the leads, after them, and
after the follows (each follow delivering its first state, then 2 s of
heartbeats) it reads:

- Webdis: open file descriptors (/proc/PID/fd) and VmRSS;
- Redis: connected_clients and used_memory (INFO), VmRSS;
- this process (both clients): threads, open descriptors, VmRSS.

and prints one Markdown table (per-follow and per-lead increments last).

    make bench-fanin                      # N = 100, 300, 1000
    COUNTS=50,200 make bench-fanin        # other counts

Runs only on loopback, on ports the kernel picks. Needs the release
library (make build), redis-server, redis-cli and webdis.
"""

import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))

import missionstream  # noqa: E402


def status_of(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def fds_of(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def info(port, section):
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", section],
        capture_output=True, text=True, check=True,
    ).stdout
    return dict(
        line.split(":", 1) for line in out.splitlines() if ":" in line
    )


def sample(webdis_pid, redis_pid, redis_port):
    me = os.getpid()
    return {
        "webdis_fd": fds_of(webdis_pid),
        "webdis_rss_kib": status_of(webdis_pid, "VmRSS"),
        "redis_clients": int(info(redis_port, "clients")["connected_clients"]),
        "redis_used_kib": int(info(redis_port, "memory")["used_memory"]) // 1024,
        "redis_rss_kib": status_of(redis_pid, "VmRSS"),
        "client_threads": status_of(me, "Threads"),
        "client_fd": fds_of(me),
        "client_rss_kib": status_of(me, "VmRSS"),
    }


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip().removeprefix("export ")
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                env[k] = v
    return env


def run(n, workdir):
    d = os.path.join(workdir, f"n{n}")
    subprocess.run([os.path.join(HERE, "server.sh"), "start", d],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        env = read_env(os.path.join(d, "env"))
        url, redis_port = env["MISSIONSTREAM_URL"], int(env["REDIS_PORT"])
        webdis_pid = int(open(os.path.join(d, "webdis.pid")).read())
        redis_pid = int(open(os.path.join(d, "redis.pid")).read())
        # Redis' own limit (maxclients follows its open-file limit).
        limit = info(redis_port, "clients").get("maxclients", "?")
        base = sample(webdis_pid, redis_pid, redis_port)
        leader = missionstream.Client(url, heartbeat=1.0, timeout=30.0,
                                      kdf_iterations=100_000)
        follower = missionstream.Client(url, timeout=30.0)
        t0 = time.monotonic()
        leads = []
        for i in range(n):
            lead = leader.start(f"fanin-{n}-{i}", "pw", "code")
            lead.publish({"i": i})
            leads.append(lead)
        for lead in leads:
            lead.flush(timeout=30)
        time.sleep(2)
        led = sample(webdis_pid, redis_pid, redis_port)
        follows = [follower.connect(f"fanin-{n}-{i}", "pw") for i in range(n)]
        took = time.monotonic() - t0
        time.sleep(2)
        followed = sample(webdis_pid, redis_pid, redis_port)
        follower.close()
        leader.close()
        del follows, leads
        return {"n": n, "maxclients": limit, "base": base, "led": led,
                "followed": followed, "seconds": took}
    finally:
        subprocess.run([os.path.join(HERE, "server.sh"), "stop", d],
                       check=False, stdout=subprocess.DEVNULL)


ROWS = [
    ("Webdis open fds", "webdis_fd", 1),
    ("Webdis RSS (MiB)", "webdis_rss_kib", 1024),
    ("Redis connected_clients", "redis_clients", 1),
    ("Redis used_memory (MiB)", "redis_used_kib", 1024),
    ("Redis RSS (MiB)", "redis_rss_kib", 1024),
    ("client threads", "client_threads", 1),
    ("client open fds", "client_fd", 1),
    ("client RSS (MiB)", "client_rss_kib", 1024),
]


def fmt(v, unit):
    return f"{v / unit:.1f}" if unit != 1 else str(v)


def main():
    counts = [int(c) for c in os.environ.get("COUNTS", "100,300,1000").split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = []
    with tempfile.TemporaryDirectory(prefix="ms-fanin-") as work:
        for n in counts:
            print(f"N = {n} ...", file=sys.stderr, flush=True)
            results.append(run(n, work))
    webdis = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "webdis"],
                            capture_output=True, text=True).stdout or "?"
    redis = subprocess.run(["redis-server", "--version"], capture_output=True,
                           text=True).stdout.split()[2].removeprefix("v=")
    print(f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Linux {platform.release()}, Webdis {webdis}, "
          f"Redis {redis}, open-file limit {hard}, Redis maxclients "
          f"{results[0]['maxclients']}; deploy/ configuration")
    print()
    print("| figure | " + " | ".join(
        f"N={r['n']}: idle / N leads / + N follows" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for label, key, unit in ROWS:
        cells = [" / ".join(fmt(r[s][key], unit) for s in ("base", "led", "followed"))
                 for r in results]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print("Per lead and per follow (increments divided by N):")
    print()
    print("| figure | " + " | ".join(f"N={r['n']}: per lead / per follow" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for label, key, unit in ROWS:
        cells = []
        for r in results:
            lead = (r["led"][key] - r["base"][key]) / r["n"]
            follow = (r["followed"][key] - r["led"][key]) / r["n"]
            cells.append(f"{lead:.2f} / {follow:.2f}")  # memory in KiB
        name = label.replace("(MiB)", "(KiB)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for r in results:
        print(f"N={r['n']}: leads + follows set up in {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
