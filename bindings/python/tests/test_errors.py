"""Every exception class that can be triggered, each from a real situation."""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import threading
import time
from typing import Iterator

import pytest

import missionstream as ms
from conftest import WEBDIS, Server, _kill, assert_state, excerpt, free_port, wait_http

PW = "pw-1"
CODE = "code-1"


def test_hierarchy() -> None:
    classes = [
        ms.InvalidArgument, ms.Exists, ms.NotFound, ms.BadPassword, ms.BadLeaderCode, ms.NotLeading,
        ms.NotFollowing, ms.Already, ms.TooLarge, ms.Timeout, ms.Unavailable, ms.Forbidden,
        ms.ServerError, ms.ProtocolError, ms.InternalError, ms.Throttled,
    ]
    assert [c.STATUS for c in classes] == list(range(1, 17))
    for cls in classes:
        assert issubclass(cls, ms.Error)
        err = cls("boom")
        assert err.status == cls.STATUS and err.message == "boom" and str(err) == "boom"
    assert issubclass(ms.InvalidArgument, ValueError)
    assert issubclass(ms.Timeout, TimeoutError)
    assert issubclass(ms.Unavailable, ConnectionError)


def test_statuses_match_the_library_and_the_header() -> None:
    """The list of statuses is defined once, by the library (the ms_status
    enum of src/error.rs); this module's Status and the C header must say
    the same: every value with its name, and no value beyond."""
    from missionstream._ffi import lib
    from missionstream.errors import error_for_status
    from conftest import REPO

    def c_name(status: ms.Status) -> str:
        return "MS_OK" if status is ms.Status.OK else "MS_ERR_" + status.name

    for status in ms.Status:
        assert lib.ms_status_name(status.value).decode() == c_name(status), status
    assert [s.value for s in ms.Status] == list(range(len(ms.Status)))
    assert lib.ms_status_name(len(ms.Status)).decode() == "MS_UNKNOWN_STATUS", "a status Python does not know"

    header = (REPO / "include" / "missionstream.h").read_text()
    body = re.search(r"typedef enum ms_status \{(.*?)\} ms_status;", header, re.S)
    assert body, "no ms_status enum in include/missionstream.h"
    declared = [(n, int(v)) for n, v in re.findall(r"^\s*(MS_\w+) = (\d+),", body.group(1), re.M)]
    assert declared == [(c_name(s), s.value) for s in ms.Status]
    # Each status has its exception class.
    for status in ms.Status:
        if status is not ms.Status.OK:
            err = error_for_status(status.value, "m")
            assert type(err).STATUS == status.value and err.status is status, status


def test_event_kinds_match_the_header() -> None:
    """EventKind says what the header's ms_event_kind says: every value
    with its name, and no value beyond."""
    from conftest import REPO

    header = (REPO / "include" / "missionstream.h").read_text()
    body = re.search(r"typedef enum ms_event_kind \{(.*?)\} ms_event_kind;", header, re.S)
    assert body, "no ms_event_kind enum in include/missionstream.h"
    declared = [(n, int(v)) for n, v in re.findall(r"^\s*(MS_EVENT_\w+) = (\d+),", body.group(1), re.M)]
    assert declared, "no value found in ms_event_kind"
    assert declared == [("MS_EVENT_" + k.name, k.value) for k in ms.EventKind]


def test_public_names_are_listed_once() -> None:
    """__all__ is the union of the modules' own lists, each name once, each
    one there."""
    from missionstream import client, errors

    assert len(ms.__all__) == len(set(ms.__all__)), ms.__all__
    assert set(ms.__all__) == set(client.__all__) | set(errors.__all__) | {"library_path"}
    for name in ms.__all__:
        assert hasattr(ms, name), name
    for status in ms.Status:
        if status is not ms.Status.OK:
            assert any(getattr(ms, n).__dict__.get("STATUS") == status for n in errors.__all__
                       if isinstance(getattr(ms, n), type)), status


def test_error_carries_library_message(client: ms.Client, name: str) -> None:
    with pytest.raises(ms.NotFound) as err:
        client.connect(name, PW)
    assert err.value.status is ms.Status.NOT_FOUND
    assert err.value.message, "no ms_last_error() text"
    assert "not" in err.value.message.lower() or "no " in err.value.message.lower()


@pytest.mark.parametrize("bad_url", ["", "not a url", "ftp://127.0.0.1:1/", "http://"])
def test_invalid_url(bad_url: str) -> None:
    with pytest.raises(ms.InvalidArgument) as err:
        ms.Client(bad_url)
    assert err.value.message


def test_invalid_names(client: ms.Client) -> None:
    for bad in ["", "x" * 257, "tab\there", "new\nline", "nul\0byte"]:
        with pytest.raises(ms.InvalidArgument):
            client.start(bad, PW, CODE)
        with pytest.raises(ms.InvalidArgument):
            client.connect(bad, PW)
    with pytest.raises(ms.InvalidArgument):
        client.start("ok-name-empty-code", PW, "")  # leader code is 1..1024 bytes
    with pytest.raises(ms.InvalidArgument):
        client.start("ok-name-long-pw", "p" * 1025, CODE)
    with pytest.raises(ms.InvalidArgument):
        ms.Client("http://127.0.0.1:1", timeout=-1)
    with pytest.raises(TypeError):
        client.start(42, PW, CODE)  # type: ignore[arg-type]


def test_exists(client: ms.Client, client2: ms.Client, name: str) -> None:
    client.start(name, PW, CODE)
    with pytest.raises(ms.Exists):
        client2.start(name, PW, CODE)


def test_not_found(client: ms.Client, name: str) -> None:
    with pytest.raises(ms.NotFound):
        client.connect(name, PW)
    with pytest.raises(ms.NotFound):
        client.reconnect(name, PW, CODE)


def test_bad_password(client: ms.Client, client2: ms.Client, name: str) -> None:
    client.start(name, PW, CODE)
    with pytest.raises(ms.BadPassword):
        client2.connect(name, "wrong")
    with pytest.raises(ms.BadPassword):
        client2.reconnect(name, "wrong", CODE)


def test_bad_leader_code(client: ms.Client, client2: ms.Client, name: str) -> None:
    client.start(name, PW, CODE)
    with pytest.raises(ms.BadLeaderCode):
        client2.reconnect(name, PW, "wrong")


def test_not_leading(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    # A Leader handle used through a client that does not lead the stream.
    foreign = ms.Leader(client2, name, name.encode())
    with pytest.raises(ms.NotLeading):
        foreign.publish("{}")
    with pytest.raises(ms.NotLeading):
        foreign.flush(timeout=1)
    with pytest.raises(ms.NotLeading):
        foreign.stop()
    leader.stop()
    with pytest.raises(ms.NotLeading):
        leader.publish("{}")


def test_not_following(client: ms.Client, client2: ms.Client, name: str) -> None:
    client.start(name, PW, CODE)
    f = client2.connect(name, PW)
    # connect returns once the current state is queued for the callback;
    # wait until it reached the Follower (a disconnect drops undelivered
    # events: none comes after disconnect returns).
    deadline = time.monotonic() + 10
    while f.seq is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f.seq == 0
    f.disconnect()
    with pytest.raises(ms.NotFollowing):
        f.disconnect()
    f.close()  # the quiet variant does not raise
    # Events that arrived before disconnect are still there to read, then it is over.
    assert [e.seq for e in f.events(timeout=0.1)] == [0]
    with pytest.raises(ms.NotFollowing):
        f.next_event(0.1)
    # The library's own check: disconnect of a name the client never followed.
    with pytest.raises(ms.NotFollowing):
        client2._call(ms.client.lib.ms_disconnect, name.encode())


def test_already(client: ms.Client, name: str) -> None:
    client.start(name, PW, CODE)
    with pytest.raises(ms.Already):
        client.start(name, PW, CODE)
    with pytest.raises(ms.Already):
        client.reconnect(name, PW, CODE)
    f = client.connect(name, PW)
    with pytest.raises(ms.Already):
        client.connect(name, PW)
    # The library's own check, bypassing the binding's bookkeeping.
    with pytest.raises(ms.Already):
        client._call(ms.client.lib.ms_connect, name.encode(), PW.encode())
    f.disconnect()
    client.connect(name, PW).disconnect()  # following again is fine


def test_too_large(client: ms.Client, client2: ms.Client, name: str) -> None:
    leader = client.start(name, PW, CODE)
    with pytest.raises(ms.TooLarge):
        leader.publish("x" * (ms.MAX_STATE_BYTES + 1))
    # Exactly the limit is accepted, stored and delivered whole.
    big = '"' + "y" * (ms.MAX_STATE_BYTES - 2) + '"'
    assert len(big) == ms.MAX_STATE_BYTES
    leader.publish(big)
    leader.flush(timeout=30)
    with ms.Client(client2.url, timeout=30) as c:
        with c.connect(name, PW) as f:
            ev = f.next_event(30)
            assert ev.seq == 1, excerpt(ev)
            assert_state(ev.data, big)


def test_unavailable_closed_port(closed_port_url: str) -> None:
    with ms.Client(closed_port_url, timeout=2) as c:
        t0 = time.monotonic()
        with pytest.raises(ms.Unavailable) as err:
            c.list()
        assert time.monotonic() - t0 < 5
        assert err.value.message
        with pytest.raises(ms.Unavailable):
            c.connect("any", PW)
        with pytest.raises(ms.Unavailable):
            c.start("any", PW, CODE)


def test_unavailable_when_redis_is_down(make_server) -> None:
    srv: Server = make_server()
    pid = int((srv.dir / "redis.pid.launch").read_text())
    _kill(pid)
    with ms.Client(srv.url, timeout=3) as c:
        with pytest.raises(ms.Unavailable):
            c.list()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    conns = []
    stop = threading.Event()

    def accept() -> None:
        s.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(s.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        s.close()


def test_timeout_when_webdis_hangs(silent_port: int) -> None:
    with ms.Client(f"http://127.0.0.1:{silent_port}", timeout=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(ms.Timeout):
            c.list()
        assert time.monotonic() - t0 < 5


def test_flush_timeout(name: str, make_server) -> None:
    srv: Server = make_server()
    with ms.Client(srv.url, timeout=5) as c:
        leader = c.start(name, PW, CODE)
        srv.kill_webdis()
        leader.publish({"lost": "maybe"})
        t0 = time.monotonic()
        with pytest.raises((ms.Timeout, ms.Unavailable)) as err:
            leader.flush(timeout=0.5)
        assert time.monotonic() - t0 < 3
        assert err.value.status in (ms.Status.TIMEOUT, ms.Status.UNAVAILABLE)


@pytest.fixture
def forbidding_webdis(server: Server) -> Iterator[str]:
    """A second Webdis on the session's Redis whose ACL refuses FCALL."""
    conf = json.loads((server.dir / "webdis.json").read_text())
    port = free_port()
    conf.update(http_port=port, logfile=str(server.dir / f"webdis-forbid-{port}.log"))
    conf["acl"] = [{"disabled": ["*"]}, {"enabled": ["PING", "SUBSCRIBE", "UNSUBSCRIBE"]}]
    path = server.dir / f"webdis-forbid-{port}.json"
    path.write_text(json.dumps(conf))
    proc = subprocess.Popen([WEBDIS, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_forbidden(forbidding_webdis: str, client: ms.Client, name: str) -> None:
    client.start(name, PW, CODE)  # the stream exists behind the normal Webdis
    with ms.Client(forbidding_webdis, timeout=3) as c:
        with pytest.raises(ms.Forbidden):
            c.list()
        with pytest.raises(ms.Forbidden):
            c.connect(name, PW)
        with pytest.raises(ms.Forbidden):
            c.start(name + "-new", PW, CODE)


def test_server_error_when_functions_missing(make_server, name: str) -> None:
    srv: Server = make_server()
    srv.redis_cli("FUNCTION", "DELETE", "missionstream")
    with ms.Client(srv.url, timeout=3) as c:
        with pytest.raises(ms.ServerError) as err:
            c.list()
        assert "FUNCTION LOAD" in err.value.message, err.value.message
        with pytest.raises(ms.ServerError):
            c.start(name, PW, CODE)


@pytest.fixture
def nonsense_http() -> Iterator[str]:
    """An HTTP server that answers every request with something that is not Webdis."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = b"<html>this is not webdis</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = _reply

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_protocol_error(nonsense_http: str, name: str) -> None:
    with ms.Client(nonsense_http, timeout=3) as c:
        with pytest.raises(ms.ProtocolError):
            c.list()
        with pytest.raises(ms.ProtocolError):
            c.start(name, PW, CODE)


def test_messages_name_the_binding_methods(client: ms.Client, client2: ms.Client, name: str) -> None:
    """A Python user reads the method that failed first; the class comes
    from the status and ``function`` names the C function; the library's
    own text follows unchanged (the binding never rewrites it)."""
    def failure(exc: type, fn, *args):  # type: ignore[no-untyped-def]
        with pytest.raises(exc) as err:
            fn(*args)
        message = err.value.message
        assert str(err.value) == message
        assert message.endswith(": " + err.value.reason), (message, err.value.reason)
        return err.value

    client.start(name, PW, CODE)
    err = failure(ms.BadLeaderCode, client2.reconnect, name, PW, "wrong")
    assert err.message.startswith("Client.reconnect: wrong leader code") and err.function == "ms_reconnect"
    err = failure(ms.BadPassword, client2.connect, name, "wrong")
    assert err.message.startswith("Client.connect: wrong password") and err.function == "ms_connect"
    err = failure(ms.Exists, client2.start, name, PW, CODE)
    assert err.message.startswith("Client.start: ") and err.function == "ms_start", err.message
    err = failure(ms.NotFound, client2.connect, name + "-none", PW)
    assert err.message.startswith("Client.connect: ") and err.function == "ms_connect"
    foreign = ms.Leader(client2, name, name.encode())
    for method, call in (("publish", lambda: foreign.publish("{}")), ("flush", lambda: foreign.flush(1)),
                         ("stop", foreign.stop)):
        err = failure(ms.NotLeading, call)
        assert err.message.startswith(f"Leader.{method}: ") and err.function == f"ms_{method}", err.message
    assert failure(ms.InvalidArgument, client.start, "", PW, CODE).message.startswith("Client.start: ")
    err = failure(ms.InvalidArgument, ms.Client, "ftp://x")
    assert err.message.startswith("Client: ") and err.function == "ms_client_new"
    for kwargs in ({"timeout": 0}, {"timeout": 4000}, {"heartbeat": 0.01}):
        message = failure(ms.InvalidArgument, lambda: ms.Client(client.url, **kwargs)).message
        assert "seconds" in message and " ms" not in message, message
    assert failure(ms.InvalidArgument, lambda: ms.Client(client.url, stream_ttl=3)).message.startswith(
        "Client(stream_ttl=...): "
    )
