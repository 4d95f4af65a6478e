"""Command line: ``python -m missionstream {list,watch,lead,stop}``.

Exit status: 0 on success; 1 on a runtime failure (the server, the stream,
the input read from stdin or a file, the --out file; one line on stderr);
2 on a usage mistake (an unknown or missing option, an invalid NAME, URL
or secret); 130 when interrupted, except `lead --watch`, whose normal end
is Ctrl-C: it stores the file's last change and exits 0. Messages name the
command's options, not the library's functions.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator, Optional, Sequence, TextIO, Tuple

from . import _plan
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


def _status(text: str) -> None:
    """One status line on stderr, after the local time."""
    print(f"{_clock(time.time())} {text}", file=sys.stderr, flush=True)


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


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    streams = sorted(client.list(), key=lambda s: s.name)
    if args.json:
        rows = [
            {"name": s.name, "seq": s.seq, "followers": s.followers, "updated_ms": s.updated_ms}
            for s in streams
        ]
        print(json.dumps(rows))
        return 0
    if not streams:
        print("no live streams")
        return 0
    width = max(4, max(len(s.name) for s in streams))
    print(f"{'NAME':<{width}}  {'SEQ':>8}  {'FOLLOWERS':>9}  UPDATED")
    for s in streams:
        updated = s.updated.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        age = max(0.0, time.time() - s.updated_ms / 1000.0)
        print(f"{s.name:<{width}}  {s.seq:>8}  {s.followers:>9}  {updated} ({age:.0f} s ago)")
    return 0


def _delay_ms(event: Event) -> Optional[float]:
    """End-to-end delay when the state carries the sender's time (``sent_ms``)."""
    sent = _sent_ms(event.data or "")
    return None if sent is None else event.received_at * 1000.0 - sent


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


def _print_state(event: Event, out: TextIO, show_state: bool) -> None:
    delay = _delay_ms(event)
    parts = [_clock(event.received_at), f"seq={event.seq}"]
    parts.append(f"delay={delay:.1f}ms" if delay is not None else "delay=-")
    if show_state:
        parts.append(event.data or "")
    print(" ".join(parts), file=out, flush=True)


class _Out:
    """watch --out: each state written to a file atomically, then --exec."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.path: str = args.out
        self.pretty: bool = args.pretty
        self.exec: Optional[str] = args.exec
        self.quiet: bool = args.quiet
        self.name: str = args.name
        self.waiting_reported = False

    def write(self, event: Event) -> bool:
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
            delay = _delay_ms(event)
            shown = f"delay={delay:.1f}ms" if delay is not None else "delay=-"
            _status(f"seq={event.seq} bytes={len(raw)} {shown} wrote {self.path}")
        if self.exec:
            env = dict(os.environ, MISSIONSTREAM_OUT=self.path, MISSIONSTREAM_SEQ=str(event.seq),
                       MISSIONSTREAM_STREAM=self.name)
            try:
                done = subprocess.run(self.exec, shell=True, env=env, stdin=subprocess.DEVNULL)
            except OSError as exc:
                print(f"missionstream: error: --exec {self.exec!r}: cannot run it: {exc}", file=sys.stderr, flush=True)
                return True
            if done.returncode != 0:
                how = (f"was killed by signal {-done.returncode}" if done.returncode < 0
                       else f"exited with status {done.returncode}")
                print(f"missionstream: error: --exec {self.exec!r} {how} after seq={event.seq}; "
                      "watching on", file=sys.stderr, flush=True)
        return True


def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    password = _secret(args.password, ENV_PASSWORD, "password", "--password", required=False)
    out: Optional[_Out] = None
    if args.out is not None:
        problem = _plan.check_out_path(args.out)
        if problem:
            raise UsageError(problem)
        out = _Out(args)
    elif args.pretty or args.exec:
        raise UsageError(("--pretty" if args.pretty else "--exec") + " goes with --out FILE")
    follower = client.connect(args.name, password)
    states = 0
    try:
        while True:
            try:
                event = follower.next_event(args.idle_timeout)
            except Error as exc:
                if exc.status == Status.TIMEOUT:
                    print(
                        f"missionstream: error: no event on stream {args.name!r} for {args.idle_timeout:g} s "
                        "(--idle-timeout)",
                        file=sys.stderr,
                    )
                    return 1
                raise
            if event.kind is EventKind.STATE:
                if out is not None:
                    if not out.write(event):
                        continue  # seq 0 is not counted: nothing was written
                else:
                    _print_state(event, sys.stdout, not args.quiet)
                states += 1
                if args.count and states >= args.count:
                    return 0
            elif event.kind is EventKind.ENDED:
                print(f"# stream {args.name!r} ended", file=sys.stderr, flush=True)
                return 0
            else:
                cause = "" if event.status == Status.OK else f" ({getattr(event.status, 'name', event.status)})"
                note = event.kind.name.lower().replace("_", " ")
                print(f"# {_clock(event.received_at)} {note}{cause}", file=sys.stderr, flush=True)
    finally:
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


class _Lead:
    """Publishes states and reports each: seq, bytes, time to store."""

    def __init__(self, args: argparse.Namespace, client: Client, leader: Leader, seq: Optional[int],
                 report: bool) -> None:
        self.args = args
        self.client = client
        self.leader = leader
        self.seq = seq  # of the last stored state; None: unknown, looked up when needed
        self.report = report
        self.count = 0
        self.last: Optional[bytes] = None  # last state stored
        self.unstored: Optional[Tuple[str, bytes, float]] = None  # published, flush failed

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
            exc.reason = f"{where}: {exc.reason}"
            raise
        self.count += 1
        self.unstored = (where, data, time.monotonic())
        if wait:
            self.store()

    def store(self) -> None:
        """Wait until the last published state is stored, then report it."""
        if self.unstored is None:
            return
        where, data, started = self.unstored
        try:
            self.leader.flush()
        except Error as exc:
            exc.reason = f"{where}: {exc.reason}"
            raise
        self.unstored = None
        self.last = data
        if self.seq is None:
            self._learn_seq()
        else:
            self.seq += 1
        if self.report:
            took = (time.monotonic() - started) * 1000.0
            parts = [f"seq={self.seq if self.seq is not None else '?'}", f"bytes={len(data)}",
                     f"stored={took:.1f}ms"]
            sent = _sent_ms(data.decode("utf-8", "replace"))
            if sent is not None:
                parts.append(f"latency={_now_ms() - sent:.1f}ms")
            _status(" ".join(parts) + f" from {where}")

    def flush_quietly(self) -> None:
        """--no-wait: store what is pending; the seq is looked up afterwards."""
        self.leader.flush()
        self.unstored = None
        self._learn_seq()


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
    if first is not None:
        lead.publish(args.file, first)
    else:
        for where, data in _stdin_states(args):
            lead.publish(where, data, wait=not args.no_wait)
        if args.no_wait:
            lead.flush_quietly()
    if args.stop_at_end:
        leader.stop()
    if args.verbose:
        end = "stopped" if args.stop_at_end else "kept (reconnect with --reconnect)"
        print(f"# published {lead.count} state(s) to {args.name!r}; stream {end}", file=sys.stderr)
    return 0


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
                print(f"missionstream: error: {text}; not published, {keep}; waiting for the next save",
                      file=sys.stderr, flush=True)
                reported = text
            return
        reported = None
        if content == published:
            return  # saved unchanged
        published = content
        lead.publish(path, data, wait=False)
        store()

    def store() -> None:
        try:
            lead.store()
        except Error as exc:
            if exc.status in _FATAL or not isinstance(exc.status, Status):
                raise
            print(f"missionstream: error: {exc.reason}; not stored yet, trying again", file=sys.stderr, flush=True)
            lead.seq = None  # states may have been merged meanwhile: look it up once stored

    if not args.quiet:
        _status(f"watching {path} (every {interval:g} s); Ctrl-C to end")
    with _Interrupts() as interrupts:
        while not interrupts.requested:
            _drain(leader)
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
            leader.stop()
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
    parser = argparse.ArgumentParser(
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

    p = sub.add_parser("list", help="list the live streams", description="List the live streams: name, seq, follower count, time of the last stored state.")
    _add_common(p, suppress=True)
    p.add_argument("--json", action="store_true", help="print one JSON array instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "watch",
        help="follow a stream and print each state",
        description=(
            "Follow stream NAME and print each state as it arrives, one line each: local receive time, "
            f"seq, delay (receive time minus the state's \"{STAMP_FIELD}\" field, when present, as "
            "written by `lead --stamp` and the demo) and the state. The current state comes first. "
            "Other events (connection lost, leader offline, ...) go to stderr. Ends with status 0 when "
            "the stream is stopped."
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
                   help="print time, seq and delay only, not the state; with --out, no status lines")
    p.add_argument(
        "--out",
        metavar="FILE",
        help=(
            "write each state to FILE instead of printing it, atomically (a temporary file in the same folder, "
            "renamed over FILE), so a planner never reads half a plan; a status line per state goes to stderr"
        ),
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
            "published). Each state is stored in Redis before the next one is read, unless --no-wait. "
            "At the end the stream is kept for a later --reconnect, or deleted with --stop-at-end. "
            "Every state must be UTF-8 text of at most 8 MiB; an empty, binary or larger input is refused."
        ),
    )
    _add_common(p, suppress=True)
    p.add_argument("name", metavar="NAME", help="stream name")
    _add_secrets(p, leader=True)
    p.add_argument("--reconnect", action="store_true", help="take up leading an existing stream instead of starting it")
    p.add_argument(
        "--stop-at-end", action="store_true",
        help="stop (delete) the stream at the end (end of input, after --file, or Ctrl-C with --watch)",
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


def _explain(exc: Error, args: argparse.Namespace, url: str, url_from: str) -> str:
    """One line for a failure, in the command line's terms (options, variables)."""
    text = exc.reason
    name = getattr(args, "name", None)
    status = exc.status
    if status == Status.BAD_PASSWORD:
        return f"stream {name!r}: {text} (--password or ${ENV_PASSWORD})"
    if status == Status.BAD_LEADER_CODE:
        return f"stream {name!r}: {text} (--leader-code or ${ENV_LEADER_CODE})"
    if status in (Status.NOT_FOUND, Status.NOT_LEADING, Status.NOT_FOLLOWING) and name is not None:
        return f"stream {name!r}: {text}"
    if status in (Status.UNAVAILABLE, Status.TIMEOUT, Status.FORBIDDEN, Status.PROTOCOL):
        if url_from == "default":
            where = (
                f"{url} is the default; pass --url or set {ENV_URL}, "
                "e.g. with `. .run/server/env` after `make server`"
            )
        else:
            where = f"the URL {url} is from {url_from}"
        return f"{text} ({where})"
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"missionstream {__version__} (library {library_version()})")
        return 0
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: a command is required (list, watch, lead, stop)", file=sys.stderr)
        return 2
    if args.url:
        url, url_from = args.url, "--url"
    elif os.environ.get(ENV_URL):
        url, url_from = os.environ[ENV_URL], f"${ENV_URL}"
    else:
        url, url_from = DEFAULT_URL, "default"  # never invalid
    try:
        try:
            tls_ca_file = getattr(args, "tls_ca_file", None) or os.environ.get(ENV_TLS_CA_FILE) or None
            client = Client(url, timeout=args.timeout, tls_ca_file=tls_ca_file)
        except InvalidArgument as exc:
            raise UsageError(f"{url_from} {url!r}: {exc.reason}") from None
        with client:
            return int(args.func(args, client))
    except UsageError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except InvalidArgument as exc:
        # Every other argument of the library's calls comes from the
        # command line: NAME, --password, --leader-code.
        print(f"{parser.prog} {args.command}: error: {exc.reason}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"missionstream: error: {exc}", file=sys.stderr)
        return 1
    except Error as exc:
        print(f"missionstream: error: {_explain(exc, args, url, url_from)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `watch | head`): not an error.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
