#!/usr/bin/env python3
"""missionstream demo: a leader streams a changing mission plan, a follower shows it.

The leader moves the waypoints of a small survey mission ~10 times a second
for ~4 seconds; the follower (another client, as another planner would be)
prints every state it receives with its seq and the end-to-end delay. Then
the leader stops the stream and the follower sees it end.

    make server && . .run/server/env    # a local Redis + Webdis; sets MISSIONSTREAM_URL
    PYTHONPATH=bindings/python python3 examples/demo.py

scripts/demo.sh (make demo) starts a throw-away Redis + Webdis and runs this for you.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import missionstream as ms


def mission_plan(step: int, t: float) -> Dict[str, Any]:
    """A survey pattern around a home position that slowly rotates and drifts."""
    home_lat, home_lon = 47.3977, 8.5456
    angle = step * 0.15
    waypoints = []
    for i in range(6):
        a = angle + i * math.pi / 3
        r = 0.001 + 0.0002 * i
        waypoints.append(
            {
                "seq": i,
                "lat": round(home_lat + r * math.cos(a) + step * 0.00001, 6),
                "lon": round(home_lon + r * math.sin(a), 6),
                "alt": 30 + 5 * (i % 2),
            }
        )
    return {
        "mission": "survey-alpha",
        "revision": step,
        "home": {"lat": home_lat, "lon": home_lon},
        "waypoints": waypoints,
        "sent_ms": int(time.time() * 1000),
    }


def lead(
    url: str,
    name: str,
    seconds: float,
    rate: float,
    heartbeat: Optional[float],
    done: threading.Event,
    stats: Dict[str, Any],
) -> None:
    with ms.Client(url, heartbeat=heartbeat) as client:
        leader = client.start(name, "demo-password", "demo-leader-code")
        stats["leader_ready"].set()
        # Give the follower a moment to connect before the plan starts to move.
        stats["follower_ready"].wait(5)
        step = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            step += 1
            leader.publish(mission_plan(step, time.monotonic() - start))
            time.sleep(max(0.0, start + step / rate - time.monotonic()))
        leader.flush()
        stats["published"] = step
        print(f"leader:   published {step} revisions in {time.monotonic() - start:.1f} s, flushed; stopping the stream")
        # Let the follower show the last revision before the stream ends.
        time.sleep(0.3)
        leader.stop()
    done.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MISSIONSTREAM_URL") or "http://127.0.0.1:7379",
        help="Webdis URL (default: $MISSIONSTREAM_URL, else http://127.0.0.1:7379)",
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="how long the leader streams (default 4)")
    parser.add_argument("--rate", type=float, default=10.0, help="plan revisions per second (default 10)")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=None,
        help="the leader's heartbeat interval in seconds (default: the library's); followers take a "
        "subscription that stayed silent for two intervals for lost, as every one is in a failover",
    )
    args = parser.parse_args()

    name = f"demo/mission-plan/{os.getpid()}"
    print(f"missionstream {ms.__version__}, library {ms.library_version()} ({ms.library_path})")
    print(f"webdis:   {args.url}; stream {name!r}")

    done = threading.Event()
    stats: Dict[str, Any] = {"leader_ready": threading.Event(), "follower_ready": threading.Event(), "published": 0}
    failure: List[BaseException] = []

    def run_leader() -> None:
        try:
            lead(args.url, name, args.seconds, args.rate, args.heartbeat, done, stats)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
            stats["leader_ready"].set()
            done.set()

    leader_thread = threading.Thread(target=run_leader, name="leader", daemon=True)
    leader_thread.start()
    stats["leader_ready"].wait(10)
    if failure:
        leader_thread.join()
        print(f"demo: leader failed: {failure[0]}", file=sys.stderr)
        return 1

    delays: List[float] = []
    last_revision = -1
    ended = False
    with ms.Client(args.url) as client:
        with client.connect(name, "demo-password") as follower:
            stats["follower_ready"].set()
            for event in follower.events(timeout=args.seconds + 10):
                if event.kind is ms.EventKind.STATE:
                    plan = event.json()
                    if "sent_ms" not in plan:
                        print(f"follower: seq={event.seq:<3} initial state {event.data}")
                        continue
                    delay = event.received_at * 1000 - plan["sent_ms"]
                    delays.append(delay)
                    last_revision = plan["revision"]
                    wp = plan["waypoints"][0]
                    print(
                        f"follower: seq={event.seq:<3} delay={delay:6.1f} ms  revision {plan['revision']:<3} "
                        f"{len(plan['waypoints'])} waypoints, WP0 at {wp['lat']:.6f},{wp['lon']:.6f}"
                    )
                elif event.kind is ms.EventKind.ENDED:
                    print("follower: the leader stopped the stream (ENDED)")
                    ended = True
                else:
                    print(f"follower: {event.kind.name} ({getattr(event.status, 'name', event.status)})")
    leader_thread.join(30)
    if failure:
        print(f"demo: leader failed: {failure[0]}", file=sys.stderr)
        return 1
    if delays:
        print(
            f"summary:  {len(delays)} of {stats['published']} revisions shown (latest wins), "
            f"delay median {statistics.median(delays):.1f} ms, max {max(delays):.1f} ms"
        )
    ok = ended and last_revision == stats["published"]
    if not ok:
        print(f"demo: FAILED: ended={ended}, last revision seen {last_revision} of {stats['published']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        sys.exit(130)
    except ms.Error as exc:
        print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
