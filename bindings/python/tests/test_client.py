"""The Python API against a real Redis + Webdis: every method, the guarantees."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

import missionstream as ms
from missionstream import EventKind

from conftest import Server, publishing

PW = "pw-1"
CODE = "code-1"


def states(follower: ms.Follower, timeout: float = 5.0):
    """STATE events until `timeout` seconds pass without any event."""
    return [e for e in follower.events(timeout=timeout) if e.kind is EventKind.STATE]


def first_state(follower: ms.Follower, timeout: float = 5.0) -> ms.Event:
    deadline = time.monotonic() + timeout
    while True:
        ev = follower.next_event(max(0.01, deadline - time.monotonic()))
        if ev.kind is EventKind.STATE:
            return ev


def test_versions() -> None:
    v = ms.library_version()
    assert v and v[0].isdigit() and v.count(".") >= 2, v
    assert ms.status_name(ms.Status.NOT_FOUND) == "MS_ERR_NOT_FOUND"
    assert ms.status_name(0) == "MS_OK"
    assert ms.library_path.endswith(("libmissionstream.so", "libmissionstream.dylib", "missionstream.dll"))


def test_client_context_manager_and_idempotent_close(url: str) -> None:
    with ms.Client(url, timeout=2, heartbeat=1, stream_ttl=0) as c:
        assert not c.closed
        assert isinstance(c.list(), list)
    assert c.closed
    c.close()
    c.close()
    with pytest.raises(ms.InvalidArgument, match="closed"):
        c.list()


def test_start_publish_and_late_join_gets_current_state(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    assert isinstance(leader, ms.Leader) and leader.name == name
    # Nothing published yet: the initial state {} with seq 0.
    with client2.connect(name, PW) as f:
        ev = first_state(f)
        assert (ev.kind, ev.stream, ev.data, ev.seq, ev.status) == (EventKind.STATE, name, "{}", 0, ms.Status.OK)
        assert f.latest == "{}" and f.seq == 0
    leader.publish({"wp": [1, 2]})
    leader.publish({"wp": [3, 4]})
    leader.flush()
    stored = {s.name: s for s in client.list()}[name].seq
    assert stored in (1, 2)  # latest wins: {"wp": [1, 2]} may have been skipped
    # Late join: nothing is published after connecting; the current state comes first.
    with client2.connect(name, PW) as f:
        ev = first_state(f)
        assert ev.seq == stored
        assert ev.json() == {"wp": [3, 4]}
        assert f.latest == ev.data
        # ...and nothing older follows.
        assert states(f, timeout=0.5) == []


def test_publish_accepts_str_bytes_and_json_objects(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    f = client2.connect(name, PW)
    assert first_state(f).seq == 0
    sent = ['{"a":"text ü"}', "plain text, not JSON".encode(), {"b": [1, 2.5, None, "ü"]}, [1, 2, 3]]
    got = []
    for state in sent:
        leader.publish(state)
        leader.flush()
        got.append(first_state(f))
    assert [e.data for e in got] == ['{"a":"text ü"}', "plain text, not JSON", json.dumps(sent[2], separators=(",", ":"), ensure_ascii=False), "[1,2,3]"]
    assert [e.seq for e in got] == [1, 2, 3, 4]
    assert got[2].json() == sent[2]
    f.disconnect()


def test_publish_rejects_what_is_not_a_state(client: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    with pytest.raises(ms.InvalidArgument):
        leader.publish(object())
    with pytest.raises(ms.InvalidArgument):
        leader.publish(b"\xff\xfe not utf-8")


def test_kdf_iterations_are_the_streams_and_bounded(url: str, server: Server, client2: ms.Client, name: str) -> None:
    """Secrets are stretched by the client with PBKDF2-HMAC-SHA256 at the
    iterations chosen at start (default 600,000), recorded with the stream
    and recomputable with hashlib; below the functions' floor is refused."""
    for bad in (99_999, 10_000_001, -1):
        with pytest.raises(ms.InvalidArgument, match="kdf_iterations|iterations"):
            ms.Client(url, kdf_iterations=bad)
    with ms.Client(url, timeout=5, kdf_iterations=100_000) as c:
        leader = c.start(name, PW, CODE)
        record = f"stream:{name}"
        assert server.redis_cli("HGET", record, "kdf").strip() == "pbkdf2-sha256"
        assert server.redis_cli("HGET", record, "iter").strip() == "100000"
        salt = server.redis_cli("HGET", record, "salt").strip()
        key = hashlib.pbkdf2_hmac("sha256", PW.encode(), ("pw:" + salt).encode(), 100_000, 32).hex()
        assert server.redis_cli("HGET", record, "pw").strip() == hashlib.sha1(key.encode()).hexdigest()
        # A follower with the default setting uses the stream's own.
        f = client2.connect(name, PW)
        assert first_state(f).data == "{}"
        f.disconnect()
        leader.stop()
    with ms.Client(url, timeout=5) as c:
        leader = c.start(name, PW, CODE)
        assert server.redis_cli("HGET", f"stream:{name}", "iter").strip() == "600000"
        leader.stop()


def test_order_and_convergence(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    f = client2.connect(name, PW)
    seen = []
    joined = threading.Event()

    def read() -> None:
        for ev in f.events(timeout=3):
            if ev.kind is EventKind.STATE:
                seen.append(ev)
                joined.set()
                if ev.data == '{"i":199}':
                    return

    reader = threading.Thread(target=read)
    reader.start()
    # The join state first (a newer state published before the callback
    # takes it would replace it: latest wins in the callback queue too).
    assert joined.wait(5)
    for i in range(200):
        leader.publish({"i": i})  # faster than the network: latest wins
    leader.flush()
    t_flushed = time.monotonic()
    assert f.wait_for(1, timeout=1.0)
    reader.join(5)
    assert not reader.is_alive()
    seqs = [e.seq for e in seen]
    assert seqs == sorted(set(seqs)), f"seq not strictly increasing: {seqs}"
    assert seen[0].seq == 0
    assert seen[-1].data == '{"i":199}', "the follower did not converge on the last state"
    assert f.latest == '{"i":199}'
    assert time.monotonic() - t_flushed < 1.5
    # states are never reordered: the i inside increase with seq
    values = [json.loads(e.data).get("i", -1) for e in seen]
    assert values == sorted(values)


def test_stop_sends_ended_and_removes_the_stream(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    f = client2.connect(name, PW)
    assert first_state(f).seq == 0
    assert name in [s.name for s in client2.list()]
    leader.stop()
    kinds = [e.kind for e in f.events(timeout=5)]
    assert kinds[-1] is EventKind.ENDED, kinds
    assert not f.active
    # The follow session is over: iteration ends, next_event and disconnect say so.
    assert list(f.events(timeout=0.2)) == []
    with pytest.raises(ms.NotFollowing):
        f.next_event(0.2)
    with pytest.raises(ms.NotFollowing):
        f.disconnect()
    assert name not in [s.name for s in client2.list()]
    with pytest.raises(ms.NotFound):
        client2.connect(name, PW)
    # The leader no longer leads it.
    with pytest.raises(ms.NotLeading):
        leader.publish("{}")
    with pytest.raises(ms.NotLeading):
        leader.flush(timeout=1)
    with pytest.raises(ms.NotLeading):
        leader.stop()


def test_list_reports_seq_followers_and_time(client: ms.Client, client2: ms.Client, name: str) -> None:
    before = int(time.time() * 1000)
    leader = client.start(name, PW, CODE)
    for i in range(3):
        leader.publish({"i": i})
        leader.flush()
    f = client2.connect(name, PW)
    first_state(f)
    info = {s.name: s for s in client.list()}[name]
    assert isinstance(info, ms.StreamInfo)
    assert info.seq == 3
    assert info.followers == 1
    assert before - 1000 <= info.updated_ms <= int(time.time() * 1000) + 1000
    assert abs(info.updated.timestamp() * 1000 - info.updated_ms) < 1
    f.disconnect()
    # Redis sees the subscriber gone within 1 s.
    deadline = time.monotonic() + 1.5
    while {s.name: s for s in client.list()}[name].followers != 0:
        assert time.monotonic() < deadline, "the follower still counts after disconnect"
        time.sleep(0.05)


def test_list_never_shows_secrets(client: ms.Client, name: str) -> None:
    client.start(name, "very-secret-password", "very-secret-code")
    text = repr(client.list())
    assert "very-secret" not in text


def test_names_round_trip_exactly(client: ms.Client, client2: ms.Client) -> None:
    for name in ["a/b.c%d:e*f g+h ü 漢字 .json", "x" * 256, "trailing.ext", "%2F", "?&#"]:
        leader = client.start(name, PW, CODE)
        leader.publish({"name": name})
        leader.flush()
        with client2.connect(name, PW) as f:
            ev = first_state(f)
            assert ev.stream == name
            assert ev.json() == {"name": name}
        assert name in [s.name for s in client.list()]
        leader.stop()


def test_reconnect_keeps_the_state(url: str, client2: ms.Client, name: str) -> None:
    with ms.Client(url) as a:
        leader = a.start(name, PW, CODE)
        leader.publish({"v": 1})
        leader.flush()
    # Closing the client without stop keeps the stream.
    assert name in [s.name for s in client2.list()]
    with ms.Client(url) as b:
        leader = b.reconnect(name, PW, CODE)
        with client2.connect(name, PW) as f:
            ev = first_state(f)
            assert (ev.seq, ev.data) == (1, '{"v":1}')
            leader.publish({"v": 2})
            leader.flush()
            ev = first_state(f)
            assert (ev.seq, ev.data) == (2, '{"v":2}')
        leader.stop()


def test_leader_context_manager_flushes(url: str, client2: ms.Client, name: str) -> None:
    with ms.Client(url) as a:
        with a.start(name, PW, CODE) as leader:
            for i in range(20):
                leader.publish({"i": i})
        # flushed on exit: stored before the client goes
        info = {s.name: s for s in client2.list()}[name]
        assert info.seq >= 1
        with client2.connect(name, PW) as f:
            assert first_state(f).data == '{"i":19}'
        leader.stop()


def test_close_delivers_pending_state(url: str, client2: ms.Client, name: str) -> None:
    a = ms.Client(url)
    leader = a.start(name, PW, CODE)
    for i in range(50):
        leader.publish({"i": i})
    a.close()  # no flush: ms_client_free delivers what is pending
    with client2.connect(name, PW) as f:
        assert first_state(f).data == '{"i":49}'


def test_iteration_with_timeouts(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    f = client2.connect(name, PW)
    assert first_state(f).seq == 0
    t0 = time.monotonic()
    with pytest.raises(ms.Timeout):
        f.next_event(0.3)
    assert 0.25 <= time.monotonic() - t0 < 2
    t0 = time.monotonic()
    assert list(f.events(timeout=0.3)) == []
    assert 0.25 <= time.monotonic() - t0 < 2
    # A state published later wakes up a blocked reader.
    threading.Timer(0.3, lambda: leader.publish({"late": True})).start()
    ev = f.next_event(5)
    assert ev.kind is EventKind.STATE and ev.json() == {"late": True} and ev.seq == 1
    # Plain iteration (no timeout) ends at disconnect from another thread.
    threading.Timer(0.3, f.disconnect).start()
    t0 = time.monotonic()
    assert [e.kind for e in f] == []
    assert time.monotonic() - t0 < 3


def test_follower_wait_for(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    f = client2.connect(name, PW)
    assert f.wait_for(0, timeout=5)
    assert not f.wait_for(1, timeout=0.2)
    leader.publish("[1]")
    assert f.wait_for(1, timeout=5)
    assert (f.seq, f.latest) == (1, "[1]")


def test_slow_reader_sees_latest_and_memory_is_bounded(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    f = client2.connect(name, PW)
    for i in range(1, 101):
        leader.publish({"i": i})
        leader.flush()
    assert f.wait_for(100, timeout=5)
    # Nobody read: pending STATE events collapsed to the newest.
    assert f._queue.qsize() <= 2
    got = states(f, timeout=0.3)
    assert got[-1].seq == 100 and got[-1].data == '{"i":100}'
    assert [e.seq for e in got] == sorted(set(e.seq for e in got))


def test_heartbeat_leader_offline_and_online(url: str, client2: ms.Client, name: str) -> None:
    a = ms.Client(url, heartbeat=0.2)
    a.start(name, PW, CODE)
    f = client2.connect(name, PW)
    assert first_state(f).seq == 0
    # Heartbeats are not STATE events, and the leader stays online.
    assert [e.kind for e in f.events(timeout=1.0)] == []
    a.close()  # the leader goes without stop
    t0 = time.monotonic()
    ev = f.next_event(5)
    assert ev.kind is EventKind.LEADER_OFFLINE, ev
    assert time.monotonic() - t0 < 2.0
    with ms.Client(url, heartbeat=0.2) as b:
        b.reconnect(name, PW, CODE)
        ev = f.next_event(5)
        assert ev.kind is EventKind.LEADER_ONLINE, ev
    f.disconnect()


def test_publish_failed_when_stream_stopped_elsewhere(url: str, client: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    with ms.Client(url) as other:
        other.reconnect(name, PW, CODE).stop()
    leader.publish({"after": "stop"})
    with pytest.raises(ms.Error) as err:
        leader.flush(timeout=5)
    assert err.value.status in (ms.Status.NOT_FOUND, ms.Status.NOT_LEADING), err.value
    ev = leader.next_event(5)
    assert ev.kind is EventKind.PUBLISH_FAILED
    assert ev.stream == name
    assert ev.status == ms.Status.NOT_FOUND
    assert ev.data is None


def test_stream_ttl_expires_without_leader(url: str, client2: ms.Client, name: str) -> None:
    a = ms.Client(url, stream_ttl=1, heartbeat=0.3)
    a.start(name, PW, CODE)
    time.sleep(1.5)
    # while led, heartbeats keep it alive
    assert name in [s.name for s in client2.list()]
    a.close()
    deadline = time.monotonic() + 4
    while name in [s.name for s in client2.list()]:
        assert time.monotonic() < deadline, "the stream did not expire after its TTL"
        time.sleep(0.1)


def test_one_client_leads_and_follows(client: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    with client.connect(name, PW) as f:
        assert first_state(f).seq == 0
        leader.publish({"self": 1})
        ev = first_state(f)
        assert ev.json() == {"self": 1}
    leader.stop()


def test_threads_share_a_client(url: str, client2: ms.Client) -> None:
    names = [f"py/threads/{i}/{time.time_ns()}" for i in range(6)]
    followers = {}
    errors = []
    with ms.Client(url) as shared:

        def lead(n: str) -> None:
            try:
                leader = shared.start(n, PW, CODE)
                for i in range(1, 51):
                    leader.publish({"n": n, "i": i})
                    if i % 10 == 0:
                        leader.flush()
                leader.flush()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=lead, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        for n in names:
            followers[n] = client2.connect(n, PW)
        for n, f in followers.items():
            assert first_state(f).json() == {"n": n, "i": 50}
        for f in followers.values():
            f.disconnect()
        listed = {s.name: s.seq for s in shared.list()}
        assert all(listed[n] >= 5 for n in names)


def test_close_waits_for_calls_in_other_threads(url: str, name: str) -> None:
    c = ms.Client(url)
    leader = c.start(name, PW, CODE)
    stop = threading.Event()
    failures = []

    def hammer() -> None:
        i = 0
        while not stop.is_set():
            try:
                leader.publish({"i": i})
                i += 1
            except ms.InvalidArgument:
                return  # closed
            except Exception as exc:  # pragma: no cover
                failures.append(exc)
                return

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    c.close()
    stop.set()
    for t in threads:
        t.join(5)
    assert not failures, failures


def test_connect_disconnect_cycles_while_publishing(client: ms.Client, client2: ms.Client, name: str) -> None:
    """Following must work every time, also while the stream is busy."""
    leader = client.start(name, PW, CODE)
    failures = []
    with publishing(leader, 0.001):
        for _ in range(100):
            try:
                f = client2.connect(name, PW)
                assert f.next_event(5).kind is EventKind.STATE
                f.disconnect()
            except ms.Error as exc:
                failures.append(repr(exc))
    assert not failures, f"{len(failures)} of 100 connects failed, e.g. {failures[0]}"


def test_client_takes_the_endpoint_list_of_a_replicated_deployment(
    url: str, closed_port_url: str, name: str
) -> None:
    # A list (or the same comma-separated string): writes go to whichever
    # endpoint takes them; here the first one is down.
    with ms.Client([closed_port_url, url], timeout=3) as leader, ms.Client(
        f"{closed_port_url},{url}", timeout=3
    ) as reader:
        assert leader.url == f"{closed_port_url},{url}"
        lead = leader.start(name, PW, CODE)
        lead.publish({"wp": 1})
        lead.flush()
        assert [s.name for s in reader.list() if s.name == name] == [name]
        follower = reader.connect(name, PW)
        assert first_state(follower).json() == {"wp": 1}
    # A bad entry is named.
    for bad, says in [
        ([url, ""], "entry 2"),
        ([url, "127.0.0.1:1"], "entry 2"),
        ([url, url], "repeats entry 1"),
    ]:
        with pytest.raises(ms.InvalidArgument, match=says):
            ms.Client(bad)
