"""The operator's view of the command line through a killed Redis primary,
on the replicated topology of scripts/cluster.sh (3 Redis nodes, 1 primary
+ 2 replicas, 3 Sentinels, one Webdis per node): `watch --out` says on
stderr, promptly, that its connection was lost or its leader went offline,
says when that is over, and its file ends on the leader's last state;
`lead` keeps its lead throughout. Real processes on free loopback ports;
the primary's Redis is killed with SIGKILL (a crash)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

from conftest import REPO, WEBDIS, excerpt, read_env_file
from test_cli import CODE, PW
from test_cli_plan import Running

CLUSTER_SH = REPO / "scripts" / "cluster.sh"
CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"
HEARTBEAT = 0.5  # the leader's --heartbeat, seconds
# What watch may take beyond the 3 silent heartbeat intervals after which
# its leader is offline (the leader's heartbeats fail once its primary is
# gone), on an idle machine: a heartbeat's lateness, the follower's check of
# the silence, the CLI's pace (it takes ~1.5 s in all with a 0.5 s heartbeat).
# The operator's CLI runs with its default --timeout (10 s): no request that
# waits for a dead node's answer may hold the news back.
SLACK = 4.0


def load_factor() -> float:
    """The 1-minute load average per core, at least 1: timed bounds are
    multiplied by it (the suite runs on shared, loaded machines)."""
    try:
        per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        per_core = 1.0
    return max(1.0, per_core)


class Cluster:
    """The topology of scripts/cluster.sh in a directory of its own; its
    functions library as deploy/ ships it (channel messages on the primary
    only, followers there), or with ``channel_on_replicas`` loaded with
    CHANNEL_ON_REPLICAS = true (followers on replicas)."""

    def __init__(self, directory: Path, channel_on_replicas: bool = False) -> None:
        self.dir = directory
        self.channel_on_replicas = channel_on_replicas
        self.env: Dict[str, str] = {}

    def start(self) -> "Cluster":
        for tool in ("redis-server", "redis-cli", WEBDIS, "curl"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is not installed; the failover test needs real Redis, Sentinel and Webdis")
        env = dict(os.environ, MS_CHANNEL_ON_REPLICAS="1" if self.channel_on_replicas else "0")
        done = subprocess.run([str(CLUSTER_SH), "start", str(self.dir)], capture_output=True, text=True,
                              timeout=120, env=env)
        assert done.returncode == 0, f"scripts/cluster.sh start failed:\n{done.stdout}{done.stderr}"
        self.env = read_env_file(self.dir / "env")
        ports = [int(self.env[f"NODE{i}_{kind}_PORT"]) for i in (1, 2, 3) for kind in ("REDIS", "WEBDIS")]
        assert not set(ports) & {6379, 7379, 26379}, ports
        return self

    def stop(self) -> None:
        subprocess.run([str(CLUSTER_SH), "stop", str(self.dir)], check=False, capture_output=True, timeout=120)

    def urls(self, primary_last: bool = False) -> str:
        """Every node's Webdis, the primary's first (as scripts/cluster.sh
        lists them) or last (as after an earlier failover)."""
        urls = self.env["MS_URLS"].split(",")
        return ",".join(urls[1:] + urls[:1] if primary_last else urls)

    def primary_node(self) -> Optional[int]:
        """The node (1-3) a Sentinel names as primary; None if none answers."""
        for port in self.env["SENTINEL_PORTS"].split(","):
            out = subprocess.run(
                ["redis-cli", "-p", port, "SENTINEL", "get-master-addr-by-name", self.env["SENTINEL_MASTER"]],
                capture_output=True, text=True, timeout=10,
            ).stdout.split()
            if len(out) == 2:
                for i in (1, 2, 3):
                    if self.env[f"NODE{i}_REDIS_PORT"] == out[1]:
                        return i
        return None

    def kill_redis(self, node: int) -> None:
        """SIGKILL the Redis of ``node``: a crash, nothing written on the way out."""
        pid = int((self.dir / f"node{node}" / "redis.pid.launch").read_text())
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c.start()
    finally:
        c.stop()


def wait_until(what: str, check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.05)


class Feeder:
    """Writes {"n": i} documents to lead's stdin every ``period`` seconds in a
    thread (the planner publishing) until stopped; remembers the last one."""

    def __init__(self, lead: Running, period: float) -> None:
        self.lead, self.period = lead, period
        self.n = 0
        self.last = ""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        stdin = self.lead.proc.stdin
        assert stdin is not None
        while not self.done.is_set():
            self.n += 1
            doc = json.dumps({"n": self.n}, separators=(",", ":"))
            try:
                stdin.write(doc + "\n")
                stdin.flush()
            except (BrokenPipeError, ValueError):
                return
            self.last = doc
            self.done.wait(self.period)

    def stop(self) -> str:
        """Stop publishing; the last document written."""
        self.done.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "lead stopped reading its stdin"
        return self.last


@pytest.mark.parametrize("primary_last", [False, True], ids=["primary-first", "primary-last"])
def test_watch_out_says_at_once_when_the_primary_is_killed_and_ends_on_the_last_state(
        cluster: Cluster, tmp_path: Path, name: str, primary_last: bool) -> None:
    """The URL list names every node's Webdis: the killed primary's first
    (the CLI's requests and subscription start on the node that dies) or
    last (they start on a replica, which Sentinel reconfigures)."""
    factor = load_factor()
    # Lost connection or leader offline: said within 3 heartbeat intervals
    # and some slack, both scaled by the machine's load.
    bound = (3 * HEARTBEAT + SLACK) * factor
    received = tmp_path / "received.json"
    urls = cluster.urls(primary_last)
    lead = Running("lead", name, "--url", urls, "--password", PW, "--leader-code", CODE, "-v",
                   "--heartbeat", str(HEARTBEAT), "--stop-at-end")
    watch: Optional[Running] = None
    feeder: Optional[Feeder] = None
    try:
        assert lead.proc.stdin is not None
        lead.proc.stdin.write('{"n":0}\n')
        lead.proc.stdin.flush()
        lead.wait_line(r"seq=1 bytes=", timeout=30 * factor)
        watch = Running("watch", name, "--url", urls, "--password", PW, "--out", str(received))
        watch.wait_line(r"seq=1 bytes=\d+ age=- wrote ", timeout=30 * factor)
        feeder = Feeder(lead, 0.2)
        # States flow to the file before the kill.
        watch.wait_line(r"seq=([3-9]|\d\d+) bytes=\d+ delay=\S+ wrote ", timeout=30 * factor)
        time.sleep(2)  # the follower's subscription in its steady state
        old = cluster.primary_node()
        assert old is not None, "no Sentinel names the primary"
        mark_watch, mark_lead = watch.count(), lead.count()
        cluster.kill_redis(old)
        killed = time.monotonic()
        print(f"killed the Redis of node {old} (the primary) at {time.strftime('%H:%M:%S')}")

        # 1. watch says it at once: the connection lost or the leader offline.
        trouble = watch.wait_line(r"connection lost|leader offline", after=mark_watch, timeout=bound + 30)
        said_after = time.monotonic() - killed
        assert said_after <= bound, (
            f"watch said {trouble!r} {said_after:.1f} s after the primary was killed; the bound is {bound:.1f} s "
            f"(3 x {HEARTBEAT} s heartbeat + {SLACK} s, x {factor:.1f} load). stderr:\n" + watch.stderr())
        assert re.match(rf"^{CLOCK} (connection lost: .* since \d\d:\d\d:\d\d, reconnecting|leader offline "
                        r"\(no heartbeat for 3 intervals\) since \d\d:\d\d:\d\d, waiting for it)$", trouble), trouble

        # 2. Sentinel promotes a replica; the leader stores again.
        wait_until("Sentinel promoted a replica", lambda: cluster.primary_node() not in (None, old), 60 * factor)
        mark_stored = lead.count()
        lead.wait_line(r"seq=\d+ bytes=\d+ stored=", after=mark_stored, timeout=60 * factor)

        # 3. States reach the file again.
        watch.wait_line(r"seq=\d+ bytes=\d+ delay=\S+ wrote ", after=mark_watch, timeout=60 * factor)

        # 4. watch says each trouble it reported is over, and so does lead
        # if it said a state was not stored.
        if any("connection lost" in x for x in watch.lines[mark_watch:]):
            line = watch.wait_line(r"reconnected", after=mark_watch, timeout=60 * factor)
            assert re.match(rf"^{CLOCK} reconnected after \d+\.\d s$", line), line
        if any("leader offline" in x for x in watch.lines[mark_watch:]):
            line = watch.wait_line(r"leader online", after=mark_watch, timeout=60 * factor)
            assert re.match(rf"^{CLOCK} leader online again after \d+\.\d s$", line), line
        if any("not stored" in x for x in lead.lines[mark_lead:]):
            line = lead.wait_line(r"stored again", after=mark_lead, timeout=60 * factor)
            assert re.match(rf"^{CLOCK} stored again \(seq=\d+\) after \d+\.\d s$", line), line

        # 5. The planner stops: the file ends on the leader's last state.
        last = feeder.stop()
        assert lead.proc.poll() is None, "lead exited through the failover:\n" + lead.stderr()
        wait_until(f"watch --out's file holds the leader's last state {last}",
                   lambda: received.exists() and received.read_text() == last, 60 * factor)
        assert watch.proc.poll() is None, "watch exited through the failover:\n" + watch.stderr()
        for proc, what in ((lead, "lead"), (watch, "watch")):
            assert "Traceback" not in proc.stderr(), f"{what}:\n{proc.stderr()}"

        # 6. The end of input: lead stores the last state, stops the stream
        # (--stop-at-end) and exits 0; watch sees the end and exits 0.
        assert lead.proc.stdin is not None
        lead.proc.stdin.close()
        assert lead.proc.wait(60 * factor) == 0, lead.stderr()
        assert watch.proc.wait(60 * factor) == 0, watch.stderr()
        assert received.read_text() == last, excerpt(received.read_text())
    finally:
        # Shown by pytest for a failing test (or with -rP): what each said.
        print(f"load factor {factor:.1f}, bound {bound:.1f} s\n--- lead stderr:\n{lead.stderr()}")
        if watch is not None:
            print(f"--- watch stderr:\n{watch.stderr()}")
        if feeder is not None:
            feeder.done.set()
        lead.kill()
        if watch is not None:
            watch.kill()
