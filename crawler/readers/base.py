"""What every snapshot reader shares: the one-line error, the bad-record report and opening a maybe-gzip'd file.

Readers validate when they are built (so a bad file fails before any crawl starts) and stream when they are
iterated. Damage found while streaming is not an exception: the record is skipped and reported through a
``BadRecordHandler`` (or a logged warning), because one broken line must not end a five-million-row crawl.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from crawler.references import Reference, SnapshotError

logger = logging.getLogger(__name__)

#: ``on_bad_record(path, line_or_offset, reason)``: a line number for text tables, a byte offset for WARC/WAT,
#: the first row of a row group for Parquet.
BadRecordHandler = Callable[[str, int, str], None]

GZIP_MAGIC = b"\x1f\x8b"
MAX_FIRST_LINE = 8 << 20  # a header row or first JSON object longer than this is not a URL table
#: A line longer than this (bytes) is a bad record, skipped and counted: read in pieces and dropped, never held
#: whole (a hostile or broken table could otherwise make one "line" of its whole size).
MAX_LINE_BYTES = MAX_FIRST_LINE
#: Errors the gzip module raises on a damaged or truncated stream.
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
#: Control characters left after whitespace is collapsed: C0 (NUL, ESC...), DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class SnapshotReader(Protocol):
    """One format's reader: built (and validated) once, iterable any number of times."""

    @property
    def total(self) -> int | None: ...

    def __iter__(self) -> Iterator[Reference]: ...


def one_line(text: str) -> str:
    """``text`` as one printable line: whitespace runs become a space, other control characters ``\\xNN``.

    Parsers quote the bytes they choke on (warcio a record's first line, Arrow a footer's), and those bytes
    come from the file: raw, a NUL or an ESC would reach logs and terminals."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", " ".join(str(text).split()))


def snapshot_error(path: str | os.PathLike[str], reason: str) -> SnapshotError:
    """A ``SnapshotError`` whose message is one line naming the file (newlines in ``reason`` would split it)."""
    return SnapshotError(f"{os.fspath(path)}: {one_line(reason)}")


class BadRecords:
    """Reports skipped records of one file to the caller's handler, or logs one warning per record."""

    def __init__(self, path: Path | str, handler: BadRecordHandler | None, unit: str) -> None:
        self.path = str(path)
        self._handler = handler
        self._unit = unit  # "line", "offset" or "row": only for the log message

    def __call__(self, where: int, reason: str) -> None:
        reason = one_line(reason)
        if self._handler is not None:
            self._handler(self.path, where, reason)
        else:
            logger.warning("%s: skipped a bad record at %s %d: %s", self.path, self._unit, where, reason)


def check_file(path: Path) -> None:
    """SnapshotError if ``path`` is missing, unreadable or a directory."""
    try:
        if path.is_dir():
            raise snapshot_error(path, "is a directory, not a snapshot file")
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise snapshot_error(path, "no such file") from None
    except OSError as exc:
        raise snapshot_error(path, f"cannot read: {exc.strerror or exc}") from None


def check_compression(path: Path, gzipped: bool) -> None:
    """Refuse a file whose bytes contradict its ``.gz`` suffix, before a decoder fails on it obscurely."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    if gzipped and head != GZIP_MAGIC:
        raise snapshot_error(path, "is not gzip-compressed although its name ends in .gz")
    if not gzipped and head == GZIP_MAGIC:
        raise snapshot_error(path, "is gzip-compressed although its name does not end in .gz; rename it")


def check_first_line(path: Path, gzipped: bool) -> None:
    """Refuse a text table whose first line never ends before a reader tries to hold all of it in memory.

    A one-line JSON array or a binary file named ``.csv`` would otherwise be read whole just to find a header.
    """
    try:
        with open_binary(path, gzipped) as stream:
            first = stream.readline(MAX_FIRST_LINE)
    except GZIP_ERRORS as exc:
        raise snapshot_error(path, f"damaged gzip data: {exc}") from None
    if len(first) >= MAX_FIRST_LINE and not first.endswith(b"\n"):
        raise snapshot_error(path, f"line 1 is longer than {MAX_FIRST_LINE >> 20} MiB: not a line-based text table")


def open_binary(path: Path, gzipped: bool) -> BinaryIO:
    """The file's (decompressed) bytes as a stream; the caller closes it."""
    if gzipped:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def json_kind(value: Any) -> str:
    """JSON's own name for the type of a decoded ``value`` (for messages: "array", not "list")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


class TextLines:
    """The numbered lines of a UTF-8 text stream, decoded one at a time.

    A line that is not UTF-8 is still yielded (with replacement characters) so a CSV parser keeps its place,
    and ``undecodable`` is set so the reader can skip the record it belongs to; the reader clears it. A line
    longer than ``max_bytes`` is read in pieces and dropped: an empty line is yielded in its place and
    ``overlong`` set, for the reader to report and clear likewise.
    """

    def __init__(self, stream: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self.number = 0  # 1-based number of the last line yielded
        self.undecodable = False
        self.overlong = False

    def __iter__(self) -> Iterator[str]:
        read_line = self._stream.readline
        limit = self._max_bytes + 1
        while raw := read_line(limit):
            self.number += 1
            if len(raw) == limit and not raw.endswith(b"\n"):
                while (rest := read_line(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # the rest of the line, a MiB at a time, dropped
                self.overlong = True
                yield "\n"
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.undecodable = True
                text = raw.decode("utf-8", errors="replace")
            if self.number == 1:
                text = text.removeprefix("\ufeff")  # Excel and PowerShell write a byte-order mark
            yield text
