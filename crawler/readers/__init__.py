"""Snapshot readers: stream the image references of a dataset snapshot, whatever its format.

The format comes from the file name (``detect_format``): URL tables (Parquet, CSV, TSV, JSON Lines, the text
ones optionally ``.gz``) and Common Crawl archives (WAT and WARC). ``open_snapshot`` validates eagerly, so a
missing file, a file that is not what its name says or a table without a URL column fails with one line naming
the file before any crawl starts; iterating then streams in flat memory. Damage found while streaming skips
the record and calls ``on_bad_record(path, line_or_offset, reason)`` (or logs a warning) instead of raising.

A snapshot may also be an ``s3://BUCKET/KEY`` URL, opened through a ``RemoteSnapshots`` the caller passes in
(or the one installed for the process; ``readers/remote.py``): Parquet with ranged reads, the other formats
from a local copy. Messages and bad-record reports name the URL, and ids are those of a local file of the
same name.

Nothing here imports Scrapy or Twisted: the replay spider only turns these references into requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path

from crawler.readers.base import BadRecordHandler, SnapshotReader, check_file, snapshot_error
from crawler.readers.remote import REMOTE_SCHEMES, RemoteSnapshots, installed_remote_snapshots, url_scheme
from crawler.references import Reference, SnapshotError

__all__ = [
    "BadRecordHandler",
    "RemoteSnapshots",
    "Snapshot",
    "SnapshotError",
    "SnapshotFormat",
    "detect_format",
    "iter_references",
    "open_snapshot",
]

logger = logging.getLogger(__name__)


class SnapshotFormat(StrEnum):
    """Stable format names (they appear in logs and summaries)."""

    PARQUET = "parquet"
    CSV = "csv"
    TSV = "tsv"
    JSONL = "jsonl"
    WAT = "wat"
    WARC = "warc"


# Longest suffixes first: ".warc.wat" must win over ".warc"-like matches. ".gz" is stripped beforehand.
_SUFFIXES: tuple[tuple[str, SnapshotFormat], ...] = (
    (".warc.wat", SnapshotFormat.WAT),
    (".wat", SnapshotFormat.WAT),
    (".warc", SnapshotFormat.WARC),
    (".parquet", SnapshotFormat.PARQUET),
    (".csv", SnapshotFormat.CSV),
    (".tsv", SnapshotFormat.TSV),
    (".jsonl", SnapshotFormat.JSONL),
    (".ndjson", SnapshotFormat.JSONL),
    (".json", SnapshotFormat.JSONL),
)
_EXPECTED = (".parquet, .csv, .tsv, .jsonl, .ndjson, .json (each but .parquet optionally .gz), "
             ".warc.wat[.gz], .wat[.gz], .warc[.gz]")


def _parse_name(path: str | Path) -> tuple[SnapshotFormat, bool]:
    """The format and whether the name says gzip; SnapshotError for a name no reader claims."""
    name = Path(path).name.lower()
    gzipped = name.endswith(".gz")
    stem = name[: -len(".gz")] if gzipped else name
    for suffix, fmt in _SUFFIXES:
        if stem.endswith(suffix):
            if fmt is SnapshotFormat.PARQUET and gzipped:
                raise snapshot_error(path, "gzip'd Parquet is not supported (Parquet compresses its pages "
                                           "itself); gunzip it")
            return fmt, gzipped
    raise snapshot_error(path, f"unknown snapshot format: expected a name ending in {_EXPECTED}")


def detect_format(path: str | Path) -> str:
    """The snapshot format named by the file's suffix (case-insensitive, ``.gz`` allowed); SnapshotError if none."""
    return _parse_name(path)[0]


class Snapshot:
    """An opened, validated snapshot; iterate it (as often as needed) for its references, in file order."""

    __slots__ = ("path", "format", "_reader")

    def __init__(self, path: Path | str, format: SnapshotFormat, reader: SnapshotReader) -> None:  # noqa: A002
        self.path = path
        self.format = format
        self._reader = reader

    @property
    def total(self) -> int | None:
        """The number of rows when the file says so cheaply (Parquet metadata); ``None`` otherwise."""
        return self._reader.total

    def __iter__(self) -> Iterator[Reference]:
        return iter(self._reader)

    @property
    def splittable(self) -> bool:
        """Whether ``rows`` can read a row range without reading the rows before it (Parquet)."""
        return hasattr(self._reader, "rows")

    def rows(self, start: int, stop: int | None) -> Iterator[Reference]:
        """The references of rows ``start`` to ``stop`` (exclusive), numbered as in the whole file; only for a
        ``splittable`` snapshot (the other formats are read whole, one shard a file)."""
        if not self.splittable:
            raise ValueError(f"{self.path}: a {self.format.value} snapshot is read whole, not by row range")
        return self._reader.rows(start, stop)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Snapshot({str(self.path)!r}, format={self.format.value!r}, total={self.total!r})"


def open_snapshot(path: str | Path, *, on_bad_record: BadRecordHandler | None = None,
                  remote: RemoteSnapshots | None = None) -> Snapshot:
    """Open and validate one snapshot; SnapshotError (one line naming the file) if it cannot be read.

    ``path`` is a local path or an ``s3://BUCKET/KEY`` URL, read through ``remote`` (default: the one
    installed for the process with ``readers.remote.use_remote_snapshots``)."""
    fmt, gzipped = _parse_name(path)
    scheme = url_scheme(path)
    if scheme is not None:
        if scheme not in REMOTE_SCHEMES:
            raise snapshot_error(path, f"unsupported URL scheme {scheme!r}: a snapshot is a local path or "
                                       f"s3://BUCKET/KEY")
        return _open_remote(str(path), fmt, gzipped, on_bad_record, remote or installed_remote_snapshots())
    file = Path(path)
    check_file(file)
    reader = _reader(file, fmt, gzipped, on_bad_record)
    logger.debug("opened %s snapshot %s", fmt.value, file)
    return Snapshot(file, fmt, reader)


def _reader(file: Path, fmt: SnapshotFormat, gzipped: bool, on_bad_record: BadRecordHandler | None) -> SnapshotReader:
    # Readers are imported here so that reading a CSV never pays for importing pyarrow or warcio.
    if fmt is SnapshotFormat.PARQUET:
        from crawler.readers.parquet import ParquetReader

        return ParquetReader(file, on_bad_record)
    if fmt in (SnapshotFormat.CSV, SnapshotFormat.TSV):
        from crawler.readers.delimited import DelimitedReader

        return DelimitedReader(file, fmt.value, gzipped, on_bad_record)
    if fmt is SnapshotFormat.JSONL:
        from crawler.readers.jsonlines import JsonLinesReader

        return JsonLinesReader(file, gzipped, on_bad_record)
    if fmt is SnapshotFormat.WAT:
        from crawler.readers.wat import WatReader

        return WatReader(file, gzipped, on_bad_record)
    from crawler.readers.warc import WarcReader

    return WarcReader(file, gzipped, on_bad_record)


def _open_remote(url: str, fmt: SnapshotFormat, gzipped: bool, on_bad_record: BadRecordHandler | None,
                 remote: RemoteSnapshots | None) -> Snapshot:
    """A snapshot at ``url``: Parquet through ranged reads, any other format from a local copy of it."""
    if remote is None:
        raise snapshot_error(url, "an s3:// snapshot needs S3 access, which this command does not set up")
    reader: SnapshotReader
    source: RemoteSnapshots = remote
    if fmt is SnapshotFormat.PARQUET:
        from crawler.readers.parquet import ParquetReader

        reader = ParquetReader(url, on_bad_record, opener=lambda: source.open_ranged(url))
    else:
        local = source.local_copy(url)
        # The copy's path would otherwise appear in messages and bad-record reports: they name the URL.
        try:
            reader = _reader(local, fmt, gzipped, _renamed(on_bad_record, url))
        except SnapshotError as exc:
            raise SnapshotError(str(exc).replace(str(local), url)) from None
    logger.debug("opened %s snapshot %s", fmt.value, url)
    return Snapshot(url, fmt, reader)


def _renamed(handler: BadRecordHandler | None, url: str) -> BadRecordHandler:
    """``handler`` told ``url`` instead of the local copy's path (or a warning naming ``url``)."""

    def report(_path: str, where: int, reason: str) -> None:
        if handler is not None:
            handler(url, where, reason)
        else:
            logger.warning("%s: skipped a bad record at %d: %s", url, where, reason)

    return report


def iter_references(
    paths: Iterable[str | Path], on_bad_record: BadRecordHandler | None = None, *,
    remote: RemoteSnapshots | None = None,
) -> Iterator[Reference]:
    """The references of several snapshots in order; all are validated before the first is read.

    Validation happens at the call, not at the first ``next()``, so bad input fails before a crawl starts.
    """
    snapshots = [open_snapshot(path, on_bad_record=on_bad_record, remote=remote) for path in paths]
    return _chain(snapshots)


def _chain(snapshots: list[Snapshot]) -> Iterator[Reference]:
    for snapshot in snapshots:
        yield from snapshot
