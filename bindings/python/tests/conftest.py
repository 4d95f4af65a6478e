"""Fixtures: real redis-server + webdis pairs started with scripts/server.sh.

No mocks: every test talks to real processes on free loopback ports (never
6379/7379). The session-wide pair serves most tests; ``make_server`` gives a
test its own pair when it is going to break it (kill Webdis, delete the
functions library, ...).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
import contextlib
import threading
from typing import Any, Callable, Dict, Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
PYTHON_DIR = HERE.parent
REPO = PYTHON_DIR.parent.parent
SERVER_SH = REPO / "scripts" / "server.sh"
# The Webdis to test with: $MS_WEBDIS (e.g. a newer release built by hand),
# else Debian's `webdis` from PATH. scripts/server.sh reads it too.
WEBDIS = os.environ.get("MS_WEBDIS") or "webdis"

# The library's diagnostics (retries, lost subscriptions) go to stderr,
# which pytest captures and shows for a failing test only. Subprocesses
# (the CLI) get them only when a test asks (python_env).
os.environ.setdefault("MISSIONSTREAM_DEBUG", "1")

sys.path.insert(0, str(PYTHON_DIR))

import missionstream  # noqa: E402


# Failure messages show at most this much of a state (its first and last
# characters, and its length), and this many items of a list: a failing
# assertion about an 8 MiB state prints a line, not 8 MiB.
EXCERPT_HEAD = 80
EXCERPT_TAIL = 40
EXCERPT_ITEMS = 16


def excerpt(value: Any) -> str:
    """A value as failure messages show it: a long str or bytes as its first
    80 and last 40 characters and its length, a list or tuple by at most 16
    items (each an excerpt), an Event with its data an excerpt; anything
    else by its repr, cut the same way when long."""
    if isinstance(value, (list, tuple)):
        half = EXCERPT_ITEMS // 2
        items = list(value)
        if len(items) <= EXCERPT_ITEMS:
            shown = [excerpt(i) for i in items]
        else:
            shown = [excerpt(i) for i in items[:half]]
            shown.append(f"... {len(items) - 2 * half} more ...")
            shown += [excerpt(i) for i in items[-half:]]
        return f"[{', '.join(shown)}] ({len(items)} items)"
    if isinstance(value, missionstream.Event):
        return (f"Event(kind={value.kind!r}, stream={value.stream!r}, "
                f"data={excerpt(value.data)}, seq={value.seq}, status={value.status!r})")
    if isinstance(value, (str, bytes)):
        if len(value) <= EXCERPT_HEAD + EXCERPT_TAIL:
            return repr(value)
        size = len(value.encode()) if isinstance(value, str) else len(value)
        return f"{value[:EXCERPT_HEAD]!r}...{value[-EXCERPT_TAIL:]!r} ({size} bytes)"
    text = repr(value)
    if len(text) <= EXCERPT_HEAD + EXCERPT_TAIL:
        return text
    return f"{text[:EXCERPT_HEAD]}...{text[-EXCERPT_TAIL:]} (repr of {len(text)} characters)"


def assert_state(got: Any, expected: Any, what: str = "") -> None:
    """Asserts that a state is the one expected; a failure shows excerpts
    of both, their lengths and where they first differ."""
    if got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        raise AssertionError(f"{what + ': ' if what else ''}the state is not the one expected "
                             f"(they differ from index {at}): got {excerpt(got)}, expected {excerpt(expected)}")


def _long(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) > EXCERPT_ITEMS or any(_long(v) for v in value)
    if isinstance(value, missionstream.Event):
        return _long(value.data)
    return isinstance(value, (str, bytes)) and len(value) > EXCERPT_HEAD + EXCERPT_TAIL


def pytest_assertrepr_compare(config: Any, op: str, left: Any, right: Any) -> Any:
    """`assert a == b` about long states or lists: excerpts instead of
    pytest's full diff (which -vv or a CI run would print whole)."""
    if op != "==" or not (_long(left) or _long(right)):
        return None
    lines = [f"{excerpt(left)} == {excerpt(right)}"]
    try:
        at = next((i for i, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right)))
        lines.append(f"lengths {len(left)} and {len(right)}; they differ from index {at}")
    except TypeError:
        pass
    return lines


def pytest_report_header(config: Any) -> str:
    """Which Python runs the suite (make test: a virtual environment of $PYTHON)."""
    base = getattr(sys, "_base_executable", sys.executable)
    venv = f", a virtual environment of {base}" if sys.prefix != sys.base_prefix else ""
    return f"python: {sys.executable} ({sys.version.split()[0]}{venv}); library: {missionstream.library_path}"


class Server:
    """One redis-server + webdis pair managed by scripts/server.sh."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.url = ""
        self.redis_port = 0
        self.webdis_port = 0
        self.extra_pids: List[int] = []

    def start(self) -> "Server":
        for tool in ("redis-server", "redis-cli", WEBDIS, "curl"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is not installed; the Python tests need real Redis and Webdis")
        subprocess.run([str(SERVER_SH), "start", str(self.dir)], check=True, capture_output=True, timeout=60)
        env = read_env_file(self.dir / "env")
        self.url = env["MISSIONSTREAM_URL"]
        self.redis_port = int(env["REDIS_PORT"])
        self.webdis_port = int(env["WEBDIS_PORT"])
        assert self.redis_port not in (6379, 7379) and self.webdis_port not in (6379, 7379)
        return self

    def stop(self) -> None:
        for pid in self.extra_pids:
            _kill(pid)
        subprocess.run([str(SERVER_SH), "stop", str(self.dir)], check=False, capture_output=True, timeout=60)

    def redis_cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.redis_port), *args], check=True, capture_output=True, text=True, timeout=30
        )
        return out.stdout

    def kill_webdis(self) -> None:
        pid_file = self.dir / "webdis.pid"
        _kill(int(pid_file.read_text()))

    def start_webdis(self) -> None:
        """(Re)start Webdis on its port with the same configuration."""
        proc = subprocess.Popen(
            [WEBDIS, str(self.dir / "webdis.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        (self.dir / "webdis.pid").write_text(str(proc.pid))
        wait_http(self.webdis_port)


def read_env_file(path: Path) -> Dict[str, str]:
    """The variables of a scripts/server.sh env file (``export KEY=value`` or ``KEY=value``)."""
    env: Dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, _, value = line.partition("=")
        env[key] = value
    return env


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reap it if it is our child.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def wait_http(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /PING HTTP/1.0\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers HTTP on 127.0.0.1:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server")).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Server]]:
    started: List[Server] = []

    def make() -> Server:
        srv = Server(tmp_path_factory.mktemp("own-server"))
        started.append(srv)
        return srv.start()

    try:
        yield make
    finally:
        for srv in started:
            srv.stop()


@pytest.fixture
def url(server: Server) -> str:
    return server.url


@pytest.fixture
def client(url: str) -> Iterator[missionstream.Client]:
    with missionstream.Client(url, timeout=5) as c:
        yield c


@pytest.fixture
def client2(url: str) -> Iterator[missionstream.Client]:
    with missionstream.Client(url, timeout=5) as c:
        yield c


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A stream name unique to this test."""
    return f"py/{request.node.name}/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def python_env(**extra: str) -> Dict[str, str]:
    """Environment for subprocesses running the binding from the source tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PYTHON_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in (
        "MISSIONSTREAM_URL",
        "MISSIONSTREAM_TLS_CA_FILE",
        "MISSIONSTREAM_PASSWORD",
        "MISSIONSTREAM_LEADER_CODE",
        "MISSIONSTREAM_DEBUG",
    ):
        env.pop(key, None)
    env.update(extra)
    return env


def shell_env(**extra: str) -> Dict[str, str]:
    """python_env(), with this interpreter's folder first on PATH: a shell
    script's `python3` is the Python running the tests."""
    env = python_env(**extra)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@contextlib.contextmanager
def publishing(leader: Any, period: float) -> Iterator[None]:
    """Publishes {"i": n} on `leader` every `period` seconds in a background
    thread while the block runs."""
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.is_set():
            leader.publish({"i": i})
            i += 1
            time.sleep(period)

    t = threading.Thread(target=run)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(10)
