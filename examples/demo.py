#!/usr/bin/env python3
"""missionstream demo: a leader streams a changing mission plan, a follower shows it.

The leader moves the waypoints of a small survey mission ~10 times a second
for ~4 seconds; the follower (another client, as another planner would be)
prints every state it receives with its seq and the end-to-end delay. Then
the leader stops the stream and the follower sees it end.

Then a second stream: a ~1,000-waypoint survey plan in QGroundControl's
.plan format (~600 KB of JSON), one waypoint dragged per update. The
library sends each update as a delta against the stored plan; a raw
subscriber on the stream's Redis channel (written here from the protocol
document with Python's standard library alone) shows the bytes each
update costs on the wire, beside the size of the plan the follower
rebuilds and checks.

    make server && . .run/server/env    # a local Redis + Webdis; sets MISSIONSTREAM_URL
    PYTHONPATH=bindings/python python3 examples/demo.py

scripts/demo.sh (make demo) starts a throw-away Redis + Webdis and runs this for you.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import random
import statistics
import sys
import threading
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

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
        print(f"leader:   published {step} revisions in {time.monotonic() - start:.1f} s, flushed")
        # Stop once the follower shows the last revision: a follower that is
        # recovering (a failover closes subscriptions, Sentinel may
        # reconfigure a node twice) gets it when it is back, not at once,
        # and a stopped stream has no state left to give it.
        flushed = time.monotonic()
        while stats["last_revision"] < step and time.monotonic() - flushed < CATCH_UP_SECONDS:
            time.sleep(0.05)
        waited = time.monotonic() - flushed
        if stats["last_revision"] >= step:
            print(f"leader:   the follower showed revision {step} {waited:.1f} s after the flush; stopping the stream")
        else:
            print(f"leader:   the follower had not shown revision {step} {waited:.0f} s after the flush"
                  f" (its last: {stats['last_revision']}); stopping the stream")
        leader.stop()
    done.set()


# ------------------------------------------------------------- the survey

# How long the leader waits, after its last revision, for the follower to
# show it before stopping the stream.
CATCH_UP_SECONDS = 20.0

PROTOCOL = "10"  # the wire protocol version (docs/PROTOCOL.md)


def survey_plan(waypoints: int, seed: int = 7) -> Dict[str, Any]:
    """A QGroundControl .plan: a lawnmower survey of `waypoints` items with
    camera triggers, a geofence and rally points."""
    rng = random.Random(seed)
    lat0, lon0 = 47.3977, 8.5456
    items: List[Dict[str, Any]] = [{
        "AMSLAltAboveTerrain": None, "Altitude": 50, "AltitudeMode": 1, "autoContinue": True,
        "command": 22, "doJumpId": 1, "frame": 3, "params": [15, 0, 0, None, lat0, lon0, 50],
        "type": "SimpleItem",
    }]
    for i in range(2, waypoints + 1):
        row, col = divmod(i, 40)
        lat = round(lat0 + row * 0.0004, 7)
        lon = round(lon0 + (col if row % 2 == 0 else 39 - col) * 0.0005, 7)
        alt = 60 + rng.randint(0, 5)
        items.append({
            "AMSLAltAboveTerrain": None, "Altitude": alt, "AltitudeMode": 1, "autoContinue": True,
            "command": 16, "doJumpId": i, "frame": 3, "params": [0, 0, 0, None, lat, lon, alt],
            "type": "SimpleItem",
        })
        if col == 0:  # camera trigger distance at the start of each leg
            items.append({
                "autoContinue": True, "command": 206, "doJumpId": i + 100000, "frame": 2,
                "params": [25, 0, 1, 0, 0, 0, 0], "type": "SimpleItem",
            })
    return {
        "fileType": "Plan",
        "geoFence": {
            "circles": [],
            "polygons": [{"inclusion": True, "version": 1, "polygon": [
                [lat0 - 0.001, lon0 - 0.001], [lat0 - 0.001, lon0 + 0.021],
                [lat0 + 0.011, lon0 + 0.021], [lat0 + 0.011, lon0 - 0.001]]}],
            "version": 2,
        },
        "groundStation": "QGroundControl",
        "mission": {
            "cruiseSpeed": 15, "firmwareType": 12, "hoverSpeed": 5, "items": items,
            "plannedHomePosition": [lat0, lon0, 488], "vehicleType": 2, "version": 2,
        },
        "rallyPoints": {"points": [[lat0 + 0.0002, lon0 + 0.0002, 50], [lat0 + 0.01, lon0 + 0.02, 50]],
                        "version": 2},
        "version": 1,
    }


def _arg(text: str) -> str:
    """A path argument, every byte outside A-Za-z0-9_- percent-encoded."""
    return urllib.parse.quote(text, safe="").replace(".", "%2E").replace("~", "%7E")


def _fcall(url: str, command: str, function: str, keys: List[str], body: bytes,
           nonce: str = "") -> List[Any]:
    """One call of a function through Webdis: the reply without its nonce.
    `url` may list several endpoints (comma-separated): the first whose
    Redis takes the call answers (a replica refuses a write: READONLY)."""
    return _fcall_at(url, command, function, keys, body, nonce)[0]


def _fcall_at(url: str, command: str, function: str, keys: List[str], body: bytes,
              nonce: str = "") -> Tuple[List[Any], str]:
    """`_fcall`, and the endpoint that answered."""
    nonce = nonce or os.urandom(8).hex()
    failures = []
    for base in url.split(","):
        u = urllib.parse.urlsplit(base.strip())
        path = f"{u.path.rstrip('/')}/{command}/{function}/{len(keys)}/" + "/".join(
            _arg(a) for a in keys + [PROTOCOL, nonce])
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
        try:
            conn.request("PUT", path, body=body)
            reply = json.loads(conn.getresponse().read())[command]
        except (OSError, ValueError, KeyError) as exc:
            failures.append(f"{base}: {exc}")
            continue
        finally:
            conn.close()
        if isinstance(reply, list) and reply and reply[0] == nonce:
            return reply[1:], base.strip()
        failures.append(f"{base}: {reply!r}")
    raise RuntimeError(f"{function}: no endpoint answered: {failures}")


def channel_of(url: str, name: str, password: str) -> Tuple[str, str]:
    """The stream's channel, asked as any client of the protocol would:
    ms_params, the password's PBKDF2 key, ms_connect; and the endpoint to
    subscribe on: the primary (the one that answered ms_connect) when the
    deployment carries channel messages there only, the last one listed
    when replicas carry them too."""
    key = "stream:" + name
    kdf, iterations, salt = _fcall(url, "FCALL_RO", "ms_params", [key], b"")
    assert kdf == "pbkdf2-sha256", kdf
    derived = hashlib.pbkdf2_hmac("sha256", password.encode(), ("pw:" + salt).encode(), int(iterations), 32)
    nonce = os.urandom(8).hex()
    (sealed, _hb, on_replicas), primary = _fcall_at(url, "FCALL", "ms_connect", [key],
                                                    b"\n" + derived.hex().encode(), nonce)
    # The reply carries the channel sealed for this call: XORed with
    # SHA-1("seal:" <the derived key sent> ":" <the request nonce>).
    mask = hashlib.sha1(f"seal:{derived.hex()}:{nonce}".encode()).digest()
    channel = bytes(a ^ b for a, b in zip(bytes.fromhex(sealed), mask)).hex()
    return channel, (url.split(",")[-1].strip() if on_replicas == 1 else primary)


def raw_messages(at: Tuple[str, str], out: List[Tuple[str, int]], stop: threading.Event) -> None:
    """Subscribes to the channel `at[0]` through the Webdis `at[1]`
    (`channel_of`) and records (kind, bytes) of each stored-state message:
    `s` a full state (its `r <publish id>` body; the short `s` header that
    goes with it is not counted), `d` a delta."""
    channel, node = at
    u = urllib.parse.urlsplit(node)
    decoder, buf, resp, conn = json.JSONDecoder(), "", None, None
    while not stop.is_set():
        if resp is None:
            # (Again) when Sentinel closed the subscription while
            # reconfiguring the node: messages in between are missed.
            try:
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=1)
                conn.request("GET", f"{u.path.rstrip('/')}/SUBSCRIBE/{_arg(channel)}")
                resp, buf = conn.getresponse(), ""
            except (TimeoutError, OSError, http.client.HTTPException):
                time.sleep(0.1)
                continue
        try:
            chunk = resp.read1(65536)
        except (TimeoutError, OSError):
            continue
        if not chunk:
            conn.close()
            resp = None
            continue
        buf += chunk.decode("utf-8", "replace")
        while True:
            buf = buf.lstrip()
            try:
                obj, end = decoder.raw_decode(buf)
            except ValueError:
                break
            buf = buf[end:]
            msg = obj.get("SUBSCRIBE", [])
            if len(msg) == 3 and msg[0] == "message" and msg[2][:2] in ("r ", "d "):
                out.append(("s" if msg[2][0] == "r" else "d", len(msg[2].encode())))
    if conn is not None:
        conn.close()


def survey(url: str, name: str, updates: int, rate: float, view_url: Optional[str] = None,
           watch: float = 0.0) -> Optional[str]:
    """Drags one waypoint of a ~1,000-waypoint survey per update; prints
    the bytes each update costs on the channel and checks what the library
    guarantees: the follower rebuilds the last plan byte for byte and
    delivers no plan that was not published, and updates go as deltas
    except any the leader has to send in full (a failover lost the base it
    would apply to), so at least half of those seen on the channel. The
    raw subscriber is this demo's, not the library's: it subscribes again
    when Sentinel closes its subscription, but misses what came in between
    (or all, when Sentinel leaves it open and silent), so missing messages
    are reported, not failed. Returns what went wrong, as a sentence, or None."""
    plan = survey_plan(1000)
    text = first = json.dumps(plan, indent=4)
    print(f"\nsurvey:   {len(plan['mission']['items'])} mission items, {len(text.encode()):,} bytes of .plan JSON;"
          f" dragging one waypoint per update, {updates} updates")
    if view_url:
        print(f"view:     watch it live at {view_url}#stream={urllib.parse.quote(name, safe='')}"
              f" (password: demo-password)")
    sent: Dict[int, str] = {}
    with ms.Client(url) as lc, ms.Client(url) as fc:
        leader = lc.start(name, "demo-password", "demo-leader-code")
        leader.publish(text)
        leader.flush()
        follower = fc.connect(name, "demo-password")
        wire: List[Tuple[str, int]] = []
        stop = threading.Event()
        reader = threading.Thread(target=raw_messages, args=(channel_of(url, name, "demo-password"), wire, stop),
                                  daemon=True)
        reader.start()
        time.sleep(0.3)  # the raw subscriber is set up
        rng = random.Random(1)
        texts: List[str] = []
        for step in range(1, updates + 1):
            item = plan["mission"]["items"][rng.randrange(1, len(plan["mission"]["items"]))]
            if item["command"] == 16:
                item["params"][4] = round(item["params"][4] + 0.00005, 7)
                item["params"][5] = round(item["params"][5] - 0.00005, 7)
            text = json.dumps(plan, indent=4)
            texts.append(text)
            leader.publish(text)
            leader.flush()
            time.sleep(1 / rate)
        got: Dict[str, int] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and texts[-1] not in got:
            event = follower.next_event(max(0.01, deadline - time.monotonic()))
            if event.kind is ms.EventKind.STATE and event.data is not None:
                got[event.data] = event.seq
        time.sleep(0.3)
        stop.set()
        if watch > 0:
            print(f"watch:    dragging one waypoint a second for {watch:.0f} s more, for the live plan view"
                  f" (Ctrl-C ends it)")
            end = time.monotonic() + watch
            interrupted = False
            try:
                while time.monotonic() < end:
                    item = plan["mission"]["items"][rng.randrange(1, len(plan["mission"]["items"]))]
                    if item["command"] == 16:
                        item["params"][4] = round(item["params"][4] + 0.00005, 7)
                        item["params"][5] = round(item["params"][5] - 0.00005, 7)
                        leader.publish(json.dumps(plan, indent=4))
                        time.sleep(1)
            except KeyboardInterrupt:
                # Ctrl-C in a terminal also reaches Redis and Webdis (they
                # are stopped with the demo anyway): the stream may not be
                # stoppable any more.
                interrupted = True
            print("watch:    ended" + (" (Ctrl-C)" if interrupted else ""))
            try:
                leader.stop()
            except ms.Error:
                if not interrupted:
                    raise
        else:
            leader.stop()
    # Every plan the follower delivered is one the leader published.
    exact = texts[-1] in got and all(t in texts or t == first for t in got)
    deltas = [n for kind, n in wire if kind == "d"]
    fulls = [n for kind, n in wire if kind == "s"]
    for i, (kind, n) in enumerate(wire[:5]):
        print(f"wire:     update {i + 1}: {'delta' if kind == 'd' else 'full state'} of {n:,} bytes "
              f"({100 * n / len(texts[0].encode()):.3f} % of the plan)")
    if deltas:
        print(f"summary:  {len(deltas)} of {len(wire)} updates seen on the channel went as deltas, median"
              f" {statistics.median(deltas):.0f} bytes against {len(texts[-1].encode()):,} for the plan"
              f"{f', {len(fulls)} in full (the leader sends in full when a failover lost the base)' if fulls else ''};"
              f" the follower rebuilt the last plan byte for byte: {exact}")
    if len(wire) < updates:
        print(f"survey:   the raw subscriber saw {len(wire)} of the {updates} updates (it misses what comes while"
              f" Sentinel reconfigures its node); the follower's result is what counts")
    if not exact:
        unpublished = sum(1 for t in got if t not in texts and t != first)
        last = "got" if texts[-1] in got else "did not get"
        return (f"the follower was expected to rebuild the last of the {updates} survey plans byte for byte and no"
                f" other plan; it {last} the last one within 10 s and delivered {unpublished} plan(s) that were"
                f" never published.")
    if not wire:
        print("survey:   so whether the updates went as deltas is not shown by this run (the follower's"
              " result above is)")
    elif len(deltas) * 2 < len(wire):
        return (f"at least half of the survey updates seen on the channel were expected to go as deltas; of the"
                f" {len(wire)} seen, {len(deltas)} were deltas and {len(fulls)} full states.")
    return None


def main() -> int:
    # Each line as it happens, also through a pipe (`make demo | tee`, the
    # browser test reading the view's URL and the watching's start).
    sys.stdout.reconfigure(line_buffering=True)
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
    parser.add_argument("--survey-updates", type=int, default=20,
                        help="waypoint drags of the survey phase (default 20; 0 skips it)")
    parser.add_argument("--view-url", default=None,
                        help="URL of the live plan view (web/view) served in front of the same Webdis: printed"
                        " with the survey's stream name")
    parser.add_argument("--watch", type=float, default=0.0,
                        help="after the survey's checks, keep dragging one waypoint a second for this many"
                        " seconds, to watch it in the live plan view (default 0)")
    args = parser.parse_args()

    name = f"demo/mission-plan/{os.getpid()}"
    print(f"missionstream {ms.__version__}, library {ms.library_version()} ({ms.library_path})")
    print(f"webdis:   {args.url}; stream {name!r}")

    done = threading.Event()
    stats: Dict[str, Any] = {"leader_ready": threading.Event(), "follower_ready": threading.Event(), "published": 0,
                             "last_revision": -1}
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
            for event in follower.events(timeout=args.seconds + CATCH_UP_SECONDS + 10):
                if event.kind is ms.EventKind.STATE:
                    plan = event.json()
                    if "sent_ms" not in plan:
                        print(f"follower: seq={event.seq:<3} initial state {event.data}")
                        continue
                    delay = event.received_at * 1000 - plan["sent_ms"]
                    delays.append(delay)
                    last_revision = plan["revision"]
                    stats["last_revision"] = last_revision
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
    if last_revision != stats["published"] or not ended:
        print(f"demo: FAILED: the follower was expected to show the last of the {stats['published']} revisions and"
              f" then the end of the stream; it showed revision {last_revision} last"
              f" ({len(delays)} shown) and {'saw' if ended else 'did not see'} the stream end.", file=sys.stderr)
        return 1
    if args.survey_updates > 0:
        problem = survey(args.url, name + "-survey", args.survey_updates, args.rate, args.view_url, args.watch)
        if problem:
            print(f"demo: FAILED: {problem}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        sys.exit(130)
    except ms.Error as exc:
        print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
