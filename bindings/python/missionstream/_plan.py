"""Plan files for the command line: checking a file's content, splitting
stdin into JSON documents, watching a file for saves, writing a file
atomically. Standard library only."""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import tempfile
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

from .client import MAX_STATE_BYTES

_BOM = codecs.BOM_UTF8


class BadContent(Exception):
    """A file (or stdin) that must not be published; the message names it."""


def limit_text() -> str:
    return f"8 MiB ({MAX_STATE_BYTES:,} bytes)"


def _json_msg(exc: json.JSONDecodeError) -> str:
    msg = exc.msg
    return msg[: -len(" at")] if msg.endswith(" at") else msg  # "Invalid control character at"


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"{_json_msg(exc)} at line {exc.lineno}, column {exc.colno}"


def check_content(data: bytes, where: str, raw: bool) -> bytes:
    """The state to publish for ``data`` read from ``where`` (a file name or
    "stdin"), or BadContent saying why not.

    The state is the content itself, byte for byte (a leading UTF-8 byte
    order mark excepted: JSON must not start with one): empty, binary, non
    UTF-8 or over-limit content is refused, and so is anything but exactly
    one JSON document unless ``raw``."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data:
        raise BadContent(f"{where} is empty: nothing to publish")
    if len(data) > MAX_STATE_BYTES:
        raise BadContent(f"{where} is {len(data):,} bytes: over the limit of a state, {limit_text()}")
    nul = data.find(b"\0")
    if nul >= 0:
        raise BadContent(f"{where} is not a text file: a NUL byte at offset {nul} (a state is UTF-8 text)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadContent(
            f"{where} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} (a state is UTF-8 text)"
        ) from None
    if not raw:
        if not text.strip():
            raise BadContent(f"{where} holds only white space: nothing to publish")
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadContent(
                f"{where} is not a JSON document: {_json_error(exc)} (pass --raw to publish text that is not JSON)"
            ) from None
        except RecursionError:
            raise BadContent(f"{where} is not a JSON document Python can read: nested too deeply") from None
    return data


def read_file(path: str, raw: bool) -> bytes:
    """check_content() of the file at ``path``; BadContent for a file that is
    missing, unreadable, not a regular file or over the limit (refused
    before it is read)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise BadContent(f"{path} is a folder, not a file")
            if stat.S_ISREG(st.st_mode) and st.st_size > MAX_STATE_BYTES:
                raise BadContent(f"{path} is {st.st_size:,} bytes: over the limit of a state, {limit_text()}")
            data = f.read(MAX_STATE_BYTES + len(_BOM) + 1)
    except FileNotFoundError:
        raise BadContent(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadContent(f"{path} is a folder, not a file") from None
    except PermissionError:
        raise BadContent(f"{path}: cannot read it: permission denied") from None
    except OSError as exc:
        raise BadContent(f"{path}: cannot read it: {exc.strerror or exc}") from None
    return check_content(data, path, raw)


# ---------------------------------------------------------------------------
# stdin: whole JSON documents of any formatting, one after another

_SPACE = re.compile(r"[ \t\r\n]*")
_CONTAINER = re.compile(r'[{}\[\]"]')
_IN_STRING = re.compile(r'["\\]')
_LITERAL_END = re.compile(r'[ \t\r\n{}\[\]",:]')
_CLOSE = {"{": "}", "[": "]"}


class Document(NamedTuple):
    line: int  # line of stdin where it starts
    text: str  # exactly as read, without the white space around it


class DocumentSplitter:
    """Splits text fed in pieces into whole JSON documents as soon as each is
    complete: objects and arrays at their closing bracket, strings at their
    closing quote, numbers and literals at the next white space or bracket.
    Each document is checked with the json module; the first bad one raises
    BadContent naming its line. Incremental (each character is looked at
    once), so a document of megabytes over many lines costs linear time."""

    def __init__(self, where: str = "stdin", limit: int = MAX_STATE_BYTES) -> None:
        self.where = where
        self.limit = limit
        self.buf = ""
        self.line = 1  # line number of buf[0]
        self.i = 0  # next position to scan
        self.start: Optional[int] = None  # start of the document being read
        self.kind = ""  # "container", "string" or "literal"
        self.open: List[str] = []  # the closing brackets awaited
        self.in_string = False
        self.failed: Optional[BadContent] = None  # raised by the next feed()

    def _line_of(self, pos: int) -> int:
        return self.line + self.buf.count("\n", 0, pos)

    def _emit(self, end: int, out: List[Document]) -> None:
        assert self.start is not None
        line = self._line_of(self.start)
        text = self.buf[self.start:end]
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadContent(
                f"{self.where} line {line + exc.lineno - 1}, column {exc.colno}: not a JSON document: "
                f"{_json_msg(exc)} (pass --raw to publish text that is not JSON)"
            ) from None
        except RecursionError:
            raise BadContent(f"{self.where} line {line}: a JSON document nested too deeply") from None
        size = len(text.encode("utf-8"))
        if size > self.limit:
            raise BadContent(
                f"{self.where} line {line}: the document is {size:,} bytes, over the limit of a state, {limit_text()}"
            )
        out.append(Document(line, text))
        self.start = None
        self.i = end

    def feed(self, piece: str) -> List[Document]:
        """The documents completed by ``piece``. A bad document raises
        BadContent, but only once the documents before it are returned:
        the next call raises it."""
        if self.failed is not None:
            raise self.failed
        out: List[Document] = []
        try:
            self._feed(piece, out)
        except BadContent as exc:
            if not out:
                raise
            self.failed = exc
        return out

    def _feed(self, piece: str, out: List[Document]) -> None:
        self.buf += piece
        buf = self.buf
        while True:
            if self.start is None:
                self.i = _SPACE.match(buf, self.i).end()  # type: ignore[union-attr]
                if self.i >= len(buf):
                    break
                self.start = self.i
                c = buf[self.i]
                if c in "{[":
                    self.kind, self.open, self.in_string = "container", [_CLOSE[c]], False
                    self.i += 1
                elif c == '"':
                    self.kind, self.in_string = "string", True
                    self.i += 1
                else:
                    self.kind = "literal"
            if self.kind == "literal":
                m = _LITERAL_END.search(buf, self.i)
                if m is None:
                    self.i = len(buf)
                    break
                # A stray bracket, comma or colon is a document of its own (and fails).
                self._emit(m.start() if m.start() > self.start else m.start() + 1, out)
                continue
            done = False
            while not done:
                if self.in_string:
                    m = _IN_STRING.search(buf, self.i)
                    if m is None:
                        self.i = max(self.i, len(buf))  # past an escaped character still to come
                        break
                    if m.group() == "\\":
                        self.i = m.end() + 1  # the escaped character, maybe still to come
                        continue
                    self.in_string = False
                    self.i = m.end()
                    if self.kind == "string":
                        self._emit(self.i, out)
                        done = True
                else:
                    m = _CONTAINER.search(buf, self.i)
                    if m is None:
                        self.i = len(buf)
                        break
                    c = m.group()
                    self.i = m.end()
                    if c == '"':
                        self.in_string = True
                    elif c in "{[":
                        self.open.append(_CLOSE[c])
                    elif c != self.open.pop() or not self.open:
                        # Complete, or a mismatched bracket (then json says so).
                        self._emit(self.i, out)
                        done = True
            if not done:
                break
        self._compact()

    def _compact(self) -> None:
        keep = self.start if self.start is not None else min(self.i, len(self.buf))
        if keep > 0:
            self.line += self.buf.count("\n", 0, keep)
            self.buf = self.buf[keep:]
            self.i -= keep
            if self.start is not None:
                self.start = 0
        if self.start is not None and len(self.buf) > self.limit:
            raise BadContent(
                f"{self.where} line {self.line}: the document starting there exceeds the limit of a state, "
                f"{limit_text()}"
            )

    def end(self) -> List[Document]:
        """At end of input: the last document (a number or literal), or
        BadContent if one is incomplete."""
        if self.failed is not None:
            raise self.failed
        out: List[Document] = []
        if self.start is None:
            return out
        if self.kind == "literal":
            self._emit(len(self.buf), out)
            return out
        raise BadContent(
            f"{self.where} line {self._line_of(self.start)}: the JSON document starting there is not complete "
            "at the end of the input"
        )


def read_documents(fd: int, splitter: DocumentSplitter) -> Iterator[Document]:
    """Documents from file descriptor ``fd`` as soon as each is complete
    (reads what is there, so a document typed at a terminal is published
    when its last line is entered)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    first = True
    while True:
        chunk = os.read(fd, 1 << 16)
        if first and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM):]
        first = False
        # A NUL byte or bad UTF-8 fails the input, but the documents
        # complete before it are still handed out first.
        bad: Optional[BadContent] = None
        nul = chunk.find(b"\0")
        if nul >= 0:
            bad = BadContent(f"{splitter.where}: a NUL byte at offset {offset + nul}: not text")
            chunk = chunk[:nul]
        try:
            text = decoder.decode(chunk, final=not chunk and bad is None)
        except UnicodeDecodeError as exc:
            bad = BadContent(
                f"{splitter.where}: not UTF-8 text: byte 0x{exc.object[exc.start]:02x} near offset {offset + exc.start}"
            )
            text = bytes(exc.object[:exc.start]).decode("utf-8", "ignore")
        offset += len(chunk)
        if bad is not None:
            yield from splitter.feed(text)
            raise bad
        if not chunk:
            yield from splitter.end()
            return
        yield from splitter.feed(text)


def read_all(fd: int, where: str, raw: bool) -> bytes:
    """check_content() of everything until end of input."""
    parts = []
    size = 0
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_STATE_BYTES + len(_BOM):
            raise BadContent(f"{where} is over the limit of a state, {limit_text()}")
        parts.append(chunk)
    return check_content(b"".join(parts), where, raw)


# ---------------------------------------------------------------------------
# Watching a file


class Signature(NamedTuple):
    """What polling sees of a file: a rename-save changes the inode, a
    rewrite in place the size or modification/change times."""

    ino: int
    dev: int
    size: int
    mtime_ns: int
    ctime_ns: int


def signature(path: str) -> Optional[Signature]:
    """The file's signature, None if it does not exist (or cannot be looked at)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Signature(st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileWatcher:
    """Polls a file's stat and hands out its content once a save settled.

    ``poll()`` returns a (signature, content or BadContent) pair when the
    file changed and then stayed unchanged for one more poll (a planner
    writing in place is left to finish); it returns None otherwise.
    Nothing here needs inotify: stat every ``interval`` is cheap."""

    def __init__(self, path: str, raw: bool) -> None:
        self.path = path
        self.raw = raw
        self.seen: Optional[Signature] = None  # last poll
        self.done: Optional[Signature] = None  # last handed out
        self.first = True

    def poll(self) -> Optional[Tuple[Optional[Signature], Union[bytes, BadContent]]]:
        sig = signature(self.path)
        previous, self.seen = self.seen, sig
        if sig == self.done and not self.first:
            return None
        if sig != previous and not self.first:
            return None  # changing: look again next time
        self.first = False
        try:
            content: Union[bytes, BadContent] = read_file(self.path, self.raw)
        except BadContent as exc:
            content = exc
        after = signature(self.path)
        if after != sig:
            self.seen = after  # changed while read: settle again
            return None
        self.done = sig
        return sig, content

    def pending(self) -> bool:
        """True if the file changed since the last content handed out."""
        return signature(self.path) != self.done

    def read_now(self) -> Tuple[Optional[Signature], Union[bytes, BadContent]]:
        """The current content without waiting for it to settle (at exit)."""
        sig = signature(self.path)
        try:
            content: Union[bytes, BadContent] = read_file(self.path, self.raw)
        except BadContent as exc:
            content = exc
        self.done = self.seen = sig
        return sig, content


# ---------------------------------------------------------------------------
# Writing a file atomically


def check_out_path(path: str) -> str:
    """A message if ``path`` cannot be written by atomic_write, else ""."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--out {path}: the folder {folder} does not exist"
    if os.path.isdir(path):
        return f"--out {path} is a folder; name a file"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--out {path}: the folder {folder} is not writable (the file is replaced by a rename there)"
    return ""


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str, data: bytes) -> None:
    """Replaces ``path`` with ``data``: written to a temporary file in the
    same folder, synced, then renamed over ``path``, so a reader sees the
    old content or the new one, never part of it. Keeps the permissions
    of an existing file. Raises OSError."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = _new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def pretty(data: str) -> str:
    """``data`` indented by 2 when it is JSON (with a final newline), else as is."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return data
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


__all__ = [
    "BadContent",
    "Document",
    "DocumentSplitter",
    "FileWatcher",
    "Signature",
    "atomic_write",
    "check_content",
    "check_out_path",
    "pretty",
    "read_all",
    "read_documents",
    "read_file",
    "signature",
]
