"""Copy a URL table record by record, keeping what ``Verdicts`` keeps: the format-specific half of export-clean.

Reference ids must be the ones the crawl gave, so each copier walks its format the way its reader does
(``crawler/readers/parquet.py``, ``delimited.py``, ``jsonlines.py``): the same ``TextLines`` decoding, the same
``csv`` dialects, the same ``RowMapper`` ids, the same row counter (a blank line is not a row; a bad record
still is one). Text formats copy each record's *original bytes* (a CSV record may span lines), so what is
kept is byte-identical and the header, dialect, quoting and line ends stay as they were. Records the readers
skip as bad are not references: they are copied unchanged and counted. Parquet is rewritten batch by batch
with the source's Arrow schema (key-value metadata included), compression codecs and format version, in row
groups about as large as the source's.

A single gzip stream cannot be resynchronised after damage, and an unreadable Parquet row group cannot be
copied: both stop the export with an ``ExportError`` rather than publish a silently shortened file.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawler.export.verdicts import ExportError, Verdicts
from crawler.readers.base import GZIP_ERRORS, MAX_LINE_BYTES, TextLines, open_binary
from crawler.readers.columns import ID_NAMES, Columns, RowMapper, find_columns, id_text, url_text
from crawler.readers.parquet import BATCH_ROWS

TEXT_BATCH: Final = 8192  # references looked up together
MAX_ROW_GROUP_BYTES: Final = 256 << 20  # uncompressed: a one-row-group 5M-row source is split, not buffered whole
_DIALECTS: Final[dict[str, dict[str, Any]]] = {  # as crawler/readers/delimited.py reads them
    "csv": {"delimiter": ",", "quotechar": '"', "doublequote": True},
    "tsv": {"delimiter": "\t", "quoting": csv.QUOTE_NONE},
}
_CODECS: Final = {"SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli", "ZSTD": "zstd", "LZ4": "lz4",
                  "LZ4_RAW": "lz4", "UNCOMPRESSED": "none"}


def copy_table(src: Path, fmt: str, gzipped: bool, run_name: str, verdicts: Verdicts, sink: BinaryIO,
               out: Path) -> int:
    """Copy ``src`` to ``sink`` minus dropped references; ``run_name`` is the file name the run's ids use.
    Returns how many unreadable records were copied unchanged."""
    if fmt == "parquet":
        _copy_parquet(src, run_name, verdicts, sink)
        return 0
    if not gzipped:
        return _copy_text(src, fmt, gzipped, run_name, verdicts, sink)
    # The name inside the gzip header is the output's (GzipFile drops the .gz), not the temporary file's.
    with gzip.GzipFile(filename=out.name, mode="wb", fileobj=sink, compresslevel=6) as zipped:
        return _copy_text(src, fmt, gzipped, run_name, verdicts, zipped)  # type: ignore[arg-type]


# --- Parquet ------------------------------------------------------------------------------------------------


def _copy_parquet(src: Path, run_name: str, verdicts: Verdicts, sink: BinaryIO) -> None:
    pf = pq.ParquetFile(src, buffer_size=1 << 20, pre_buffer=False)
    meta = pf.metadata
    schema = pf.schema_arrow
    names = schema.names
    cols = find_columns(src, names)
    id_at = names.index(cols.ref_id) if cols.ref_id else None
    url_at = names.index(cols.url)
    target = _row_group_rows(meta)
    version = meta.format_version if meta.format_version in ("1.0", "2.4", "2.6") else "2.6"
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    with pq.ParquetWriter(sink, schema, compression=_compression(meta), version=version) as writer:
        first_row = 0
        for group in range(meta.num_row_groups):
            row = first_row
            try:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group]):
                    column = batch.column(id_at) if id_at is not None else None
                    ids = _parquet_ids(column, batch.num_rows, row, run_name)
                    keep = verdicts.keep(ids, lambda b=batch: _parquet_urls(b.column(url_at)))
                    row += batch.num_rows
                    kept = batch.filter(pa.array(keep))
                    if kept.num_rows:
                        pending.append(kept)
                        pending_rows += kept.num_rows
                    if pending_rows >= target:
                        pending = _write_full_groups(writer, pending, schema, target)
                        pending_rows = sum(b.num_rows for b in pending)
            except (pa.ArrowException, OSError) as exc:
                raise ExportError(f"{src}: row group {group} unreadable from row {row}; an export cannot skip it: "
                                  f"{' '.join(str(exc).split())}") from None
            first_row += meta.row_group(group).num_rows
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=target)


def _write_full_groups(writer: pq.ParquetWriter, pending: list[pa.RecordBatch], schema: pa.Schema,
                       target: int) -> list[pa.RecordBatch]:
    """Write as many whole row groups of ``target`` rows as ``pending`` holds; return the rest."""
    table = pa.Table.from_batches(pending, schema)
    whole = table.num_rows - table.num_rows % target
    writer.write_table(table.slice(0, whole), row_group_size=target)
    return table.slice(whole).to_batches()


def _row_group_rows(meta: pq.FileMetaData) -> int:
    """Rows per output row group: the source's largest, unless that is more than ``MAX_ROW_GROUP_BYTES``."""
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    rows = max((g.num_rows for g in groups), default=0)
    size = max((g.total_byte_size for g in groups), default=0)
    if rows and size > MAX_ROW_GROUP_BYTES:
        rows = max(int(rows * MAX_ROW_GROUP_BYTES / size), 1)
    return max(rows, 1)


def _compression(meta: pq.FileMetaData) -> str | dict[str, str]:
    """The source's codec per column (one name when they all share it; snappy when it has no row group)."""
    if meta.num_row_groups == 0:
        return "snappy"
    group = meta.row_group(0)
    codecs = {group.column(i).path_in_schema: _CODECS.get(group.column(i).compression, "snappy")
              for i in range(group.num_columns)}
    distinct = set(codecs.values())
    return distinct.pop() if len(distinct) == 1 else codecs


def _parquet_ids(column: pa.Array | None, length: int, first_row: int, run_name: str) -> pa.Array:
    """The batch's reference ids as ``ParquetReader`` makes them (integers in decimal, else ``id_text``;
    ``{file name}:{row}`` where there is none)."""
    if column is None:
        return pa.array([f"{run_name}:{row}" for row in range(first_row, first_row + length)], pa.string())
    if pa.types.is_integer(column.type):
        as_text = pc.cast(column, pa.string())
        if column.null_count == 0:
            return as_text
        texts = as_text.to_pylist()
    else:
        texts = [id_text(value) for value in column.to_pylist()]
    return pa.array([text if text is not None else f"{run_name}:{row}" for row, text in enumerate(texts, first_row)],
                    pa.string())


def _parquet_urls(column: pa.Array) -> list[str]:
    """URL cells as ``ParquetReader`` reads them (a null is ``""``)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.fill_null(column, "").to_pylist()
    return [url_text(value) for value in column.to_pylist()]


# --- CSV, TSV, JSON Lines -----------------------------------------------------------------------------------


class _LineTooLong(Exception):
    """A line longer than the readers read (``MAX_LINE_BYTES``): export cannot copy it without holding it."""


class _RawLines:
    """The raw lines of a binary stream, remembered until taken: what ``TextLines`` decoded for one record."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._taken: list[bytes] = []
        self._held = 0

    def readline(self, limit: int = -1) -> bytes:
        raw = self._stream.readline(limit)
        self._taken.append(raw)
        self._held += len(raw)
        if self._held > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise _LineTooLong  # the reader skips such a line; a copy would hold all of it
        return raw

    def take(self) -> bytes:
        data = b"".join(self._taken)
        self._taken.clear()
        self._held = 0
        return data


class _TextBatch:
    """Records waiting to be written in order; references among them are looked up a batch at a time."""

    def __init__(self, verdicts: Verdicts, sink: BinaryIO) -> None:
        self._verdicts = verdicts
        self._sink = sink
        self._records: list[tuple[bytes, bool]] = []  # (raw bytes, is a reference)
        self._ids: list[str] = []
        self._urls: list[str] = []
        self.unreadable = 0

    def other(self, raw: bytes, *, bad: bool) -> None:
        """A blank line or a record the reader skips: copied as it is."""
        self._records.append((raw, False))
        self.unreadable += bad
        if len(self._records) >= 4 * TEXT_BATCH:  # a long run of blank or bad lines stays bounded too
            self.flush()

    def reference(self, raw: bytes, ref_id: str, url: str) -> None:
        self._records.append((raw, True))
        self._ids.append(ref_id)
        self._urls.append(url)
        if len(self._ids) >= TEXT_BATCH:
            self.flush()

    def flush(self) -> None:
        keep = iter(self._verdicts.keep(pa.array(self._ids, pa.string()), lambda: self._urls) if self._ids else ())
        self._sink.write(b"".join(raw for raw, is_reference in self._records if not is_reference or next(keep)))
        self._records, self._ids, self._urls = [], [], []


def _copy_text(src: Path, fmt: str, gzipped: bool, run_name: str, verdicts: Verdicts, sink: BinaryIO) -> int:
    batch = _TextBatch(verdicts, sink)
    mapper = RowMapper(Path(run_name))
    with open_binary(src, gzipped) as stream:
        raw = _RawLines(stream)
        lines = TextLines(raw)  # type: ignore[arg-type]  # reads its stream by readline only
        try:
            if fmt == "jsonl":
                _jsonl_records(lines, raw, mapper, batch)
            else:
                _delimited_records(src, fmt, lines, raw, mapper, batch)
        except GZIP_ERRORS as exc:
            raise ExportError(f"{src}: damaged gzip data after line {lines.number} ({exc}); the rest of the file "
                              "cannot be read, so it cannot be exported") from None
        except _LineTooLong:
            raise ExportError(f"{src}: line {lines.number + 1} is longer than {MAX_LINE_BYTES >> 20} MiB (the crawl "
                              "skipped it as a bad record); export cannot copy it") from None
        batch.other(raw.take(), bad=False)  # nothing, unless a reader left bytes unclaimed
    batch.flush()
    return batch.unreadable


def _delimited_records(src: Path, fmt: str, lines: TextLines, raw: _RawLines, mapper: RowMapper,
                       batch: _TextBatch) -> None:
    """As ``DelimitedReader.__iter__`` walks the file (the header was validated when the snapshot opened)."""
    records = csv.reader(lines, **_DIALECTS[fmt])
    header = [name.strip() for name in next(records)]
    batch.other(raw.take(), bad=False)
    cols: Columns = find_columns(src, header)
    index = {name: i for i, name in reversed(list(enumerate(header)))}  # first of duplicate names wins
    url_at = index[cols.url]
    id_at = index.get(cols.ref_id) if cols.ref_id is not None else None
    width = len(header)
    row = 0
    while True:
        lines.undecodable = False
        try:
            cells = next(records)
        except StopIteration:
            break
        except csv.Error:
            batch.other(raw.take(), bad=True)
            row += 1
            continue
        if not cells:
            batch.other(raw.take(), bad=False)  # a blank line is not a record
            continue
        if lines.undecodable or len(cells) != width:
            batch.other(raw.take(), bad=True)
        else:
            ref = mapper.reference(row, cells[url_at], ref_id=cells[id_at] if id_at is not None else None)
            batch.reference(raw.take(), ref.ref_id, ref.url)
        row += 1


def _jsonl_records(lines: TextLines, raw: _RawLines, mapper: RowMapper, batch: _TextBatch) -> None:
    """As ``JsonLinesReader.__iter__`` walks the file."""
    row = 0
    for text in lines:
        if not text.strip():
            batch.other(raw.take(), bad=False)
            continue
        obj: Any = None
        if not lines.undecodable:
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
        lines.undecodable = False
        if isinstance(obj, dict):
            lower = {key.lower(): value for key, value in obj.items()}
            ref_id = next((lower[a] for a in ID_NAMES if a in lower), None)
            ref = mapper.reference(row, lower.get("url"), ref_id=ref_id)
            batch.reference(raw.take(), ref.ref_id, ref.url)
        else:
            batch.other(raw.take(), bad=True)
        row += 1
