"""Pythonic layer over the C ABI: Client, Leader, Follower, events.

Threading model
---------------
A :class:`Client` owns one ``ms_client`` and registers exactly one C
callback with ``ms_set_callback``. The library runs it on its own thread;
it copies the event out (the C pointers are valid only during the call),
and puts it in the queue of the :class:`Follower` or :class:`Leader` it
belongs to. Your code reads those queues from any thread it likes. The
callback never raises into C and never blocks.

Every method is thread-safe. :meth:`Client.close` waits for calls running
on other threads to finish before it frees the native client.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime as _dt
import enum
import json
import os
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TypeVar, Union

from . import _ffi
from ._ffi import lib
from .errors import Already, Error, InvalidArgument, NotFollowing, NotLeading, Status, Timeout

__all__ = [
    "Client",
    "Leader",
    "Follower",
    "Event",
    "EventKind",
    "StreamInfo",
    "library_version",
    "status_name",
    "MAX_STATE_BYTES",
]

#: A leader not heard for this many heartbeat intervals is offline.
OFFLINE_INTERVALS = 3

#: Largest state the library accepts, in bytes (8 MiB).
MAX_STATE_BYTES = 8 * 1024 * 1024

_U32_MAX = 2**32 - 1

State = Union[str, bytes, bytearray, memoryview, Any]


class EventKind(enum.IntEnum):
    """Kinds of events (the C ABI's ``ms_event_kind`` values)."""

    STATE = 0  #: follower: a newer state
    ENDED = 1  #: follower: stream stopped or expired; the follow session is over
    CONNECTION_LOST = 2  #: follower: subscription dropped; the library retries
    RECONNECTED = 3  #: follower: subscription restored
    PUBLISH_FAILED = 4  #: leader: a state could not be stored
    LEADER_OFFLINE = 5  #: follower: the leader was not heard for 3 heartbeat intervals
    LEADER_ONLINE = 6  #: follower: the leader is heard again


@dataclass(frozen=True)
class Event:
    """One event of a stream, copied out of the library's callback.

    ``data`` is the state (``str``) for :attr:`EventKind.STATE`, else ``None``;
    ``seq`` is the state's sequence number (0 for other kinds); ``status`` is
    the cause for CONNECTION_LOST and PUBLISH_FAILED, else ``Status.OK``;
    ``received_at`` is the local Unix time (seconds) at which the binding
    received the event.
    """

    kind: EventKind
    stream: str
    data: Optional[str]
    seq: int
    status: Union[Status, int]
    received_at: float = field(default=0.0, compare=False)

    def json(self) -> Any:
        """Decode :attr:`data` as JSON (raises ``ValueError`` if it is not)."""
        if self.data is None:
            raise ValueError(f"a {self.kind.name} event carries no state")
        return json.loads(self.data)


@dataclass(frozen=True)
class StreamInfo:
    """One live stream, as returned by :meth:`Client.list`."""

    name: str
    seq: int
    followers: int
    #: Unix time in ms of the last stored state, on this machine's clock
    #: (the library moves Redis' times onto it: how long ago is Redis' own
    #: measure, so a skew between the two clocks does not show)
    updated_ms: int
    #: Unix time in ms when the leader was last heard (it started or
    #: reconnected the stream, published, or sent a heartbeat), on this
    #: machine's clock like ``updated_ms``; 0 if not known
    heard_ms: int = 0
    #: the heartbeat interval the leader announced, in ms
    heartbeat_ms: int = 0
    #: local Unix time in ms at which the list was read
    listed_ms: int = field(default=0, compare=False)

    @property
    def updated(self) -> _dt.datetime:
        """Time of the last stored state (timezone-aware, UTC)."""
        return _dt.datetime.fromtimestamp(self.updated_ms / 1000.0, tz=_dt.timezone.utc)

    @property
    def leader_online(self) -> Optional[bool]:
        """Whether the leader was heard within 3 heartbeat intervals (as
        followers judge it) when the list was read; None if not known.
        Both times are on this machine's clock (the library moved
        ``heard_ms`` onto it), so a clock off from Redis' does not matter."""
        if self.heard_ms <= 0 or self.heartbeat_ms <= 0:
            return None
        return self.listed_ms - self.heard_ms <= OFFLINE_INTERVALS * self.heartbeat_ms


def library_version() -> str:
    """Version of the loaded libmissionstream (``ms_version()``)."""
    return str(lib.ms_version().decode("utf-8", "replace"))


def status_name(status: int) -> str:
    """Name of a status as the library spells it, e.g. ``"MS_ERR_NOT_FOUND"``."""
    raw = lib.ms_status_name(int(status))
    return raw.decode("utf-8", "replace") if raw else f"MS_STATUS_{int(status)}"


def _encode(value: Union[str, bytes], what: str) -> bytes:
    """Text argument -> NUL-free bytes for a ``const char *``."""
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(f"the {what} is not valid UTF-8: {exc}") from None
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        raise TypeError(f"the {what} must be str or bytes, not {type(value).__name__}")
    if b"\0" in raw:
        raise InvalidArgument(f"the {what} must not contain a NUL character")
    return raw


def _millis(
    seconds: Optional[float], method: str, what: str, low_ms: int = 0, high_ms: int = _U32_MAX
) -> Optional[int]:
    """Seconds -> whole milliseconds in [low_ms, high_ms]; the error speaks in seconds."""
    if seconds is None:
        return None
    ms = int(round(float(seconds) * 1000))
    if ms < low_ms or ms > high_ms:
        reason = f"{what} must be {low_ms / 1000:g} to {high_ms / 1000:g} seconds, not {seconds!r}"
        raise InvalidArgument(f"{method}: {reason}", reason=reason)
    return ms


def _state_bytes(state: State) -> bytes:
    if isinstance(state, str):
        try:
            return state.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(f"the state is not valid UTF-8: {exc}") from None
    if isinstance(state, (bytes, bytearray, memoryview)):
        return bytes(state)
    try:
        text = json.dumps(state, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"the state is neither str, bytes nor JSON-serialisable: {exc}") from None
    return text.encode("utf-8")


# ---------------------------------------------------------------------------
# Event queues


class _End:
    """Sentinel queued after the last event of a session."""

    __slots__ = ()


_END = _End()


class _EventQueue(queue.Queue):  # type: ignore[type-arg]
    """A ``queue.Queue`` whose pending STATE events collapse, latest wins.

    If the newest pending item is a STATE event and another STATE arrives,
    the pending one is replaced: a consumer slower than the stream never
    makes memory grow, and it still sees states in increasing seq order
    (the same rule the library follows: bounded memory, latest wins).
    """

    def _put(self, item: Any) -> None:
        q = self.queue
        if (
            q
            and isinstance(item, Event)
            and item.kind is EventKind.STATE
            and isinstance(q[-1], Event)
            and q[-1].kind is EventKind.STATE
        ):
            q[-1] = item
        else:
            q.append(item)


# ---------------------------------------------------------------------------
# The callback and its routing


class _Dispatcher:
    """Routes callback events to sessions; holds them only weakly.

    Holds no reference to the :class:`Client`, so that the C callback (which
    references the dispatcher) never keeps the client alive.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.followers: Dict[str, "weakref.ref[Follower]"] = {}
        self.leaders: Dict[str, "weakref.ref[Leader]"] = {}
        #: ``threading.get_ident()`` of the thread running the callback, if any.
        self.callback_thread: Optional[int] = None

    def follower(self, name: str) -> Optional["Follower"]:
        with self.lock:
            ref = self.followers.get(name)
        return ref() if ref is not None else None

    def leader(self, name: str) -> Optional["Leader"]:
        with self.lock:
            ref = self.leaders.get(name)
        return ref() if ref is not None else None

    def unregister(self, table: Dict[str, Any], name: str, session: Any) -> None:
        with self.lock:
            ref = table.get(name)
            if ref is not None and ref() in (session, None):
                del table[name]

    def on_event(self, event_ptr: Any, _user_data: Any) -> None:
        """The C callback. Must never raise and must survive shutdown."""
        try:
            self.callback_thread = threading.get_ident()
            try:
                ev = event_ptr.contents
                raw_kind = int(ev.kind)
                stream = ctypes.string_at(ev.stream).decode("utf-8", "replace") if ev.stream else ""
                data: Optional[str] = None
                if ev.data:
                    data = ctypes.string_at(ev.data, ev.len).decode("utf-8", "replace")
                try:
                    kind = EventKind(raw_kind)
                except ValueError:
                    return  # a kind added after this binding was written
                try:
                    status: Union[Status, int] = Status(int(ev.status))
                except ValueError:
                    status = int(ev.status)
                event = Event(kind, stream, data, int(ev.seq), status, time.time())
                target: Optional[_Session]
                if kind is EventKind.PUBLISH_FAILED:
                    target = self.leader(stream)
                else:
                    target = self.follower(stream)
                if target is not None:
                    target._deliver(event)
            finally:
                self.callback_thread = None
        except BaseException:  # noqa: BLE001 - nothing may propagate into C
            pass


# Every open client, closed at interpreter exit while Python still runs, so
# that the library never calls back into a finalizing interpreter and
# pending states are delivered (freeing a client delivers them first).
_LIVE: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for client in list(_LIVE):
        try:
            client.close()
        except BaseException:  # noqa: BLE001
            pass


atexit.register(_close_all_at_exit)


# ---------------------------------------------------------------------------
# Client

_T = TypeVar("_T")


class Client:
    """A connection to one Webdis endpoint (``ms_client``).

    :param url: ``http(s)://[user:pass@]host[:port][/prefix]`` of Webdis;
        for a replicated deployment (a Redis primary and replicas, one
        Webdis per node), every node's Webdis URL, as a list or as one
        comma-separated string. No I/O happens here.
    :param timeout: per-request timeout in seconds (library default 10 s).
    :param heartbeat: leader heartbeat interval in seconds (default 5 s).
    :param stream_ttl: seconds after which a stream this client leads
        expires once its leader is gone (default: never).
    :param tls_ca_file: path of a PEM file of CA certificates (e.g. a
        mission network's own certificate authority) that ``https://``
        trusts instead of the bundled web roots (the default). Read here:
        a file that cannot be read or holds no certificate raises
        :class:`InvalidArgument`. A server certificate that is not trusted
        or not for the URL's host makes calls fail at once with
        :class:`Unavailable`; an ``https://`` URL to a port without TLS, or
        ``http://`` to a TLS port, with :class:`ProtocolError`.
    :param kdf_iterations: PBKDF2-HMAC-SHA256 iterations of the streams
        this client starts (default 600,000, OWASP's figure; 100,000 to
        10,000,000, else :class:`InvalidArgument`). Passwords and leader
        codes are stretched by the client: each start derives two keys,
        each first connect one (~0.1 s each at the default). Lower it only
        where that latency matters more than offline guessing of a leaked
        record (test suites, small devices).

    Use it as a context manager, or call :meth:`close`. Closing frees the
    native client: pending states of led streams are delivered first, led
    streams are kept (not stopped) so a leader can :meth:`reconnect` later,
    and followed streams are disconnected.
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]],
        timeout: Optional[float] = None,
        heartbeat: Optional[float] = None,
        stream_ttl: Optional[int] = None,
        tls_ca_file: Union[str, bytes, "os.PathLike[Any]", None] = None,
        kdf_iterations: Optional[int] = None,
    ) -> None:
        # Set first: __del__ must work even if __init__ fails half-way.
        self._handle: Any = None
        self._lib = lib
        self._cond = threading.Condition(threading.Lock())
        self._busy = 0
        self._closed = False
        self._dispatcher = _Dispatcher()
        self._c_callback = _ffi.CALLBACK(self._dispatcher.on_event)
        if not isinstance(url, (str, bytes)):
            # A list of the Webdis endpoints of a replicated deployment.
            url = ",".join(url)
        self.url = url
        self.timeout = timeout

        # The library's own limits, checked here to speak in seconds.
        timeout_ms = _millis(timeout, "Client", "timeout", 1, 3_600_000)
        heartbeat_ms = _millis(heartbeat, "Client", "heartbeat", 50, 3_600_000)
        if stream_ttl is not None and not (0 <= int(stream_ttl) <= _U32_MAX):
            reason = f"stream_ttl must be 0 to {_U32_MAX} seconds, not {stream_ttl!r}"
            raise InvalidArgument(f"Client: {reason}", reason=reason)

        handle = ctypes.POINTER(_ffi.MsClient)()
        lib.ms_client_new(_encode(url, "Webdis URL"), ctypes.byref(handle))
        self._handle = handle
        try:
            if timeout_ms is not None:
                lib.ms_client_set_timeout(handle, timeout_ms)
            if heartbeat_ms is not None:
                lib.ms_client_set_heartbeat(handle, heartbeat_ms)
            if stream_ttl is not None:
                lib.ms_client_set_stream_ttl(handle, int(stream_ttl))
            if tls_ca_file is not None:
                lib.ms_client_set_tls_ca_file(handle, _encode(os.fsencode(tls_ca_file), "TLS CA file path"))
            if kdf_iterations is not None:
                if not 0 <= int(kdf_iterations) <= _U32_MAX:
                    reason = f"kdf_iterations must be 100000 to 10000000, not {kdf_iterations!r}"
                    raise InvalidArgument(f"Client: {reason}", reason=reason)
                lib.ms_client_set_kdf_iterations(handle, int(kdf_iterations))
            lib.ms_set_callback(handle, self._c_callback, None)
        except BaseException:
            self._handle = None
            lib.ms_client_free(handle)
            raise
        _LIVE.add(self)

    # -- plumbing --------------------------------------------------------

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(handle, *args)`` while keeping the handle alive."""
        with self._cond:
            if self._closed:
                raise InvalidArgument("the missionstream client is closed")
            self._busy += 1
            handle = self._handle
        try:
            return fn(handle, *args)
        finally:
            with self._cond:
                self._busy -= 1
                if self._busy == 0:
                    self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Free the native client. Idempotent and thread-safe.

        Waits for calls in progress on other threads. Led streams are kept
        (their pending states delivered first), followed streams end, and
        every :class:`Follower`/:class:`Leader` iterator of this client
        stops.
        """
        dispatcher = self._dispatcher
        if dispatcher.callback_thread == threading.get_ident():
            # Dropped from inside our own callback (by garbage collection):
            # ms_client_free is forbidden there, so do it from another thread.
            threading.Thread(target=self.close, name="missionstream-close", daemon=True).start()
            return
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._busy:
                self._cond.wait()
            handle, self._handle = self._handle, None
        if handle:
            try:
                # After this returns the callback is not running and never
                # will again (the C ABI promises it), so the CFUNCTYPE may then be dropped.
                self._lib.ms_set_callback(handle, None, None)
            except Exception:  # noqa: BLE001
                pass
            self._lib.ms_client_free(handle)
        with dispatcher.lock:
            sessions = [r() for r in list(dispatcher.followers.values()) + list(dispatcher.leaders.values())]
            dispatcher.followers.clear()
            dispatcher.leaders.clear()
        for session in sessions:
            if session is not None:
                session._finish()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except BaseException:  # noqa: BLE001 - may run at interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<missionstream.Client {self.url!r} {state}>"

    # -- leader ----------------------------------------------------------

    def start(self, name: str, password: str, leader_code: str) -> "Leader":
        """Create stream ``name`` (initial state ``{}``, seq 0) and lead it.

        Raises :class:`Exists` if the name is taken, :class:`Already` if this
        client already leads it.
        """
        return self._lead(lib.ms_start, name, password, leader_code)

    def reconnect(self, name: str, password: str, leader_code: str) -> "Leader":
        """Take up leading an existing stream (e.g. after a restart); the state is kept.

        Raises :class:`NotFound`, :class:`BadPassword`, :class:`BadLeaderCode`.
        """
        return self._lead(lib.ms_reconnect, name, password, leader_code)

    def _lead(self, fn: Callable[..., int], name: str, password: str, leader_code: str) -> "Leader":
        raw = _encode(name, "stream name")
        self._call(fn, raw, _encode(password, "password"), _encode(leader_code, "leader code"))
        leader = Leader(self, name if isinstance(name, str) else raw.decode("utf-8", "replace"), raw)
        with self._dispatcher.lock:
            self._dispatcher.leaders[leader.name] = weakref.ref(leader)
        return leader

    # -- follower --------------------------------------------------------

    def connect(self, name: str, password: str = "") -> "Follower":
        """Follow stream ``name``: the current state arrives first, then every newer one.

        Raises :class:`NotFound`, :class:`BadPassword`, :class:`Already`.
        """
        raw = _encode(name, "stream name")
        pw = _encode(password, "password")
        follower = Follower(self, name if isinstance(name, str) else raw.decode("utf-8", "replace"), raw)
        d = self._dispatcher
        # Registered before ms_connect: the first state may arrive before it returns.
        with d.lock:
            ref = d.followers.get(follower.name)
            if ref is not None and ref() is not None:
                raise Already(f"this client already follows stream {follower.name!r}")
            d.followers[follower.name] = weakref.ref(follower)
        try:
            self._call(lib.ms_connect, raw, pw)
        except BaseException:
            d.unregister(d.followers, follower.name, follower)
            follower._finish()
            raise
        return follower

    # -- anyone ----------------------------------------------------------

    def list(self) -> List[StreamInfo]:
        """The live streams: name, seq, follower count, time of the last
        stored state, and the leader's presence (when it was last heard,
        its heartbeat interval; see :attr:`StreamInfo.leader_online`)."""

        def run(handle: Any) -> List[StreamInfo]:
            out = ctypes.POINTER(_ffi.MsStreamPresence)()
            count = ctypes.c_size_t(0)
            lib.ms_list_presence(handle, ctypes.byref(out), ctypes.byref(count))
            now = int(time.time() * 1000)
            try:
                return [
                    StreamInfo(
                        ctypes.string_at(e.info.name).decode("utf-8", "replace") if e.info.name else "",
                        int(e.info.seq),
                        int(e.info.followers),
                        int(e.info.updated_ms),
                        int(e.heard_ms),
                        int(e.heartbeat_ms),
                        now,
                    )
                    for e in (out[i] for i in range(count.value))
                ]
            finally:
                lib.ms_list_presence_free(out, count)

        return self._call(run)


# ---------------------------------------------------------------------------
# Sessions


class _Session:
    """What Leader and Follower share: a name, a client, an event queue."""

    def __init__(self, client: Client, name: str, raw_name: bytes) -> None:
        self.client = client
        self.name = name
        self._raw = raw_name
        self._queue: _EventQueue = _EventQueue()
        self._lock = threading.Lock()
        self._over = False

    def _deliver(self, event: Event) -> None:
        self._queue.put(event)

    def _finish(self) -> None:
        """The session is over: wake up readers once the queue is drained."""
        with self._lock:
            if self._over:
                return
            self._over = True
        self._queue.put(_END)

    def _ended_error(self) -> Error:
        return Error(f"the session of stream {self.name!r} is over")

    def next_event(self, timeout: Optional[float] = None) -> Event:
        """Return the next event, waiting at most ``timeout`` seconds (None: forever).

        Raises :class:`Timeout` when nothing arrives in time, and the
        session's "over" error (:class:`NotFollowing`/:class:`NotLeading`)
        once the session ended and every event was read.
        """
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no event on stream {self.name!r} within {timeout} s") from None
        if isinstance(item, _End):
            self._queue.put(item)  # later readers see the end too
            raise self._ended_error()
        assert isinstance(item, Event)
        return item

    def events(self, timeout: Optional[float] = None) -> Iterator[Event]:
        """Iterate over events until the session ends.

        With ``timeout``, the iteration also stops (quietly) when no event
        arrives within ``timeout`` seconds.
        """
        while True:
            try:
                event = self.next_event(timeout)
            except Error:  # Timeout, or the session is over
                return
            yield event

    def __iter__(self) -> Iterator[Event]:
        return self.events()


class Leader(_Session):
    """A stream this client leads; returned by :meth:`Client.start`/:meth:`Client.reconnect`.

    Its events are PUBLISH_FAILED reports (``next_event``/``events``). As a
    context manager it flushes on a clean exit; it does not stop the stream
    (call :meth:`stop` for that).
    """

    def publish(self, state: State) -> None:
        """Hand over the new state; returns at once (no network I/O here).

        ``state`` is ``str``, UTF-8 ``bytes``, or any JSON-serialisable
        object (encoded with ``json.dumps``). Raises :class:`TooLarge` over
        8 MiB, :class:`NotLeading` once the lead is over.
        """
        data = _state_bytes(state)
        self.client._call(lib.ms_publish, self._raw, data, len(data))

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until every state published so far is stored in Redis.

        ``timeout`` in seconds (default: the client's request timeout, else
        10 s). Raises the publish error, or :class:`Timeout`.
        """
        if timeout is None:
            timeout = self.client.timeout if self.client.timeout is not None else 10.0
        ms = _millis(timeout, "Leader.flush", "timeout")
        self.client._call(lib.ms_flush, self._raw, ms)

    def stop(self) -> None:
        """Delete the stream; every follower gets ENDED. Raises :class:`NotLeading` if not leading."""
        self.client._call(lib.ms_stop, self._raw)
        d = self.client._dispatcher
        d.unregister(d.leaders, self.name, self)
        self._finish()

    def _ended_error(self) -> Error:
        return NotLeading(f"this client no longer leads stream {self.name!r}")

    def __enter__(self) -> "Leader":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None and not self._over and not self.client.closed:
            self.flush()

    def __repr__(self) -> str:
        return f"<missionstream.Leader {self.name!r}>"


class Follower(_Session):
    """A stream this client follows; returned by :meth:`Client.connect`.

    Iterate over it (or call :meth:`next_event`) to get events; the first
    STATE event is the current state. :attr:`latest` and :attr:`seq` always
    hold the newest state received so far (updated as soon as it arrives,
    whether or not you read the events). Pending STATE events that you have
    not read yet collapse into the newest one (latest wins), so memory stays
    bounded however slowly you read. The iteration ends after ENDED (stream
    stopped or expired) or :meth:`disconnect`.
    """

    def __init__(self, client: Client, name: str, raw_name: bytes) -> None:
        super().__init__(client, name, raw_name)
        self.latest: Optional[str] = None
        self.seq: Optional[int] = None
        self._changed = threading.Condition(self._lock)

    def _deliver(self, event: Event) -> None:
        if event.kind is EventKind.STATE:
            with self._changed:
                if self.seq is None or event.seq > self.seq:
                    self.latest = event.data
                    self.seq = event.seq
                self._changed.notify_all()
        self._queue.put(event)
        if event.kind is EventKind.ENDED:
            d = self.client._dispatcher
            d.unregister(d.followers, self.name, self)
            self._finish()

    def _finish(self) -> None:
        super()._finish()
        with self._changed:
            self._changed.notify_all()

    @property
    def active(self) -> bool:
        """True until ENDED arrived, :meth:`disconnect` was called or the client closed."""
        return not self._over

    def wait_for(self, seq: int, timeout: Optional[float] = None) -> bool:
        """Block until a state with sequence number ≥ ``seq`` was received.

        Returns False on timeout or if the session ended first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self.seq is None or self.seq < seq:
                if self._over:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def disconnect(self) -> None:
        """End the subscription; no event for this stream arrives afterwards.

        Raises :class:`NotFollowing` if the session is already over (ENDED
        received, disconnected before, or the client closed).
        """
        d = self.client._dispatcher
        if self._over or d.follower(self.name) is not self:
            raise NotFollowing(f"this client does not follow stream {self.name!r} (any more)")
        try:
            self.client._call(lib.ms_disconnect, self._raw)
        finally:
            # Whatever the outcome, the library no longer follows it for us
            # (NOT_FOLLOWING means it ended on its own).
            d.unregister(d.followers, self.name, self)
            self._finish()

    def close(self) -> None:
        """Like :meth:`disconnect`, but idempotent and silent."""
        try:
            self.disconnect()
        except Error:
            pass

    def _ended_error(self) -> Error:
        return NotFollowing(f"the follow session of stream {self.name!r} is over")

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._over:
                self.close()
        except BaseException:  # noqa: BLE001 - may run at interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"<missionstream.Follower {self.name!r} seq={self.seq}>"
