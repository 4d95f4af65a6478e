"""The operator's view of the command line: what it says while things go
wrong (Webdis away, the leader gone), and that it keeps working through
it; presence in `list`; `watch --changes`; messages and exit statuses.
Real redis-server and webdis processes, stopped and restarted."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict

import pytest

import missionstream as ms
from conftest import excerpt, python_env
from test_cli import CODE, PW, assert_clean_error, cli
from test_cli_plan import Running, qgc_plan

LEAD = ("--password", PW, "--leader-code", CODE)
CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"


def streams(url: str) -> Dict[str, ms.StreamInfo]:
    with ms.Client(url, timeout=5) as c:
        return {s.name: s for s in c.list()}


def wait_until(what: str, check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def send(proc: Running, doc: Any) -> None:
    assert proc.proc.stdin is not None
    proc.proc.stdin.write(json.dumps(doc) + "\n")
    proc.proc.stdin.flush()


# ---------------------------------------------------------------------------
# lead from stdin through an outage


def test_lead_from_stdin_keeps_its_lead_through_a_webdis_outage(make_server, name: str) -> None:
    srv = make_server()
    lead = Running("lead", name, "--url", srv.url, *LEAD, "-v", "--stop-at-end", "--timeout", "2")
    try:
        send(lead, {"n": 1})
        lead.wait_line(rf"^{CLOCK} seq=1 bytes=8 stored=")
        srv.kill_webdis()
        mark = lead.count()
        send(lead, {"n": 2})
        # Said once, when it begins, naming the cause and the time.
        line = lead.wait_line(r"not stored", after=mark, timeout=30)
        assert re.match(rf"^{CLOCK} state not stored: Webdis unreachable .* since "
                        r"\d\d:\d\d:\d\d, retrying$", line), line
        # Documents keep coming during the outage: the newest wins.
        send(lead, {"n": 3})
        send(lead, {"n": 4})
        time.sleep(3)
        assert lead.proc.poll() is None, "lead gave up during the outage:\n" + lead.stderr()
        srv.start_webdis()
        line = lead.wait_line(r"stored again", after=mark, timeout=60)
        m = re.match(rf"^{CLOCK} stored again \(seq=(\d+)\) after (\d+\.\d) s$", line)
        assert m, line
        assert float(m.group(2)) >= 2.5, line  # it lasted at least the 3 s slept
        # Once for the outage, not once per document published during it.
        assert len([x for x in lead.lines[mark:] if "not stored: Webdis unreachable" in x]) == 1, lead.stderr()
        # The newest document is the stream's state.
        with ms.Client(srv.url, timeout=5) as c, c.connect(name, PW) as f:
            event = f.next_event(10)
            assert json.loads(event.data or "") == {"n": 4}, excerpt(event)
        # The end of input: --stop-at-end deletes the stream, exit 0.
        assert lead.proc.stdin is not None
        lead.proc.stdin.close()
        assert lead.proc.wait(30) == 0, lead.stderr()
        assert name not in streams(srv.url)
    finally:
        lead.kill()


def test_on_a_terminal_trouble_is_a_live_status_line(make_server, name: str) -> None:
    """stderr a terminal: while the state is not stored, one line, redrawn
    in place, counts the seconds; then the end is said."""
    import os
    import pty
    import select

    srv = make_server()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "missionstream", "lead", name, "--url", srv.url, *LEAD, "--timeout", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=slave, env=python_env(), text=True,
    )
    os.close(slave)
    seen = bytearray()

    def read_until(pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, seen.decode("utf-8", "replace")):
            assert time.monotonic() < deadline, f"no {pattern!r} on the terminal; got {excerpt(seen.decode())}"
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError:  # the process closed the terminal
                    assert re.search(pattern, seen.decode("utf-8", "replace")), excerpt(seen.decode())
                    return

    try:
        assert proc.stdin is not None
        proc.stdin.write('{"n":1}\n')
        proc.stdin.flush()
        wait_until("the stream started", lambda: name in streams(srv.url))
        srv.kill_webdis()
        proc.stdin.write('{"n":2}\n')
        proc.stdin.flush()
        read_until(r"state not stored: .* since \d\d:\d\d:\d\d, retrying", 60)
        # The live line: erased and redrawn, with the seconds so far.
        read_until(r"\r\x1b\[Kstate not stored: [^\r\n]* for [1-9]\d* s, retrying", 30)
        srv.start_webdis()
        read_until(r"stored again \(seq=2\) after \d+\.\d s", 60)
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_lead_watch_and_watch_out_say_when_webdis_goes_and_comes_back(make_server, tmp_path, name: str) -> None:
    """A planner's file streamed with lead --watch to watch --out: during an
    outage both say so at once (not silence, then a late figure), and the
    save made meanwhile reaches the follower's file once Webdis is back."""
    srv = make_server()
    plan, received = tmp_path / "mission.plan", tmp_path / "received.plan"
    plan.write_text(qgc_plan(1, items=10))
    lead = Running("lead", name, "--url", srv.url, *LEAD, "--watch", str(plan), "--heartbeat", "0.5",
                   "--timeout", "2", "--stop-at-end")
    watch = None
    try:
        lead.wait_line(r"seq=1 bytes=")
        watch = Running("watch", name, "--url", srv.url, "--password", PW, "--out", str(received),
                        "--timeout", "2")
        watch.wait_line(r"seq=1 bytes=\d+ age=- wrote ")
        srv.kill_webdis()
        killed = time.monotonic()
        plan.write_text(qgc_plan(2, items=11))
        line = lead.wait_line(r"not stored", timeout=30)
        assert re.match(rf"^{CLOCK} state not stored: Webdis unreachable .* since \d\d:\d\d:\d\d, retrying$",
                        line), line
        line = watch.wait_line(r"connection lost", timeout=30)
        assert re.match(rf"^{CLOCK} connection lost: .* since \d\d:\d\d:\d\d, reconnecting$", line), line
        assert time.monotonic() - killed < 20, "the outage was said late"
        time.sleep(2)
        srv.start_webdis()
        assert re.match(rf"^{CLOCK} stored again \(seq=2\) after \d+\.\d s$",
                        lead.wait_line(r"stored again", timeout=60))
        watch.wait_line(r"reconnected after \d+\.\d s", timeout=60)
        wait_until("the save made during the outage reaches the follower's file",
                   lambda: received.exists() and received.read_text() == qgc_plan(2, items=11))
        assert lead.signal(signal.SIGINT) == 0, lead.stderr()
        assert watch.proc.wait(30) == 0, watch.stderr()  # --stop-at-end: ended
    finally:
        lead.kill()
        if watch is not None:
            watch.kill()


def test_stop_at_end_and_bad_input_publish_what_came_before(url: str, name: str) -> None:
    r = cli("lead", name, "--url", url, *LEAD, "-v", "--stop-at-end", input='{"a":1}\nnot json\n')
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    # The first document was published and stored ...
    assert re.match(rf"^{CLOCK} seq=1 bytes=7 stored=\d+\.\dms from stdin line 1$", lines[0]), r.stderr
    # ... then one error line naming the line, what was published, and the stop.
    assert len(lines) == 2 and lines[1].startswith("missionstream: error: stdin line 2"), r.stderr
    assert "1 document(s) before it were published" in lines[1] and "--stop-at-end" in lines[1], lines[1]
    # ... and --stop-at-end deleted the stream.
    assert name not in streams(url)
    # Without --stop-at-end the stream keeps the first document.
    r = cli("lead", name, "--url", url, *LEAD, input='{"a":1}\n{"b": [1,\n')
    assert r.returncode == 1 and "stdin line 2" in r.stderr, r.stderr
    with ms.Client(url) as c, c.connect(name, PW) as f:
        assert f.next_event(10).data == '{"a":1}'
        c.reconnect(name, PW, CODE).stop()


def test_stop_at_end_on_sigterm(url: str, name: str) -> None:
    lead = Running("lead", name, "--url", url, *LEAD, "-v", "--stop-at-end")
    try:
        send(lead, {"a": 1})
        lead.wait_line(r"seq=1 ")
        assert name in streams(url)
        assert lead.signal(signal.SIGTERM) == 130, lead.stderr()
        assert "Traceback" not in lead.stderr()
        assert name not in streams(url)
    finally:
        lead.kill()


# ---------------------------------------------------------------------------
# watch: connection and leader presence, said when they change


def test_watch_says_when_the_connection_is_lost_and_when_it_is_back(make_server, name: str) -> None:
    srv = make_server()
    with ms.Client(srv.url, timeout=2, heartbeat=0.5) as c:
        leader = c.start(name, PW, CODE)
        leader.publish({"n": 1})
        leader.flush()
        watch = Running("watch", name, "--url", srv.url, "--password", PW, "-q", "--timeout", "2")
        try:
            assert watch.proc.stdout is not None
            assert re.match(rf"^{CLOCK} seq=1 age=-$", watch.proc.stdout.readline().strip())
            srv.kill_webdis()
            line = watch.wait_line(r"connection lost", timeout=60)
            assert re.match(rf"^{CLOCK} connection lost: .* since \d\d:\d\d:\d\d, reconnecting$", line), line
            time.sleep(2)
            srv.start_webdis()
            line = watch.wait_line(r"reconnected", timeout=60)
            assert re.match(rf"^{CLOCK} reconnected after \d+\.\d s$", line), line
            # The leader's heartbeats failed during the outage too: if the
            # follower said it went offline, it says when it is back.
            if any("leader offline" in x for x in watch.lines):
                watch.wait_line(r"leader online again", timeout=30)
            # Then the leader goes silent (its client is gone, the stream
            # kept): offline is said, then online again when it comes back.
            mark = watch.count()
        finally:
            if watch.proc.poll() is not None:
                pytest.fail("watch ended:\n" + watch.stderr())
    try:
        line = watch.wait_line(r"leader offline", after=mark, timeout=30)
        assert re.match(rf"^{CLOCK} leader offline \(no heartbeat for 3 intervals\) since \d\d:\d\d:\d\d, "
                        r"waiting for it$", line), line
        with ms.Client(srv.url, timeout=2, heartbeat=0.5) as c:
            leader = c.reconnect(name, PW, CODE)
            line = watch.wait_line(r"leader online again", after=mark, timeout=30)
            assert re.match(rf"^{CLOCK} leader online again after \d+\.\d s$", line), line
            leader.stop()
        assert watch.proc.wait(30) == 0, watch.stderr()
        assert "ended" in watch.stderr()
        # In a log (stderr not a terminal): plain lines only, no live line.
        assert "\r" not in watch.stderr() and "\x1b" not in watch.stderr()
    finally:
        watch.kill()


# ---------------------------------------------------------------------------
# list: presence; --ttl; --heartbeat


def test_list_shows_presence_and_a_dead_leaders_stream_expires(url: str, name: str) -> None:
    alive = name + "-alive"
    # The live leader beats every 2 s (the default): online unless 6 s pass unheard.
    lead = Running("lead", alive, "--url", url, *LEAD)
    try:
        send(lead, {"a": 1})
        wait_until("the live stream listed", lambda: alive in streams(url))
        # A leader that ends without --stop-at-end: offline after 3 heartbeats,
        # then gone when its TTL passes.
        r = cli("lead", name, "--url", url, *LEAD, "--heartbeat", "0.2", "--ttl", "3", input='{"b":2}\n')
        assert r.returncode == 0, r.stderr
        wait_until("the dead leader offline", lambda: streams(url)[name].leader_online is False, timeout=10)
        r = cli("list", "--url", url)
        assert r.returncode == 0, r.stderr
        rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
        assert re.search(r"\s1\s+0\s+offline \(heard \d+ s ago\)\s", rows[name]), rows[name]
        assert re.search(r"\s1\s+0\s+online\s", rows[alive]), rows[alive]
        r = cli("list", "--json", "--url", url)
        got = {row["name"]: row for row in json.loads(r.stdout)}
        assert got[name]["leader"] == "offline" and got[alive]["leader"] == "online", r.stdout
        assert got[name]["heartbeat_ms"] == 200 and got[name]["seq"] == 1 and got[name]["age_s"] >= 0
        # The TTL: the dead leader's stream leaves the list by itself; the live one stays.
        wait_until("the dead leader's stream gone", lambda: name not in streams(url), timeout=30)
        assert alive in streams(url)
    finally:
        lead.kill()
    with ms.Client(url) as c:
        c.reconnect(alive, PW, CODE).stop()


def test_heartbeat_and_ttl_options_are_checked(url: str, name: str) -> None:
    r = cli("lead", name, "--url", url, *LEAD, "--heartbeat", "2", "--ttl", "3", input="{}\n")
    assert_clean_error(r, "--ttl", "--heartbeat")
    assert r.returncode == 2
    r = cli("lead", name, "--url", url, *LEAD, "--heartbeat", "0.01", input="{}\n")
    assert r.returncode == 2 and "--heartbeat" in r.stderr, r.stderr
    assert name not in streams(url)
    # The defaults: a heartbeat of 2 s, and a TTL (the record expires).
    r = cli("lead", name, "--url", url, *LEAD, input="{}\n")
    assert r.returncode == 0, r.stderr
    info = streams(url)[name]
    assert info.heartbeat_ms == 2000
    with ms.Client(url) as c:
        c.reconnect(name, PW, CODE).stop()


# ---------------------------------------------------------------------------
# watch --changes


def test_watch_changes_says_what_changed_in_the_plans_terms(url: str, name: str) -> None:
    plan = json.loads(qgc_plan(1, items=20))
    with ms.Client(url) as c:
        leader = c.start(name, PW, CODE)
        leader.publish(json.dumps(plan))
        leader.flush()
        watch = subprocess.Popen(
            [sys.executable, "-m", "missionstream", "watch", name, "--url", url, "--password", PW, "--changes",
             "-n", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(),
        )
        try:
            assert watch.stdout is not None
            first = watch.stdout.readline()
            assert re.match(rf"^{CLOCK} seq=1 age=- plan of 20 mission item\(s\), \d+ bytes$", first), first
            item = plan["mission"]["items"][11]
            item["params"][4] += 0.0000279  # ~3.1 m north
            item["params"][6] = 60
            item["Altitude"] = 60
            plan["mission"]["items"].append(dict(plan["mission"]["items"][3], doJumpId=21))
            leader.publish(json.dumps(plan))
            leader.flush()
            line = watch.stdout.readline()
            assert re.match(rf"^{CLOCK} seq=2 delay=- 2 change\(s\): item 12 moved 3\.1 m north, altitude "
                            r"\d+ → 60 m; item 21 added$", line), line
            del plan["mission"]["items"][0:2]
            leader.publish(json.dumps(plan))
            leader.flush()
            line = watch.stdout.readline()
            assert re.match(rf"^{CLOCK} seq=3 delay=- \d+ change\(s\): .*; and \d+ more$", line), line
            leader.publish('{"other": {"x": [1, 2]}}')
            leader.flush()
            line = watch.stdout.readline()
            assert " seq=4 " in line and "$.fileType removed" in line and "$.other added" in line, line
            assert watch.wait(20) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
            watch.wait()
        leader.stop()


# ---------------------------------------------------------------------------
# Messages: the culprit, the CLI's own options, one prefix, exit statuses


def test_messages_name_the_culprit_with_one_prefix(url: str, name: str, closed_port_url: str) -> None:
    r = cli("lead", name, "--url", url, *LEAD, input='{"a":1}\n')
    assert r.returncode == 0, r.stderr
    # No password at all is not a wrong password.
    r = cli("watch", name, "--url", url)
    assert_clean_error(r, "has a password and none was given", "--password", "$MISSIONSTREAM_PASSWORD")
    assert "wrong" not in r.stderr and r.returncode == 1
    r = cli("watch", name, "--url", url, "--password", "nope")
    assert_clean_error(r, "wrong password", "--password")
    # A wrong path prefix in the URL: the path is named first.
    r = cli("list", "--url", url + "/webdis")
    assert_clean_error(r, "'/webdis'", "path")
    assert r.returncode == 1
    # Ports out of range are usage mistakes, like other malformed URLs.
    for bad in ("http://127.0.0.1:99999", "http://127.0.0.1:0", "ftp://127.0.0.1:1"):
        r = cli("list", "--url", bad)
        assert_clean_error(r, "--url", bad)
        assert r.returncode == 2, (bad, r.stderr)
    # Webdis silent: the wait is named by its option.
    import socket
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        r = cli("list", "--url", f"http://127.0.0.1:{silent.getsockname()[1]}", "--timeout", "1")
    assert_clean_error(r, "did not answer", "--timeout is 1 s", "--url")
    assert r.returncode == 1
    # One prefix for every message, argparse's included.
    for r in (cli("list", "--url", closed_port_url, "--timeout", "1"), cli("list", "--bogus"),
              cli("watch", "--url", url), cli("lead", name, "--url", url, "--password", PW)):
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("missionstream: error: "), r.stderr
        assert "python3 -m missionstream list: error" not in r.stderr
        assert not re.search(r"\bms_[a-z]", r.stderr), r.stderr
    with ms.Client(url) as c:
        c.reconnect(name, PW, CODE).stop()
