"""Parquet URL tables (LAION-5B metadata and the like), read a batch at a time.

Only the columns a reference needs are read, one row group at a time in batches of ``BATCH_ROWS`` with
pyarrow's buffered (not pre-buffered) reads, so a multi-million-row file iterates in flat memory. A row group
that fails to decode is reported as one bad record and skipped; the next row group is still readable.

A file on S3 is read through the file object ``opener`` gives (``readers/remote.py``), whose reads are ranged
GETs: the footer (pyarrow reads its last 64 KiB), then about one GET per column chunk read (more for a chunk
over the 1 MiB buffer), so a shard fetches its own row groups' columns and never the rows before it. Such a
file's own failures (S3 unreachable mid-read) are not ``OSError``: they end the iteration instead of being
taken for a damaged row group, so a shard is tried again rather than committed short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawler.readers.base import BadRecordHandler, BadRecords, snapshot_error
from crawler.readers.columns import Columns, RowMapper, find_columns, id_text, text_or_none, url_text
from crawler.references import Reference

logger = logging.getLogger(__name__)

BATCH_ROWS: Final = 8192
_READ_BUFFER: Final = 1 << 20  # stream column chunks through a 1 MiB buffer instead of loading them whole


class ParquetReader:
    """A validated Parquet snapshot: the footer is read and the URL column found when it is built.

    ``path`` names the file (a local path, or a URL when ``opener`` gives a file object to read it through)."""

    def __init__(self, path: Path | str, on_bad_record: BadRecordHandler | None = None, *,
                 opener: Callable[[], Any] | None = None) -> None:
        self.path = path
        self._opener = opener
        self._on_bad_record = on_bad_record
        self._metadata: pq.FileMetaData | None = None
        with self._open() as pf:
            self._total = pf.metadata.num_rows
            names = [field.name for field in pf.schema_arrow]
            self._metadata = pf.metadata  # later opens reuse the footer instead of reading it again
        self._columns = find_columns(path, names)
        for name in self._columns.names():
            if names.count(name) > 1:  # Arrow selects columns by name: it cannot tell such columns apart
                raise snapshot_error(path, f"column {name!r} appears {names.count(name)} times; rename all but one")

    @property
    def total(self) -> int | None:
        return self._total

    def _open(self) -> pq.ParquetFile:
        source = self.path if self._opener is None else self._opener()
        try:
            return pq.ParquetFile(source, metadata=self._metadata, buffer_size=_READ_BUFFER, pre_buffer=False)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # the last: a column name not UTF-8
            raise snapshot_error(self.path, f"is not a readable Parquet file: {exc}") from None

    def __iter__(self) -> Iterator[Reference]:
        return self.rows(0, None)

    def rows(self, start: int, stop: int | None) -> Iterator[Reference]:
        """The references of rows ``start`` to ``stop`` (exclusive; ``None``: the end), numbered as in the
        whole file (ids made from row numbers do not depend on the range). Only the row groups that overlap
        the range are read: a shard of a large table costs its own rows, not the rows before it."""
        bad = BadRecords(self.path, self._on_bad_record, unit="row")
        mapper = RowMapper(self.path)
        wanted = self._columns.names()
        end = self._total if stop is None else min(stop, self._total)
        with self._open() as pf:
            first_row = 0
            for group in range(pf.metadata.num_row_groups):
                group_rows = pf.metadata.row_group(group).num_rows
                if first_row >= end:
                    break
                if first_row + group_rows <= start:
                    first_row += group_rows
                    continue
                row = first_row
                try:
                    for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=wanted):
                        lo, hi = max(start - row, 0), min(end - row, batch.num_rows)
                        if lo < hi:
                            part = batch if (lo, hi) == (0, batch.num_rows) else batch.slice(lo, hi - lo)
                            yield from _batch_references(mapper, self._columns, part, row + lo)
                        row += batch.num_rows
                        if row >= end:
                            break
                except (pa.ArrowException, OSError) as exc:
                    # The rest of this row group is lost; later groups have their own pages and may be fine.
                    bad(max(row, start), f"row group {group} unreadable from row {max(row, start)}: {exc}")
                except (ValueError, OverflowError) as exc:
                    # A cell Python cannot hold (a timestamp past year 9999, nanoseconds): Arrow read it fine.
                    bad(max(row, start), f"row group {group}: a cell from row {max(row, start)} on has no Python "
                                         f"value: {exc}")
                first_row += group_rows


def _batch_references(mapper: RowMapper, cols: Columns, batch: pa.RecordBatch, first_row: int) -> Iterator[Reference]:
    """The references of one record batch; cells are converted a column at a time, in Arrow where it can."""
    n = batch.num_rows
    nothing = [None] * n
    urls = _urls(batch.column(cols.url))
    ids = _ids(batch.column(cols.ref_id)) if cols.ref_id else nothing
    pages = _texts(batch.column(cols.page_url)) if cols.page_url else nothing
    alts = _texts(batch.column(cols.alt)) if cols.alt else nothing
    md5s, sha256s, phashes = (
        [mapper.hashes(kind, v) for v in batch.column(name).to_pylist()] if name else nothing
        for kind, name in (("md5", cols.md5), ("sha256", cols.sha256), ("phash", cols.phash))
    )
    fallback = mapper.fallback_id
    for row, (url, ref_id, page, alt, md5, sha256, phash) in enumerate(
        zip(urls, ids, pages, alts, md5s, sha256s, phashes), first_row
    ):
        # Positional: this loop runs once per row of a multi-million-row table.
        yield Reference(url, ref_id if ref_id is not None else fallback(row), page, alt, md5, sha256, phash)


def _is_text(column: pa.Array) -> bool:
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


def _urls(column: pa.Array) -> list[str]:
    if _is_text(column):
        return pc.fill_null(column, "").to_pylist()
    return [url_text(value) for value in column.to_pylist()]


def _texts(column: pa.Array) -> list[str | None]:
    if _is_text(column):
        return [value or None for value in column.to_pylist()]
    return [text_or_none(value) for value in column.to_pylist()]


def _ids(column: pa.Array) -> list[str | None]:
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string()).to_pylist()  # plain decimal; nulls stay None
    return [id_text(value) for value in column.to_pylist()]
