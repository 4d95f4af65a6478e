"""Low-level ctypes layer: finding libmissionstream and declaring its C ABI.

Every prototype of the C ABI (``include/missionstream.h``) is declared once,
in :data:`_PROTOTYPES`.
Functions that return an ``ms_status`` get an ``errcheck`` that turns a
non-zero status into the matching :class:`missionstream.Error` subclass,
carrying the library's own ``ms_last_error()`` message (read on the same
thread, right after the call, since the message is thread-local).

Nothing here is public API; use :mod:`missionstream` instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .errors import error_for_status

#: Environment variable naming the shared library to load, tried first.
ENV_LIB = "MISSIONSTREAM_LIB"

if sys.platform == "darwin":
    _LIB_NAMES = ("libmissionstream.dylib",)
elif sys.platform == "win32":
    _LIB_NAMES = ("missionstream.dll",)
else:
    _LIB_NAMES = ("libmissionstream.so",)

_PACKAGE_DIR = Path(__file__).resolve().parent
# bindings/python/missionstream -> repository root (for a source checkout).
_REPO_ROOT = _PACKAGE_DIR.parent.parent.parent


def candidate_paths() -> List[str]:
    """Return, in order, every place the shared library is looked for.

    1. ``$MISSIONSTREAM_LIB`` (a file path) when set;
    2. a copy inside the package directory;
    3. the cargo build folders of the repository checkout the package
       lives in: ``release`` then ``debug`` of ``$CARGO_TARGET_DIR`` (when
       set), then of ``target``.
    """
    paths: List[str] = []
    env = os.environ.get(ENV_LIB)
    if env:
        paths.append(env)
    for name in _LIB_NAMES:
        paths.append(str(_PACKAGE_DIR / name))
    target_dirs = []
    cargo_target = os.environ.get("CARGO_TARGET_DIR")
    if cargo_target and (_REPO_ROOT / "Cargo.toml").is_file():
        target_dirs.append(Path(cargo_target))
    target_dirs.append(_REPO_ROOT / "target")
    for target in target_dirs:
        for profile in ("release", "debug"):
            for name in _LIB_NAMES:
                paths.append(str(target / profile / name))
    return paths


def _load() -> Tuple[ctypes.CDLL, str]:
    tried: List[str] = []
    env_set = bool(os.environ.get(ENV_LIB))
    for i, path in enumerate(candidate_paths()):
        if not os.path.isfile(path):
            tried.append(f"{path} (not found)")
            if i == 0 and env_set:
                # An explicit choice that does not exist is an error, not a
                # reason to silently pick up another build.
                raise ImportError(
                    f"{ENV_LIB} is set to {path!r}, but no such file exists; "
                    f"unset it or point it at libmissionstream"
                )
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as exc:
            tried.append(f"{path} ({exc})")
            if i == 0 and env_set:
                raise ImportError(f"cannot load {path!r} named by {ENV_LIB}: {exc}") from exc
    # Last resort: a system-wide installation (ldconfig / DYLD paths).
    system = ctypes.util.find_library("missionstream")
    if system:
        try:
            return ctypes.CDLL(system), system
        except OSError as exc:
            tried.append(f"{system} ({exc})")
    else:
        tried.append("system library search for 'missionstream' (not found)")
    raise ImportError(
        "cannot find the missionstream shared library. Build it with "
        "`cargo build --release` in the repository root, or set "
        f"{ENV_LIB} to its path. Tried:\n  " + "\n  ".join(tried)
    )


# ---------------------------------------------------------------------------
# Types of the C ABI (include/missionstream.h)


class MsClient(ctypes.Structure):
    """Opaque ``ms_client``; only ever used through ``POINTER(MsClient)``."""


class MsEvent(ctypes.Structure):
    """``ms_event``: every pointer is valid only during the callback."""

    _fields_ = [
        ("kind", ctypes.c_int),
        ("stream", ctypes.c_void_p),
        ("data", ctypes.c_void_p),
        ("len", ctypes.c_size_t),
        ("seq", ctypes.c_uint64),
        ("status", ctypes.c_int),
    ]


class MsStreamInfo(ctypes.Structure):
    """``ms_stream_info``: one entry of ``ms_list``; freed by ``ms_list_free``."""

    _fields_ = [
        ("name", ctypes.c_void_p),
        ("seq", ctypes.c_uint64),
        ("followers", ctypes.c_uint32),
        ("updated_ms", ctypes.c_int64),
    ]


class MsStreamPresence(ctypes.Structure):
    """``ms_stream_presence``: one entry of ``ms_list_presence``; freed by ``ms_list_presence_free``."""

    _fields_ = [
        ("info", MsStreamInfo),
        ("heard_ms", ctypes.c_int64),
        ("heartbeat_ms", ctypes.c_uint32),
    ]


ClientPtr = ctypes.POINTER(MsClient)
#: ``typedef void (*ms_callback)(const ms_event *event, void *user_data);``
CALLBACK = ctypes.CFUNCTYPE(None, ctypes.POINTER(MsEvent), ctypes.c_void_p)

_status = ctypes.c_int  # enum ms_status (a C enum is an int)
_str = ctypes.c_char_p
_u32 = ctypes.c_uint32


#: The method a Python user calls for each C function: an exception's
#: message starts with it (``Client.reconnect: ...``), and its
#: ``function`` attribute keeps the C function's name.
PYTHON_NAMES = {
    "ms_client_new": "Client",
    "ms_client_free": "Client.close",
    "ms_client_set_timeout": "Client(timeout=...)",
    "ms_client_set_stream_ttl": "Client(stream_ttl=...)",
    "ms_client_set_heartbeat": "Client(heartbeat=...)",
    "ms_client_set_kdf_iterations": "Client(kdf_iterations=...)",
    "ms_client_set_tls_ca_file": "Client(tls_ca_file=...)",
    "ms_set_callback": "Client",
    "ms_start": "Client.start",
    "ms_reconnect": "Client.reconnect",
    "ms_connect": "Client.connect",
    "ms_list": "Client.list",
    "ms_list_free": "Client.list",
    "ms_list_presence": "Client.list",
    "ms_list_presence_free": "Client.list",
    "ms_publish": "Leader.publish",
    "ms_flush": "Leader.flush",
    "ms_stop": "Leader.stop",
    "ms_disconnect": "Follower.disconnect",
}


def _check_status(result: int, func: Any, args: Sequence[Any]) -> int:
    """``errcheck`` for functions returning ``ms_status``: the status picks
    the exception class; the library's ``ms_last_error()`` text is kept
    as it is, as the exception's ``reason`` (without the ``ms_...: `` the
    library puts before it, since the message names the method instead)."""
    if result != 0:
        raw = lib.ms_last_error()
        function = func.__name__
        reason = raw.decode("utf-8", "replace") if raw else ""
        if reason.startswith(function + ": "):
            reason = reason[len(function) + 2:]
        reason = reason or "failed"
        method = PYTHON_NAMES.get(function, function)
        raise error_for_status(result, f"{method}: {reason}", reason, function)
    return result


# name, argtypes, restype, errcheck
_PROTOTYPES: List[Tuple[str, List[Any], Any, Optional[Callable[..., Any]]]] = [
    ("ms_version", [], _str, None),
    ("ms_status_name", [_status], _str, None),
    ("ms_last_error", [], _str, None),
    ("ms_client_new", [_str, ctypes.POINTER(ClientPtr)], _status, _check_status),
    ("ms_client_free", [ClientPtr], None, None),
    ("ms_client_set_timeout", [ClientPtr, _u32], _status, _check_status),
    ("ms_client_set_stream_ttl", [ClientPtr, _u32], _status, _check_status),
    ("ms_client_set_heartbeat", [ClientPtr, _u32], _status, _check_status),
    ("ms_client_set_kdf_iterations", [ClientPtr, _u32], _status, _check_status),
    ("ms_client_set_tls_ca_file", [ClientPtr, _str], _status, _check_status),
    ("ms_set_callback", [ClientPtr, CALLBACK, ctypes.c_void_p], _status, _check_status),
    ("ms_start", [ClientPtr, _str, _str, _str], _status, _check_status),
    ("ms_reconnect", [ClientPtr, _str, _str, _str], _status, _check_status),
    ("ms_publish", [ClientPtr, _str, _str, ctypes.c_size_t], _status, _check_status),
    ("ms_flush", [ClientPtr, _str, _u32], _status, _check_status),
    ("ms_stop", [ClientPtr, _str], _status, _check_status),
    ("ms_connect", [ClientPtr, _str, _str], _status, _check_status),
    ("ms_disconnect", [ClientPtr, _str], _status, _check_status),
    (
        "ms_list",
        [ClientPtr, ctypes.POINTER(ctypes.POINTER(MsStreamInfo)), ctypes.POINTER(ctypes.c_size_t)],
        _status,
        _check_status,
    ),
    ("ms_list_free", [ctypes.POINTER(MsStreamInfo), ctypes.c_size_t], None, None),
    (
        "ms_list_presence",
        [ClientPtr, ctypes.POINTER(ctypes.POINTER(MsStreamPresence)), ctypes.POINTER(ctypes.c_size_t)],
        _status,
        _check_status,
    ),
    ("ms_list_presence_free", [ctypes.POINTER(MsStreamPresence), ctypes.c_size_t], None, None),
]


def _declare(cdll: ctypes.CDLL) -> None:
    missing = []
    for name, argtypes, restype, errcheck in _PROTOTYPES:
        try:
            fn = getattr(cdll, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.argtypes = argtypes
        fn.restype = restype
        if errcheck is not None:
            fn.errcheck = errcheck
    if missing:
        raise ImportError(f"{library_path} does not export {', '.join(missing)}: is it an old build?")


lib, library_path = _load()
_declare(lib)
