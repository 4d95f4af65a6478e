"""scripts/server.sh, as `make server` / `make server-stop` run it: one pair
per folder, a second start refused, stop stops what start started, and
`. DIR/env` configures the command line."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import missionstream as ms
from conftest import SERVER_SH, read_env_file, shell_env


def server_sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SERVER_SH), *args], capture_output=True, text=True, timeout=60)


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_second_start_is_refused_and_stop_stops_the_first(tmp_path: Path) -> None:
    d = tmp_path / "server"
    r = server_sh("start", str(d))
    assert r.returncode == 0, r.stderr
    try:
        env = read_env_file(d / "env")
        url = env["MISSIONSTREAM_URL"]
        ports = [int(env["REDIS_PORT"]), int(env["WEBDIS_PORT"])]
        pids = [(d / f).read_text() for f in ("redis.pid.launch", "webdis.pid")]

        r = server_sh("start", str(d))
        assert r.returncode == 1
        assert f"already running at {url}" in r.stderr, r.stderr
        assert [(d / f).read_text() for f in ("redis.pid.launch", "webdis.pid")] == pids
        with ms.Client(url, timeout=5) as c:  # the first pair still serves
            c.list()

        # `. DIR/env` is all the command line needs.
        r = subprocess.run(
            ["bash", "-c", '. "$0/env" && python3 -m missionstream list --json', str(d)],
            env=shell_env(), capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0 and r.stdout.startswith("["), r.stderr
    finally:
        r = server_sh("stop", str(d))
    assert r.returncode == 0, r.stderr
    assert not any(answers(p) for p in ports), "server.sh stop left Redis or Webdis running"
    assert not (d / "env").exists()

    # Started again on the same folder (and append-only file): a clean start.
    r = server_sh("start", str(d))
    try:
        assert r.returncode == 0, r.stderr
        with ms.Client(read_env_file(d / "env")["MISSIONSTREAM_URL"], timeout=5) as c:
            c.list()
    finally:
        server_sh("stop", str(d))
