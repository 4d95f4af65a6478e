#!/usr/bin/env python3
"""Redis' time per ms_publish call, delta against full, by plan size.

Starts a Redis + Webdis pair (scripts/server.sh) on free loopback ports,
and for each plan size (QGroundControl-style survey plans, indented by 4):

- starts a stream, publishes the plan in full and one delta, then, with
  Redis' slow log recording every command (threshold 0), the 160
  one-waypoint updates of row 13's latency loop (a different waypoint
  each, both its coordinates moved), acknowledged one at a time;
- then UPDATES acknowledged updates of row 13's ring (PLACES places spread
  over the plan, one coordinate moved and moved back; with --places 0 a
  new waypoint at every update instead), one update after the functions
  were loaded again (`FUNCTION LOAD REPLACE`: no kept state, the newest
  state assembled from the record), and FULL publishes of random content
  of the same size (sent in full);
- prints the duration Redis recorded for each `FCALL ms_publish` (the
  function's whole run: arguments, Lua, the writes and the PUBLISH to the
  subscribers; not the propagation to the AOF and replicas), by kind:
  p50, mean, p90; and over the ring, the compositions of the record's log
  (`SET msl:…`), its compactions (`HSET stream:… s …`) and the AOF's
  growth per update.

When the loaded functions also define `ms_prof` (a copy of the library
with `redis.call('TIME')` checkpoints between the steps of `ms_publish`,
summing each step's microseconds in a table that `ms_prof` returns and
empties), the sums per call of each loop are printed too.

    python3 scripts/delta-path.py [--sizes 98,991] [--updates 1000] [--full 30] [--places 10]

Needs the built library (cargo build --release) and redis-server, webdis.
"""
import argparse
import glob
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(HERE, "bindings", "python"))
os.environ.setdefault("MISSIONSTREAM_LIB", os.path.join(HERE, "target", "release", "libmissionstream.so"))
import missionstream  # noqa: E402

ROW = 20


class Plan:
    """A survey of n waypoints (the structure of tests/common/plan.rs)."""

    def __init__(self, n, seed):
        lat0, lon0 = 47.3977 + (seed % 1000) * 1e-5, 8.5456
        items = [self.item(1, 22, 50.0, [15.0, 0.0, 0.0], lat0, lon0)]
        self.waypoints = []
        jump = 2
        for i in range(n):
            row, col = divmod(i, ROW)
            if col == 0:
                items.append(self.camera(jump, 25.0))
                jump += 1
            x = col if row % 2 == 0 else ROW - 1 - col
            self.waypoints.append(len(items))
            items.append(self.item(jump, 16, 60.0, [0.0, 0.0, 0.0], round(lat0 + row * 0.00027, 7),
                                   round(lon0 + x * 0.00041, 7)))
            jump += 1
            if col == ROW - 1 or i == n - 1:
                items.append(self.camera(jump, 0.0))
                jump += 1
        self.doc = {"fileType": "Plan", "groundStation": "QGroundControl",
                    "mission": {"cruiseSpeed": 15, "firmwareType": 12, "hoverSpeed": 5, "items": items,
                                "plannedHomePosition": [lat0, lon0, 488.1], "vehicleType": 2, "version": 2},
                    "version": 1}

    @staticmethod
    def item(jump, command, alt, p3, lat, lon):
        return {"AMSLAltAboveTerrain": None, "Altitude": alt, "AltitudeMode": 1, "autoContinue": True,
                "command": command, "doJumpId": jump, "frame": 3, "params": p3 + [None, lat, lon, alt],
                "type": "SimpleItem"}

    @staticmethod
    def camera(jump, dist):
        return {"autoContinue": True, "command": 206, "doJumpId": jump, "frame": 2,
                "params": [dist, 0, 1, 0, 0, 0, 0], "type": "SimpleItem"}

    @classmethod
    def of_size(cls, size, seed):
        per = len(cls(100, seed).text()) // 100
        return cls(max(1, size // per), seed)

    def move(self, i, dlat, dlon):
        p = self.doc["mission"]["items"][self.waypoints[i % len(self.waypoints)]]["params"]
        p[4], p[5] = round(p[4] + dlat, 7), round(p[5] + dlon, 7)

    def text(self):
        return json.dumps(self.doc, indent=4) + "\n"


class Resp:
    """A plain RESP connection to Redis (replies parsed to Python values)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.s.sendall(b"".join(out))
        return self.read()

    def read(self):
        line = self.f.readline()[:-2]
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


def pct(v, p):
    v = sorted(v)
    return v[round((len(v) - 1) * p)] if v else float("nan")


def summary(us):
    if not us:
        return "none"
    return (f"p50 {pct(us, 0.5):7.0f} µs  mean {statistics.mean(us):7.0f} µs  p90 {pct(us, 0.9):7.0f} µs"
            f"  ({len(us)} calls)")


def publish_calls(r):
    """ms_publish durations (µs) in the slow log, by kind, oldest first."""
    out = {"delta": [], "full": []}
    for entry in reversed(r.call("SLOWLOG", "GET", "-1")):
        args = entry[3]
        if len(args) > 10 and args[0].upper() == b"FCALL" and args[1] == b"ms_publish":
            out.setdefault(args[10].decode(), []).append(entry[2])
    return out


def measure(client, port, size, updates, fulls, places):
    r = Resp(port)
    name = f"delta-path/{os.getpid()}.{size}"
    leader = client.start(name, "pw", "code")
    plan = Plan.of_size(size * 1024, 13)
    leader.publish(plan.text())
    leader.flush(30)
    # (the first delta after a full state reads the whole state once)
    plan.move(1, 0.00001, 0.00001)
    leader.publish(plan.text())
    leader.flush(30)
    r.call("CONFIG", "SET", "slowlog-max-len", "1000000")
    r.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
    r.call("SLOWLOG", "RESET")
    try:
        r.call("FCALL", "ms_prof", "0")
    except RuntimeError:
        pass
    for i in range(160):
        plan.move(i * 37, 0.00001, 0.00001)
        leader.publish(plan.text())
        leader.flush(30)
    fresh = publish_calls(r)
    try:
        prof = dict(x.decode().split("=") for x in r.call("FCALL", "ms_prof", "0"))
        print("  profile per call (new places), µs: " + ", ".join(f"{k} {int(v) / 160:.0f}" for k, v in prof.items()))
    except RuntimeError:
        pass
    ring = []
    spread = [i * len(plan.waypoints) // max(places, 1) + 3 for i in range(max(places, 1))]
    for w in spread:
        plan.move(w, 0.00002, 0.0)
        ring.append(plan.text())
    for w in reversed(spread):
        plan.move(w, -0.00002, 0.0)
        ring.append(plan.text())
    # (random content: nothing for a delta to copy)
    others = [json.dumps({"r": os.urandom(len(ring[0]) // 2).hex()}) for _ in range(2)]
    time.sleep(1.2)
    files = sorted(glob.glob(os.path.join(port_dir[port], "appendonlydir", "*.incr.aof")), key=os.path.getmtime)
    aof0 = os.path.getsize(files[-1])
    r.call("SLOWLOG", "RESET")
    t0 = time.time()
    for i in range(updates):
        if places:
            leader.publish(ring[i % len(ring)])
        else:
            plan.move(i * 37 + 160 * 37, 0.00001, 0.00001)
            leader.publish(plan.text())
        leader.flush(30)
    rate = updates / (time.time() - t0)
    with open(files[-1], "rb") as f:
        f.seek(aof0)
        ring_aof = f.read()
    sets = ring_aof.count(b"$3\r\nSET\r\n")
    compactions = len(re.findall(rb"\$4\r\nHSET\r\n\$\d+\r\n[^\r]*\r\n\$1\r\ns\r\n", ring_aof))
    deltas = publish_calls(r)
    try:
        prof = dict(x.decode().split("=") for x in r.call("FCALL", "ms_prof", "0"))
        print("  profile per call, µs: " + ", ".join(f"{k} {int(v) / updates:.0f}" for k, v in prof.items()))
    except RuntimeError:
        pass
    # A cold read: the functions loaded again (no kept state), then one
    # more update, which assembles the newest state from the record.
    entries = r.call("STRLEN", "msl:" + name)
    with open(os.path.join(HERE, "lua", "missionstream.lua"), "rb") as f:
        r.call("FUNCTION", "LOAD", "REPLACE", f.read())
    r.call("SLOWLOG", "RESET")
    if places:
        leader.publish(ring[updates % len(ring)])
    else:
        plan.move(7, 0.00001, 0.00001)
        leader.publish(plan.text())
    leader.flush(30)
    cold = publish_calls(r)
    r.call("SLOWLOG", "RESET")
    for k in range(fulls):
        leader.publish(others[k % 2])
        leader.flush(30)
    full = publish_calls(r)
    r.call("CONFIG", "SET", "slowlog-log-slower-than", "10000")
    time.sleep(1.2)
    size_real = len(ring[0])
    what = f"a ring of {places} places" if places else "a new place each"
    print(f"plan of {size_real / 1024:.0f} KiB: {updates} acknowledged one-waypoint updates, {what} ({rate:.0f}/s), "
          f"{sets} compositions and {compactions} compactions of the record; AOF {len(ring_aof) / updates:.0f} B per update")
    print(f"  FCALL ms_publish, delta, a new place each (160, row 13's latency loop): {summary(fresh['delta'])}")
    print(f"  FCALL ms_publish, delta, {what}: {summary(deltas['delta'])}")
    if deltas["full"]:
        print(f"    (sent in full during the ring: {summary(deltas['full'])})")
    print(f"  FCALL ms_publish, delta after FUNCTION LOAD (the state assembled from the base and a log of "
          f"{entries} bytes): {summary(cold['delta'])}")
    print(f"  FCALL ms_publish, full:  {summary(full['full'])}")
    leader.stop()


port_dir = {}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="98,991", help="plan sizes in KiB, comma-separated")
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument("--full", type=int, default=30)
    ap.add_argument("--places", type=int, default=10, help="places of the ring (0: a new place every update)")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="ms-delta-path-")
    subprocess.run([os.path.join(HERE, "scripts", "server.sh"), "start", d], check=True, stdout=subprocess.DEVNULL)
    try:
        env = dict(line.split("=", 1) for line in open(os.path.join(d, "env")).read().replace("export ", "").split("\n")
                   if "=" in line)
        port = int(env["REDIS_PORT"])
        port_dir[port] = d
        client = missionstream.Client(env["MISSIONSTREAM_URL"], kdf_iterations=100000)
        for size in [int(s) for s in a.sizes.split(",")]:
            measure(client, port, size, a.updates, a.full, a.places)
        client.close()
    finally:
        subprocess.run([os.path.join(HERE, "scripts", "server.sh"), "stop", d], check=False)


if __name__ == "__main__":
    main()
