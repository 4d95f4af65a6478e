"""``python -m missionstream`` end to end, in subprocesses."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from typing import List

import pytest

import missionstream as ms
from conftest import python_env

PW = "pw-cli"
CODE = "code-cli"


def cli(*args: str, input: str = "", timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "missionstream", *args],
        input=input, capture_output=True, text=True, timeout=timeout, env=python_env(**env),
    )


def _default_sigint() -> None:
    # A shell without job control starts background commands with SIGINT
    # ignored, and Python then leaves it ignored: `make test &` would make
    # the Ctrl-C test meaningless. The CLI is tested as a terminal runs it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "missionstream", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(**env),
        preexec_fn=_default_sigint,
    )


def assert_clean_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("command", [[], ["list"], ["watch"], ["lead"], ["stop"]])
def test_help(command: List[str]) -> None:
    r = cli(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: python3 -m missionstream" in r.stdout
    assert "--url" in r.stdout
    if command in (["watch"], ["lead"], ["stop"]):
        assert "NAME" in r.stdout and "--password" in r.stdout
    if command in (["lead"], ["stop"]):
        assert "--leader-code" in r.stdout
    if command == ["lead"]:
        assert "--stop-at-end" in r.stdout and "stdin" in r.stdout


def test_version_and_missing_command() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("missionstream ") and ms.library_version() in r.stdout
    r = cli()
    assert r.returncode == 2 and "command is required" in r.stderr


def test_lead_then_watch_then_list_then_stop(url: str, name: str) -> None:
    states = [{"plan": i, "wp": [[48.0 + i / 100, 11.0]]} for i in range(5)]
    r = cli("--url", url, "lead", name, "--password", PW, "--leader-code", CODE,
            input="".join(json.dumps(s) + "\n" for s in states) + "\n")
    assert r.returncode == 0, r.stderr
    # lead at EOF keeps the stream (freed without stop): a late watcher sees the last state.
    r = cli("watch", name, "--password", PW, "--count", "1", "--url", url)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    # The current state read on joining: its age, not a transport delay.
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} seq=5 age=- ", line), line
    assert json.loads(line.split(" ", 3)[3]) == states[-1]
    # list shows it, in a table and as JSON.
    r = cli("list", "--url", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["NAME", "SEQ", "FOLLOWERS", "LEADER", "LAST", "STATE"]
    # lead exited: its leader is offline once 3 heartbeats are missed (2 s each by default).
    assert any(l.startswith(name + " ") and l.split()[1:3] == ["5", "0"] for l in r.stdout.splitlines()), r.stdout
    r = cli("list", "--json", MISSIONSTREAM_URL=url)
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows[name]["seq"] == 5 and rows[name]["followers"] == 0
    assert rows[name]["heartbeat_ms"] == 2000 and rows[name]["leader"] in ("online", "offline"), rows[name]
    # stop, with secrets from the environment.
    r = cli("stop", name, "--url", url, MISSIONSTREAM_PASSWORD=PW, MISSIONSTREAM_LEADER_CODE=CODE)
    assert r.returncode == 0, r.stderr
    r = cli("list", "--json", "--url", url)
    assert name not in [row["name"] for row in json.loads(r.stdout)]


def test_watch_prints_states_as_lead_publishes(url: str, name: str) -> None:
    lead = popen("lead", name, "--url", url, "--password", PW, "--leader-code", CODE, "--stamp", "--stop-at-end")
    try:
        # The first line creates the stream; then a watcher joins.
        lead.stdin.write(json.dumps({"step": 0}) + "\n")
        lead.stdin.flush()
        deadline = time.monotonic() + 10
        with ms.Client(url) as c:
            while name not in [s.name for s in c.list()]:
                assert time.monotonic() < deadline and lead.poll() is None, lead.stderr.read() if lead.poll() is not None else ""
                time.sleep(0.05)
            watch = popen("watch", name, "--url", url, "--password", PW)
            try:
                first = watch.stdout.readline()
                assert " seq=" in first, first + watch.stderr.read()
                for step in range(1, 6):
                    lead.stdin.write(json.dumps({"step": step}) + "\n")
                    lead.stdin.flush()
                    time.sleep(0.1)
                lead.stdin.close()  # EOF: flush, then --stop-at-end stops the stream
                assert lead.wait(30) == 0, lead.stderr.read()
                out, err = watch.communicate(timeout=30)
                assert watch.returncode == 0, err
            finally:
                if watch.poll() is None:
                    watch.kill()
                    watch.wait()
    finally:
        if lead.poll() is None:
            lead.kill()
            lead.wait()
    lines = [first] + out.splitlines()
    got = []
    for i, line in enumerate(lines):
        m = re.match(r"^\d\d:\d\d:\d\d\.\d{3} seq=(\d+) (delay|age)=(-?\d+\.\d)ms (.*)$", line.strip())
        assert m, line
        # The first state is the stream's current one (its age); the others travelled now.
        assert m.group(2) == ("age" if i == 0 else "delay"), line
        m = re.match(r"^\S+ seq=(\d+) \w+=(-?\d+\.\d)ms (.*)$", line.strip())
        assert m, line
        doc = json.loads(m.group(3))
        assert "sent_ms" in doc  # --stamp
        assert -50 < float(m.group(2)) < 5000
        got.append((int(m.group(1)), doc["step"]))
    seqs = [s for s, _ in got]
    assert seqs == sorted(set(seqs))
    assert got[-1] == (6, 5), got
    assert [step for _, step in got] == list(range(got[0][1], 6)), got  # every flushed state printed
    assert "ended" in err


def test_lead_reconnect_and_no_wait(url: str, name: str) -> None:
    r = cli("lead", name, "--url", url, "--password", PW, "--leader-code", CODE, input='{"a":1}\n')
    assert r.returncode == 0, r.stderr
    r = cli("lead", name, "--url", url, "--password", PW, "--leader-code", CODE, input='{"a":2}\n')
    assert_clean_error(r, "--reconnect")
    r = cli("lead", name, "--url", url, "--password", PW, "--leader-code", CODE, "--reconnect", "--no-wait", "-v",
            input="".join(json.dumps({"a": i}) + "\n" for i in range(3, 100)))
    assert r.returncode == 0, r.stderr
    assert "published 97 state(s)" in r.stderr
    with ms.Client(url) as c, c.connect(name, PW) as f:
        assert f.next_event(5).data == '{"a": 99}'


def test_cli_errors_are_one_line(url: str, closed_port_url: str, name: str) -> None:
    assert_clean_error(cli("list", "--url", closed_port_url, "--timeout", "2"), "missionstream: error:")
    assert_clean_error(cli("watch", name, "--url", url), "error")  # not found
    r = cli("lead", name, "--url", url, "--password", PW, "--leader-code", CODE, input='{"ok":1}\n')
    assert r.returncode == 0, r.stderr
    assert_clean_error(cli("watch", name, "--url", url, "--password", "wrong"), "password")
    assert_clean_error(cli("stop", name, "--url", url, "--password", PW, "--leader-code", "wrong"), "leader code")
    assert_clean_error(cli("stop", name, "--url", url, "--password", PW), "leader code is required")
    r = cli("lead", name, "--url", url, "--password", PW, "--leader-code", CODE, "--reconnect", input="not json\n")
    assert_clean_error(r, "line 1", "JSON")
    assert r.returncode == 1  # bad input is a runtime failure, not a usage mistake
    assert_clean_error(cli("list", "--url", "ftp://nowhere"), "error")
    r = cli("watch", name, "--url", url, "--password", PW, "--idle-timeout", "0.5", "--quiet")
    assert r.returncode == 1
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} seq=1 age=-$", r.stdout.strip()), r.stdout
    assert "no event" in r.stderr and "Traceback" not in r.stderr


def test_missing_library_is_one_line(tmp_path) -> None:
    r = cli("list", MISSIONSTREAM_LIB=str(tmp_path / "missing.so"))
    assert_clean_error(r, "MISSIONSTREAM_LIB", "missing.so")
    assert r.returncode == 1


def test_watch_interrupted_exits_130_and_disconnects(url: str, name: str) -> None:
    r = cli("lead", name, "--url", url, "--password", PW, "--leader-code", CODE, input='{"x":1}\n')
    assert r.returncode == 0, r.stderr
    # The library's diagnostics go to stderr: shown if the test fails.
    watch = popen("watch", name, "--url", url, "--password", PW, MISSIONSTREAM_DEBUG="1")
    try:
        assert " seq=1 " in watch.stdout.readline()
        with ms.Client(url) as c:
            assert {s.name: s for s in c.list()}[name].followers == 1
            watch.send_signal(signal.SIGINT)
            try:
                _, err = watch.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                watch.kill()
                _, err = watch.communicate()
                pytest.fail(f"watch did not exit within 10 s of SIGINT; its stderr:\n{err}")
            assert watch.returncode == 130, err
            assert "Traceback" not in err, err
            deadline = time.monotonic() + 2
            while {s.name: s for s in c.list()}[name].followers != 0:
                assert time.monotonic() < deadline, "watch left its subscription behind"
                time.sleep(0.05)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()


def test_exit_status_and_messages_speak_of_options(url: str, closed_port_url: str, name: str) -> None:
    """0 ok, 1 runtime failure, 2 usage; messages name options and variables,
    never the library's C functions."""
    def error(r: subprocess.CompletedProcess, status: int, *words: str) -> str:
        assert r.returncode == status, (r.returncode, r.stderr)
        if r.stderr.startswith("usage: "):  # argparse's own: the usage, then one error line
            r = subprocess.CompletedProcess(r.args, r.returncode, r.stdout, r.stderr.splitlines()[-1])
        assert_clean_error(r, *words)
        assert not re.search(r"\bms_[a-z]", r.stderr), r.stderr
        return r.stderr

    lead = ["lead", name, "--url", url, "--password", PW, "--leader-code", CODE]
    r = cli(*lead, input='{"n":1}\n')
    assert r.returncode == 0, r.stderr
    # Runtime failures: 1.
    error(cli(*lead, input='{"n":2}\n'), 1, "exists", "--reconnect")
    error(cli(*lead, "--reconnect", input='{"n":2}\nnot json\n'), 1, "stdin line 2", "JSON")
    error(cli(*lead, "--reconnect", "--stamp", input="[1]\n"), 1, "stdin line 1", "--stamp")
    error(cli("watch", name, "--url", url, "--password", "wrong"), 1, "wrong password", "--password",
          "MISSIONSTREAM_PASSWORD")
    error(cli("stop", name, "--url", url, "--password", PW, "--leader-code", "wrong"), 1, "wrong leader code",
          "--leader-code", "MISSIONSTREAM_LEADER_CODE")
    error(cli("watch", name + "-none", "--url", url), 1, "no such stream")
    error(cli("list", "--timeout", "2", MISSIONSTREAM_URL=closed_port_url), 1, closed_port_url,
          "$MISSIONSTREAM_URL")
    # Usage mistakes: 2.
    error(cli("list", "--url", "ftp://nowhere"), 2, "--url", "http://")
    error(cli("list", "--url", url, "--timeout", "0"), 2, "--timeout", "seconds")
    error(cli("watch", "", "--url", url), 2, "stream name")
    error(cli("stop", name, "--url", url, "--password", PW), 2, "--leader-code", "MISSIONSTREAM_LEADER_CODE")
    error(cli("watch", "--url", url), 2, "NAME")
    r = cli("stop", name, "--url", url, "--password", PW, "--leader-code", CODE)
    assert r.returncode == 0, r.stderr
