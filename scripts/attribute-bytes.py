#!/usr/bin/env python3
"""Bytes per update of persistence and replication, by command.

Starts a Redis + Webdis pair (scripts/server.sh) on free loopback ports,
attaches a minimal replica of its own (a socket that sends PSYNC and reads
the replication stream raw, so every byte Redis sends a replica is
counted), publishes N one-waypoint updates of a ~100 KiB plan through the
library (each acknowledged: publish, then flush), and prints the bytes per
update by command (MULTI, HSET, APPEND, PUBLISH, EXEC, SELECT,
PING/REPLCONF, other) of the replication stream and of the growth of the
append-only file's incremental part (appenddirname, *.incr.aof).

    python3 scripts/attribute-bytes.py [UPDATES]   (default 200)

Needs the built library (cargo build --release) and redis-server, webdis.
"""
import collections
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(HERE, "bindings", "python"))
os.environ.setdefault("MISSIONSTREAM_LIB", os.path.join(HERE, "target", "release", "libmissionstream.so"))
import missionstream  # noqa: E402


PAYLOAD = []


def resp_commands(buf):
    """Splits RESP arrays of bulk strings; yields (name, bytes) and the rest."""
    pos, out = 0, []
    while True:
        start = pos
        if pos >= len(buf):
            break
        if buf[pos:pos + 1] != b"*":
            # inline (a replica stream never has them) or garbage: count as other
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            out.append(("(inline)", nl + 1 - pos))
            pos = nl + 1
            continue
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            break
        n = int(buf[pos + 1:nl])
        pos = nl + 2
        args, ok = [], True
        for _ in range(n):
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                ok = False
                break
            ln = int(buf[pos + 1:nl])
            if nl + 2 + ln + 2 > len(buf):
                ok = False
                break
            args.append(buf[nl + 2:nl + 2 + ln])
            pos = nl + 2 + ln + 2
        if not ok:
            pos = start
            break
        name = args[0].decode().upper() if args else "?"
        if name == "PUBLISH" and len(args) == 3:
            PAYLOAD.append(len(args[2]))
        if name == "HSET" and len(args) > 2:
            name = "HSET " + args[1].decode(errors="replace").split(":")[0]
        out.append((name, pos - start))
    return out, buf[pos:]


class RawReplica:
    """A socket that asks for a full resync and counts the stream after it."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.sendall(b"PSYNC ? -1\r\n")
        self.buf = b""
        self._read_until_rdb()
        self.stream = b""
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _recv(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError
        self.buf += d

    def _read_until_rdb(self):
        while b"\r\n" not in self.buf:
            self._recv()
        line, self.buf = self.buf.split(b"\r\n", 1)  # +FULLRESYNC
        # newlines (keepalive) before $<len>
        while True:
            while not self.buf.lstrip(b"\n"):
                self._recv()
            self.buf = self.buf.lstrip(b"\n")
            while b"\r\n" not in self.buf:
                self._recv()
            break
        head, self.buf = self.buf.split(b"\r\n", 1)
        n = int(head[1:])
        while len(self.buf) < n:
            self._recv()
        self.buf = self.buf[n:]

    def _run(self):
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return
                with self.lock:
                    self.stream += d
        except OSError:
            return

    def take(self):
        with self.lock:
            data = self.buf + self.stream
            self.buf, self.stream = b"", b""
        return data


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def repl_offset(port):
    for line in redis_cli(port, "INFO", "replication").splitlines():
        if line.startswith("master_repl_offset:"):
            return int(line.split(":")[1])
    raise RuntimeError("no master_repl_offset")


def incr_aof(dirpath):
    files = glob.glob(os.path.join(dirpath, "appendonlydir", "*.incr.aof"))
    files.sort(key=os.path.getmtime)
    return files[-1]


def plan(i, k):
    return {"name": "attribution", "waypoints": [
        {"id": j, "lat": 47.0 + j * 1e-4 + (i * 1e-6 if j == k else 0), "lon": 8.0 + j * 1e-4,
         "alt": 120, "speed": 12.5, "action": "waypoint", "note": "x" * 40}
        for j in range(800)]}


def report(title, cmds, updates):
    by = collections.Counter()
    count = collections.Counter()
    for name, n in cmds:
        key = name
        if name in ("PING", "REPLCONF"):
            key = "PING/REPLCONF"
        by[key] += n
        count[key] += 1
    total = sum(by.values())
    print(f"{title}: {total / updates:.1f} B per update over {updates} updates")
    for key, n in by.most_common():
        print(f"  {key:<16} {n / updates:8.1f} B/update  ({count[key]} commands, {n / max(count[key], 1):.1f} B each)")


def main():
    updates = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    d = tempfile.mkdtemp(prefix="ms-attr-")
    subprocess.run([os.path.join(HERE, "scripts", "server.sh"), "start", d], check=True, stdout=subprocess.DEVNULL)
    try:
        env = dict(line.split("=", 1) for line in open(os.path.join(d, "env")).read().replace("export ", "").split("\n")
                   if "=" in line)
        port = int(env["REDIS_PORT"])
        redis_cli(port, "CONFIG", "SET", "auto-aof-rewrite-percentage", "0")
        replica = RawReplica(port)
        client = missionstream.Client(env["MISSIONSTREAM_URL"], kdf_iterations=100000)
        leader = client.start(f"attr/{os.getpid()}", "pw", "code")
        leader.publish(json.dumps(plan(0, 0)))
        leader.flush()
        time.sleep(0.5)
        replica.take()
        aof = incr_aof(d)
        aof0 = os.path.getsize(aof)
        off0 = repl_offset(port)
        t0 = time.time()
        chan_bytes = 0
        for i in range(1, updates + 1):
            leader.publish(json.dumps(plan(i, (i * 7) % 10)))
            leader.flush()
        elapsed = time.time() - t0
        time.sleep(1.5)  # the AOF's everysec write, the replica's socket
        off = repl_offset(port) - off0
        rep = replica.take()
        with open(aof, "rb") as f:
            f.seek(aof0)
            aof_bytes = f.read()
        leader.stop()
        client.close()
        replica.s.close()
        cmds, rest = resp_commands(rep)
        report("replication", cmds, updates)
        if PAYLOAD:
            print(f"  channel messages: {sum(PAYLOAD) / updates:.1f} B per update (ratio replication/message "
                  f"{len(rep) / max(sum(PAYLOAD), 1):.2f})")
        if rest:
            print(f"  (unparsed tail: {len(rest)} B)")
        cmds, rest = resp_commands(aof_bytes)
        report("AOF (*.incr.aof growth)", cmds, updates)
        print(f"master_repl_offset growth: {off / updates:.1f} B per update ({elapsed:.1f} s of updates,"
              f" {off - len(rep)} B not in the replica's stream)")
    finally:
        subprocess.run([os.path.join(HERE, "scripts", "server.sh"), "stop", d], check=False)


if __name__ == "__main__":
    main()
