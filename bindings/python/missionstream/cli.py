"""Command line: ``python -m missionstream {list,watch,lead,stop}``.

Exit status: 0 on success; 1 on a runtime failure (the server, the stream,
the input read from stdin or a file, the --out file; one line on stderr);
2 on a usage mistake (an unknown or missing option, an invalid NAME, URL
or secret); 130 when interrupted, except `lead --watch`, whose normal end
is Ctrl-C: it stores the file's last change and exits 0. Messages name the
command's options, not the library's functions, and are chosen by the
status and what the command was doing, never by rewriting the library's
text; every one starts with "missionstream: error: ".

Trouble that lasts (a state not stored, a lost connection, the leader
offline) is said on stderr when it begins and when it ends; on a terminal
a live status line counts the seconds in between.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, NoReturn, Optional, Sequence, TextIO, Tuple

from . import _changes, _plan
from .client import Client, Event, EventKind, Leader, library_version
from .errors import Error, Exists, InvalidArgument, Status

DEFAULT_URL = "http://127.0.0.1:7379"
ENV_URL = "MISSIONSTREAM_URL"
ENV_PASSWORD = "MISSIONSTREAM_PASSWORD"
ENV_LEADER_CODE = "MISSIONSTREAM_LEADER_CODE"
ENV_TLS_CA_FILE = "MISSIONSTREAM_TLS_CA_FILE"
#: Field of a JSON state holding the sender's Unix time in ms (``lead --stamp``,
#: examples/demo.py); ``watch`` then prints the end-to-end delay.
STAMP_FIELD = "sent_ms"


class UsageError(Exception):
    """A mistake on the command line that argparse cannot see (exit status 2)."""


class InputError(Exception):
    """Bad input: stdin, --file, --watch (exit status 1)."""


class _Live:
    """Conditions that last (Webdis unreachable, connection lost, leader
    offline): a line on stderr when each begins and when it ends. On a
    terminal, a live status line in between says for how long; in a log
    (stderr not a terminal), only the two plain lines."""

    def __init__(self) -> None:
        self.active: Dict[str, Tuple[str, str, float]] = {}  # key -> (text, doing, since)
        self.shown = False  # the live line is on the screen

    @staticmethod
    def tty() -> bool:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False

    def begin(self, key: str, text: str, doing: str = "retrying") -> None:
        """``text`` holds since now (or since it began, if only its cause changed)."""
        current = self.active.get(key)
        if current is not None and current[0] == text:
            self.tick()
            return
        since = current[2] if current is not None else time.time()
        self.active[key] = (text, doing, since)
        self.line(f"{text} since {_clock(since)[:8]}, {doing}")

    def end(self, key: str, text: str) -> bool:
        """The condition ``key`` is over: ``text`` and how long it lasted."""
        current = self.active.pop(key, None)
        if current is None:
            return False
        self.line(f"{text} after {time.time() - current[2]:.1f} s")
        return True

    def line(self, text: str) -> None:
        """A plain status line (time first), the live line redrawn under it."""
        self.clear()
        print(f"{_clock(time.time())} {text}", file=sys.stderr, flush=True)
        self.tick()

    def error(self, text: str) -> None:
        self.clear()
        print(f"missionstream: error: {text}", file=sys.stderr, flush=True)
        self.tick()

    def tick(self) -> None:
        """Redraw the live line (a terminal only)."""
        if not self.active or not self.tty():
            return
        now = time.time()
        parts = [f"{text} for {now - since:.0f} s, {doing}" for text, doing, since in self.active.values()]
        sys.stderr.write("\r\x1b[K" + "; ".join(parts))
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


_LIVE = _Live()


def _status(text: str) -> None:
    """One status line on stderr, after the local time."""
    _LIVE.line(text)


def _error(text: str) -> None:
    """One error line on stderr (the command goes on)."""
    _LIVE.error(text)


#: What a status means while the CLI retries, in a person's terms.
_TROUBLE = {
    Status.UNAVAILABLE: "Webdis unreachable (or Redis behind it)",
    Status.TIMEOUT: "Webdis not answering",
    Status.SERVER: "Redis refused the request",
    Status.PROTOCOL: "Webdis answered something unexpected",
    Status.THROTTLED: "the server throttles requests",
}


def _trouble(status: Any) -> str:
    return _TROUBLE.get(status, f"failure {getattr(status, 'name', status)}")


def _now_ms() -> float:
    return time.time() * 1000.0


def _clock(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def _secret(value: Optional[str], env: str, what: str, flag: str, required: bool) -> str:
    if value is None:
        value = os.environ.get(env)
    if value is None:
        if required:
            raise UsageError(f"a {what} is required: pass {flag} or set {env}")
        return ""
    return value


# ---------------------------------------------------------------------------
# Commands


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _leader(s: Any) -> str:
    online = s.leader_online
    return "unknown" if online is None else ("online" if online else "offline")


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    streams = sorted(client.list(), key=lambda s: s.name)
    if args.json:
        rows = [
            {"name": s.name, "seq": s.seq, "followers": s.followers, "updated_ms": s.updated_ms,
             "age_s": round(max(0, s.listed_ms - s.updated_ms) / 1000.0, 1), "leader": _leader(s),
             "heard_ms": s.heard_ms, "heartbeat_ms": s.heartbeat_ms}
            for s in streams
        ]
        print(json.dumps(rows))
        return 0
    if not streams:
        print("no live streams")
        return 0
    width = max(4, max(len(s.name) for s in streams))
    print(f"{'NAME':<{width}}  {'SEQ':>8}  {'FOLLOWERS':>9}  {'LEADER':<24}  LAST STATE")
    for s in streams:
        leader = _leader(s)
        if leader == "offline":
            leader = f"offline (heard {_ago((s.listed_ms - s.heard_ms) / 1000.0)})"
        updated = s.updated.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        age = _ago((s.listed_ms - s.updated_ms) / 1000.0)
        print(f"{s.name:<{width}}  {s.seq:>8}  {s.followers:>9}  {leader:<24}  {updated} ({age})")
    return 0


def _sent_ms(data: str) -> Optional[float]:
    """The state's ``sent_ms`` field, when it is a JSON object that has one."""
    if STAMP_FIELD not in data:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, dict):
        sent = doc.get(STAMP_FIELD)
        if isinstance(sent, (int, float)) and not isinstance(sent, bool):
            return float(sent)
    return None


def _timing(event: Event, travelled: bool) -> str:
    """``delay=`` for a state that travelled now (sent, then received over
    the subscription); ``age=`` for one read as the stream's current state
    (on joining, or after a reconnection), whose send time is long past."""
    sent = _sent_ms(event.data or "")
    label = "delay" if travelled else "age"
    if sent is None:
        return f"{label}=-"
    return f"{label}={event.received_at * 1000.0 - sent:.1f}ms"


def _print_state(event: Event, out: TextIO, shown: Optional[str], travelled: bool) -> None:
    parts = [_clock(event.received_at), f"seq={event.seq}", _timing(event, travelled)]
    if shown is not None:
        parts.append(shown)
    _LIVE.clear()
    print(" ".join(parts), file=out, flush=True)
    _LIVE.tick()


class _Out:
    """watch --out: each state written to a file atomically, then --exec."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.path: str = args.out
        self.pretty: bool = args.pretty
        self.exec: Optional[str] = args.exec
        self.quiet: bool = args.quiet
        self.name: str = args.name
        self.waiting_reported = False

    def write(self, event: Event, travelled: bool = True) -> bool:
        """Write the state to the file (and run --exec); False for seq 0."""
        data = event.data or ""
        if event.seq == 0:
            # A stream just started holds "{}" until its leader publishes:
            # not a plan to hand to a planner.
            if not self.waiting_reported and not self.quiet:
                _status(f"seq=0: the leader has not published a state yet; {self.path} not written")
            self.waiting_reported = True
            return False
        text = _plan.pretty(data) if self.pretty else data
        raw = text.encode("utf-8")
        try:
            _plan.atomic_write(self.path, raw)
        except OSError as exc:
            raise InputError(f"--out {self.path}: cannot write it: {exc.strerror or exc}") from None
        if not self.quiet:
            _status(f"seq={event.seq} bytes={len(raw)} {_timing(event, travelled)} wrote {self.path}")
        if self.exec:
            env = dict(os.environ, MISSIONSTREAM_OUT=self.path, MISSIONSTREAM_SEQ=str(event.seq),
                       MISSIONSTREAM_STREAM=self.name)
            try:
                done = subprocess.run(self.exec, shell=True, env=env, stdin=subprocess.DEVNULL)
            except OSError as exc:
                _error(f"--exec {self.exec!r}: cannot run it: {exc}")
                return True
            if done.returncode != 0:
                how = (f"was killed by signal {-done.returncode}" if done.returncode < 0
                       else f"exited with status {done.returncode}")
                _error(f"--exec {self.exec!r} {how} after seq={event.seq}; watching on")
        return True


def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    password = _secret(args.password, ENV_PASSWORD, "password", "--password", required=False)
    out: Optional[_Out] = None
    if args.out is not None:
        problem = _plan.check_out_path(args.out)
        if problem:
            raise UsageError(problem)
        if args.changes:
            raise UsageError("--changes prints to stdout; it does not go with --out FILE")
        out = _Out(args)
    elif args.pretty or args.exec:
        raise UsageError(("--pretty" if args.pretty else "--exec") + " goes with --out FILE")
    if args.changes and args.quiet:
        raise UsageError("--changes and --quiet exclude each other")
    follower = client.connect(args.name, password)
    states = 0
    previous: Optional[str] = None  # the last state, for --changes
    travelled = False  # the next state comes over the subscription (not read as the current one)
    last_event = time.monotonic()
    try:
        while True:
            wait = 1.0
            if args.idle_timeout is not None:
                wait = min(wait, max(0.0, last_event + args.idle_timeout - time.monotonic()))
            try:
                event = follower.next_event(wait)
            except Error as exc:
                if exc.status != Status.TIMEOUT:
                    raise
                if args.idle_timeout is not None and time.monotonic() - last_event >= args.idle_timeout:
                    raise InputError(f"no event on stream {args.name!r} for {args.idle_timeout:g} s "
                                     "(--idle-timeout)") from None
                _LIVE.tick()
                continue
            last_event = time.monotonic()
            if event.kind is EventKind.STATE:
                was_travelled, travelled = travelled, True
                if out is not None:
                    if not out.write(event, was_travelled):
                        continue  # seq 0 is not counted: nothing was written
                else:
                    data = event.data or ""
                    if args.changes:
                        shown: Optional[str] = _changes.describe(previous, data)
                        previous = data
                    else:
                        shown = None if args.quiet else data
                    _print_state(event, sys.stdout, shown, was_travelled)
                states += 1
                if args.count and states >= args.count:
                    return 0
            elif event.kind is EventKind.ENDED:
                _LIVE.clear()
                print(f"# stream {args.name!r} ended (stopped, or expired after its leader went away)",
                      file=sys.stderr, flush=True)
                return 0
            elif event.kind is EventKind.CONNECTION_LOST:
                _LIVE.begin("connection", f"connection lost: {_trouble(event.status)}", "reconnecting")
            elif event.kind is EventKind.RECONNECTED:
                travelled = False  # the state read on reconnecting is the current one
                if not _LIVE.end("connection", "reconnected"):
                    _status("reconnected")
            elif event.kind is EventKind.LEADER_OFFLINE:
                _LIVE.begin("leader", "leader offline (no heartbeat for 3 intervals)", "waiting for it")
            elif event.kind is EventKind.LEADER_ONLINE:
                if not _LIVE.end("leader", "leader online again"):
                    _status("leader online")
            else:
                _status(f"event {event.kind.name}")
    finally:
        _LIVE.clear()
        follower.close()


def _stamped(text: str, where: str) -> str:
    """``text`` (a JSON object) with ``sent_ms`` set to now, re-encoded."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise InputError(f"{where}: --stamp needs a JSON object, not {type(doc).__name__}")
    doc[STAMP_FIELD] = int(_now_ms())
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _stdin_states(args: argparse.Namespace) -> Iterator[Tuple[str, bytes]]:
    """(where, state) for each whole JSON document of stdin (or all of stdin
    with --raw), as soon as each is complete."""
    fd = sys.stdin.fileno()
    try:
        if args.raw:
            yield "stdin", _plan.read_all(fd, "stdin", raw=True)
            return
        for doc in _plan.read_documents(fd, _plan.DocumentSplitter("stdin")):
            where = f"stdin line {doc.line}"
            text = _stamped(doc.text, where) if args.stamp else doc.text
            yield where, text.encode("utf-8")
    except _plan.BadContent as exc:
        raise InputError(str(exc)) from None


#: Failures after which a lead cannot go on: the stream is gone or not ours.
_FATAL = (Status.NOT_LEADING, Status.NOT_FOUND, Status.BAD_PASSWORD, Status.BAD_LEADER_CODE, Status.FORBIDDEN,
          Status.INVALID_ARGUMENT)


#: Seconds a store may take before the CLI says it is waiting.
_SLOW_STORE = 3.0


class _Lead:
    """Publishes states and reports each: seq, bytes, time to store. While a
    state cannot be stored (Webdis or Redis away), says so once and keeps
    trying: the library retries, the newest state wins."""

    def __init__(self, args: argparse.Namespace, client: Client, leader: Leader, seq: Optional[int],
                 report: bool) -> None:
        self.args = args
        self.client = client
        self.leader = leader
        self.seq = seq  # of the last stored state; None: unknown, looked up when needed
        self.report = report
        self.count = 0
        self.last: Optional[bytes] = None  # last state stored
        self.unstored: Optional[Tuple[str, bytes, float]] = None  # published, not yet stored
        self.merged = False  # more than one state published since the last store
        self.stopped = False

    def _learn_seq(self) -> None:
        try:
            self.seq = {s.name: s.seq for s in self.client.list()}.get(self.args.name)
        except Error:
            self.seq = None

    def publish(self, where: str, data: bytes, wait: bool = True) -> None:
        """Publish (and unless not ``wait``, store) ``data``; errors raise."""
        try:
            self.leader.publish(data)
        except Error as exc:
            if exc.status in (Status.INVALID_ARGUMENT, Status.TOO_LARGE):
                raise InputError(f"{where}: {exc.reason}") from None
            exc.where = where  # type: ignore[attr-defined]
            raise
        self.count += 1
        if self.unstored is not None:
            self.merged = True
        self.unstored = (where, data, time.monotonic())
        if wait:
            self.store()

    def attempt(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the last published state to be
        stored: True once it is (and reported). A failure that may pass is
        reported once, when it begins (and its end when it is stored);
        one that cannot (the stream gone, not ours) raises."""
        if self.unstored is None:
            return True
        where, data, started = self.unstored
        try:
            self.leader.flush(timeout)
        except Error as exc:
            if exc.status in _FATAL or not isinstance(exc.status, Status):
                exc.where = where  # type: ignore[attr-defined]
                raise
            if exc.status == Status.TIMEOUT and time.monotonic() - started < _SLOW_STORE \
                    and "store" not in _LIVE.active:
                return False
            _LIVE.begin("store", f"state not stored: {_trouble(exc.status)}")
            self.merged = True  # the seq is looked up once stored
            return False
        self.unstored = None
        self.last = data
        if self.seq is None or self.merged:
            self._learn_seq()
        else:
            self.seq += 1
        self.merged = False
        shown = f"seq={self.seq if self.seq is not None else '?'}"
        _LIVE.end("store", f"stored again ({shown})")
        if self.report:
            took = (time.monotonic() - started) * 1000.0
            parts = [shown, f"bytes={len(data)}", f"stored={took:.1f}ms"]
            sent = _sent_ms(data.decode("utf-8", "replace"))
            if sent is not None:
                parts.append(f"latency={_now_ms() - sent:.1f}ms")
            _status(" ".join(parts) + f" from {where}")
        return True

    def store(self) -> None:
        """Wait until the last published state is stored, however long a
        passing failure lasts; report it."""
        while not self.attempt(1.0):
            _drain(self.leader)

    def stop(self) -> None:
        """--stop-at-end: delete the stream (once)."""
        if self.stopped:
            return
        self.stopped = True
        self.leader.stop()


class _StdinReader:
    """Reads stdin's documents in a thread, one ahead at most: ("doc",
    where, data), then ("bad", message) or ("eof",)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.items: "queue.Queue[Tuple[Any, ...]]" = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, args=(args,), name="missionstream-stdin", daemon=True)
        self.thread.start()

    def _run(self, args: argparse.Namespace) -> None:
        try:
            for where, data in _stdin_states(args):
                self.items.put(("doc", where, data))
        except InputError as exc:
            self.items.put(("bad", str(exc)))
        except OSError as exc:
            self.items.put(("bad", f"stdin: cannot read it: {exc.strerror or exc}"))
        except Exception as exc:  # noqa: BLE001 - the main thread must hear of it, or it waits forever
            self.items.put(("bad", f"stdin: {exc}"))
        else:
            self.items.put(("eof",))

    def get(self, timeout: float) -> Optional[Tuple[Any, ...]]:
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            return None


def _open_lead(args: argparse.Namespace, client: Client) -> Tuple[Leader, Optional[int]]:
    password = _secret(args.password, ENV_PASSWORD, "password", "--password", required=False)
    code = _secret(args.leader_code, ENV_LEADER_CODE, "leader code", "--leader-code", required=True)
    if args.reconnect:
        return client.reconnect(args.name, password, code), None
    try:
        return client.start(args.name, password, code), 0
    except Exists as exc:
        reason = f"stream {args.name!r} exists already: pass --reconnect to lead it, or pick another name"
        raise Exists(reason, reason=reason) from exc


class _Terminate:
    """SIGTERM raises KeyboardInterrupt while the block runs, so that a
    service manager's stop ends a lead as Ctrl-C does (--stop-at-end
    included)."""

    def _handler(self, signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    def __enter__(self) -> "_Terminate":
        self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGTERM, self.previous)


def cmd_lead(args: argparse.Namespace, client: Client) -> int:
    if args.file is not None and args.watch is not None:
        raise UsageError("--file and --watch exclude each other")
    if args.raw and args.stamp:
        raise UsageError("--stamp needs JSON objects; it does not go with --raw")
    if args.watch is not None and args.no_wait:
        raise UsageError("--no-wait does not go with --watch (each save is stored before the next one is read)")
    if args.interval is not None and args.watch is None:
        raise UsageError("--interval goes with --watch FILE")
    first: Optional[bytes] = None
    if args.file is not None:
        # Check the file before touching the stream: a bad file changes nothing.
        try:
            if args.file == "-":
                first = _plan.read_all(sys.stdin.fileno(), "stdin", args.raw)
            else:
                first = _plan.read_file(args.file, args.raw)
        except _plan.BadContent as exc:
            raise InputError(str(exc)) from None
        if args.stamp:
            first = _stamped(first.decode("utf-8"), args.file).encode("utf-8")
    leader, seq = _open_lead(args, client)
    if args.watch is not None:
        return _lead_watch(args, client, leader, seq)
    lead = _Lead(args, client, leader, seq, report=not args.quiet and (args.file is not None or args.verbose))
    bad: Optional[str] = None
    try:
        with _Terminate():
            if first is not None:
                lead.publish(args.file, first, wait=False)
            else:
                bad = _lead_stdin(args, lead)
            # The end: what is pending is stored, however long an outage lasts.
            lead.store()
            if args.stop_at_end:
                lead.stop()
    finally:
        # Every other way out (bad input, Ctrl-C, a failure): the stream
        # is stopped all the same, if it can be.
        _stop_at_end(args, lead)
    if bad is not None:
        raise InputError(f"{bad}; the {lead.count} document(s) before it were published"
                         + ("; stream stopped (--stop-at-end)" if args.stop_at_end else ""))
    if args.verbose:
        end = "stopped" if args.stop_at_end else "kept (reconnect with --reconnect)"
        print(f"# published {lead.count} state(s) to {args.name!r}; stream {end}", file=sys.stderr)
    return 0


def _stop_at_end(args: argparse.Namespace, lead: _Lead) -> None:
    """--stop-at-end, on a way out other than the normal end: stop the
    stream unless it is gone or no longer ours already."""
    if not args.stop_at_end or lead.stopped:
        return
    failure = sys.exc_info()[1]
    if isinstance(failure, Error) and failure.status in (Status.NOT_LEADING, Status.NOT_FOUND):
        return
    try:
        lead.stop()
    except Error as exc:
        _error(f"--stop-at-end: stream {args.name!r} not stopped: {_explain(exc, args)}")


def _lead_stdin(args: argparse.Namespace, lead: _Lead) -> Optional[str]:
    """Publishes stdin's documents until its end; each is stored before the
    next is taken (unless --no-wait), except while a state cannot be
    stored: then newer documents are published as they come (the newest
    wins, stored when the service is back). Returns the message of bad
    input, after publishing the documents before it."""
    reader = _StdinReader(args)
    while True:
        _drain(lead.leader)
        if lead.unstored is not None and not args.no_wait:
            if lead.attempt(0.5):
                continue
            if "store" not in _LIVE.active:
                continue  # slow, not failing: the next document waits
            item = reader.get(0.0)
        else:
            item = reader.get(1.0)
        if item is None:
            _LIVE.tick()
            continue
        if item[0] == "doc":
            lead.publish(item[1], item[2], wait=False)
        elif item[0] == "bad":
            return str(item[1])
        else:
            return None


class _Interrupts:
    """SIGINT/SIGTERM while watching: the first asks the loop to finish (flush
    the last change, then leave); a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _drain(leader: Leader) -> None:
    """Drop the leader's PUBLISH_FAILED events: a failed store is reported
    by flush (and retried); unread, they would pile up in a long watch."""
    while True:
        try:
            leader.next_event(0)
        except Error:
            return


def _lead_watch(args: argparse.Namespace, client: Client, leader: Leader, seq: Optional[int]) -> int:
    path: str = args.watch
    interval: float = args.interval if args.interval is not None else 0.1
    lead = _Lead(args, client, leader, seq, report=not args.quiet)
    watcher = _plan.FileWatcher(path, args.raw)
    reported: Optional[str] = None  # the problem last reported, not repeated while it lasts
    published: Optional[bytes] = None  # the file's content last published

    def handle(content: Any) -> None:
        nonlocal reported, published
        data = content
        if args.stamp and not isinstance(content, _plan.BadContent):
            try:
                data = _stamped(content.decode("utf-8"), path).encode("utf-8")
            except InputError as exc:
                content = _plan.BadContent(str(exc))
        if isinstance(content, _plan.BadContent):
            text = str(content)
            if text != reported:
                kept = f"seq={lead.seq}" if lead.seq is not None else "the stream's state"
                keep = f"the stream keeps {kept}" if lead.last is not None else "nothing published yet"
                _error(f"{text}; not published, {keep}; waiting for the next save")
                reported = text
            return
        reported = None
        if content == published:
            return  # saved unchanged
        published = content
        lead.publish(path, data, wait=False)
        lead.attempt(0.05 if "store" in _LIVE.active else 2.0)

    def store() -> None:
        lead.attempt(0.05)

    if not args.quiet:
        _status(f"watching {path} (every {interval:g} s); Ctrl-C to end")
    try:
        with _Interrupts() as interrupts:
            while not interrupts.requested:
                _drain(leader)
                _LIVE.tick()
                if lead.unstored is not None:
                    store()
                polled = watcher.poll()
                if polled is not None:
                    handle(polled[1])
                # In slices: Ctrl-C is acted on within 50 ms, whatever the interval.
                until = time.monotonic() + interval
                while not interrupts.requested and time.monotonic() < until:
                    time.sleep(min(0.05, max(0.0, until - time.monotonic())))
            # Interrupted: the last change (even one still settling) is published
            # and stored before leaving.
            if watcher.pending():
                handle(watcher.read_now()[1])
            if lead.unstored is not None:
                lead.store()
            if args.stop_at_end:
                lead.stop()
    finally:
        _stop_at_end(args, lead)
    if not args.quiet:
        end = "stopped" if args.stop_at_end else "kept (reconnect with --reconnect)"
        _status(f"published {lead.count} state(s) of {path} to {args.name!r}; stream {end}")
    return 0


def cmd_stop(args: argparse.Namespace, client: Client) -> int:
    password = _secret(args.password, ENV_PASSWORD, "password", "--password", required=False)
    code = _secret(args.leader_code, ENV_LEADER_CODE, "leader code", "--leader-code", required=True)
    leader = client.reconnect(args.name, password, code)
    leader.stop()
    return 0


# ---------------------------------------------------------------------------
# Parser


def _timeout(text: str) -> float:
    """--timeout: seconds, as the library accepts them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.001 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be 0.001 to 3600 seconds, not {text}")
    return value


def _interval(text: str) -> float:
    """--interval: seconds between two looks at a watched file."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.01 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be 0.01 to 60 seconds, not {text}")
    return value


#: lead's defaults: a heartbeat every 2 s (followers learn within 6 s that
#: a leader went silent) and streams expire 10 minutes after their leader
#: was last heard, so that a dead leader's stream leaves `list` by itself
#: while a crashed planner still has time to come back with --reconnect.
DEFAULT_HEARTBEAT = 2.0
DEFAULT_TTL = 600


def _heartbeat(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be 0.05 to 3600 seconds, not {text}")
    return value


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be 0 (never) to 4294967295 seconds, not {text}")
    return value


def _add_common(p: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    p.add_argument(
        "--url",
        default=default,
        help=f"Webdis URL, http(s)://[user:pass@]host[:port][/prefix], or the comma-separated URLs of every node's Webdis in a replicated deployment (default: ${ENV_URL} or {DEFAULT_URL})",
    )
    p.add_argument(
        "--timeout",
        type=_timeout,
        default=default,
        metavar="SECONDS",
        help="per-request timeout in seconds (default: 10)",
    )
    p.add_argument(
        "--tls-ca-file",
        default=default,
        metavar="PEM",
        help=(
            "trust only the CA certificates of this PEM file for an https:// URL, e.g. the mission "
            f"network's own certificate authority (default: ${ENV_TLS_CA_FILE}, else the bundled web roots)"
        ),
    )


def _add_secrets(p: argparse.ArgumentParser, leader: bool) -> None:
    p.add_argument("--password", help=f"the stream's password (default: ${ENV_PASSWORD}, else empty)")
    if leader:
        p.add_argument("--leader-code", help=f"the stream's leader code (default: ${ENV_LEADER_CODE}; required)")


def build_parser() -> argparse.ArgumentParser:
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    prog = "python3 -m missionstream" if invoked in ("", "-m", "__main__.py", "-c") else invoked
    parser = _Parser(
        prog=prog,
        description="Stream a mission plan live from one leader to many followers (Redis via Webdis).",
        epilog=(
            f"Environment: {ENV_URL}, {ENV_TLS_CA_FILE}, {ENV_PASSWORD}, {ENV_LEADER_CODE} supply defaults for "
            "--url, --tls-ca-file, --password, --leader-code; MISSIONSTREAM_LIB names the shared library. "
            f"Run `{prog} COMMAND --help` for a command's options."
        ),
    )
    parser.add_argument("--version", action="store_true", help="print the binding and library versions and exit")
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list the live streams", description=(
        "List the live streams: name, seq, follower count, whether the leader is online (heard within 3 "
        "of its heartbeat intervals), and the time and age of the last stored state. A stream whose "
        "leader went away stays listed as offline until its TTL (lead --ttl) deletes it.")
    )
    _add_common(p, suppress=True)
    p.add_argument("--json", action="store_true", help="print one JSON array instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "watch",
        help="follow a stream and print each state",
        description=(
            "Follow stream NAME and print each state as it arrives, one line each: local receive time, "
            f"seq, delay (receive time minus the state's \"{STAMP_FIELD}\" field, when present, as "
            "written by `lead --stamp` and the demo) and the state. The current state comes first, "
            "with age= instead of delay= (it did not travel now; so does the one read on reconnecting). "
            "A lost connection and an offline leader are said on stderr when they begin and when they "
            "end (on a terminal, a live status line counts the seconds). Ends with status 0 when the "
            "stream is stopped or expires."
        ),
    )
    _add_common(p, suppress=True)
    p.add_argument("name", metavar="NAME", help="stream name")
    _add_secrets(p, leader=False)
    p.add_argument("-n", "--count", type=int, default=0, metavar="N", help="exit after N states (default: never)")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit with status 1 if no event arrives for SECONDS",
    )
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print time, seq and delay (or age) only, not the state; with --out, no status lines")
    p.add_argument(
        "--out",
        metavar="FILE",
        help=(
            "write each state to FILE instead of printing it, atomically (a temporary file in the same folder, "
            "renamed over FILE), so a planner never reads half a plan; a status line per state goes to stderr"
        ),
    )
    p.add_argument(
        "--changes", action="store_true",
        help=("print what changed with each update instead of the state: for a QGroundControl plan, the "
              "mission items moved, re-set, added or removed; otherwise the JSON paths changed")
    )
    p.add_argument("--pretty", action="store_true", help="with --out: indent JSON states (2 spaces)")
    p.add_argument(
        "--exec",
        metavar="CMD",
        help=(
            "with --out: run the shell command CMD after each write (e.g. to make a planner reload), "
            "with $MISSIONSTREAM_OUT, $MISSIONSTREAM_SEQ and $MISSIONSTREAM_STREAM set; "
            "states arriving meanwhile merge into the newest"
        ),
    )
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "lead",
        help="lead a stream, publishing states read from stdin, a file, or a file on every save",
        description=(
            "Start stream NAME (or --reconnect to an existing one) and publish states. From stdin: each "
            "whole JSON document is one state, of any formatting (one per line, or pretty-printed over "
            "many lines), published as soon as it is complete; with --raw, all of stdin is one state. "
            "--file FILE publishes the file, byte for byte, as one state. --watch FILE publishes the file "
            "now and on every save until Ctrl-C (it polls the file's size, times and inode; a save by "
            "rename or in place is seen; a half-written or invalid file is reported on stderr and not "
            "published). Each state is stored in Redis before the next one is published, unless --no-wait; "
            "while Webdis or Redis is away, lead says so, keeps its lead and goes on reading, and the "
            "newest state is stored once they are back. "
            "At the end the stream is kept for a later --reconnect (until --ttl), or deleted with "
            "--stop-at-end, which also applies on bad input, Ctrl-C, SIGTERM or a failure. "
            "Every state must be UTF-8 text of at most 8 MiB; an empty, binary or larger input is refused."
        ),
    )
    _add_common(p, suppress=True)
    p.add_argument("name", metavar="NAME", help="stream name")
    _add_secrets(p, leader=True)
    p.add_argument("--reconnect", action="store_true", help="take up leading an existing stream instead of starting it")
    p.add_argument(
        "--stop-at-end", action="store_true",
        help=("stop (delete) the stream however lead ends: end of input, after --file, Ctrl-C or SIGTERM, "
              "bad input, a failure"),
    )
    p.add_argument(
        "--file", metavar="FILE",
        help="publish FILE as one state, byte for byte (any formatting), then end; - reads all of stdin",
    )
    p.add_argument(
        "--watch",
        metavar="FILE",
        help=(
            "publish FILE now and each time it is saved, until Ctrl-C (or SIGTERM), which publishes "
            "the last change and exits 0"
        ),
    )
    p.add_argument(
        "--interval", type=_interval, default=None, metavar="SECONDS",
        help="with --watch: how often to look at the file (default: 0.1)",
    )
    p.add_argument("--raw", action="store_true", help="publish text that is not JSON (stdin: all of it, one state)")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="do not flush after each document (latest wins: intermediate states may be skipped); flush once at the end",
    )
    p.add_argument(
        "--stamp", action="store_true",
        help=f"add \"{STAMP_FIELD}\" (Unix time, ms) to each JSON object (re-encoded on one line)",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true",
        help="stdin: a status line per state and a summary at the end, on stderr",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="--file, --watch: no status lines, errors only")
    p.add_argument(
        "--heartbeat", type=_heartbeat, default=DEFAULT_HEARTBEAT, metavar="SECONDS",
        help=(f"how often the leader says it is alive while idle (default: {DEFAULT_HEARTBEAT:g}); followers "
              "report the leader offline after 3 silent intervals, and `list` shows it offline")
    )
    p.add_argument(
        "--ttl", type=_ttl, default=DEFAULT_TTL, metavar="SECONDS",
        help=(f"delete the stream SECONDS after its leader was last heard (default: {DEFAULT_TTL}, so a dead "
              "leader's stream leaves `list` by itself; --reconnect within that time takes it up again); "
              "0: keep it until it is stopped")
    )
    p.set_defaults(func=cmd_lead)

    p = sub.add_parser(
        "stop",
        help="stop (delete) a stream",
        description="Stop stream NAME: delete it; every follower gets ENDED. Needs the password and leader code.",
    )
    _add_common(p, suppress=True)
    p.add_argument("name", metavar="NAME", help="stream name")
    _add_secrets(p, leader=True)
    p.set_defaults(func=cmd_stop)
    return parser


def _tls_problem(url: str, ca_file: Optional[str]) -> Optional[str]:
    """For an https:// URL that cannot be reached: what a TLS handshake with
    its host says of the certificate (None if the handshake succeeds, or
    the host cannot be reached at all)."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.split(",")[0].strip())
        host, port = parts.hostname, parts.port or 443
    except ValueError:
        return None
    if parts.scheme != "https" or not host:
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        with socket.create_connection((host, port), timeout=5) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as exc:
        return f"{exc.verify_message or exc.reason}"
    except (OSError, ssl.SSLError, ValueError):
        return None


def _explain(exc: Error, args: argparse.Namespace) -> str:
    """One line for a failure, in the command line's terms (options,
    variables, the culprit), chosen by the status and what the command was
    doing; the library's text is added where it says more. Prefixed with
    the input being published, if any."""
    where = getattr(exc, "where", None)
    text = _explain_status(exc, args)
    return f"{where}: {text}" if where else text


def _explain_status(exc: Error, args: argparse.Namespace) -> str:
    text = exc.reason
    name = getattr(args, "name", None)
    status = exc.status
    url: str = getattr(args, "url_value", DEFAULT_URL)
    url_from: str = getattr(args, "url_from", "default")
    ca_file: Optional[str] = getattr(args, "ca_value", None)
    if status == Status.BAD_PASSWORD:
        if not getattr(args, "password_value", ""):
            return (f"stream {name!r} has a password and none was given: pass --password or set "
                    f"${ENV_PASSWORD}")
        return f"stream {name!r}: wrong password (--password or ${ENV_PASSWORD})"
    if status == Status.BAD_LEADER_CODE:
        return f"stream {name!r}: wrong leader code (--leader-code or ${ENV_LEADER_CODE})"
    if status == Status.THROTTLED:
        return f"stream {name!r}: {_library_text(exc)}"
    if status == Status.NOT_FOUND and name is not None:
        return f"stream {name!r}: no such stream (stopped, expired, or never started; `list` shows the live ones)"
    if status == Status.NOT_LEADING and name is not None:
        return f"stream {name!r}: no longer led by this command (stopped, expired, or taken over by another leader)"
    if status == Status.EXISTS:
        return text
    if url_from == "default":
        where = (f"{url} is the default; pass --url or set {ENV_URL}, "
                 "e.g. with `. .run/server/env` after `make server`")
    else:
        where = f"the URL {url} is from {url_from}"
    if status == Status.UNAVAILABLE:
        problem = _tls_problem(url, ca_file)
        if problem is not None:
            trust = (f"--tls-ca-file {ca_file} ({args.ca_from})" if ca_file
                     else f"the bundled web roots; pass --tls-ca-file PEM or set ${ENV_TLS_CA_FILE} "
                          "to trust the certificate authority that signed it")
            return f"the TLS certificate of {url} is not trusted ({problem}); trusted: {trust}"
        return f"cannot reach Webdis, or Redis behind it: {_library_text(exc)} ({where})"
    if status == Status.FORBIDDEN:
        path = _url_path(url)
        if path:
            return (f"Webdis refused the request (HTTP 401/403): is the path {path!r} of the URL right? "
                    f"Webdis reads the command from the path ({where}); else check Webdis' ACL and the "
                    "URL's user:password")
        return (f"Webdis refused the request (HTTP 401/403): check the URL's user:password and Webdis' ACL "
                f"(deploy/webdis.json) ({where})")
    if status == Status.TIMEOUT:
        wait = getattr(args, "timeout", None) or 10
        return f"{_library_text(exc)} (--timeout is {wait:g} s; {where})"
    if status == Status.PROTOCOL:
        return f"{_library_text(exc)} ({where})"
    return _library_text(exc)


def _library_text(exc: Error) -> str:
    """The library's own text when it does not speak of its C functions
    (which a person at the command line cannot call), else the status'
    meaning."""
    text = exc.reason
    if "ms_" in text:
        return _trouble(exc.status)
    return text


def _url_path(url: str) -> str:
    """The path prefix of (the first) URL, "" if none."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(url.split(",")[0].strip()).path.rstrip("/")
    except ValueError:
        return ""


class _Parser(argparse.ArgumentParser):
    """argparse, with the one prefix of every message of the command."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"missionstream: error: {message} (see `{self.prog} --help`)\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"missionstream {__version__} (library {library_version()})")
        return 0
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        print("missionstream: error: a command is required (list, watch, lead, stop)", file=sys.stderr)
        return 2
    if args.url:
        url, url_from = args.url, "--url"
    elif os.environ.get(ENV_URL):
        url, url_from = os.environ[ENV_URL], f"${ENV_URL}"
    else:
        url, url_from = DEFAULT_URL, "default"  # never invalid
    args.url_value, args.url_from = url, url_from
    if getattr(args, "tls_ca_file", None):
        args.ca_value, args.ca_from = args.tls_ca_file, "--tls-ca-file"
    elif os.environ.get(ENV_TLS_CA_FILE):
        args.ca_value, args.ca_from = os.environ[ENV_TLS_CA_FILE], f"${ENV_TLS_CA_FILE}"
    else:
        args.ca_value, args.ca_from = None, ""
    args.password_value = getattr(args, "password", None) or os.environ.get(ENV_PASSWORD) or ""
    try:
        heartbeat = getattr(args, "heartbeat", None)
        ttl = getattr(args, "ttl", None)
        if heartbeat is not None and ttl and ttl < 2 * heartbeat:
            raise UsageError(f"--ttl {ttl} is shorter than two --heartbeat intervals ({2 * heartbeat:g} s); "
                             "raise it, or pass --ttl 0 to keep the stream until it is stopped")
        problem = _url_problem(url)
        if problem:
            raise UsageError(f"{url_from} {url!r}: {problem}")
        try:
            client = Client(url, timeout=args.timeout, tls_ca_file=args.ca_value,
                            heartbeat=heartbeat, stream_ttl=ttl)
        except InvalidArgument as exc:
            if exc.function == "ms_client_set_tls_ca_file":
                raise UsageError(f"{args.ca_from} {args.ca_value!r}: {_ca_file_problem(args.ca_value) or exc.reason}"
                                 ) from None
            raise UsageError(f"{url_from} {url!r}: {exc.reason}") from None
        with client:
            return int(args.func(args, client))
    except UsageError as exc:
        _LIVE.clear()
        print(f"missionstream: error: {exc}", file=sys.stderr)
        return 2
    except InvalidArgument as exc:
        # Every other argument of the library's calls comes from the
        # command line: NAME, --password, --leader-code.
        _LIVE.clear()
        print(f"missionstream: error: {exc.reason}", file=sys.stderr)
        return 2
    except InputError as exc:
        _LIVE.clear()
        print(f"missionstream: error: {exc}", file=sys.stderr)
        return 1
    except Error as exc:
        _LIVE.clear()
        print(f"missionstream: error: {_explain(exc, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _LIVE.clear()
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `watch | head`): not an error.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def _url_problem(urls: str) -> str:
    """What is wrong with the port of one of the URLs, if anything (the
    library finds everything else)."""
    from urllib.parse import urlsplit

    for url in urls.split(","):
        try:
            port = urlsplit(url.strip()).port
        except ValueError:
            after = url.strip().split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
            return f"the port {after.rpartition(':')[2]!r} is not a port number (1 to 65535)"
        if port == 0:
            return "the port 0 is not a port number (1 to 65535)"
    return ""


def _ca_file_problem(path: str) -> str:
    """Why a CA file cannot be used, in the file's terms ("" if readable)."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
