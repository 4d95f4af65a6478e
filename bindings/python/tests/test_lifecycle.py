"""Library discovery, garbage collection, interpreter exit, reconnection."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path


import missionstream as ms
from missionstream import EventKind
from conftest import PYTHON_DIR, REPO, Server, publishing, python_env

PW = "pw-1"
CODE = "code-1"


def run_py(code: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=python_env(**env),
    )


def test_import_error_lists_what_was_tried(tmp_path: Path) -> None:
    # An explicit MISSIONSTREAM_LIB that does not exist is an error, not a fallback.
    missing = str(tmp_path / "nope.so")
    r = run_py("import missionstream", MISSIONSTREAM_LIB=missing)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and missing in r.stderr
    # Without the variable and without any library, every place is listed.
    pkg = tmp_path / "site" / "missionstream"
    shutil.copytree(PYTHON_DIR / "missionstream", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    r = subprocess.run(
        [sys.executable, "-c", "import missionstream"],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
        env={**python_env(), "PYTHONPATH": str(tmp_path / "site"), "MISSIONSTREAM_LIB": ""},
    )
    assert r.returncode != 0
    assert "ImportError" in r.stderr
    for where in (str(pkg / "libmissionstream.so"), "target/release/libmissionstream.so", "target/debug/libmissionstream.so"):
        assert where in r.stderr, r.stderr


def test_discovery_order(tmp_path: Path) -> None:
    # MISSIONSTREAM_LIB first.
    r = run_py("import missionstream; print(missionstream.library_path)", MISSIONSTREAM_LIB=ms.library_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ms.library_path
    # Then a copy inside the package.
    pkg = tmp_path / "site" / "missionstream"
    shutil.copytree(PYTHON_DIR / "missionstream", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ms.library_path, pkg / "libmissionstream.so")
    r = subprocess.run(
        [sys.executable, "-c", "import missionstream; print(missionstream.library_path, missionstream.library_version())"],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
        env={**python_env(), "PYTHONPATH": str(tmp_path / "site"), "MISSIONSTREAM_LIB": ""},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == str(pkg / "libmissionstream.so")
    # Then the cargo target folder of the checkout ($CARGO_TARGET_DIR, else target/).
    r = run_py("import missionstream; print(missionstream.library_path)", MISSIONSTREAM_LIB="")
    assert r.returncode == 0, r.stderr
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
    assert r.stdout.strip() in (os.path.join(target, p, "libmissionstream.so") for p in ("release", "debug")), r.stdout
    # A checkout whose $CARGO_TARGET_DIR holds no build falls back to target/.
    r = run_py("import missionstream; print(missionstream.library_path)", MISSIONSTREAM_LIB="",
               CARGO_TARGET_DIR=str(tmp_path / "empty-target"))
    if (REPO / "target" / "release" / "libmissionstream.so").is_file():
        assert r.returncode == 0 and r.stdout.strip() == str(REPO / "target" / "release" / "libmissionstream.so")
    else:
        assert r.returncode != 0 and str(tmp_path / "empty-target" / "release") in r.stderr, r.stderr


def test_callback_survives_garbage_collection(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    f = client2.connect(name, PW)
    gc.collect()
    for i in range(5):
        leader.publish({"i": i})
        leader.flush()
        gc.collect()
    assert f.wait_for(5, timeout=5)
    assert f.latest == '{"i":4}'


def test_dropping_a_follower_disconnects_it(client: ms.Client, client2: ms.Client, name: str) -> None:
    client.start(name, PW, CODE)
    f = client2.connect(name, PW)
    assert f.wait_for(0, timeout=5)
    assert {s.name: s for s in client.list()}[name].followers == 1
    del f
    gc.collect()
    deadline = time.monotonic() + 2
    while {s.name: s for s in client.list()}[name].followers != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client2.connect(name, PW).disconnect()  # not "already following"


def test_dropping_a_client_frees_it(url: str, client2: ms.Client, name: str) -> None:
    c = ms.Client(url)
    leader = c.start(name, PW, CODE)
    f = c.connect(name, PW)
    assert f.wait_for(0, timeout=5)
    leader.publish({"last": 1})
    del c, f, leader
    gc.collect()
    with client2.connect(name, PW) as g:
        assert g.next_event(5).data == '{"last":1}'
    deadline = time.monotonic() + 2
    while {s.name: s for s in client2.list()}[name].followers != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_interpreter_exit_with_live_objects(url: str, client2: ms.Client, name: str) -> None:
    """Exit while the library is calling back: no crash, no hang, pending state delivered."""
    code = f"""
        import threading, missionstream as ms
        c = ms.Client({url!r}, heartbeat=0.1)
        leader = c.start({name!r}, {PW!r}, {CODE!r})
        f = c.connect({name!r}, {PW!r})   # never read: events keep arriving
        f2 = ms.Client({url!r}).connect({name!r}, {PW!r})
        def spam():
            i = 0
            while True:
                try:
                    leader.publish({{"i": i}}); i += 1
                except ms.InvalidArgument:  # the client was closed at exit
                    return
        for i in range(2000):
            leader.publish({{"i": i}})
        leader.flush()
        threading.Thread(target=spam, daemon=True).start()
        import time; time.sleep(0.3)
        leader.publish({{"final": True}})
        # no close, no flush, no disconnect: exit now
    """
    t0 = time.monotonic()
    r = run_py(code, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert time.monotonic() - t0 < 30
    with client2.connect(name, PW) as f:
        ev = f.next_event(5)
        # The daemon thread may have published after "final"; either way, a stored
        # state exists and the stream was kept (exit without stop).
        assert ev.kind is EventKind.STATE and ev.seq >= 1
    r = run_py(
        f"""
        import missionstream as ms
        c = ms.Client({url!r})
        leader = c.reconnect({name!r}, {PW!r}, {CODE!r})
        leader.publish('{{"exit":"now"}}')
        """
    )
    assert r.returncode == 0, r.stderr
    with client2.connect(name, PW) as f:
        assert f.next_event(5).data == '{"exit":"now"}', "the pending state was lost at exit"


def test_follower_survives_webdis_restart(make_server, name: str) -> None:
    srv: Server = make_server()
    with ms.Client(srv.url, timeout=2) as leader_client, ms.Client(srv.url, timeout=2) as follow_client:
        leader = leader_client.start(name, PW, CODE)
        f = follow_client.connect(name, PW)
        assert f.next_event(5).seq == 0
        srv.kill_webdis()
        ev = f.next_event(10)
        assert ev.kind is EventKind.CONNECTION_LOST, ev
        assert ev.status != ms.Status.OK
        srv.start_webdis()
        leader.publish({"after": "restart"})
        kinds = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ev = f.next_event(max(0.1, deadline - time.monotonic()))
            kinds.append(ev.kind)
            if ev.kind is EventKind.STATE:
                break
        assert EventKind.RECONNECTED in kinds, kinds
        assert ev.kind is EventKind.STATE and ev.json() == {"after": "restart"} and ev.seq == 1
        f.disconnect()


def test_dropping_objects_while_events_flow(url: str, client: ms.Client, name: str) -> None:
    """Clients and followers dropped (even on the library's callback thread) free cleanly."""
    leader = client.start(name, PW, CODE)
    with publishing(leader, 0.002):
        for i in range(30):
            c = ms.Client(url)
            f = c.connect(name, PW)
            assert f.next_event(5).kind is EventKind.STATE
            if i % 3 == 0:
                del f  # the client goes with the follower's last reference
                del c
            elif i % 3 == 1:
                del c  # the follower keeps its client alive
                assert f.next_event(5).kind is EventKind.STATE
                del f
            else:
                c.close()
                del f, c
            gc.collect()
    deadline = time.monotonic() + 3
    while {s.name: s for s in client.list()}[name].followers != 0:
        assert time.monotonic() < deadline, "dropped followers are still subscribed"
        time.sleep(0.05)
