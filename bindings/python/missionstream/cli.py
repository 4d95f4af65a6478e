"""Command line: ``python -m missionstream {list,watch,lead,stop}``.

Exit status: 0 on success; 1 on a runtime failure (the server, the stream,
the input read from stdin; one line on stderr); 2 on a usage mistake (an
unknown or missing option, an invalid NAME, URL or secret); 130 when
interrupted. Messages name the command's options, not the library's
functions.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from typing import Any, Optional, Sequence, TextIO

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
    """Bad input read from stdin (exit status 1)."""


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
    try:
        doc = json.loads(event.data or "")
    except ValueError:
        return None
    if isinstance(doc, dict):
        sent = doc.get(STAMP_FIELD)
        if isinstance(sent, (int, float)) and not isinstance(sent, bool):
            return event.received_at * 1000.0 - sent
    return None


def _print_state(event: Event, out: TextIO, show_state: bool) -> None:
    delay = _delay_ms(event)
    parts = [_clock(event.received_at), f"seq={event.seq}"]
    parts.append(f"delay={delay:.1f}ms" if delay is not None else "delay=-")
    if show_state:
        parts.append(event.data or "")
    print(" ".join(parts), file=out, flush=True)


def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    password = _secret(args.password, ENV_PASSWORD, "password", "--password", required=False)
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


def _read_states(stdin: TextIO, stamp: bool) -> Any:
    """Yield (line number, state text) for each non-blank line of stdin."""
    for number, line in enumerate(stdin, 1):
        text = line.strip()
        if not text:
            continue
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InputError(f"stdin line {number} is not a JSON document: {exc}") from None
        if stamp:
            if not isinstance(doc, dict):
                raise InputError(f"stdin line {number}: --stamp needs a JSON object, not {type(doc).__name__}")
            doc[STAMP_FIELD] = int(_now_ms())
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        yield number, text


def cmd_lead(args: argparse.Namespace, client: Client) -> int:
    password = _secret(args.password, ENV_PASSWORD, "password", "--password", required=False)
    code = _secret(args.leader_code, ENV_LEADER_CODE, "leader code", "--leader-code", required=True)
    leader: Leader
    if args.reconnect:
        leader = client.reconnect(args.name, password, code)
    else:
        try:
            leader = client.start(args.name, password, code)
        except Exists as exc:
            reason = f"stream {args.name!r} exists already: pass --reconnect to lead it, or pick another name"
            raise Exists(reason, reason=reason) from exc
    count = 0
    for number, text in _read_states(sys.stdin, args.stamp):
        try:
            leader.publish(text)
            if not args.no_wait:
                leader.flush()
        except InvalidArgument as exc:
            raise InputError(f"stdin line {number}: {exc.reason}") from None
        except Error as exc:
            exc.reason = f"stdin line {number}: {exc.reason}"
            raise
        count += 1
    leader.flush()
    if args.stop_at_end:
        leader.stop()
    if args.verbose:
        end = "stopped" if args.stop_at_end else "kept (reconnect with --reconnect)"
        print(f"# published {count} state(s) to {args.name!r}; stream {end}", file=sys.stderr)
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
    p.add_argument("-q", "--quiet", action="store_true", help="print time, seq and delay only, not the state")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "lead",
        help="lead a stream, publishing states read from stdin",
        description=(
            "Start stream NAME (or --reconnect to an existing one) and publish each line of stdin as a "
            "state: one JSON document per line, blank lines ignored. Each state is flushed (stored in "
            "Redis) before the next line is read, unless --no-wait. At end of input the stream is kept "
            "for a later --reconnect, or deleted with --stop-at-end."
        ),
    )
    _add_common(p, suppress=True)
    p.add_argument("name", metavar="NAME", help="stream name")
    _add_secrets(p, leader=True)
    p.add_argument("--reconnect", action="store_true", help="take up leading an existing stream instead of starting it")
    p.add_argument("--stop-at-end", action="store_true", help="stop (delete) the stream at end of input")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="do not flush after each line (latest wins: intermediate states may be skipped); flush once at the end",
    )
    p.add_argument("--stamp", action="store_true", help=f"add \"{STAMP_FIELD}\" (Unix time, ms) to each JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="print a summary on stderr at the end")
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
