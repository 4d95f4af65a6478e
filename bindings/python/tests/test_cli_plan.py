"""Plan files through the command line, end to end: ``lead --file``,
multi-line documents on stdin, ``lead --watch`` following a file as a
planner saves it (rename or in place, half-written, invalid), ``watch --out``
(atomic writes, --pretty, --exec), Ctrl-C. Real Redis + Webdis, real files,
real processes of the command line."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import missionstream as ms
from conftest import python_env
from test_cli import CODE, PW, assert_clean_error, cli, popen

LEAD = ("--password", PW, "--leader-code", CODE)
STATUS = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} seq=(\d+) bytes=(\d+) stored=\d+\.\dms from (.+)$")
OUT_STATUS = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} seq=(\d+) bytes=(\d+) (?:delay|age)=(-|-?\d+\.\dms) wrote (.+)$")


def qgc_plan(revision: int, items: int = 120) -> str:
    """A QGroundControl-style .plan as QGroundControl saves it: JSON indented
    by 4 over thousands of lines; ~50 KB with 120 mission items."""
    rng = random.Random(revision)
    lat0, lon0 = 47.3977 + revision * 1e-5, 8.5456
    mission_items: List[Dict[str, Any]] = [
        {
            "AMSLAltAboveTerrain": None,
            "Altitude": 50,
            "AltitudeMode": 1,
            "autoContinue": True,
            "command": 22,  # takeoff
            "doJumpId": 1,
            "frame": 3,
            "params": [15, 0, 0, None, lat0, lon0, 50],
            "type": "SimpleItem",
        }
    ]
    for i in range(2, items + 1):
        alt = 40 + rng.randint(0, 30)
        mission_items.append({
            "AMSLAltAboveTerrain": None,
            "Altitude": alt,
            "AltitudeMode": 1,
            "autoContinue": True,
            "command": 16,  # waypoint
            "doJumpId": i,
            "frame": 3,
            "params": [0, 0, 0, None, round(lat0 + rng.uniform(-0.01, 0.01), 7),
                       round(lon0 + rng.uniform(-0.01, 0.01), 7), alt],
            "type": "SimpleItem",
        })
    plan = {
        "fileType": "Plan",
        "geoFence": {
            "circles": [{"circle": {"center": [lat0, lon0], "radius": 850.5}, "inclusion": True, "version": 1}],
            "polygons": [{
                "inclusion": False,
                "polygon": [[lat0 + 0.002, lon0 + 0.002], [lat0 + 0.002, lon0 + 0.004],
                            [lat0 + 0.004, lon0 + 0.004], [lat0 + 0.004, lon0 + 0.002]],
                "version": 1,
            }],
            "version": 2,
        },
        "groundStation": "QGroundControl",
        "mission": {
            "cruiseSpeed": 15,
            "firmwareType": 12,
            "globalPlanAltitudeMode": 1,
            "hoverSpeed": 5,
            "items": mission_items,
            "plannedHomePosition": [lat0, lon0, 488.1],
            "vehicleType": 2,
            "version": 2,
        },
        "rallyPoints": {"points": [[lat0 - 0.001, lon0 - 0.001, 50], [lat0 + 0.001, lon0 - 0.002, 50]], "version": 2},
        "version": 1,
    }
    return json.dumps(plan, indent=4) + "\n"


def test_the_plan_is_realistic() -> None:
    text = qgc_plan(0)
    assert 45_000 < len(text.encode()) < 70_000 and text.count("\n") > 2000
    doc = json.loads(text)
    assert all(len(item["params"]) == 7 for item in doc["mission"]["items"])
    assert doc["geoFence"]["polygons"] and doc["rallyPoints"]["points"]


class Running:
    """A command line process whose stderr lines are collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = popen(*args)
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, pattern: str, after: int = 0, timeout: float = 15) -> str:
        """The first stderr line from index ``after`` on that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    if re.search(pattern, line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(f"no stderr line matching {pattern!r}; stderr so far:\n" + "\n".join(self.lines))
                self._cond.wait(min(remaining, 0.1))

    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def signal(self, signum: int) -> int:
        self.proc.send_signal(signum)
        try:
            status = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("no exit within 20 s of the signal; stderr:\n" + "\n".join(self.lines))
        self._reader.join(5)
        return status

    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def current_state(url: str, name: str) -> Optional[str]:
    with ms.Client(url) as c, c.connect(name, PW) as f:
        event = f.next_event(10)
        assert event.kind is ms.EventKind.STATE, event
        return event.data


def wait_stream(url: str, name: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    with ms.Client(url) as c:
        while name not in [s.name for s in c.list()]:
            assert time.monotonic() < deadline, f"stream {name!r} did not appear"
            time.sleep(0.05)


def states_until(follower: ms.Follower, want: str, timeout: float = 15) -> List[ms.Event]:
    """STATE events of ``follower`` up to the one whose data is ``want``."""
    got: List[ms.Event] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"state not received; got {[e.data[:40] for e in got if e.data]}"
        try:
            event = follower.next_event(remaining)
        except ms.Timeout:
            continue
        if event.kind is ms.EventKind.STATE:
            got.append(event)
            if event.data == want:
                return got


def save_by_rename(path: Path, text: str) -> None:
    """How most planners save: a temporary file, then a rename over the plan."""
    tmp = path.with_name(path.name + ".saving")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_in_place(path: Path, text: str) -> None:
    """How others save: truncate and rewrite the same file (same inode)."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(text.encode())


# ---------------------------------------------------------------------------
# lead --file, stdin, --raw


def test_lead_file_publishes_a_multi_line_plan_byte_for_byte(tmp_path: Path, url: str, name: str) -> None:
    plan = tmp_path / "survey.plan"
    plan.write_text(qgc_plan(1))
    r = cli("lead", name, "--url", url, *LEAD, "--file", str(plan))
    assert r.returncode == 0, r.stderr
    [line] = r.stderr.splitlines()
    m = STATUS.match(line)
    assert m and m.group(1) == "1" and int(m.group(2)) == plan.stat().st_size and m.group(3) == str(plan), line
    assert current_state(url, name) == plan.read_text()  # byte for byte, newline included
    # Again, with --reconnect: seq 2; and --stop-at-end deletes the stream afterwards.
    plan.write_text(qgc_plan(2))
    r = cli("lead", name, "--url", url, *LEAD, "--file", str(plan), "--reconnect", "--stop-at-end")
    assert r.returncode == 0, r.stderr
    assert STATUS.match(r.stderr.splitlines()[0]).group(1) == "2", r.stderr  # type: ignore[union-attr]
    with ms.Client(url) as c:
        assert name not in [s.name for s in c.list()]


def test_stdin_takes_whole_documents_of_any_formatting(url: str, name: str) -> None:
    plan = qgc_plan(3)
    compact = json.dumps(json.loads(plan), separators=(",", ":"))
    docs = ['{"step": 0}', plan.strip(), '{"b": [1,\n  2]}', compact, '"a string"', "42", "[1, {\"x\": \"}\\\"]\"}]"]
    text = docs[0] + "\n" + docs[1] + "\n\n" + docs[2] + " " + docs[3] + "\n" + " ".join(docs[4:]) + "\n"
    r = cli("lead", name, "--url", url, *LEAD, "-v", input=text)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[-1].startswith(f"# published {len(docs)} state(s)"), r.stderr
    got = [STATUS.match(line) for line in lines[:-1]]
    assert all(got), r.stderr
    assert [int(m.group(1)) for m in got] == list(range(1, len(docs) + 1))  # type: ignore[union-attr]
    assert [int(m.group(2)) for m in got] == [len(d.encode()) for d in docs]  # type: ignore[union-attr]
    assert [m.group(3) for m in got] == [  # type: ignore[union-attr]
        "stdin line 1", "stdin line 2", f"stdin line {plan.count(chr(10)) + 3}",
        f"stdin line {plan.count(chr(10)) + 4}", *[f"stdin line {plan.count(chr(10)) + 5}"] * 3]
    assert current_state(url, name) == docs[-1]


def test_stdin_document_is_published_as_soon_as_it_is_complete(url: str, name: str) -> None:
    """A planner piping pretty-printed plans: each goes out when its last
    line arrives, not at the end of the input."""
    lead = Running("lead", name, "--url", url, *LEAD, "--stop-at-end")
    try:
        lead.proc.stdin.write('{"step": 0}\n')
        lead.proc.stdin.flush()
        wait_stream(url, name)
        with ms.Client(url) as c, c.connect(name, PW) as f:
            for revision in range(3):
                plan = qgc_plan(10 + revision)
                cut = len(plan) // 2 + 7  # in the middle of a line
                lead.proc.stdin.write(plan[:cut])
                lead.proc.stdin.flush()
                time.sleep(0.3)
                assert f.latest != plan.strip()
                lead.proc.stdin.write(plan[cut:])
                lead.proc.stdin.flush()
                states_until(f, plan.strip())
            lead.proc.stdin.close()
            assert lead.proc.wait(30) == 0, lead.stderr()
            while f.next_event(10).kind is not ms.EventKind.ENDED:  # --stop-at-end
                pass
    finally:
        lead.kill()


def test_raw_publishes_text_that_is_not_json(tmp_path: Path, url: str, name: str) -> None:
    text = "QGC WPL 110\n0\t1\t0\t16\t0\t0\t0\t0\t47.39\t8.54\t488\t1\n"  # a waypoint file: not JSON
    r = cli("lead", name, "--url", url, *LEAD, input=text)
    assert_clean_error(r, "stdin line 1", "not a JSON document", "--raw")
    # The stream was started before stdin was read (states go out as they come).
    r = cli("lead", name, "--url", url, *LEAD, "--reconnect", "--raw", input=text)
    assert r.returncode == 0, r.stderr
    assert current_state(url, name) == text
    wpl = tmp_path / "mission.waypoints"
    wpl.write_text(text.replace("488", "490"))
    r = cli("lead", name, "--url", url, *LEAD, "--reconnect", "--raw", "--file", str(wpl))
    assert r.returncode == 0, r.stderr
    assert current_state(url, name) == wpl.read_text()
    r = cli("lead", name, "--url", url, *LEAD, "--reconnect", "--raw", "--stamp", input=text)
    assert r.returncode == 2 and "--raw" in r.stderr


def test_bad_input_is_refused_naming_the_file_and_nothing_is_published(
        tmp_path: Path, url: str, name: str) -> None:
    good = tmp_path / "good.plan"
    good.write_text(qgc_plan(4))
    r = cli("lead", name, "--url", url, *LEAD, "--file", str(good))
    assert r.returncode == 0, r.stderr
    cases: Dict[str, List[str]] = {}
    (tmp_path / "empty.plan").write_bytes(b"")
    cases["empty.plan"] = ["empty"]
    (tmp_path / "blank.plan").write_bytes(b" \n\n")
    cases["blank.plan"] = ["white space"]
    (tmp_path / "binary.plan").write_bytes(bytes(range(256)) * 4)
    cases["binary.plan"] = ["not a text file", "NUL"]
    (tmp_path / "latin1.plan").write_bytes('{"name": "Zürich"}'.encode("latin-1"))
    cases["latin1.plan"] = ["not UTF-8", "0xfc"]
    (tmp_path / "half.plan").write_text(qgc_plan(5)[:30_000])
    cases["half.plan"] = ["not a JSON document", "line"]
    (tmp_path / "two.plan").write_text('{"a": 1}\n{"a": 2}\n')
    cases["two.plan"] = ["not a JSON document", "Extra data"]
    with open(tmp_path / "big.plan", "w") as f:
        f.write('{"pad": "' + "x" * (ms.MAX_STATE_BYTES + 1) + '"}')
    cases["big.plan"] = ["8 MiB", "8,388,608 bytes", "over the limit"]
    cases["missing.plan"] = ["no such file"]
    (tmp_path / "folder.plan").mkdir()
    cases["folder.plan"] = ["folder"]
    if os.geteuid() != 0:  # root reads any file
        (tmp_path / "locked.plan").write_text("{}")
        (tmp_path / "locked.plan").chmod(0)
        cases["locked.plan"] = ["cannot read", "permission denied"]
    for file, words in cases.items():
        path = str(tmp_path / file)
        r = cli("lead", name, "--url", url, *LEAD, "--reconnect", "--file", path)
        assert_clean_error(r, path, *words)
        assert r.returncode == 1, r.stderr
        # A bad file on a new stream does not even create it.
        r = cli("lead", name + "-new", "--url", url, *LEAD, "--file", path)
        assert r.returncode == 1 and path in r.stderr
    assert current_state(url, name) == good.read_text()
    with ms.Client(url) as c:
        streams = {s.name: s for s in c.list()}
    assert streams[name].seq == 1 and name + "-new" not in streams
    # The same on stdin: binary, over the limit, an unfinished document.
    for data, words in [
        (b'{"a": 1}\n\x00\x01', ["stdin", "NUL"]),
        (b'{"a": 1}\n{"b": "\xff"}\n', ["stdin", "not UTF-8"]),
        (b'{"pad": "' + b"x" * (ms.MAX_STATE_BYTES + 10) + b'"}', ["stdin line 1", "8 MiB"]),
        (b'{"a": 1}\n{"b":\n  [1, 2]\n', ["stdin line 2", "not complete"]),
    ]:
        r = subprocess.run(
            [sys.executable, "-m", "missionstream", "lead", name, "--url", url, *LEAD, "--reconnect"],
            input=data, capture_output=True, timeout=60, env=python_env(),
        )
        r = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())
        assert_clean_error(r, *words)
    assert current_state(url, name) == '{"a": 1}'  # published before the bad part, nothing after


# ---------------------------------------------------------------------------
# lead --watch


def test_lead_watch_follows_every_save_of_a_planner(tmp_path: Path, url: str, name: str) -> None:
    plan = tmp_path / "mission.plan"
    plan.write_text(qgc_plan(20))
    lead = Running("lead", name, "--url", url, *LEAD, "--watch", str(plan), "--interval", "0.05")
    try:
        lead.wait_line(r"seq=1 bytes=\d+ stored=")
        with ms.Client(url) as c, c.connect(name, PW) as f:
            assert f.next_event(10).data == plan.read_text()
            seq = 1
            # 1. Saved by rename, 2. rewritten in place (same inode), several times.
            for revision, save in enumerate([save_by_rename, save_in_place] * 2, start=21):
                text = qgc_plan(revision)
                inode = plan.stat().st_ino
                save(plan, text)
                assert (plan.stat().st_ino == inode) == (save is save_in_place)
                seq += 1
                got = states_until(f, text)
                assert got[-1].seq == seq, [e.seq for e in got]
                lead.wait_line(rf"seq={seq} bytes={len(text.encode())} stored=.* from {re.escape(str(plan))}$")
            last_good = plan.read_text()

            # 3. A half-written file (the planner stalls mid-write): reported, not published.
            text = qgc_plan(30)
            mark = lead.count()
            with open(plan, "wb") as w:
                w.write(text[:20_000].encode())
                w.flush()
                lead.wait_line(r"error: .*mission\.plan is not a JSON document.*not published.*"
                               rf"keeps seq={seq}", after=mark)
                assert not f.wait_for(seq + 1, 0.5)
                assert current_state(url, name) == last_good
                w.write(text[20_000:].encode())
            seq += 1
            assert states_until(f, text)[-1].seq == seq
            lead.wait_line(rf"seq={seq} bytes=")

            # 4. Invalid, empty, binary, missing (between a delete and a rename):
            # each reported once, none published; the last good state stays.
            last_good = text
            for bad, words in [('{"mission": {"items": [}', "not a JSON document"), ("", "is empty"),
                               ("\0\1\2", "not a text file")]:
                mark = lead.count()
                save_by_rename(plan, bad)
                lead.wait_line(rf"error: .*{words}.*keeps seq={seq}", after=mark)
            mark = lead.count()
            plan.unlink()
            lead.wait_line(r"error: .*no such file", after=mark)
            time.sleep(0.3)
            assert not f.wait_for(seq + 1, 0.1)
            assert len([line for line in lead.lines[mark:] if "no such file" in line]) == 1  # not repeated
            assert current_state(url, name) == last_good

            # 5. A valid save again; a save of the same content publishes nothing.
            save_by_rename(plan, last_good.replace("QGroundControl", "QGC"))
            seq += 1
            states_until(f, plan.read_text())
            plan.touch()
            save_in_place(plan, plan.read_text())
            assert not f.wait_for(seq + 1, 0.6)

        # 6. Ctrl-C right after a save, before the watcher saw it settle: the
        # change is stored, then the command exits 0; the stream is kept.
        before = plan.read_text()
        final = qgc_plan(40)
        save_in_place(plan, final)
        assert lead.signal(signal.SIGINT) == 0, lead.stderr()
        assert "Traceback" not in lead.stderr()
        assert current_state(url, name) == final != before
        assert re.search(r"published \d+ state\(s\) of .*; stream kept", lead.lines[-1]), lead.stderr()
    finally:
        lead.kill()


def test_lead_watch_interrupted_flushes_and_stops_at_end(tmp_path: Path, url: str, name: str) -> None:
    plan = tmp_path / "m.plan"
    plan.write_text(qgc_plan(50))
    # A slow poll: the last save is surely not yet seen when the signal comes.
    lead = Running("lead", name, "--url", url, *LEAD, "--watch", str(plan), "--interval", "5", "--stop-at-end")
    try:
        lead.wait_line(r"seq=1 bytes=")
        with ms.Client(url) as c, c.connect(name, PW) as f:
            assert f.next_event(10).seq == 1
            save_by_rename(plan, qgc_plan(51))
            time.sleep(0.2)
            assert lead.signal(signal.SIGINT) == 0, lead.stderr()
            events = []
            while not events or events[-1].kind is not ms.EventKind.ENDED:
                events.append(f.next_event(10))
            assert [(e.kind, e.seq) for e in events] == [(ms.EventKind.STATE, 2), (ms.EventKind.ENDED, 0)]
            assert events[0].data == plan.read_text()
        assert "stream stopped" in lead.lines[-1], lead.stderr()
    finally:
        lead.kill()
    # SIGTERM (a service manager) ends it the same way.
    lead = Running("lead", name, "--url", url, *LEAD, "--watch", str(plan))
    try:
        lead.wait_line(r"seq=1 bytes=")
        assert lead.signal(signal.SIGTERM) == 0, lead.stderr()
        assert current_state(url, name) == plan.read_text()
    finally:
        lead.kill()


def test_lead_watch_failures_are_clear(tmp_path: Path, url: str, name: str) -> None:
    plan = tmp_path / "m.plan"
    plan.write_text('{"a": 1}')
    r = cli("lead", name, "--url", url, *LEAD, "--file", str(plan))
    assert r.returncode == 0, r.stderr
    # Exists, wrong password, wrong code: one line, exit 1, before watching.
    assert_clean_error(cli("lead", name, "--url", url, *LEAD, "--watch", str(plan), timeout=20), "--reconnect")
    assert_clean_error(cli("lead", name, "--url", url, "--password", "wrong", "--leader-code", CODE, "--reconnect",
                           "--watch", str(plan), timeout=20), "wrong password")
    r = cli("lead", name, "--url", url, *LEAD, "--watch", str(plan), "--file", str(plan))
    assert r.returncode == 2 and "--file and --watch" in r.stderr
    r = cli("lead", name, "--url", url, *LEAD, "--watch", str(plan), "--interval", "0")
    assert r.returncode == 2 and "--interval" in r.stderr
    # The stream stopped by someone else: the next save ends the lead with a message.
    lead = Running("lead", name, "--url", url, *LEAD, "--reconnect", "--watch", str(plan), "--interval", "0.05")
    try:
        lead.wait_line(r"seq=2 bytes=")
        r = cli("stop", name, "--url", url, *LEAD)
        assert r.returncode == 0, r.stderr
        save_by_rename(plan, '{"a": 2}')
        assert lead.proc.wait(20) == 1, lead.stderr()
        lead._reader.join(5)
        assert re.search(r"^missionstream: error: .*m\.plan", lead.lines[-1]), lead.stderr()
        assert "Traceback" not in lead.stderr()
    finally:
        lead.kill()


# ---------------------------------------------------------------------------
# watch --out


def test_watch_out_files_always_parse_and_end_equal_to_the_last_state(
        tmp_path: Path, url: str, name: str) -> None:
    out = tmp_path / "received" / "mission.plan"
    out.parent.mkdir()
    out.write_text("{}")
    out.chmod(0o640)
    log = tmp_path / "exec.log"
    with ms.Client(url) as c:
        leader = c.start(name, PW, CODE)
        leader.publish(qgc_plan(60))
        leader.flush()
        watch = Running("watch", name, "--url", url, "--password", PW, "--out", str(out),
                        "--exec", f'echo "$MISSIONSTREAM_SEQ $MISSIONSTREAM_STREAM" >> {log}; test -s "$MISSIONSTREAM_OUT"')
        try:
            watch.wait_line(rf"seq=1 bytes={len(qgc_plan(60))} age=- wrote {re.escape(str(out))}$")
            # A reader polling the file the whole time, as a planner would.
            stop = threading.Event()
            reads: List[int] = []
            bad: List[str] = []

            def reader() -> None:
                while not stop.is_set():
                    try:
                        text = out.read_text()
                        json.loads(text)
                        reads.append(len(text))
                    except (ValueError, OSError) as exc:
                        bad.append(repr(exc))

            t = threading.Thread(target=reader)
            t.start()
            try:
                for revision in range(61, 101):
                    leader.publish(qgc_plan(revision, items=60 + revision % 50))
                    time.sleep(0.01)
                last = qgc_plan(100, items=60 + 100 % 50)
                leader.flush()
                deadline = time.monotonic() + 20
                while out.read_text() != last:
                    assert time.monotonic() < deadline, "the --out file never got the last state"
                    time.sleep(0.05)
            finally:
                stop.set()
                t.join(10)
            assert not bad, bad[:3]
            assert len(reads) > 100
            assert out.read_bytes() == last.encode()
            assert oct(out.stat().st_mode & 0o777) == oct(0o640)  # permissions kept
            assert sorted(os.listdir(out.parent)) == ["mission.plan"]  # no temporary file left
            # --exec ran after writes, in order, the last after the last write.
            leader_seq = {s.name: s.seq for s in c.list()}[name]
            watch.wait_line(rf"seq={leader_seq} bytes=")
            deadline = time.monotonic() + 10
            while not log.exists() or log.read_text().splitlines()[-1:] != [f"{leader_seq} {name}"]:
                assert time.monotonic() < deadline, log.read_text() if log.exists() else "no --exec log"
                time.sleep(0.05)
            ran = [int(line.split()[0]) for line in log.read_text().splitlines()]
            assert ran == sorted(set(ran)) and ran[0] == 1, ran
            statuses = [OUT_STATUS.match(line) for line in watch.lines if "wrote" in line]
            assert all(statuses) and [int(m.group(1)) for m in statuses] == ran  # type: ignore[union-attr]
            # Ctrl-C: 130, the file intact.
            assert watch.signal(signal.SIGINT) == 130, watch.stderr()
            assert "Traceback" not in watch.stderr()
            assert out.read_text() == last
        finally:
            watch.kill()
        leader.stop()


def test_watch_out_pretty_exec_failure_and_errors(tmp_path: Path, url: str, name: str) -> None:
    out = tmp_path / "pretty.plan"
    with ms.Client(url) as c:
        leader = c.start(name, PW, CODE)
        # Before the leader's first publish the stream holds "{}" (seq 0): not written.
        watch = Running("watch", name, "--url", url, "--password", PW, "--out", str(out), "--pretty",
                        "--exec", "exit 3", "-n", "2")
        try:
            watch.wait_line(r"seq=0: the leader has not published a state yet")
            assert not out.exists()
            compact = json.dumps(json.loads(qgc_plan(70)), separators=(",", ":"))
            leader.publish(compact)
            leader.flush()
            watch.wait_line(r"--exec 'exit 3' exited with status 3 after seq=1; watching on")
            assert out.read_text() == json.dumps(json.loads(compact), indent=2) + "\n"
            leader.publish('{"sent_ms": %d, "n": 2}' % int(time.time() * 1000))
            leader.flush()
            line = watch.wait_line(r"seq=2 .* wrote ")
            assert re.search(r"delay=\d+\.\dms", line), line
            assert watch.proc.wait(20) == 0, watch.stderr()  # -n 2
            assert json.loads(out.read_text())["n"] == 2
        finally:
            watch.kill()
        leader.stop()
    r = cli("watch", name, "--url", url, "--out", str(tmp_path / "nowhere" / "x.plan"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = cli("watch", name, "--url", url, "--exec", "true")
    assert r.returncode == 2 and "--out" in r.stderr
    r = cli("watch", name, "--url", url, "--out", str(tmp_path))
    assert r.returncode == 2 and "folder" in r.stderr


def test_help_names_the_plan_file_options() -> None:
    r = cli("lead", "--help")
    assert r.returncode == 0, r.stderr
    for word in ("--file", "--watch", "--interval", "--raw", "Ctrl-C", "8 MiB"):
        assert word in r.stdout, word
    r = cli("watch", "--help")
    assert r.returncode == 0, r.stderr
    for word in ("--out", "--pretty", "--exec", "atomically", "MISSIONSTREAM_OUT"):
        assert word in r.stdout, word


def test_file_dash_reads_all_of_stdin_as_one_state(url: str, name: str) -> None:
    plan = "\ufeff" + qgc_plan(80)  # with a byte order mark, as some Windows tools save
    r = cli("lead", name, "--url", url, *LEAD, "--file", "-", input=plan)
    assert r.returncode == 0, r.stderr
    assert STATUS.match(r.stderr.splitlines()[0]).group(3) == "-"  # type: ignore[union-attr]
    assert current_state(url, name) == plan[1:]
    assert_clean_error(cli("lead", name + "-2", "--url", url, *LEAD, "--file", "-", input=plan + plan),
                       "stdin", "Extra data")
