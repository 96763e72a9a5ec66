"""``ArchiveReader``: the walk over a WARC-format file (WARC or WAT) shared by both readers, at fastwarc's speed.

A gzip'd file is read by fastwarc (Rust: inflating and header parsing in native code, several times faster
than warcio in Python) as long as it reads cleanly. fastwarc is laxer than ``records.py`` about damage (a
file cut inside its last record, an empty gzip member ending the stream) and its errors do not say which
record was damaged, so it only ever *reads*; ``records.scan_gzip`` judges. A record's result is held back
until fastwarc has parsed the next record's headers in a later gzip member (so the record's own member
inflated to its end and passed its CRC). When fastwarc raises, ends, or finds a second record inside one
gzip member, the held record and what follows go to ``scan_gzip(..., recover=True)``, which reports the
damage exactly as before and hands back once it is on track again; the last record of every file is thus
always re-read the careful way, which is what catches a cut file. Uncompressed files (rare: Common Crawl
gzips every file) are read by ``records.py`` alone.

One laxness remains: inside a gzip member, a Content-Length that overshoots the block only into the blank
lines that end the record (by 1 to 4 bytes) reads as intact here, where ``records.py`` alone called it cut.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from fastwarc.warc import ArchiveIterator, WarcRecord

from crawler.readers.base import BadRecordHandler, BadRecords, check_compression
from crawler.readers.records import PageImages, Record, check_archive, handled, scan_gzip, scan_records
from crawler.references import Reference

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ArchiveReader:
    """A validated WARC-format snapshot (WARC or WAT): its first record is read when the reader is built.

    Subclasses say how one record yields a page and its images (``_extractor``); the walk over records, the
    bad-record handling and the ids (``{file name}@{record offset}#{image index}``) are shared.
    """

    def __init__(self, path: Path, gzipped: bool, on_bad_record: BadRecordHandler | None = None) -> None:
        self.path = path
        self._gzipped = gzipped
        self._on_bad_record = on_bad_record
        check_compression(path, gzipped)
        check_archive(path, gzipped)

    @property
    def total(self) -> int | None:
        return None

    def _extractor(self) -> Callable[[Record], PageImages | None]:
        raise NotImplementedError

    def _finished(self, extractor: Callable[[Record], PageImages | None]) -> None:
        """Called after a complete pass, e.g. to warn about a file that yielded nothing."""

    def __iter__(self) -> Iterator[Reference]:
        bad = BadRecords(self.path, self._on_bad_record, unit="offset")
        extractor = self._extractor()
        name = self.path.name
        if self._gzipped:
            results = scan_fast(self.path, extractor, bad)
        else:
            results = scan_records(self.path, False, extractor, bad)
        for offset, (page_url, images) in results:
            for image in images:
                yield Reference(image.url, f"{name}@{offset}#{image.index}", page_url, image.alt)
        self._finished(extractor)


def scan_fast(path: Path, handle: Callable[[Record], T | None], bad: BadRecords) -> Iterator[tuple[int, T]]:
    """``records.scan_records`` for a gzip'd file, with the same results, reading with fastwarc where it can."""
    with open(path, "rb") as fh:
        size = fh.seek(0, io.SEEK_END)
        pos = 0
        while pos < size:
            careful_from = yield from _fast_stretch(fh, pos, handle, bad)
            pos = yield from scan_gzip(fh, size, handle, bad, start=careful_from, recover=True)


def _fast_stretch(
    fh: BinaryIO, start: int, handle: Callable[[Record], T | None], bad: BadRecords
) -> Generator[tuple[int, T], None, int]:
    """Read from the record at ``start`` with fastwarc; return the offset from which the careful path goes on.

    Only records followed by another record's headers in a later gzip member are passed on; the offset
    returned is that of the first record not passed on (``start`` if there was none).
    """
    fh.seek(start)
    held: tuple[int, T | None, str | None] | None = None
    last = start
    try:
        for record in ArchiveIterator(fh, parse_http=True, auto_decode="all"):
            offset = record.stream_pos
            if held is not None:
                if offset <= last:  # a second record inside the held record's gzip member
                    return last
                where, result, problem = held
                held = None
                if problem is not None:
                    bad(where, problem)
                if result is not None:
                    yield where, result
            last = offset
            result, problem = handled(handle, _FastRecord(record))
            held = (offset, result, problem)
    except Exception:  # noqa: BLE001 - any failure of fastwarc on untrusted bytes: the careful path judges
        logger.debug("fastwarc stopped after offset %d; reading on carefully", last, exc_info=True)
    return last


class _FastRecord:
    """A fastwarc record seen as a ``records.Record``."""

    __slots__ = ("_record",)

    def __init__(self, record: WarcRecord) -> None:
        self._record = record

    @property
    def type(self) -> str:
        return str(self._record.record_type)

    def header(self, name: str) -> str | None:
        return self._record.headers.get(name)

    @property
    def http_content_type(self) -> str | None:
        record = self._record
        return record.http_headers.get("Content-Type") if record.is_http else None

    @property
    def is_http(self) -> bool:
        return self._record.is_http

    def body(self, limit: int | None = None) -> bytes:
        return self._record.reader.read() if limit is None else self._record.reader.read(limit)
