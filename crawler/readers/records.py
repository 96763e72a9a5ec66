"""WARC records (the container of both WARC and WAT files) read one at a time, surviving damage.

A damaged record is reported with its absolute file offset and skipped; reading resumes with the next
record. For ``.gz`` files this module decompresses each gzip member itself instead of letting warcio do it,
because warcio swallows a decompression error that occurs after the first block (it writes it to stderr and
reports end-of-stream), which would silently drop the damaged record *and every record after it*. Here every
member is inflated on its own and handed to a fresh warcio ``ArchiveIterator`` as plain bytes: a member that
fails to inflate, is truncated, or fails its CRC is one bad record, and reading resynchronises by scanning
forward for the next gzip member header (``1f 8b 08``). The scan always moves forward, so it ends.

Inside damaged data a byte sequence can look like a gzip header by chance; such a candidate is dropped
silently unless it inflates to something starting with ``WARC/``, so one damaged record is reported once.

This is the careful path: ``crawler/readers/archive.py`` reads gzip'd files with fastwarc and hands a stretch
of the file to ``scan_records(..., start=offset, recover=True)`` wherever fastwarc stumbles, so damage is
judged here, by one set of rules. Record handlers see a ``Record`` (below), not a warcio record, so the same
handler serves both paths.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import BinaryIO, Final, Protocol, TypeVar

from warcio.archiveiterator import ArchiveIterator
from warcio.bufferedreaders import BufferedReader
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeadersParserException

from crawler.readers.base import BadRecords, snapshot_error
from crawler.readers.html import MAX_HTML_BYTES, ImageTag

logger = logging.getLogger(__name__)

T = TypeVar("T")

GZIP_MEMBER_MAGIC: Final = b"\x1f\x8b\x08"  # ID1, ID2 and CM=deflate: how every gzip member starts
_CHUNK: Final = 1 << 16
_SCAN_CHUNK: Final = 1 << 20
_CHECK_LIMIT: Final = 1 << 20  # at open, look past the first record only if it is at most this long
#: With ``recover=True``, hand back after this many intact records in a row when no damage turned up.
RECOVERY_RECORDS: Final = 64
#: A Content-Length past this is no byte count (warcio would fail reading it with an OverflowError).
_MAX_LENGTH: Final = 1 << 62


class Record(Protocol):
    """What a record handler may ask of a WARC record, whichever parser read it."""

    @property
    def type(self) -> str:
        """``WARC-Type``: ``response``, ``metadata``, ..."""

    def header(self, name: str) -> str | None:
        """A WARC header's value (case-insensitive name), ``None`` if absent."""

    @property
    def http_content_type(self) -> str | None:
        """The HTTP ``Content-Type`` header of an HTTP record; ``None`` if absent or not an HTTP record."""

    @property
    def is_http(self) -> bool:
        """Whether the block starts with HTTP headers that were parsed."""

    def body(self, limit: int | None = None) -> bytes:
        """The payload (after HTTP headers, chunking and Content-Encoding undone), at most ``limit`` bytes."""


class CorruptRecord(Exception):
    """The bytes of a record are damaged: its gzip member does not inflate or ends early."""


class BadRecord(Exception):
    """A record that reads intact but whose content is unusable (say, invalid JSON); skipped without resync."""


#: What reading a damaged record can raise, from our inflater or from warcio's parser.
DAMAGE: Final = (CorruptRecord, ArchiveLoadFailed, StatusAndHeadersParserException, EOFError, ValueError, zlib.error)


class _GzipMember(io.RawIOBase):
    """The inflated bytes of the one gzip member starting at file offset ``start``; raises ``CorruptRecord``."""

    def __init__(self, fh: BinaryIO, start: int) -> None:
        super().__init__()
        fh.seek(start)
        self._fh = fh
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper; checks CRC and length
        self._input = b""
        self._head = b""
        self.end: int | None = None  # file offset just past the member, once reached

    @property
    def looks_like_warc(self) -> bool:
        return self._head.startswith(b"WARC/")

    @property
    def has_content(self) -> bool:
        """Whether the member inflated to anything but blank lines (so far: its first bytes)."""
        return bool(self._head.strip())

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while self.end is None:
            if not self._input:
                self._input = self._fh.read(_CHUNK)
                if not self._input:
                    raise CorruptRecord("truncated: the file ends inside this gzip member")
            try:
                out = self._inflater.decompress(self._input, len(buffer))
            except zlib.error as exc:
                raise CorruptRecord(f"gzip data damaged ({exc})") from None
            if self._inflater.eof:
                # Bytes read past the member's end are in unused_data (unconsumed_tail repeats them at eof).
                self.end = self._fh.tell() - len(self._inflater.unused_data)
                self._input = b""
            else:
                self._input = self._inflater.unconsumed_tail
            if out:
                if len(self._head) < 5:
                    self._head += out[:5]
                buffer[: len(out)] = out
                return len(out)
        return 0

    def drain(self) -> int:
        """Inflate to the member's end (checking its CRC) and return the offset just past it."""
        scratch = bytearray(_CHUNK)
        while self.readinto(scratch):
            pass
        assert self.end is not None  # readinto returns 0 only once the end is reached
        return self.end


def describe(exc: BaseException) -> str:
    """One line saying what went wrong (warcio's messages span lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (CorruptRecord, BadRecord)) else f"{type(exc).__name__}: {text}"


def check_archive(path: Path, gzipped: bool) -> None:
    """SnapshotError unless the file's first record reads as WARC (record-at-a-time gzip'd if ``.gz``)."""
    with open(path, "rb") as fh:
        try:
            member = _GzipMember(fh, 0) if gzipped else None
            records = ArchiveIterator(member if member is not None else fh)
            first = _parse_next(records)
            if first is None:
                raise snapshot_error(path, "holds no WARC record")
            fmt = first.format
            length = int(first.length or 0)
            # warcio refuses a whole-file gzip stream too; it has no per-record offsets to resume from.
            if member is not None and length <= _CHECK_LIMIT and _parse_next(records) is not None:
                raise snapshot_error(path, "is one gzip stream, not one gzip member per record as WARC "
                                           "requires; fix it with: warcio recompress IN OUT")
        except DAMAGE as exc:
            raise snapshot_error(path, f"is not a readable WARC file: first record: {describe(exc)}") from None
    if not fmt.startswith("warc"):
        raise snapshot_error(path, f"is an {fmt.upper()} file, not WARC")


def scan_records(
    path: Path, gzipped: bool, handle: Callable[[Record], T | None], bad: BadRecords
) -> Iterator[tuple[int, T]]:
    """``(offset, handle(record))`` for each intact record where ``handle`` returns something.

    ``handle`` reads what it needs of the record and may raise ``BadRecord``; damage is reported via ``bad``
    with the record's absolute offset, and reading resumes at the next record.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, io.SEEK_END)
        if gzipped:
            yield from scan_gzip(fh, size, handle, bad)
        else:
            yield from _scan_plain(fh, size, handle, bad)


def scan_gzip(
    fh: BinaryIO, size: int, handle: Callable[[Record], T | None], bad: BadRecords, start: int = 0,
    recover: bool = False,
) -> Generator[tuple[int, T], None, int]:
    """One member, one record: a member that is damaged anywhere (CRC included) yields nothing.

    Reads from the member at ``start``; returns where it stopped (``size`` at the end of the file). With
    ``recover``, it stops early at a member boundary once it is back on track: after an intact record that
    follows damage, or after ``RECOVERY_RECORDS`` intact records in a row.
    """
    pos = start
    resyncing = False
    damaged = False
    intact = 0
    while pos < size:
        if recover and intact and (damaged or intact >= RECOVERY_RECORDS):
            return pos
        member = _GzipMember(fh, pos)
        try:
            result, problem = _read_member(member, handle)
            end = member.drain()
        except DAMAGE as exc:
            if not resyncing or member.looks_like_warc:
                bad(pos, describe(exc))
            resyncing = damaged = True
            intact = 0
            pos = _find(fh, GZIP_MEMBER_MAGIC, pos + 1, size)
            continue
        resyncing = False
        intact += 1
        if problem is not None:
            bad(pos, problem)
        if result is not None:
            yield pos, result
        pos = end
    return size


def _read_member(member: _GzipMember, handle: Callable[[Record], T | None]) -> tuple[T | None, str | None]:
    """The handled first record of a member, and a problem to report (content unusable, or extra records)."""
    records = ArchiveIterator(member)
    record = _parse_next(records)
    if record is None:
        if member.has_content:  # warcio ends quietly on headers cut short
            raise CorruptRecord("truncated: this gzip member ends inside the record's headers")
        return None, None  # an empty gzip member: nothing to read, nothing wrong
    result, problem = _handled(handle, record)
    if _parse_next(records) is not None:  # this also reads the first record to its end
        problem = "this gzip member holds more than one WARC record; only the first was read"
    elif _missing(record):
        result, problem = None, f"truncated: the record ends {_missing(record)} bytes before its Content-Length"
    return result, problem


def _scan_plain(
    fh: BinaryIO, size: int, handle: Callable[[Record], T | None], bad: BadRecords
) -> Iterator[tuple[int, T]]:
    """Uncompressed files have no member boundaries or CRCs: a record is damaged when warcio cannot parse it
    or when its Content-Length does not land on the blank lines that end every record."""
    pos = 0
    while pos < size:
        fh.seek(pos)
        records = ArchiveIterator(fh)  # it starts at fh.tell(), so the offsets it reports are absolute
        while True:
            # warcio's ``offset`` is where the record being read starts (until it is read to its end).
            start = records.offset
            try:
                record = _parse_next(records)
                if record is None:
                    if _has_more(fh, start, size):  # warcio ends quietly on headers cut short
                        raise CorruptRecord("truncated: the file ends inside this record's headers")
                    return
                start = records.offset
                result, problem = _handled(handle, record)
                misaligned = records.err_count
                start = records.get_record_offset()  # reads to the record's end and the blank lines after it
                if _missing(record):
                    raise CorruptRecord(f"truncated: the file ends {_missing(record)} bytes before the record does")
                if records.err_count != misaligned:
                    raise CorruptRecord("its Content-Length does not end at the blank lines that end a record")
            except DAMAGE as exc:
                bad(start, describe(exc))
                found = _find(fh, b"\nWARC/1.", start + 1, size)  # the next line that starts a record
                pos = found + 1 if found < size else size
                break
            if problem is not None:
                bad(start, problem)
            if result is not None:
                yield start, result


def _parse_next(records: ArchiveIterator) -> ArcWarcRecord | None:
    """The next record's headers, or ``None`` at the end; any failure of warcio's parser is damage.

    warcio raises more than its own exceptions on malformed headers (AttributeError for a response
    without a target URI, for one), so everything it raises here means "this record is unreadable".
    """
    try:
        record = next(records, None)
    except DAMAGE:
        raise
    except Exception as exc:  # noqa: BLE001 - a third-party parser on untrusted bytes
        raise CorruptRecord(f"unparsable WARC record headers ({type(exc).__name__}: {exc})") from None
    # Headers cut short still make a record for warcio; WARC requires both of these in every record.
    if record is not None and (record.rec_type is None or record.rec_headers.get_header("Content-Length") is None):
        raise CorruptRecord("incomplete WARC record headers (no WARC-Type or Content-Length)")
    if record is not None and isinstance(record.length, int) and record.length > _MAX_LENGTH:
        raise CorruptRecord(f"Content-Length of {len(str(record.length))} digits is not a byte count")
    return record


def _has_more(fh: BinaryIO, start: int, size: int) -> bool:
    """Whether anything but blank lines follows ``start`` (the file's last bytes are few when this is asked)."""
    fh.seek(start)
    return any(chunk.strip() for chunk in iter(lambda: fh.read(_CHUNK), b""))


def _missing(record: ArcWarcRecord) -> int:
    """How many bytes of its Content-Length the record's block lacked when its stream ended (0: complete)."""
    return max(int(getattr(record.raw_stream, "limit", 0) or 0), 0)


def _handled(handle: Callable[[Record], T | None], record: ArcWarcRecord) -> tuple[T | None, str | None]:
    """``handle``'s result, or the reason its content is unusable (no resync needed: the bytes are fine)."""
    return handled(handle, _WarcioRecord(record))


def handled(handle: Callable[[Record], T | None], record: Record) -> tuple[T | None, str | None]:
    """``handle(record)``, or ``(None, reason)`` if it raised ``BadRecord``."""
    try:
        return handle(record), None
    except BadRecord as exc:
        return None, describe(exc)


class _Brotli:
    """A brotli decompressor as warcio's readers use one, with its output bounded.

    warcio 1.8.0-1.8.1 set ``unused_data`` on ``brotli.Decompressor``, which brotli 1.1 and later refuse
    (AttributeError), and warcio 1.8.2 looks for brotlicffi only: either way a ``Content-Encoding: br`` body
    read through warcio was not decoded. This one is always installed, so such bodies are decoded as
    fastwarc decodes them. And it never yields more than ``MAX_HTML_BYTES`` + 1 bytes in all: warcio
    keeps each call's whole output in memory, and a few kilobytes of brotli can expand to gigabytes; a reader
    keeps no more of a page than that anyway, so the rest is cut, as a longer page is."""

    unused_data = None

    def __init__(self) -> None:
        import brotli  # required by fastwarc (and by pyproject.toml, for output_buffer_limit: >= 1.2)

        self._decompressor = brotli.Decompressor()
        self._room = MAX_HTML_BYTES + 1  # bytes still wanted: one more than a reader keeps, so it sees the cut

    def decompress(self, data: bytes) -> bytes:
        if self._room <= 0:
            return b""  # past what any reader keeps (process() must not be given input once its limit is hit)
        out = self._decompressor.process(data, output_buffer_limit=self._room)
        if len(out) >= self._room or not self._decompressor.can_accept_more_data():
            out = out[:self._room]  # the buffer grows in blocks, so it may overshoot the limit (up to ~2x)
            self._room = 0  # the limit stopped it with output pending: the rest is cut
        else:
            self._room -= len(out)
        return out

    def flush(self) -> bytes:
        return b""


# warcio registers "br" only when it finds brotlicffi (1.8.2) or with a set-up brotli refuses (1.8.0-1.8.1).
BufferedReader.DECOMPRESSORS["br"] = _Brotli


class _WarcioRecord:
    """A warcio record seen as a ``Record``."""

    __slots__ = ("_record",)

    def __init__(self, record: ArcWarcRecord) -> None:
        self._record = record

    @property
    def type(self) -> str:
        return self._record.rec_type

    def header(self, name: str) -> str | None:
        return self._record.rec_headers.get_header(name)

    @property
    def http_content_type(self) -> str | None:
        headers = self._record.http_headers
        return None if headers is None else headers.get_header("Content-Type")

    @property
    def is_http(self) -> bool:
        return self._record.http_headers is not None

    def body(self, limit: int | None = None) -> bytes:
        stream = self._record.content_stream()
        return stream.read() if limit is None else stream.read(limit)


def _find(fh: BinaryIO, marker: bytes, start: int, size: int) -> int:
    """Offset of the first ``marker`` at or after ``start``, or ``size`` if there is none."""
    fh.seek(start)
    base = start  # file offset of data[0]
    carry = b""
    while True:
        chunk = fh.read(_SCAN_CHUNK)
        if not chunk:
            return size
        data = carry + chunk
        found = data.find(marker)
        if found >= 0:
            return base + found
        keep = len(marker) - 1
        carry = data[-keep:]
        base += len(data) - len(carry)


PageImages = tuple[str | None, list[ImageTag]]
