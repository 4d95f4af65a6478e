"""Statuses of the C ABI and the exception raised for each of them."""

from __future__ import annotations

import enum
from typing import Dict, Type

__all__ = [
    "Status",
    "Error",
    "InvalidArgument",
    "Exists",
    "NotFound",
    "BadPassword",
    "BadLeaderCode",
    "NotLeading",
    "NotFollowing",
    "Already",
    "TooLarge",
    "Timeout",
    "Unavailable",
    "Forbidden",
    "ServerError",
    "ProtocolError",
    "InternalError",
    "Throttled",
]


class Status(enum.IntEnum):
    """Statuses of the library (the C ABI's ``ms_status`` values)."""

    OK = 0
    INVALID_ARGUMENT = 1
    EXISTS = 2
    NOT_FOUND = 3
    BAD_PASSWORD = 4
    BAD_LEADER_CODE = 5
    NOT_LEADING = 6
    NOT_FOLLOWING = 7
    ALREADY = 8
    TOO_LARGE = 9
    TIMEOUT = 10
    UNAVAILABLE = 11
    FORBIDDEN = 12
    SERVER = 13
    PROTOCOL = 14
    INTERNAL = 15
    THROTTLED = 16


class Error(Exception):
    """Base class of every missionstream failure.

    ``status`` is the :class:`Status` (a plain ``int`` if the library returned
    a value this binding does not know); ``message``, also the ``str()`` of
    the exception, names the method that failed and says why, e.g.
    ``"Client.reconnect: wrong leader code for this stream"``; ``reason`` is
    the same without the method, e.g. ``"wrong leader code for this stream"``:
    the library's own text, passed on unchanged (it may name the C function
    to call). ``function`` is the C function that failed (``"ms_reconnect"``),
    or None when the binding itself refused the call. Programs decide by
    ``status`` (or the class) and ``function``, never by the text.
    """

    #: The status this class stands for (overridden by each subclass).
    STATUS: int = -1

    def __init__(self, message: str, status: "int | None" = None, reason: "str | None" = None,
                 function: "str | None" = None) -> None:
        super().__init__(message)
        code = self.STATUS if status is None else status
        try:
            self.status: int = Status(code)
        except ValueError:
            self.status = code
        self.message = message
        self.reason = message if reason is None else reason
        self.function = function

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"


class InvalidArgument(Error, ValueError):
    """A bad argument: empty or oversized name, bad UTF-8, bad URL, a closed client..."""

    STATUS = Status.INVALID_ARGUMENT


class Exists(Error):
    """``start``: the stream name is taken."""

    STATUS = Status.EXISTS


class NotFound(Error, LookupError):
    """No such stream."""

    STATUS = Status.NOT_FOUND


class BadPassword(Error):
    """The stream's password does not match."""

    STATUS = Status.BAD_PASSWORD


class BadLeaderCode(Error):
    """The stream's leader code does not match."""

    STATUS = Status.BAD_LEADER_CODE


class NotLeading(Error):
    """publish/flush/stop on a stream this client does not lead (any more)."""

    STATUS = Status.NOT_LEADING


class NotFollowing(Error):
    """disconnect (or reading events) on a stream this client no longer follows."""

    STATUS = Status.NOT_FOLLOWING


class Already(Error):
    """start/reconnect/connect on a stream this client already leads or follows."""

    STATUS = Status.ALREADY


class TooLarge(Error):
    """The state is over the limit (8 MiB)."""

    STATUS = Status.TOO_LARGE


class Timeout(Error, TimeoutError):
    """The operation did not complete in time."""

    STATUS = Status.TIMEOUT


class Unavailable(Error, ConnectionError):
    """Webdis is unreachable, or Webdis cannot reach Redis."""

    STATUS = Status.UNAVAILABLE


class Forbidden(Error):
    """Webdis refused the command (ACL, HTTP 403)."""

    STATUS = Status.FORBIDDEN


class ServerError(Error):
    """A Redis error, e.g. the functions library is missing or of another version."""

    STATUS = Status.SERVER


class ProtocolError(Error):
    """A response the library does not understand."""

    STATUS = Status.PROTOCOL


class InternalError(Error):
    """A bug in the library (a panic caught at the C boundary)."""

    STATUS = Status.INTERNAL


class Throttled(Error):
    """Too many wrong passwords or leader codes for this stream: its secret
    checks are locked for a short, growing time (at most a few seconds). The
    message says when to retry."""

    STATUS = Status.THROTTLED


_BY_STATUS: Dict[int, Type[Error]] = {
    cls.STATUS: cls
    for cls in (
        InvalidArgument,
        Exists,
        NotFound,
        BadPassword,
        BadLeaderCode,
        NotLeading,
        NotFollowing,
        Already,
        TooLarge,
        Timeout,
        Unavailable,
        Forbidden,
        ServerError,
        ProtocolError,
        InternalError,
        Throttled,
    )
}


def error_for_status(status: int, message: str, reason: "str | None" = None,
                     function: "str | None" = None) -> Error:
    """Return the exception instance for a non-zero ``ms_status``."""
    cls = _BY_STATUS.get(int(status), Error)
    return cls(message, status, reason, function)
